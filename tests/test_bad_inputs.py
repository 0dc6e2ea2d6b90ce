"""Bad inputs, table-driven: every case ends in one clear line naming what is wrong.

Each case is ``(id, runner, argument, fragments)``: the runner provokes the error and returns its
message, which must contain every fragment and be one line. The runners cover the training
config (checked the way ``kan-train`` checks it, before anything is built), the Python API,
files (checkpoints, saved models, sweep directories) and, for a representative few, the command
line. Crafted checkpoints must run nothing: their payloads would leave a marker file.

``python tests/test_bad_inputs.py`` prints every case with its message.
"""

from __future__ import annotations

import errno
import json
import math
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

from conftest import compose_config  # noqa: E402

from kan_lightning.analysis.sweeps import load_job  # noqa: E402
from kan_lightning.api import KANTrainer, create_dataset, load_model  # noqa: E402
from kan_lightning.config_checks import ConfigError, resolved_container, validate_config  # noqa: E402
from kan_lightning.commands.evaluate import evaluate  # noqa: E402
from kan_lightning.lit.checkpoint import ALLOWED_TARGETS, read_checkpoint  # noqa: E402
from kan_lightning.nn import KAN  # noqa: E402
from kan_lightning.resources import check_resources, estimate_memory  # noqa: E402
from kan_lightning.commands.symbolic import symbolic_from_checkpoint  # noqa: E402

MARKER = "pwned"  # what a payload that ran would have written


# ---------------------------------------------------------------------------------------------
# Runners: each returns the error message (and fails when there is none)


def run_config(overrides: list[str], tmp: Path) -> str:
    """What kan-train does before building anything: validate_config, then the memory estimate."""
    cfg = compose_config("train", overrides, tmp / "run")
    with pytest.raises(ConfigError) as info:
        validate_config(cfg)
        check_resources(resolved_container(cfg))
    return str(info.value)


def run_call(fn: Callable[[Path], Any], tmp: Path) -> str:
    with pytest.raises((ValueError, TypeError, FileNotFoundError)) as info:
        fn(tmp)
    return str(info.value)


def run_sweep_job(make: Callable[[Path], None], tmp: Path) -> str:
    """A malformed job is a row with its error (never an exception)."""
    job = tmp / "sweep" / "0"
    (job / ".hydra").mkdir(parents=True, exist_ok=True)
    make(job)
    row = load_job(job)
    assert row["status"] == "failed", row
    return str(row["error"])


# ---------------------------------------------------------------------------------------------
# The training config


