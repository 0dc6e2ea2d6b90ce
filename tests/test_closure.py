"""LBFGS closure re-evaluations outside Lightning's closure (kan_lightning.lit.closure) give what
Lightning's own closure gives: the same parameters, logs, step counters, optimizer and scheduler
state, clipped gradients and batch outputs."""

from __future__ import annotations

import functools

import lightning as L
import torch

from conftest import equal_nested
from kan_lightning.data import SyntheticFunctionDataModule
from kan_lightning.lit import KANRegressor
from kan_lightning.lit.closure import reevaluation_is_lean
from kan_lightning.nn import KAN

LBFGS = functools.partial(torch.optim.LBFGS, lr=1.0, max_iter=5, history_size=10, line_search_fn="strong_wolfe")
SCHEDULE = functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.8)


class Record(L.Callback):
    """What the loop hands to the callbacks: every evaluation's gradient norm (before clipping),
    the batch outputs and the step counter."""

    def __init__(self) -> None:
        self.grad_norms, self.outputs, self.steps = [], [], []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        norms = [p.grad.norm() for p in pl_module.parameters() if p.grad is not None]
        self.grad_norms.append(float(torch.stack(norms).norm()))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.outputs.append(float(outputs["loss"]))
        self.steps.append(trainer.global_step)


class LightningClosure(L.Callback):
    """Implements a hook of Lightning's closure, which keeps every evaluation in that closure."""

    def on_after_backward(self, trainer, pl_module) -> None:
        pass


def _fit(tmp_path, *callbacks):
    L.seed_everything(3, verbose=False)
    data = SyntheticFunctionDataModule(function="paper_exp_sin", n_samples=80, split=(0.5, 0.25, 0.25), batch_size="full")
    module = KANRegressor(KAN([2, 3, 1], grid_size=5), optimizer=LBFGS, scheduler=SCHEDULE)
    record = Record()
    trainer = L.Trainer(
        max_epochs=3, precision="64-true", gradient_clip_val=0.05, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        callbacks=[record, *callbacks], default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=data)
    lean = reevaluation_is_lean(trainer, module)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=False)
    return trainer, module, record, lean, checkpoint


def test_lbfgs_reevaluations_match_lightnings_closure(tmp_path):
    trainer, module, record, lean, saved = _fit(tmp_path / "lean")
    ref_trainer, ref_module, ref_record, ref_lean, ref_saved = _fit(tmp_path / "ref", LightningClosure())
    assert lean and not ref_lean
    assert trainer.global_step == ref_trainer.global_step == 3
    # several evaluations per step, each one's gradient clipped (the same parameters follow)
    assert len(record.grad_norms) > 3 * 3 and record.grad_norms == ref_record.grad_norms
    assert min(record.grad_norms) > 0.05
    assert record.outputs == ref_record.outputs and record.steps == ref_record.steps
    for (name, p), q in zip(module.named_parameters(), ref_module.parameters()):
        assert torch.equal(p, q), name
    assert equal_nested(dict(trainer.callback_metrics), dict(ref_trainer.callback_metrics))
    for key in ("loops", "optimizer_states", "lr_schedulers", "global_step", "epoch"):
        assert equal_nested(saved[key], ref_saved[key]), key
    assert saved["lr_schedulers"][0]["last_epoch"] == 3
