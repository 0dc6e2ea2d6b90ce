"""Memory estimates from a training config, before anything is allocated.

``estimate_memory(cfg)`` gives the parameter count and the peak memory of one training step of a
KAN (or MLP) config: the weights with their gradients and Adam moments, the activations of one
batch kept for the backward pass, an evaluation batch, and the least-squares refit of a grid
update or extension (the basis matrix of the samples, in float64, with its ridge rows), whichever
phase is largest. ``check_resources(cfg)`` refuses, as a ``ConfigError`` naming the key that
drives the estimate, a config that cannot fit in this machine's memory (free GPU memory on a GPU,
else available RAM and the address-space limit).
"""

from __future__ import annotations

import math
import os
import resource
from dataclasses import dataclass
from typing import Any, Mapping

from kan_lightning.config_checks import KAN_TARGETS, MLP_TARGETS, ConfigError, _show, check_data, data_widths
from kan_lightning.resolver_functions import kan_data_dtype

GB = 1e9
# The defaults of the shipped configs, used to find the key that drives an estimate.
_MODEST = {"model.grid_size": 5, "width": 64, "data.batch_size": 256, "samples": 5000}


@dataclass
class Estimate:
    parameters: int
    bytes: float
    phase: str  # the phase that needs the most memory

    @property
    def gigabytes(self) -> float:
        return self.bytes / GB


def _split_train(data: Mapping[str, Any]) -> int:
    n = int(data.get("n_samples", 5000))
    split = data.get("split") or [0.8, 0.1, 0.1]
    return max(1, int(round(n * float(split[0]))))


def _grid_sizes(container: Mapping[str, Any]) -> list[int]:
    """Every grid size the run may reach (grid extension grows it)."""
    sizes = [int(container["model"].get("grid_size", 5))]
    for node in (container.get("callbacks") or {}).values():
        if isinstance(node, Mapping) and str(node.get("_target_", "")).endswith("GridExtension"):
            sizes += [int(g) for g in node.get("grids") or [] if isinstance(g, int)]
    return sizes


def _refit_samples(container: Mapping[str, Any], n_train: int) -> int:
    """Samples a grid update/extension refits on (0: no grid updates)."""
    samples = 0
    for node in (container.get("callbacks") or {}).values():
        if not isinstance(node, Mapping):
            continue
        target = str(node.get("_target_", ""))
        active = target.endswith("GridExtension") or (target.endswith("GridUpdate") and (node.get("every_n_steps") or 0) > 0)
        if active:
            cap = node.get("max_samples")
            samples = max(samples, min(n_train, int(cap)) if isinstance(cap, int) and cap > 0 else n_train)
    return samples


def estimate_memory(container: Mapping[str, Any]) -> Estimate | None:
    """The estimate for a resolved config (plain containers), or ``None`` for a model this
    does not know."""
    model = container.get("model") or {}
    target = model.get("_target_")
    if target not in KAN_TARGETS | MLP_TARGETS:
        return None
    data = container.get("data") or {}
    widths = [int(w) for w in data_widths(model["layers_hidden"], check_data(data) or 1, 1)]  # auto ends
    n_train = _split_train(data)
    batch = data.get("batch_size", 256)
    batch = n_train if batch == "full" else min(int(batch), n_train)
    eval_batch = max(batch, min(1024, int(data.get("n_samples", 5000))))
    float_bytes = 8 if kan_data_dtype((container.get("trainer") or {}).get("precision", "32")) == "float64" else 4
    pairs = list(zip(widths[:-1], widths[1:]))
    # the data set stays in memory: x and y as generated, and their split copies
    dataset = 2 * int(data.get("n_samples", 5000)) * (widths[0] + widths[-1]) * 4
    if target in MLP_TARGETS:
        params = sum(i * o + o for i, o in pairs)
        activations = sum(batch * (i + 3 * o) for i, o in pairs) * float_bytes
        total = dataset + 4 * params * float_bytes + activations
        return Estimate(params, total, "training step")

    k = int(model.get("spline_order", 3))
    grid = max(_grid_sizes(container))
    nb = grid + k
    # spline coefficients, base weights, scalers, masks, grids
    params = sum(i * o * nb + 3 * i * o + i * (grid + 2 * k + 1) for i, o in pairs)
    weights = dataset + 4 * params * float_bytes  # the data; values, gradients, two Adam moments
    # per layer and sample: inputs, local bases and their derivatives, base activation, per-edge
    # outputs (regularization, backward), a dense basis row when the kernel contracts densely
    per_sample = sum(i * (2 * (k + 1) + 2 + nb) + 2 * i * o + o for i, o in pairs)
    step = weights + 2 * batch * per_sample * float_bytes
    evaluation = weights + eval_batch * per_sample * float_bytes
    samples = _refit_samples(container, n_train)
    # least squares in float64: the (in, N + nb, nb) basis matrix with ridge rows, its copy in
    # the solver, and the bases of N samples
    refit = weights + max((8 * i * ((samples + nb) * nb * 2 + samples * (nb + o)) for i, o in pairs), default=0) if samples else 0
    phase, total = max((("training step", step), ("evaluation", evaluation), ("grid update", refit)), key=lambda t: t[1])
    return Estimate(params, float(total), phase)


