"""Train several jobs of one shape as one :class:`~kan_lightning.nn.stacked.StackedKAN`.

``train_stack(jobs)`` takes the configs of jobs that :mod:`kan_lightning.stacked.plan` lets
stack and trains their models side by side in one module: each job keeps its own seed (its
model starts exactly as in a separate run), its own data and batch order, and gets its own
``metrics.json``, TensorBoard run and checkpoints, as ``kan-train`` writes them.

Why the result is the separate runs' result. The objective is ``sum_m loss_m``; model ``m``'s
parameters enter ``loss_m`` only, so their gradient is ``d loss_m``. Optimizers that update each
element from its own gradient and state (Adam, AdamW, SGD, ...) then move every model exactly
as alone. L-BFGS runs as one ``torch.optim.LBFGS`` per model, with its own line search, over
that model's own parameters, its closures evaluated together (:mod:`kan_lightning.stacked.lbfgs`).
Grid updates run per model (:meth:`StackedKAN.update_grid`), on each job's own
training inputs. What differs is the order of floating-point sums (one batched matmul instead
of M matmuls): rounding-level differences, which training can amplify slowly (see the tests:
float64 runs agree to ~1e-9 relative after dozens of steps; float32 to ~1e-3).

The loop reproduces, per job, what the Trainer does with the supported settings
(``plan.why_not_stackable``): batches in the order of the job's own
``EpochShuffleSampler``, the grid-update schedule, the logged values (``<stage>/loss`` as the
batch-size-weighted mean of batch MSEs, MSE, RMSE, MAE, R^2 in the targets' units, accumulated
in the dtypes torchmetrics uses), the divergence guard (per model: a diverged job stops, the
others go on), the best checkpoint by the monitored value (the best weights are kept in memory
and written once at the end, with ``last.ckpt``: a stacked job cannot be resumed mid-way, so the
per-epoch ``last.ckpt`` has no use here) and the test on the best (or last) weights.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from torch.func import functional_call

from kan_lightning.config_checks import ConfigError, instantiate_node, resolved_container, validate_config
from kan_lightning.lit.hparams import hydra_context, log_run
from kan_lightning.lit.safety import TrainingDiverged, TrainingInterrupted, raise_on_sigterm
from kan_lightning.logs import start_logs, summary_line
from kan_lightning.nn.stacked import StackedKAN, stack_key
from kan_lightning.stacked.lbfgs import PerModelLBFGS
from kan_lightning.stacked.plan import PER_MODEL_OPTIMIZERS
from kan_lightning.resources import check_resources
from kan_lightning.run_dir import claim
from kan_lightning.pipeline import build_model, build_module
from kan_lightning.run_records import ERROR_FILE, write_run_record

log = logging.getLogger(__name__)

STAGES = ("train", "val", "test")


class RunAlone(Exception):
    """The job could not be prepared for a stack (its config or data failed): run it alone,
    where ``kan-train`` records the failure as usual."""


@dataclass
class Job:
    """One job of a stack: its config, its Hydra config (job number, overrides) and its state."""

    cfg: DictConfig
    hydra_cfg: DictConfig | None = None  # the job's whole config with its hydra node
    output_dir: Path = field(init=False)
    start: float = field(default_factory=time.time)
    datamodule: Any = None
    module: Any = None
    loggers: list = field(default_factory=list)
    result: Any = None  # the run record, or the exception the job ended with
    diverged: TrainingDivergedAt | None = None

    def __post_init__(self) -> None:
        with job_context(self):  # (the path may come from Hydra's runtime)
            self.output_dir = Path(self.cfg.paths.output_dir)


@dataclass
class TrainingDivergedAt:
    step: int
    epoch: int
    batch_idx: int
    value: float
    message: str


@contextmanager
def job_context(job: Job) -> Iterator[None]:
    """Hydra's runtime config set to the job's (its number and overrides for the records)."""
    if job.hydra_cfg is None:
        yield
        return
    instance = HydraConfig.instance()
    saved = instance.cfg
    instance.set_config(job.hydra_cfg)
    try:
        yield
    finally:
        instance.cfg = saved


@contextmanager
def job_log(job: Job) -> Iterator[None]:
    """Also write this module's log lines to the job's own log file (Hydra's job log)."""
    name = OmegaConf.select(job.hydra_cfg, "hydra.job.name") if job.hydra_cfg is not None else None
    handler = logging.FileHandler(job.output_dir / f"{name or 'train'}.log") if job.output_dir.is_dir() else None
    if handler is not None:
        handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
        log.addHandler(handler)
    try:
        yield
    finally:
        if handler is not None:
            log.removeHandler(handler)
            handler.close()


def train_stack(jobs: Sequence[Job]) -> list[Any]:
    """Train ``jobs`` stacked; per job, its run record, a :class:`RunAlone` (prepare it alone)
    or the exception it ended with (``TrainingDiverged``)."""
    with ExitStack() as claims:
        ready = []
        for job in jobs:
            with job_context(job):
                try:
                    completed = claims.enter_context(_claimed(job))
                    if completed is not None:
                        job.result = completed
                        continue
                    _prepare(job)
                    ready.append(job)
                except Exception as err:  # noqa: BLE001 - the job runs alone and records it
                    job.result = RunAlone(f"{type(err).__name__}: {err}")
        # jobs whose data turned out to give other widths or sizes form their own stacks
        groups: dict[str, list[Job]] = {}
        for job in ready:
            data = job.datamodule
            shape = (repr(stack_key(job.module.model)), tuple(data.x_train.shape), tuple(data.x_val.shape), tuple(data.x_test.shape))
            groups.setdefault(repr(shape), []).append(job)
        try:
            with raise_on_sigterm():
                for group in groups.values():
                    _fit_and_test(group)
        except (KeyboardInterrupt, TrainingInterrupted) as err:
            # as kan-train records a run stopped by a signal (a stacked run keeps no checkpoint
            # to resume from: it starts again)
            signum = getattr(err, "signum", int(signal.SIGINT))
            for job in ready:
                if job.result is None:
                    with job_context(job), job_log(job):
                        _write_interrupted(job, signum)
            raise TrainingInterrupted(signum) from err
    return [job.result for job in jobs]


def _write_interrupted(job: Job, signum: int) -> None:
    name = TrainingInterrupted(signum).signal_name
    record = {
        "status": "interrupted", "error": f"interrupted by {name}", "error_type": "TrainingInterrupted",
        "task": job.cfg.get("task_name"), "seed": job.cfg.get("seed"), "signal": name, "exit_code": 128 + signum,
        "step": None, "epoch": None, "checkpoint": None, "metrics": {},
        "wall_time_s": time.time() - job.start, "overrides": _overrides(),
        "config": OmegaConf.to_container(job.cfg, resolve=True),
    }
    try:
        write_run_record(job.output_dir, record)
        log.error(summary_line(record, job.output_dir))
    except OSError as err:  # never hide the signal behind a disk problem
        log.error(f"could not write the run record to {job.output_dir}: {err}")


@contextmanager
def _claimed(job: Job) -> Iterator[dict[str, Any] | None]:
    with claim(job.cfg, job.output_dir) as completed:
        yield completed


def _prepare(job: Job) -> None:
    """What ``kan-train`` does before ``fit``, in the same order (so the model's initial
    weights come from the same random numbers)."""
    cfg = job.cfg
    validate_config(cfg)
    check_resources(resolved_container(cfg))
    start_logs(cfg, job.output_dir)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate_node(cfg.data, "data", _convert_="all")
    try:
        datamodule.setup("fit")
    except ValueError as err:
        raise ConfigError(f"data: {err}") from None
    model = build_model(cfg, datamodule.input_dim, datamodule.output_dim)
    module = build_module(cfg, model)
    module.set_target_normalization(datamodule.normalization)
    job.datamodule, job.module = datamodule, module
    job.loggers = [
        instantiate_node(node, f"logger.{name}")
        for name, node in (cfg.get("logger") or {}).items()
        if node is not None and "_target_" in node
    ]


# -- metrics ---------------------------------------------------------------------------------


class StackedMetrics:
    """Per model: the batch-size-weighted mean of the batch losses (as Lightning reduces logged
    values), and MSE, RMSE, MAE, R^2 of the denormalized predictions with torchmetrics' sums:
    the losses and R^2's sums in the compute dtype, the squared and absolute errors in float32
    states that torchmetrics adds to in place (so also at 64-bit precision)."""

    def __init__(self, n_models: int, n_out: int, device: torch.device, dtype: torch.dtype) -> None:
        z = lambda *shape: torch.zeros(n_models, *shape, device=device, dtype=dtype)  # noqa: E731
        self.loss_sum, self.count = z(), 0
        self.sq, self.abs, self.n = z().float(), z().float(), 0
        self.sum_obs, self.sum_sq_obs, self.rss, self.num_obs = z(n_out), z(n_out), z(n_out), 0

    def update(self, loss: torch.Tensor, pred: torch.Tensor, target: torch.Tensor) -> None:
        """``loss (M,)``, ``pred`` and ``target`` ``(M, B, out)`` in the targets' units."""
        batch = pred.shape[1]
        self.loss_sum += loss.detach() * batch
        self.count += batch
        err = pred - target
        self.sq += (err * err).sum(dim=(1, 2))
        self.abs += err.abs().sum(dim=(1, 2))
        self.n += err[0].numel()
        self.sum_obs += target.sum(1)
        self.sum_sq_obs += (target * target).sum(1)
        self.rss += (err * err).sum(1)
        self.num_obs += batch

    def compute(self, stage: str) -> list[dict[str, float]]:
        mse = self.sq / self.n
        mean_obs = self.sum_obs / self.num_obs
        r2 = (1 - self.rss / (self.sum_sq_obs - self.sum_obs * mean_obs)).mean(-1)
        values = {"loss": self.loss_sum / self.count, "mse": mse, "rmse": mse.sqrt(), "mae": self.abs / self.n, "r2": r2}
        columns = {f"{stage}/{k}": v.tolist() for k, v in values.items()}
        return [{k: v[m] for k, v in columns.items()} for m in range(len(self.loss_sum))]


# -- the loop --------------------------------------------------------------------------------


def _dtype_device(cfg: DictConfig) -> tuple[torch.dtype, torch.device]:
    precision = str(cfg.trainer.get("precision", "32-true"))
    dtype = torch.float64 if precision.startswith("64") else torch.float32
    accelerator = str(cfg.trainer.get("accelerator", "cpu"))
    cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return dtype, torch.device("cuda" if cuda else "cpu")


def _stacked(tensors: Sequence[torch.Tensor], dtype, device) -> torch.Tensor:
    return torch.stack(list(tensors)).to(device=device, dtype=dtype)


def _batches(n: int, batch_size: Any) -> list[slice]:
    size = max(1, n) if batch_size == "full" else int(batch_size)
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


def _evaluate(stack: StackedKAN, x, y, jobs, batch_size, stage: str, scale) -> list[dict[str, float]]:
    metrics = StackedMetrics(len(jobs), y.shape[-1], x.device, x.dtype)
    with torch.no_grad():
        for part in _batches(x.shape[1], batch_size):
            pred = stack(x[:, part])
            loss = ((pred - y[:, part]) ** 2).mean(dim=(1, 2))
            metrics.update(loss, *scale(pred, y[:, part]))
    return metrics.compute(stage)


def _fit_and_test(jobs: list[Job]) -> None:
    cfg = jobs[0].cfg
    dtype, device = _dtype_device(cfg)
    n_models = len(jobs)
    stack = StackedKAN([job.module.model for job in jobs]).to(device=device, dtype=dtype)
    factory = instantiate_node(cfg.optimizer, "optimizer")
    lbfgs = PerModelLBFGS(stack, factory) if str(cfg.optimizer.get("_target_")) in PER_MODEL_OPTIMIZERS else None
    optimizer = lbfgs.optimizers[0] if lbfgs else factory(stack.parameters())
    data = {stage: (
        _stacked([getattr(job.datamodule, f"x_{stage}") for job in jobs], dtype, device),
        _stacked([getattr(job.datamodule, f"y_{stage}") for job in jobs], dtype, device),
    ) for stage in STAGES}
    y_mean = _stacked([job.module.y_mean.reshape(1, 1) for job in jobs], dtype, device)
    y_std = _stacked([job.module.y_std.reshape(1, 1) for job in jobs], dtype, device)

    def scale(pred, target):  # to the targets' own units, as KANRegressor.denormalize
        return pred.detach() * y_std + y_mean, target * y_std + y_mean

    batch_size = cfg.data.batch_size
    samplers = [job.datamodule.train_dataloader().sampler for job in jobs]
    callbacks = cfg.get("callbacks") or {}
    grid = callbacks.get("grid_update") or {}
    grid_every, grid_stop = int(grid.get("every_n_steps") or 0), int(grid.get("stop_step") or 0)
    grid_samples, grid_eps = grid.get("max_samples"), grid.get("grid_eps")
    guard = callbacks.get("divergence_guard")
    checkpoint = callbacks.get("model_checkpoint")
    monitor = checkpoint.get("monitor") if checkpoint else None
    maximize = bool(checkpoint) and checkpoint.get("mode", "min") == "max"
    lr_name = f"lr-{type(optimizer).__name__}" if callbacks.get("lr_monitor") and jobs[0].loggers else None
    log_every = int(cfg.trainer.get("log_every_n_steps", 50) or 50)
    lr_logged = False
    max_epochs = int(cfg.trainer.get("max_epochs") or 1000)

    alive = torch.ones(n_models, dtype=torch.bool, device=device)
    best_value = torch.full((n_models,), math.inf, dtype=torch.float64)
    best_state: dict[str, torch.Tensor] | None = None
    best_epoch = [None] * n_models
    best_step = [0] * n_models
    best_uniform: list[list[bool]] = [[] for _ in range(n_models)]
    last = [dict() for _ in range(n_models)]
    x_train, y_train = data["train"]
    rows = torch.arange(n_models, device=device).unsqueeze(1)
    step = 0
    log.info(f"training {n_models} jobs stacked: {', '.join(str(job.output_dir) for job in jobs)}")
    for epoch in range(max_epochs):
        if not bool(alive.any()):
            break
        order = torch.stack([s.permutation(epoch) for s in samplers]).to(device)
        metrics = StackedMetrics(n_models, y_train.shape[-1], device, dtype)
        for batch_idx, part in enumerate(_batches(x_train.shape[1], batch_size)):
            if grid_every and step < grid_stop and step % grid_every == 0:
                inputs = x_train if grid_samples is None else x_train[:, : int(grid_samples)]
                if lbfgs:
                    lbfgs.push()
                stack.update_grid(inputs, only=alive.tolist(), grid_eps=grid_eps)
                if lbfgs:
                    lbfgs.pull_in_place()
            index = order[:, part]
            xb, yb = x_train[rows, index], y_train[rows, index]
            if lbfgs:
                def evaluate(params, xb=xb, yb=yb):
                    out = functional_call(stack, params, (xb,))
                    return ((out - yb) ** 2).mean(dim=(1, 2)), out

                loss, pred = lbfgs.step(evaluate, alive.tolist())
                lbfgs.push()
            else:
                optimizer.zero_grad(set_to_none=True)
                pred = stack(xb)
                loss = ((pred - yb) ** 2).mean(dim=(1, 2))
                torch.where(alive, loss, 0.0).sum().backward()
                optimizer.step()
            metrics.update(loss, *scale(pred, yb))
            step += 1
            if guard:
                _check_divergence(stack, loss, alive, jobs, step - 1, epoch, batch_idx, bool(guard.get("check_weights", True)))
            if step % log_every == 0:
                values = loss.tolist()
                lr = optimizer.param_groups[0]["lr"]
                for m, job in enumerate(jobs):
                    row = {"train/loss_step": values[m], "train/objective_step": values[m], "epoch": epoch}
                    if lr_name:
                        row[lr_name] = lr
                        lr_logged = True
                    for logger in job.loggers:
                        logger.log_metrics(row, step=step - 1)
        train_values = metrics.compute("train")
        val_values = _evaluate(stack, *data["val"], jobs, batch_size, "val", scale)
        for m in range(n_models):
            loss_step = float(loss[m].detach())
            values = {
                **{k.replace("train/loss", "train/loss_epoch"): v for k, v in train_values[m].items() if k == "train/loss"},
                "train/objective_epoch": train_values[m]["train/loss"],
                **{k: v for k, v in train_values[m].items() if k != "train/loss"},
                **val_values[m],
            }
            last[m] = {
                "train/loss": train_values[m]["train/loss"], "train/loss_step": loss_step,
                "train/objective": train_values[m]["train/loss"], "train/objective_step": loss_step,
                **values,
                # as the monitor logs it: a float32 tensor, on logging steps only
                **({lr_name: float(torch.tensor(optimizer.param_groups[0]["lr"], dtype=torch.float32))} if lr_logged else {}),
            }
            if alive[m]:
                for logger in jobs[m].loggers:
                    logger.log_metrics({**values, "epoch": epoch}, step=step - 1)
        if monitor:
            current = torch.tensor([v[monitor] for v in val_values], dtype=torch.float64)
            better = current > best_value if maximize else current < best_value
            if maximize and best_state is None:
                better = ~current.isnan()
            better &= alive.cpu()
            if best_state is None:
                best_state = {k: v.detach().clone() for k, v in stack.state_dict().items()}
            elif bool(better.any()):
                sel = better.to(device)
                for k, v in stack.state_dict().items():
                    best_state[k][sel] = v.detach()[sel]
            for m in better.nonzero().flatten().tolist():
                best_value[m] = current[m]
                best_epoch[m], best_step[m] = epoch, step
                best_uniform[m] = [layer.uniform_grids[m] for layer in stack.layers]
    _finish(jobs, stack, best_state, best_value, best_epoch, best_step, best_uniform, last, monitor, data, batch_size, scale, step)


def _check_divergence(stack, loss, alive, jobs, step, epoch, batch_idx, check_weights) -> None:
    bad = ~torch.isfinite(loss)
    if check_weights:
        for p in stack.parameters():
            bad |= ~torch.isfinite(p.detach().flatten(1)).all(1)
    newly = bad & alive
    for m in newly.nonzero().flatten().tolist():
        value = float(loss[m])
        what = f"loss {value}" if not math.isfinite(value) else "a weight"
        jobs[m].diverged = TrainingDivergedAt(step, epoch, batch_idx, value, f"training diverged: {what} is not finite at step {step} (epoch {epoch}, batch {batch_idx})")
        alive[m] = False


def _load_best(stack: StackedKAN, best_state, best_uniform, use_best: list[bool]) -> StackedKAN:
    """A copy of the stack with the best weights in the slots that test them."""
    import copy

    tested = copy.deepcopy(stack)
    if best_state is None:
        return tested
    sel = torch.tensor(use_best, device=best_state[next(iter(best_state))].device)
    with torch.no_grad():
        for k, v in tested.state_dict().items():
            v[sel] = best_state[k][sel]
    for m, use in enumerate(use_best):
        if use:
            for layer, flag in zip(tested.layers, best_uniform[m]):
                layer.uniform_grids[m] = flag
    return tested


def _finish(jobs, stack, best_state, best_value, best_epoch, best_step, best_uniform, last, monitor, data, batch_size, scale, step) -> None:
    cfg = jobs[0].cfg
    has_best = [best_epoch[m] is not None for m in range(len(jobs))]
    use_best = [bool(cfg.get("test", True)) and cfg.get("test_ckpt", "best") == "best" and has_best[m] for m in range(len(jobs))]
    best_stack = _load_best(stack, best_state, best_uniform, has_best)
    tested = _load_best(stack, best_state, best_uniform, use_best)
    test_values = _evaluate(tested, *data["test"], jobs, batch_size, "test", scale) if cfg.get("test", True) else None
    best_models = best_stack.unstack()
    final_models = stack.unstack()
    for m, job in enumerate(jobs):
        with job_context(job), job_log(job):
            try:
                job.result = _write_job(job, m, len(jobs), final_models[m], best_models[m] if has_best[m] else None,
                                        best_epoch[m], best_step[m], float(best_value[m]), last[m], monitor,
                                        test_values[m] if test_values else None, use_best[m], step)
            except Exception as err:  # noqa: BLE001 - one job's disk trouble must not stop the others
                log.error(f"{job.output_dir}: {type(err).__name__}: {err}")
                job.result = err


def _checkpoint(job: Job, model, epoch: int, step: int, path: Path) -> str:
    module = job.module
    module.model.load_state_dict(model.state_dict())
    for mine, theirs in zip(module.model.layers, model.layers):
        mine.uniform_grid = theirs.uniform_grid
    module.model.config.update(model.config)
    checkpoint = {
        "epoch": epoch,
        "global_step": step,
        "pytorch-lightning_version": L.__version__,
        "state_dict": module.state_dict(),
        type(job.datamodule).__qualname__: job.datamodule.state_dict(),
    }
    module.on_save_checkpoint(checkpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".ckpt.tmp")
    torch.save(checkpoint, tmp)
    tmp.replace(path)
    return str(path)


def _write_job(job, m, n_models, final_model, best_model, best_epoch, best_step, best_value, last, monitor, test, use_best, step):
    cfg = job.cfg
    checkpoints = job.output_dir / "checkpoints"
    best = None
    if best_model is not None:
        path = _checkpoint(job, best_model, best_epoch, best_step, checkpoints / f"epoch{best_epoch:03d}.ckpt")
        best = {"monitor": monitor, "value": best_value, "path": path}
    if (cfg.get("callbacks") or {}).get("last_checkpoint"):
        _checkpoint(job, final_model, int(cfg.trainer.max_epochs) - 1, step, checkpoints / "last.ckpt")
    job.module.model.load_state_dict(final_model.state_dict())
    metrics = dict(last)
    if test is not None:
        metrics.update(test)
    common = {
        "task": cfg.get("task_name"),
        "seed": cfg.seed,
    }
    if job.diverged is not None:
        d = job.diverged
        err = TrainingDiverged(d.message, step=d.step, epoch=d.epoch, batch_idx=d.batch_idx, value=d.value)
        record = {
            "status": "diverged", "error": f"TrainingDiverged: {d.message}", "error_type": "TrainingDiverged", **common,
            "step": d.step, "epoch": d.epoch, "message": d.message, "last_checkpoint": None, "metrics": {},
            "num_parameters": sum(p.numel() for p in final_model.parameters()), "wall_time_s": time.time() - job.start,
            "overrides": _overrides(), "config": OmegaConf.to_container(cfg, resolve=True),
            "stacked": {"models": n_models, "slot": m},
        }
        write_run_record(job.output_dir, record)
        (job.output_dir / ERROR_FILE).write_text(f"{record['error']}\n")
        log.error(summary_line(record, job.output_dir))
        return err
    record = {
        "status": "completed",
        **common,
        "job": hydra_context()[2],
        "metrics": metrics,
        "best": best,
        "test_ckpt": best["path"] if use_best and best else None,
        "resumed_from": None,
        "num_parameters": sum(p.numel() for p in final_model.parameters()),
        "wall_time_s": time.time() - job.start,
        "overrides": _overrides(),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "stacked": {"models": n_models, "slot": m},
    }
    record = {"status": record.pop("status"), "task": record.pop("task"), "job": record.pop("job"), **record}
    log_run(job.loggers, cfg, record, step, job.output_dir)
    write_run_record(job.output_dir, record)
    (job.output_dir / ERROR_FILE).unlink(missing_ok=True)
    log.info(summary_line(record, job.output_dir))
    return record


def _overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
