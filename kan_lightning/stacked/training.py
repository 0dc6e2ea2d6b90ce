"""Train several jobs of one shape as one :class:`~kan_lightning.nn.stacked.StackedKAN`.

``train_stack(jobs)`` takes the configs of jobs that :mod:`kan_lightning.stacked.plan` lets
stack and trains their models side by side in one module: each job keeps its own seed (its
model starts exactly as in a separate run), its own data and batch order, and gets its own
``metrics.json``, TensorBoard run and checkpoints, as ``kan-train`` writes them.

Why the result is the separate runs' result. The objective is ``sum_m loss_m``; model ``m``'s
parameters enter ``loss_m`` only, so their gradient is ``d loss_m``. Optimizers that update each
element from its own gradient and state (Adam, AdamW, SGD, ...) then move every model exactly
as alone. L-BFGS runs per model (``torch.optim.LBFGS``'s algorithm and settings), with its own
history and line search over that model's own parameters, the evaluations of all models made
together (:mod:`kan_lightning.stacked.lbfgs`).
Grid updates run per model (:meth:`StackedKAN.update_grid`), on each job's own
training inputs; grid extension runs each job's own ``GridExtension`` on its model
(:mod:`kan_lightning.stacked.grid_extension`). What differs is the order of floating-point sums (one batched matmul instead
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

import math
import signal
from contextlib import ExitStack
from typing import Any, Sequence

import torch
from omegaconf import DictConfig
from torch.func import functional_call

from kan_lightning.config_checks import instantiate_node
from kan_lightning.data.datamodule import DTYPES
from kan_lightning.lit.safety import TrainingInterrupted, raise_on_sigterm
from kan_lightning.nn.stacked import StackedKAN, stack_key
from kan_lightning.pipeline import delivered_metrics
from kan_lightning.resolver_functions import kan_data_dtype
from kan_lightning.stacked.best import BestWeights
from kan_lightning.stacked.grid_extension import StackedGridExtension, grid_size
from kan_lightning.stacked.jobs import Job, RunAlone, TrainingDivergedAt, claimed, job_context, job_log, log, prepare, write_interrupted
from kan_lightning.stacked.lbfgs import PerModelLBFGS
from kan_lightning.stacked.metrics import StackedMetrics, batches, denormalized, evaluate
from kan_lightning.stacked.plan import PER_MODEL_OPTIMIZERS
from kan_lightning.stacked.records import Outcome, finish

__all__ = ["Job", "RunAlone", "job_context", "train_stack"]

STAGES = ("train", "val", "test")


def train_stack(jobs: Sequence[Job]) -> list[Any]:
    """Train ``jobs`` stacked; per job, its run record, a :class:`RunAlone` (prepare it alone)
    or the exception it ended with (``TrainingDiverged``)."""
    with ExitStack() as claims:
        ready = []
        for job in jobs:
            with job_context(job):
                try:
                    completed = claims.enter_context(claimed(job))
                    if completed is not None:
                        job.result = completed
                        continue
                    prepare(job)
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
                        write_interrupted(job, signum)
            raise TrainingInterrupted(signum) from err
    return [job.result for job in jobs]




def _dtype_device(cfg: DictConfig) -> tuple[torch.dtype, torch.device]:
    dtype = DTYPES[kan_data_dtype(cfg.trainer.get("precision", "32-true"))]
    accelerator = str(cfg.trainer.get("accelerator", "cpu"))
    cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return dtype, torch.device("cuda" if cuda else "cpu")


def _stacked(tensors: Sequence[torch.Tensor], dtype, device) -> torch.Tensor:
    return torch.stack(list(tensors)).to(device=device, dtype=dtype)


class _Optimizers:
    """The stack's optimizer: one elementwise optimizer over the stacked tensors, or one L-BFGS
    per model (:class:`PerModelLBFGS`); rebuilt (fresh state) when the parameters are replaced."""

    def __init__(self, stack: StackedKAN, factory, per_model: bool) -> None:
        self.factory, self.per_model = factory, per_model
        self.build(stack)

    def build(self, stack: StackedKAN) -> None:
        self.lbfgs = PerModelLBFGS(stack, self.factory) if self.per_model else None
        self.optimizer = self.lbfgs.optimizer if self.lbfgs else self.factory(stack.parameters())


def _fit_and_test(jobs: list[Job]) -> None:
    cfg = jobs[0].cfg
    dtype, device = _dtype_device(cfg)
    n_models = len(jobs)
    stack = StackedKAN([job.module.model for job in jobs]).to(device=device, dtype=dtype)
    opt = _Optimizers(stack, instantiate_node(cfg.optimizer, "optimizer"), str(cfg.optimizer.get("_target_")) in PER_MODEL_OPTIMIZERS)
    data = {stage: (
        _stacked([getattr(job.datamodule, f"x_{stage}") for job in jobs], dtype, device),
        _stacked([getattr(job.datamodule, f"y_{stage}") for job in jobs], dtype, device),
    ) for stage in STAGES}
    y_mean = _stacked([job.module.y_mean.reshape(1, 1) for job in jobs], dtype, device)
    y_std = _stacked([job.module.y_std.reshape(1, 1) for job in jobs], dtype, device)

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
    lr_name = f"lr-{type(opt.optimizer).__name__}" if callbacks.get("lr_monitor") and jobs[0].loggers else None
    log_every = int(cfg.trainer.get("log_every_n_steps", 50) or 50)
    val_every = int(cfg.trainer.get("check_val_every_n_epoch") or 1)
    lr_logged = False
    max_epochs = int(cfg.trainer.get("max_epochs") or 1000)
    extension = StackedGridExtension(stack, jobs, max_epochs, device) if callbacks.get("grid_extension") else None

    alive = torch.ones(n_models, dtype=torch.bool, device=device)
    best_value = torch.full((n_models,), math.inf, dtype=torch.float64)
    best = BestWeights(n_models)
    best_epoch: list[int | None] = [None] * n_models
    best_step = [0] * n_models
    last: list[dict[str, float]] = [dict() for _ in range(n_models)]
    x_train, y_train = data["train"]
    rows = torch.arange(n_models, device=device).unsqueeze(1)
    step = 0

    def grid_extension(hook: str, epoch: int, *args: Any) -> None:
        """A hook of every job's GridExtension; the models it changed back into the stack."""
        extension.set_time(epoch, step, last)
        models, rebuild = extension.call(hook, alive.tolist(), *args)
        if models is None:
            return
        if opt.lbfgs:
            opt.lbfgs.push()
        if any(a.shape != b.shape for a, b in zip(stack.state_dict().values(), models[0].state_dict().values())):
            best.before_reshape(stack)
        if not stack.load_models(models) or rebuild:
            opt.build(stack)
        elif opt.lbfgs:
            opt.lbfgs.pull_in_place()

    if extension:
        grid_extension("on_fit_start", 0)
    log.info(f"training {n_models} jobs stacked: {', '.join(str(job.output_dir) for job in jobs)}")
    for epoch in range(max_epochs):
        if not bool(alive.any()):
            break
        order = torch.stack([s.permutation(epoch) for s in samplers]).to(device)
        metrics = StackedMetrics(n_models, y_train.shape[-1], device, dtype)
        for batch_idx, part in enumerate(batches(x_train.shape[1], batch_size)):
            index = order[:, part]
            xb, yb = x_train[rows, index], y_train[rows, index]
            if grid_every and step < grid_stop and step % grid_every == 0:
                inputs = x_train if grid_samples is None else x_train[:, : int(grid_samples)]
                if opt.lbfgs:
                    opt.lbfgs.push()
                stack.update_grid(inputs, only=alive.tolist(), grid_eps=grid_eps)
                if opt.lbfgs:
                    opt.lbfgs.pull_in_place()
            if extension:
                grid_extension("on_train_batch_start", epoch, None, batch_idx)
            if opt.lbfgs:
                def evaluate_at(params, xb=xb, yb=yb):
                    out = functional_call(stack, params, (xb,))
                    return ((out - yb) ** 2).mean(dim=(1, 2)), out

                loss, pred = opt.lbfgs.step(evaluate_at, alive.tolist())
                opt.lbfgs.push()
            else:
                opt.optimizer.zero_grad(set_to_none=True)
                pred = stack(xb)
                loss = ((pred - yb) ** 2).mean(dim=(1, 2))
                torch.where(alive, loss, 0.0).sum().backward()
                opt.optimizer.step()
            metrics.update(loss, *denormalized(pred, yb, y_mean, y_std))
            step += 1
            if guard:
                _check_divergence(stack, loss, alive, jobs, step - 1, epoch, batch_idx, bool(guard.get("check_weights", True)))
            if step % log_every == 0:
                values = loss.tolist()
                lr = opt.optimizer.param_groups[0]["lr"]
                for m, job in enumerate(jobs):
                    row = {"train/loss_step": values[m], "train/objective_step": values[m], "epoch": epoch}
                    if lr_name:
                        row[lr_name] = lr
                        lr_logged = True
                    for logger in job.loggers:
                        logger.log_metrics(row, step=step - 1)
        train_values = metrics.compute("train")
        validate = (epoch + 1) % val_every == 0
        val_values = evaluate(stack, *data["val"], y_mean, y_std, batch_size, "val") if validate else None
        for m in range(n_models):
            loss_step = float(loss[m].detach())
            values = {
                "train/loss_epoch": train_values[m]["train/loss"],
                "train/objective_epoch": train_values[m]["train/loss"],
                **{k: v for k, v in train_values[m].items() if k != "train/loss"},
                **(val_values[m] if val_values else {}),
            }
            if extension:
                values.update({"grid/size": grid_size(stack), **extension.logged(m)})
            last[m].update({
                "train/loss": train_values[m]["train/loss"], "train/loss_step": loss_step,
                "train/objective": train_values[m]["train/loss"], "train/objective_step": loss_step,
                **values,
                # as the monitor logs it: a float32 tensor, on logging steps only
                **({lr_name: float(torch.tensor(opt.optimizer.param_groups[0]["lr"], dtype=torch.float32))} if lr_logged else {}),
            })
            if alive[m]:
                for logger in jobs[m].loggers:
                    logger.log_metrics({**values, "epoch": epoch}, step=step - 1)
        if monitor and val_values:
            current = torch.tensor([v[monitor] for v in val_values], dtype=torch.float64)
            better = current > best_value if maximize else current < best_value
            if maximize and best_epoch == [None] * n_models:
                better = ~current.isnan()
            better &= alive.cpu()
            best.update(stack, better.tolist())
            for m in better.nonzero().flatten().tolist():
                best_value[m] = current[m]
                best_epoch[m], best_step[m] = epoch, step
    final = stack.unstack()
    delivered = final
    if extension:
        extension.set_time(max_epochs if bool(alive.all()) else epoch + 1, step, last)
        delivered = extension.finish(stack, alive.tolist())
        last = [delivered_metrics(last[m], {"grid_extension": extension.callbacks[m]}) for m in range(n_models)]
    outcome = Outcome(
        final=final, delivered=delivered, best=[best.model(stack, m) for m in range(n_models)], best_epoch=best_epoch,
        best_step=best_step, best_value=best_value.tolist(), last=last, monitor=monitor, step=step,
        reports=[{"grid_extension": extension.report(m)} if extension else {} for m in range(n_models)],
    )
    finish(jobs, outcome, data, y_mean, y_std, batch_size)


def _check_divergence(stack, loss, alive, jobs, step, epoch, batch_idx, check_weights) -> None:
    bad = ~torch.isfinite(loss)
    if check_weights:
        for p in stack.parameters():
            bad |= ~torch.isfinite(p.detach().flatten(1)).all(1)
    newly = bad & alive
    n_params = sum(p[0].numel() for p in stack.parameters())
    for m in newly.nonzero().flatten().tolist():
        value = float(loss[m])
        what = f"loss {value}" if not math.isfinite(value) else "a weight"
        message = f"training diverged: {what} is not finite at step {step} (epoch {epoch}, batch {batch_idx})"
        jobs[m].diverged = TrainingDivergedAt(step, epoch, batch_idx, value, message, n_params)
        alive[m] = False