CONFIG = [
    # seeds: Lightning's bounds
    (["seed=-1"], ["seed=-1 must be an integer from 0 to 4294967295"]),
    (["seed=1180591620717411303424"], ["seed=1180591620717411303424", "4294967295"]),
    (["seed=4294967296"], ["seed=4294967296", "from 0 to 4294967295"]),
    (["seed=1.5"], ["seed=1.5", "integer"]),
    (["seed=null"], ["seed=None", "integer"]),
    # the smallest split must hold >= 2 samples (R^2)
    (["data.n_samples=10"], ["data.n_samples=10", "val part would hold 1 sample", "R^2"]),
    (["data.n_samples=14"], ["data.n_samples=14", "at least 2"]),
    (["data.n_samples=0"], ["data.n_samples=0", ">= 1"]),
    (["data.split=[0.98,0.01,0.01]", "data.n_samples=150"], ["data.n_samples=150", "at least 2"]),
    (["data.split=[1.5,-0.25,-0.25]"], ["data.split=[1.5, -0.25, -0.25]", "negative"]),
    (["data.split=[0,0.5,0.5]"], ["data.split=[0, 0.5, 0.5]", "no training data"]),
    (["data.split=[0.5,0.5]"], ["data.split=[0.5, 0.5]", "three fractions"]),
    # scheduler periods
    (["scheduler=cosine", "scheduler.factory.T_max=0"], ["scheduler.factory.T_max=0", ">= 1"]),
    (["scheduler=cosine", "scheduler.factory.T_max=-3"], ["scheduler.factory.T_max=-3", ">= 1"]),
    (["scheduler=cosine", "scheduler.factory.T_max=2.5"], ["scheduler.factory.T_max=2.5", "integer"]),
    (["scheduler=warmup_cosine", "scheduler.factory.total_steps=0"], ["scheduler.factory.total_steps=0", ">= 1"]),
    (["scheduler=cosine", "scheduler.interval=minute"], ["scheduler.interval='minute'", "'epoch', 'step'"]),
    # monitors name a metric the module logs
    (["callbacks.model_checkpoint.monitor=val/typo"], ["callbacks.model_checkpoint.monitor='val/typo'", "not a metric the module logs"]),
    (["callbacks.model_checkpoint.monitor=val/los"], ["callbacks.model_checkpoint.monitor='val/los'", "did you mean val/loss?"]),
    (["scheduler=plateau", "scheduler.monitor=val/nonexistent"], ["scheduler.monitor='val/nonexistent'", "not a metric the module logs"]),
    (["callbacks=early_stopping", "callbacks.early_stopping.monitor=valid/loss"], ["callbacks.early_stopping.monitor='valid/loss'", "did you mean val/loss?"]),
    (["callbacks=grid_extension", "callbacks.grid_extension.monitor=val_loss"], ["callbacks.grid_extension.monitor='val_loss'", "not a metric"]),
    (["model=mlp", "callbacks.model_checkpoint.monitor=reg/l1"], ["callbacks.model_checkpoint.monitor='reg/l1'", "not a metric"]),
    (["data.split=[0.9,0,0.1]"], ["callbacks.model_checkpoint.monitor='val/loss'", "no validation part"]),
    (["optimized_metric=val/rmsee"], ["optimized_metric='val/rmsee'", "not a metric"]),
    # settings of a callback left out of the list would be dropped
    (["experiment=paper_grid_extension", "callbacks=default"], ["callbacks.grid_extension sets grids", "not in the callbacks list", "callbacks=[default,grid_extension]"]),
    (["experiment=paper_grid_extension", "fit=lm", "callbacks=[default,grid_extension]"], ["callbacks.multi_start sets restarts", "callbacks=[default,multi_start]"]),
    # fit=lm sets epochs per grid of grid extension
    (["experiment=paper_toy", "fit=lm"], ["trainer.max_epochs", "callbacks.grid_extension.grids is not set"]),
    # grid ranges and domains the float32 splines cannot represent
    (["model.grid_range=[-1e308,1e308]"], ["model.grid_range=[-1e+308, 1e+308]", "too wide"]),
    (["model.grid_range=[0,1e35]"], ["model.grid_range=[0, 1e+35]", "too wide"]),
    (["model.grid_range=[1e10,1.00000001e10]"], ["model.grid_range=", "too narrow", "model.grid_size=5"]),
    (["model.grid_range=[-inf,1]"], ["model.grid_range=[-inf, 1]", "finite"]),
    (["model.grid_range=[nan,1]"], ["model.grid_range=[nan, 1]", "finite"]),
    (["data.domain=[-1e300,1e300]"], ["data.domain=[-1e+300, 1e+300]", "too wide"]),
    (["data.domain=[0,inf]"], ["data.domain=[0, inf]"]),
    # formulas
    (["data=formula", "data.formula=x99999999999999999999"], ["data.formula='x99999999999999999999'", "out of range", "x9999"]),
    (["data=formula", "data.formula=x10000"], ["data.formula='x10000'", "out of range"]),
    (["data=formula", "data.formula='__import__(\"os\").system(\"touch pwned\")'"], ["data.formula=", "is not allowed"]),
    (["data=formula", "data.formula='x0.__class__'"], ["data.formula='x0.__class__'"]),
    (["data=formula", "data.formula='lambda: 0'"], ["data.formula='lambda: 0'"]),
    (["data=formula", "data.formula='open(\"/etc/passwd\")'"], ["data.formula=", "open"]),
    (["data=formula", "data.formula='x0 +'"], ["data.formula='x0 +'", "syntax"]),
    # memory: refused with the key and the estimate before anything is allocated
    (["model.grid_size=100000"], ["model.grid_size=100000 needs ~", "GB for one", "this machine has", "GB"]),
    (["model.layers_hidden=[2,1000000,1]"], ["model.layers_hidden=[2, 1000000, 1] needs ~", "GB for one", "this machine has"]),
    (["model.layers_hidden=[2,200000,200000,1]"], ["model.layers_hidden=[2, 200000, 200000, 1] needs ~", "parameters"]),
    (["model=mlp", "model.layers_hidden=[2,100000,100000,1]"], ["model.layers_hidden=[2, 100000, 100000, 1] needs ~", "training step"]),
    (["callbacks=grid_extension", "callbacks.grid_extension.grids=[5,100000]"], ["needs ~", "grid update", "this machine has"]),
    (["data.n_samples=100000000", "model.grid_size=1000"], ["needs ~", "this machine has"]),
    (["data.n_samples=30000000000", "callbacks.grid_update.every_n_steps=0"], ["data.n_samples=30000000000 needs ~", "GB for one"]),
    # other values
    (["model.layers_hidden=[2,0,1]"], ["model.layers_hidden=[2, 0, 1]", "positive integer widths"]),
    (["model.layers_hidden=[2]"], ["model.layers_hidden=[2]", "at least two"]),
    (["model.scale_noise=nan"], ["model.scale_noise=nan", "finite"]),
    (["+model.basis=slow"], ["model.basis='slow'", "'fast', 'reference'"]),
    (["optimizer.lr=0"], ["optimizer.lr=0", "> 0"]),
    (["optimizer.lr=inf"], ["optimizer.lr=inf", "finite"]),
    (["optimizer.weight_decay=-1"], ["optimizer.weight_decay=-1", ">= 0"]),
    (["optimizer=lbfgs", "optimizer.max_iter=0"], ["optimizer.max_iter=0", ">= 1"]),
    (["data.batch_size=-3"], ["data.batch_size=-3", "positive integer"]),
    (["data.batch_size=half"], ["data.batch_size='half'", "positive integer or 'full'"]),
    (["data.num_workers=-1"], ["data.num_workers=-1", ">= 0"]),
    (["data.noise_level=nan"], ["data.noise_level=nan", "finite"]),
    (["data.input_dim=3"], ["data.input_dim=3", "does not match"]),
    (["trainer.max_epochs=-5"], ["trainer.max_epochs=-5", ">= 1"]),
    (["+trainer.limit_train_batches=1.5"], ["trainer.limit_train_batches=1.5", "<= 1"]),
    (["+trainer.accumulate_grad_batches=0"], ["trainer.accumulate_grad_batches=0", ">= 1"]),
    (["trainer.deterministic=maybe"], ["trainer.deterministic='maybe'", "'warn'"]),
    (["test_ckpt=first"], ["test_ckpt='first'", "'best', 'last'"]),
    (["train=yes"], ["train='yes'", "true or false"]),
]