def available_memory(container: Mapping[str, Any]) -> tuple[float, str]:
    """Bytes this run may use and what they are: free GPU memory when it trains on a GPU, else
    available RAM (capped by the address-space limit)."""
    trainer = container.get("trainer") or {}
    accelerator = str(trainer.get("accelerator", "cpu"))
    # DDP ranks > 0 leave the check to rank 0 (asking would open a context on GPU 0).
    if accelerator in ("gpu", "cuda", "auto") and os.environ.get("LOCAL_RANK", "0") == "0":
        import torch

        if torch.cuda.is_available():
            devices = trainer.get("devices")
            index = devices[0] if isinstance(devices, list) and devices and isinstance(devices[0], int) else 0
            free, _ = torch.cuda.mem_get_info(index)
            return float(free), f"free memory on GPU {index}"
    ram = _meminfo("MemAvailable") or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        left = soft - (_meminfo("VmSize", "/proc/self/status") or 0)  # what this process may still map
        if left < ram:
            return float(max(left, 0)), "left under the address-space limit (ulimit -v)"
    return float(ram), "available RAM"


def _meminfo(field: str, source: str = "/proc/meminfo") -> float | None:
    """A ``kB`` field of ``/proc/meminfo`` (or ``/proc/self/status``), in bytes."""
    try:
        with open(source) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return float(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _driving_key(container: Mapping[str, Any], estimate: Estimate) -> tuple[str, Any]:
    """The key whose value, set to a modest one, shrinks the estimate most."""
    model, data = container["model"], container.get("data") or {}
    candidates: list[tuple[str, Any, dict]] = []

    def variant(section: str, key: str, value: Any) -> dict:
        return {**container, section: {**container.get(section, {}), key: value}}

    if "grid_size" in model:
        candidates.append(("model.grid_size", model["grid_size"], variant("model", "grid_size", _MODEST["model.grid_size"])))
    widths = list(model["layers_hidden"])  # as the user wrote them, auto ends included
    modest = [widths[0], *(min(w, _MODEST["width"]) for w in widths[1:-1]), widths[-1]]
    candidates.append(("model.layers_hidden", widths, variant("model", "layers_hidden", modest)))
    if isinstance(data.get("batch_size"), int):
        candidates.append(("data.batch_size", data["batch_size"], variant("data", "batch_size", _MODEST["data.batch_size"])))
    if "n_samples" in data:
        candidates.append(("data.n_samples", data["n_samples"], variant("data", "n_samples", min(data["n_samples"], _MODEST["samples"]))))
    best = min(candidates, key=lambda c: (estimate_memory(c[2]) or estimate).bytes)
    return best[0], best[1]


def _gb(n: float) -> str:
    if n >= 10 * GB:
        return f"{n / GB:,.0f} GB"
    return f"{n / GB:.3g} GB" if n >= 0.1 * GB else f"{n / 1e6:.3g} MB"


def check_resources(container: Mapping[str, Any], budget: tuple[float, str] | None = None) -> Estimate | None:
    """Refuse a config whose one step cannot fit in memory (``budget``: bytes and what they
    are; default: this machine's), naming the key that drives the estimate."""
    try:
        estimate = estimate_memory(container)
    except (TypeError, ValueError, KeyError, OverflowError):  # validate_config names such values
        return None
    if estimate is None:
        return None
    limit, what = budget or available_memory(container)
    if estimate.bytes > limit:
        key, value = _driving_key(container, estimate)
        raise ConfigError(
            f"{key}={_show(value)} needs ~{_gb(estimate.bytes)} for one {estimate.phase} "
            f"({estimate.parameters:,} parameters); this machine has {_gb(limit)} ({what}): use a smaller {key}"
        )
    if not math.isfinite(estimate.bytes):
        return None
    return estimate