# ---------------------------------------------------------------------------------------------
# The Python API: tensors are checked before any work


def _trainer() -> KANTrainer:
    return KANTrainer(KAN([2, 3, 1], grid_size=3), seed=0)


def _xy(n: int = 32, d: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(n, d, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return x, x.sum(dim=1, keepdim=True)


def _with(t: torch.Tensor, row: int, value: float) -> torch.Tensor:
    t = t.clone()
    t[row, 0] = value
    return t


def _train(**changes: Any) -> Callable[[Path], Any]:
    def call(tmp: Path) -> Any:
        x, y = _xy()
        args = {"x_train": x, "y_train": y, "epochs": 1, "verbose": False, **changes}
        return _trainer().train(**args)

    return call


def _predict(x: Any) -> Callable[[Path], Any]:
    return lambda tmp: _trainer().predict(x)


def _metrics(x: Any, y: Any) -> Callable[[Path], Any]:
    return lambda tmp: _trainer().metrics(x, y)


X, Y = _xy()
API = [
    (_train(y_train=_with(Y, 5, math.nan)), ["y_train has 1 row(s) with NaN/Inf", "first bad row 5"]),
    (_train(y_train=_with(_with(Y, 7, math.nan), 9, math.nan)), ["y_train has 2 row(s) with NaN/Inf out of 32", "first bad row 7"]),
    (_train(x_train=_with(X, 3, math.inf)), ["x_train has 1 row(s) with NaN/Inf", "first bad row 3", "inf"]),
    (_train(x_train=_with(X, 0, -math.inf)), ["x_train", "first bad row 0", "-inf"]),
    (_train(x_val=X[:10], y_val=Y[:9]), ["x_val and y_val need the same length: 10 vs 9"]),
    (_train(x_val=_with(X, 2, math.nan), y_val=Y), ["x_val has 1 row(s) with NaN/Inf", "first bad row 2"]),
    (_train(x_val=X, y_val=_with(Y, 4, math.inf)), ["y_val has 1 row(s)", "first bad row 4"]),
    (_train(x_val=X), ["give both x_val and y_val"]),
    (_train(y_train=Y[:31]), ["x_train and y_train need the same, non-zero length: 32 vs 31"]),
    (_train(x_train=X[:, :1]), ["x_train has 1 column(s) but the model takes 2 input(s)"]),
    (_train(x_train=torch.rand(32, 3)), ["x_train has 3 column(s) but the model takes 2"]),
    (_train(y_train=torch.rand(32, 2)), ["y_train has 2 column(s) but the model has 1 output(s)"]),
    (_train(x_val=torch.rand(8, 3), y_val=torch.rand(8, 1)), ["x_val has 3 column(s)"]),
    (_train(x_train=torch.rand(32, 2, 2)), ["x_train must have shape (N, d) or (N,), got (32, 2, 2)"]),
    (_train(x_train=torch.rand(0, 2), y_train=torch.rand(0, 1)), ["x_train is empty (shape (0, 2))"]),
    (_train(x_train=X.to(torch.complex64)), ["x_train must hold real numbers, got dtype torch.complex64"]),
    (_train(y_train=Y > 0), ["y_train must hold real numbers, got dtype torch.bool"]),
    (_train(x_train=[["a", "b"]]), ["x_train must be a tensor of numbers"]),
    (_train(epochs=0), ["epochs must be a positive integer, got 0"]),
    (_train(batch_size=0), ["batch_size must be a positive integer, 'full' or None, got 0"]),
    (_train(regularize_activation=-1.0), ["regularization weights must be finite and >= 0, got -1.0"]),
    (_train(regularize_entropy=math.nan), ["regularization weights must be finite and >= 0, got nan"]),
    (_predict(_with(X, 1, math.nan)), ["x has 1 row(s) with NaN/Inf", "first bad row 1"]),
    (_predict(torch.rand(4, 5)), ["x has 5 column(s) but the model takes 2"]),
    (_predict(torch.rand(2, 2, 2)), ["x must have shape (N, d) or (N,)"]),
    (_metrics(X, Y[:5]), ["x and y need the same length: 32 vs 5"]),
    (_metrics(X, _with(Y, 0, math.nan)), ["y has 1 row(s) with NaN/Inf", "first bad row 0"]),
    (lambda tmp: KANTrainer(KAN([2, 1]), optimizer_name="adamax"), ["unknown optimizer_name 'adamax'"]),
    (lambda tmp: KANTrainer(KAN([2, 1]), seed=-1), ["seed must be an integer from 0 to 4294967295", "got -1"]),
    (lambda tmp: KANTrainer(KAN([2, 1]), seed=2**70), ["seed must be", "got 1180591620717411303424"]),
    (lambda tmp: KANTrainer(KAN([2, 1]), optimizer_name="LBFGS", weight_decay=0.1), ["LBFGS has no weight_decay"]),
    (lambda tmp: create_dataset(lambda x: x[:, 0], 10, input_dim=0), ["input_dim must be a positive integer, got 0"]),
    (lambda tmp: create_dataset(lambda x: x[:, 0], 10, input_dim=2, x_range=(1, -1)), ["[1, -1]", "low < high"]),
]


# ---------------------------------------------------------------------------------------------
# Files: checkpoints, saved models, sweep jobs


class WriteMarker:
    """A pickle payload: unpickling it would write the marker file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.write_text, (self.path, "unpickling ran code"))


class SystemMarker:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


_GOOD: dict[str, Path] = {}


def good_checkpoint() -> Path:
    """A real checkpoint of a small KAN, trained once per process."""
    if "ckpt" not in _GOOD:
        import tempfile

        from kan_lightning.commands.train import train

        out = Path(tempfile.mkdtemp(prefix="kan-bad-inputs-")) / "run"
        train(compose_config("train", ["debug=fast", "logger=none", "trainer.enable_progress_bar=false",
                                       "model.layers_hidden=[2,3,1]", "test=false"], out))
        _GOOD["ckpt"] = out / "checkpoints" / "last.ckpt"
    return _GOOD["ckpt"]


def _crafted(tmp: Path, change: Callable[[dict], None]) -> Path:
    checkpoint = torch.load(good_checkpoint(), map_location="cpu", weights_only=True)
    change(checkpoint)
    path = tmp / "crafted.ckpt"
    torch.save(checkpoint, path)
    return path


def _set(*keys: str, value: Any) -> Callable[[dict], None]:
    def change(checkpoint: dict) -> None:
        node = checkpoint
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value

    return change


def _node(target: str, **kwargs: Any) -> dict:
    return {"_target_": target, **kwargs}


def _kan_eval(path: Path, tmp: Path, *extra: str) -> Any:
    return evaluate(compose_config("eval", [f"ckpt_path={path}", *extra], tmp / "eval"))


def _kan_symbolic(path: Path, tmp: Path) -> Any:
    return symbolic_from_checkpoint(compose_config("symbolic", [f"ckpt_path={path}", "plot=false"], tmp / "symbolic"))


def _resume(path: Path, tmp: Path) -> Any:
    from kan_lightning.pipeline import checked_resume as _checked_resume
    from kan_lightning.lit import KANRegressor
    from omegaconf import OmegaConf

    module = KANRegressor(KAN([2, 3, 1]), run_config={})
    try:
        return _checked_resume(str(path), module, OmegaConf.create({}))
    except ConfigError as err:
        raise ValueError(str(err)) from None


def ckpt(change: Callable[[dict], None], loader: Callable[[Path, Path], Any] = _kan_eval) -> Callable[[Path], Any]:
    return lambda tmp: loader(_crafted(tmp, change), tmp)


def payload(kind: type, loader: Callable[[Path, Path], Any] = _kan_eval, where: str = "top") -> Callable[[Path], Any]:
    def call(tmp: Path) -> Any:
        path = tmp / "payload.ckpt"
        obj = kind(tmp / MARKER)
        record = {"state_dict": {}, "x": obj} if where == "top" else {"state_dict": {"model.w": obj}}
        if where == "legacy":  # an old-style (non-zip) pickle
            with open(path, "wb") as f:
                pickle.dump({"state_dict": {}, "x": obj}, f)
        else:
            torch.save(record, path)
        return loader(path, tmp)

    return call


def _model_file(change: Callable[[dict], None] | None = None, raw: bytes | None = None, loader: Callable[[Path], Any] = load_model) -> Callable[[Path], Any]:
    def call(tmp: Path) -> Any:
        path = tmp / "model.pth"
        if raw is not None:
            path.write_bytes(raw)
        else:
            trainer = _trainer()
            trainer.save(path)
            record = torch.load(path, weights_only=True)
            if change:
                change(record)
            torch.save(record, path)
        return loader(path)

    return call


def _truncated_model(tmp: Path) -> Any:
    path = _trainer().save(tmp / "model.pth")
    path.write_bytes(path.read_bytes()[:200])
    return load_model(path)


def _model_payload(tmp: Path) -> Any:
    path = tmp / "model.pth"
    torch.save({"format": "kan_lightning.api.model", "payload": WriteMarker(tmp / MARKER)}, path)
    return load_model(path)


FILES = [
    # pickle payloads: refused by weights_only, nothing runs
    (payload(WriteMarker), ["refused to load checkpoint", "payload.ckpt", "Unsupported global"]),
    (payload(SystemMarker), ["refused to load checkpoint", "unsupported GLOBAL", "system"]),
    (payload(WriteMarker, where="state"), ["refused to load checkpoint", "Unsupported global"]),
    (payload(WriteMarker, where="legacy"), ["payload.ckpt"]),
    (payload(WriteMarker, loader=_kan_symbolic), ["refused to load checkpoint", "Unsupported global"]),
    (payload(SystemMarker, loader=_resume), ["cannot be resumed from", "refused to load checkpoint", "unsupported GLOBAL"]),
    (_model_payload, ["refused to load model file", "model.pth", "Unsupported global"]),
    # nested _target_s anywhere in the stored config: refused, naming the key path and target
    (ckpt(_set("kan_lightning", "run_config", "data", "domain", value=_node("sympy.parsing.sympy_parser.parse_expr", s="__import__('os').system('touch pwned')"))),
     ["kan_lightning.run_config.data.domain._target_='sympy.parsing.sympy_parser.parse_expr'", "not one of kan-lightning's own targets"]),
    (ckpt(_set("kan_lightning", "run_config", "callbacks", "evil", value=_node("pathlib.Path.write_text", self="pwned", data="x"))),
     ["kan_lightning.run_config.callbacks.evil._target_='pathlib.Path.write_text'"]),
    (ckpt(_set("kan_lightning", "run_config", "data", value=_node("os.system", command="touch pwned"))),
     ["kan_lightning.run_config.data._target_='os.system'"]),
    (ckpt(_set("kan_lightning", "run_config", "data", "_target_", value="builtins.exec")),
     ["kan_lightning.run_config.data._target_='builtins.exec'"]),
    (ckpt(_set("kan_lightning", "run_config", "data", "split", value=[0.8, _node("os.system", command="touch pwned"), 0.1])),
     ["kan_lightning.run_config.data.split[1]._target_='os.system'"]),
    (ckpt(_set("kan_lightning", "run_config", "model", "regularization", value={"l1": _node("subprocess.run", args=["touch", "pwned"])})),
     ["kan_lightning.run_config.model.regularization.l1._target_='subprocess.run'"]),
    (ckpt(_set("kan_lightning", "model_config", "base_activation", value=_node("os.system", command="touch pwned"))),
     ["kan_lightning.model_config.base_activation._target_='os.system'"]),
    (ckpt(_set("hyper_parameters", value={"deep": [{"x": _node("shutil.rmtree", path="/")}]})),
     ["hyper_parameters.deep[0].x._target_='shutil.rmtree'"]),
    (ckpt(_set("kan_lightning", "run_config", "data", "domain", value=_node("sympy.parsing.sympy_parser.parse_expr", s="1")), loader=_kan_symbolic),
     ["kan_lightning.run_config.data.domain._target_='sympy.parsing.sympy_parser.parse_expr'"]),
    (ckpt(_set("kan_lightning", "run_config", "trainer", value=_node("os.system", command="touch pwned")), loader=_resume),
     ["cannot be resumed from", "kan_lightning.run_config.trainer._target_='os.system'"]),
    (ckpt(_set("kan_lightning", "run_config", "data", "_target_", value=123)),
     ["kan_lightning.run_config.data._target_=123"]),
    # even an allowed target is not built where plain values belong
    (ckpt(_set("kan_lightning", "run_config", "data", "_target_", value="kan_lightning.nn.KAN")),
     ["run_config.data._target_='kan_lightning.nn.KAN' is not kan-lightning's data module"]),
    (ckpt(_set("kan_lightning", "run_config", "data", "domain", value=_node("kan_lightning.nn.KAN", layers_hidden=[2, 1]))),
     ["run_config.data.domain._target_='kan_lightning.nn.KAN'"]),
    (ckpt(_set("kan_lightning", "run_config", "data", "evil_key", value=1)),
     ["run_config.data.evil_key is not a parameter of SyntheticFunctionDataModule"]),
    (ckpt(_set("kan_lightning", "model_config", "evil_key", value=1)),
     ["kan_lightning.model_config.evil_key is not a parameter of KAN"]),
    (ckpt(_set("kan_lightning", "model_class", value="os.system")), ["no known kan-lightning model (model_class='os.system')"]),
    (ckpt(_set("kan_lightning", value="not a dict")), ["no known kan-lightning model"]),
    (ckpt(_set("kan_lightning", "run_config", value=None)), ["no run config to rebuild its data from"]),
    # stored paths outside the checkpoint directory they name: never followed (resume could
    # load or delete them)
    (ckpt(lambda c: _callback_state(c).update(best_k_models={"/etc/passwd": torch.tensor(0.0)}), loader=_resume),
     ["best_k_models='/etc/passwd' lies outside its checkpoint directory"]),
    (ckpt(lambda c: _callback_state(c).update(kth_best_model_path="/home/user/.bashrc"), loader=_resume),
     ["kth_best_model_path='/home/user/.bashrc' lies outside"]),
    (ckpt(lambda c: _callback_state(c).update(best_model_path=_callback_state(c)["dirpath"] + "/../../../x.ckpt")),
     ["best_model_path=", "lies outside its checkpoint directory"]),
    (ckpt(lambda c: _callback_state(c).update(last_model_path=7)), ["last_model_path=7 lies outside"]),
    # broken files
    (lambda tmp: _kan_eval(tmp / "nope.ckpt", tmp), ["checkpoint not found", "nope.ckpt"]),
    (lambda tmp: _kan_eval(_file(tmp / "empty.ckpt", b""), tmp), ["empty.ckpt", "the file is empty"]),
    (lambda tmp: _kan_eval(_file(tmp / "g.ckpt", b"garbage" * 9), tmp), ["cannot read checkpoint", "g.ckpt", "corrupt or truncated"]),
    (lambda tmp: torch.save([1, 2], tmp / "l.ckpt") or _kan_eval(tmp / "l.ckpt", tmp), ["l.ckpt", "is not a kan-lightning checkpoint"]),
    (lambda tmp: _kan_eval(good_checkpoint(), tmp, "+data._target_=os.system"), ["data._target_='os.system'"]),
    (lambda tmp: _kan_eval(good_checkpoint(), tmp, "split=holdout"), ["split must be one of", "'holdout'"]),
    (_model_file(raw=b""), ["model file", "model.pth", "the file is empty"]),
    (_model_file(raw=b"\x00\x01garbage"), ["cannot read model file", "model.pth", "corrupt or truncated"]),
    (_truncated_model, ["cannot read model file", "model.pth"]),
    (lambda tmp: load_model(tmp / "missing.pth"), ["model file not found", "missing.pth"]),
    (_model_file(_set("format", value="other")), ["model.pth", "is not a model saved by KANTrainer.save"]),
    (_model_file(_set("version", value=99)), ["model.pth", "format version 99"]),
    (_model_file(_set("model_class", value="os.system")), ["model.pth", "unknown model_class 'os.system'"]),
    (_model_file(_set("model_config", value={"layers_hidden": [2, 3, 1], "evil": 1})), ["model.pth", "model_config.evil is not a parameter of KAN"]),
    (_model_file(_set("model_config", value={"layers_hidden": [2, 3, 1], "grid_size": _node("os.system", command="x")})), ["model.pth", "model_config.grid_size._target_='os.system'"]),
    (_model_file(_set("model_config", value={"layers_hidden": [2, 4, 1]})), ["model.pth", "weights do not fit its model_config"]),
    (_model_file(_set("model_state_dict", value="weights")), ["model.pth", "model_state_dict is not a mapping of tensors"]),
    (_model_file(_set("model_config", value=[2, 3, 1])), ["model.pth", "model_config is not a mapping"]),
    (_model_file(lambda r: r["trainer_config"].update(default_root_dir="/etc", logger=True), loader=KANTrainer.load),
     ["model.pth", "trainer_config.default_root_dir is not one of the saved settings"]),
    (_model_file(_set("trainer_config", value="adam"), loader=KANTrainer.load), ["model.pth", "trainer_config is a str, not a mapping"]),
]


def _file(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def _callback_state(checkpoint: dict) -> dict:
    return next(v for k, v in checkpoint["callbacks"].items() if k.startswith("ModelCheckpoint"))


def _write(name: str, content: bytes | str) -> Callable[[Path], None]:
    def make(job: Path) -> None:
        (job / name).write_bytes(content.encode() if isinstance(content, str) else content)

    return make


def _both(*makes: Callable[[Path], None]) -> Callable[[Path], None]:
    def make(job: Path) -> None:
        for m in makes:
            m(job)

    return make


SWEEP_JOBS = [
    (_write("metrics.json", "[1, 2, 3]"), ["metrics.json", "a JSON list is not a run record"]),
    (_write("metrics.json", json.dumps({"status": "completed", "metrics": "fast"})), ["'metrics' is a str, not a mapping"]),
    (_write("metrics.json", b"\xff\xfe{not utf-8"), ["unreadable metrics.json", "utf-8"]),
    (_write("metrics.json", "{truncated"), ["unreadable metrics.json"]),
    (_write("metrics.json", json.dumps({"status": "completed", "metrics": [1, 2]})), ["'metrics' is a list"]),
    (_both(_write("metrics.json", '{"status": "completed", "metrics": {}}'), _write(".hydra/overrides.yaml", "- a=[1\n- : :")), ["overrides.yaml", "not valid YAML"]),
    (_both(_write("metrics.json", '{"status": "completed", "metrics": {}}'), _write(".hydra/overrides.yaml", b"- a=\xff\n")), ["overrides.yaml", "not valid YAML"]),
    (_both(_write("metrics.json", '{"status": "completed", "metrics": {}}'), _write(".hydra/overrides.yaml", "a: 1\n")), ["overrides.yaml", "a dict is not a list of overrides"]),
    (_write("metrics.json", json.dumps({"status": "completed", "metrics": {}, "overrides": "seed=1"})), ["a str is not a list of overrides"]),
]


# ---------------------------------------------------------------------------------------------
# The table


def _id(item: Any) -> str:
    if isinstance(item, list):
        return " ".join(item)
    return getattr(item, "__qualname__", "case")


CASES = (
    [(f"config: {' '.join(o)}", run_config, o, f) for o, f in CONFIG]
    + [(f"api {i}", run_call, fn, f) for i, (fn, f) in enumerate(API)]
    + [(f"file {i}", run_call, fn, f) for i, (fn, f) in enumerate(FILES)]
    + [(f"sweep job {i}", run_sweep_job, fn, f) for i, (fn, f) in enumerate(SWEEP_JOBS)]
)


def test_the_table_covers_at_least_100_bad_inputs():
    assert len(CASES) >= 100, len(CASES)


@pytest.mark.parametrize("name,runner,argument,fragments", CASES, ids=[c[0] for c in CASES])
def test_bad_input(name, runner, argument, fragments, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a payload that ran would leave its marker here or in tmp_path
    message = runner(argument, tmp_path)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert "\n" not in message.strip(), f"one line: {message!r}"
    assert not (tmp_path / MARKER).exists(), "a payload ran"


# ---------------------------------------------------------------------------------------------
# Beyond one message


def test_every_shipped_target_is_allowed():
    """The allowlist names every target of the shipped configs (a stored config of any shipped
    option loads), and nothing else comes in with them."""
    import yaml

    def targets(node):
        if isinstance(node, dict):
            yield from ([node["_target_"]] if "_target_" in node else [])
            for value in node.values():
                yield from targets(value)
        elif isinstance(node, list):
            for value in node:
                yield from targets(value)

    # Hydra's own settings (launchers, its callbacks) are never part of a stored run config.
    conf = Path(__file__).resolve().parents[1] / "conf"
    files = [p for p in conf.rglob("*.yaml") if p.parent.name != "hydra"]
    shipped = {t for p in files for t in targets({k: v for k, v in (yaml.safe_load(p.read_text()) or {}).items() if k != "hydra"})}
    assert shipped and shipped <= ALLOWED_TARGETS, shipped - ALLOWED_TARGETS
    assert not any(t.startswith(("os.", "builtins.", "subprocess.", "sympy.", "pathlib.")) for t in ALLOWED_TARGETS)


def test_a_good_checkpoint_still_evaluates(tmp_path):
    read_checkpoint(good_checkpoint())
    metrics = _kan_eval(good_checkpoint(), tmp_path)
    assert math.isfinite(metrics["test/rmse"])


def test_sweep_summary_keeps_the_other_rows(tmp_path):
    """One malformed job is one row with an error; the good job's row and the table stay."""
    from kan_lightning.commands.sweep_summary import main

    sweep = tmp_path / "sweep"
    for job, (make, _) in enumerate(SWEEP_JOBS):
        (sweep / str(job) / ".hydra").mkdir(parents=True)
        make(sweep / str(job))
    good = sweep / str(len(SWEEP_JOBS))
    (good / ".hydra").mkdir(parents=True)
    (good / ".hydra" / "overrides.yaml").write_text("- seed=3\n")
    (good / "metrics.json").write_text(json.dumps({"status": "completed", "metrics": {"test/rmse": 0.5}}))
    assert main([str(sweep), "--no-plot"]) in (0, None)
    table = (sweep / "summary.md").read_text()
    assert "0.5" in table and table.count("FAILED") == len(SWEEP_JOBS)


def test_memory_estimate_matches_a_measured_grid_update(tmp_path):
    """The estimate of a grid update's least squares against the peak memory a real one takes
    (the kernel's peak resident set of a fresh process, reset just before the update so that an
    earlier peak, e.g. while importing, cannot hide it; an independent measurement, not the
    estimate's own terms)."""
    overrides = ["model.layers_hidden=[2,400,1]", "model.grid_size=30", "data.n_samples=2000", "callbacks.grid_update.max_samples=1600"]
    estimate = estimate_memory(resolved_container(compose_config("train", overrides, tmp_path)))
    assert estimate.phase == "grid update"
    script = (
        "import torch\n"
        "from kan_lightning.nn import KAN\n"
        "torch.set_num_threads(1)\n"
        "m = KAN([2, 400, 1], grid_size=30)\n"
        "x = torch.rand(1600, 400) * 2 - 1\n"
        "status = lambda key: int(open('/proc/self/status').read().split(key + ':')[1].split()[0]) * 1024\n"
        "open('/proc/self/clear_refs', 'w').write('5')  # the peak (VmHWM) restarts from here\n"
        "before = status('VmRSS')\n"
        "m.layers[1].update_grid(x)\n"
        "print(status('VmHWM') - before)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True)
    measured = float(out.stdout.split()[-1])
    assert 0.5 * measured <= estimate.bytes <= 3 * measured, (estimate.bytes / 1e6, measured / 1e6)


def test_the_memory_budget_follows_the_address_space_limit(tmp_path):
    """Under ``ulimit -v`` (a real limit, set in a fresh process) the budget is what the process
    may still map, and a config over it is refused naming the limit."""
    script = (
        "import resource, sys\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from conftest import compose_config\n"
        "from pathlib import Path\n"
        "from kan_lightning.config_checks import resolved_container, ConfigError\n"
        "from kan_lightning.resources import available_memory, check_resources\n"
        "size = int(open('/proc/self/status').read().split('VmSize:')[1].split()[0]) * 1024\n"
        "resource.setrlimit(resource.RLIMIT_AS, (size + 2 * 10**9, resource.RLIM_INFINITY))\n"
        "cfg = resolved_container(compose_config('train', ['model.layers_hidden=[2,3000,1]'], Path(sys.argv[2])))\n"
        "budget, what = available_memory(cfg)\n"
        "assert 1.5e9 < budget < 2.1e9, budget\n"
        "try:\n"
        "    check_resources(cfg)\n"
        "except ConfigError as err:\n"
        "    print(err)\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(TESTS), str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "model.layers_hidden=[2, 3000, 1] needs ~" in out.stdout and "left under the address-space limit (ulimit -v)" in out.stdout, out.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_full_disk_mid_run_is_recorded_as_failed(tmp_path):
    """A real ENOSPC: the run directory is a 300 kB tmpfs, and checkpoints of a wider KAN do
    not fit. The failure is recorded in metrics.json (the truncated checkpoint is removed to
    make room for it) and the run raises OSError, which kan-train prints as one line."""
    from kan_lightning.commands.train import train

    mount = tmp_path / "small"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(mount)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        cfg = compose_config("train", ["debug=fast", "logger=none", "trainer.enable_progress_bar=false",
                                       "model.layers_hidden=[2,40,40,1]", "test=false"], mount / "run")
        with pytest.raises(OSError) as info:
            train(cfg)
        assert info.value.errno == errno.ENOSPC
        record = json.loads((mount / "run" / "metrics.json").read_text())
        assert record["status"] == "failed" and "No space left on device" in record["error"], record
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_symbolic_refuses_the_default_model_in_seconds(tmp_path):
    """A plain kan-train KAN ([2, 20, 20, 1]: 460 edges) is refused before any fit, with advice."""
    from kan_lightning.commands.train import train

    train(compose_config("train", ["debug=fast", "trainer.enable_progress_bar=false", "test=false"], tmp_path / "run"))
    start = time.time()
    with pytest.raises(ValueError, match=r"\[2, 20, 20, 1\] has 460 live edges, more than max_edges=60 .* prune it first"):
        _kan_symbolic(tmp_path / "run" / "checkpoints" / "last.ckpt", tmp_path)
    assert time.time() - start < 10


# ---------------------------------------------------------------------------------------------
# The command line: a representative few in subprocesses


def _cli(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


CLI = [
    ("kan_lightning.commands.train", ["seed=-1"], "error: seed=-1 must be an integer from 0 to 4294967295"),
    ("kan_lightning.commands.train", ["model.grid_size=100000"], "error: model.grid_size=100000 needs ~"),
    ("kan_lightning.commands.train", ["callbacks.model_checkpoint.monitor=val/typo"], "error: callbacks.model_checkpoint.monitor='val/typo' is not a metric"),
]


@pytest.mark.slow
@pytest.mark.parametrize("module,args,expected", CLI, ids=[" ".join(a) for _, a, _ in CLI])
def test_cli_exits_2_with_one_line(module, args, expected, tmp_path):
    result = _cli(module, *args, "logger=none", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert expected in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.slow
def test_cli_crafted_checkpoint_runs_nothing(tmp_path):
    path = _crafted(tmp_path, _set("kan_lightning", "run_config", "data", "domain",
                                   value=_node("sympy.parsing.sympy_parser.parse_expr", s=f"__import__('os').system('touch {tmp_path / MARKER}')")))
    for module in ("kan_lightning.commands.evaluate", "kan_lightning.commands.symbolic"):
        result = _cli(module, f"ckpt_path={path}", f"hydra.run.dir={tmp_path / module}", cwd=tmp_path)
        assert result.returncode == 2, result.stderr[-2000:]
        assert "run_config.data.domain._target_='sympy.parsing.sympy_parser.parse_expr'" in result.stderr
        assert "Traceback" not in result.stderr
    assert not (tmp_path / MARKER).exists()


if __name__ == "__main__":  # print every case with its message
    import tempfile

    for name, runner, argument, _ in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                message = runner(argument, Path(tmp))
            except BaseException as err:  # noqa: BLE001 - show a case that no longer fails cleanly
                message = f"!! {type(err).__name__}: {err}"
            print(f"{name}\n    {message}")
