"""``kan-bench --mode layer``: forward and forward+backward times and memory of KAN variants,
the reference KAN, an MLP, the dense-matmul floor and other KAN libraries on one shape."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch
from torch import Tensor, nn

from kan_lightning.nn import KAN, MLP, fused
from kan_lightning.nn.kernels import choose_contraction

from . import bench_peers

TIMES_CAPTION = (
    "Median wall time (ms) over the repeats after warm-up, variants interleaved round-robin in one "
    "process. fwd: forward under no_grad; fwd+bwd: forward, `out.sum().backward()`, the input "
    "requiring grad for every model (so every layer computes dL/dx, as the floor's dL/dA). "
    "Ratios are fwd+bwd against the reference KAN (`basis=\"reference\"`: full-grid Cox-de Boor, "
    "autograd through the recursion) and against the dense-matmul floor (per layer "
    "`(N, in*(G+k)) @ (in*(G+k), out)`, both operands requiring grad: 3 matmuls per layer). "
    "`floor+base`: the same with `G + k + 1` columns per input, the floor of a layer that also "
    "has a base branch `b(x) @ W_b` (its product fused into the splines' one)."
)
MEMORY_CAPTION = {
    "cpu": (
        "Memory (MiB): activation bytes held for backward after the forward, i.e. the unique "
        "storages packed by `torch.autograd.graph.saved_tensors_hooks`, excluding parameters and "
        "the input, plus the output."
    ),
    "cuda": "Memory (MiB): `torch.cuda.max_memory_allocated` during fwd+bwd minus the memory allocated before it.",
}



# -- variants ----------------------------------------------------------------------------------


class DenseFloor(nn.Module):
    """The dense-matmul floor: per layer a fixed ``(N, in*(G+k))`` basis matrix (requiring grad)
    times an ``(in*(G+k), out)`` weight; the output is the last layer's product plus the sum of
    the others (so every product is used)."""

    def __init__(self, widths: list[int], n_bases: int, batch: int, dtype, device) -> None:
        super().__init__()
        self.weights = nn.ParameterList(
            nn.Parameter(torch.randn(a * n_bases, b, dtype=dtype, device=device) / (a * n_bases) ** 0.5)
            for a, b in zip(widths[:-1], widths[1:])
        )
        self.bases = [torch.rand(batch, a * n_bases, dtype=dtype, device=device) for a in widths[:-1]]

    def forward(self, x: Tensor) -> Tensor:
        outs = [basis @ w for basis, w in zip(self.bases, self.weights)]
        return outs[-1] + sum(o.sum() for o in outs[:-1])

    def inputs(self) -> list[Tensor]:
        return self.bases


def make_variants(widths, grid, order, batch, dtype, device, peers=()) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """:func:`_make_variants` with ``dtype`` as the default dtype: grids built in it keep the
    equal spacing that a float32 grid converted to float64 loses (the uniform kernel applies)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        return _make_variants(widths, grid, order, batch, dtype, device, peers)
    finally:
        torch.set_default_dtype(old)


def _make_variants(widths, grid, order, batch, dtype, device, peers=()) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """Name -> model for one shape, and peer name -> why it is missing. ``fast-auto`` is the
    default KAN layer (its choice is reported); every fast variant and the comparable peers
    share its weights (spline coefficients drawn at unit scale, so that the splines matter in
    the comparison of outputs)."""
    variants: dict[str, nn.Module] = {}
    first = KAN(widths, grid_size=grid, spline_order=order).to(device=device, dtype=dtype)
    with torch.no_grad():
        for layer in first.layers:
            layer.spline_weight.normal_(0, (layer.in_features * (order + 1)) ** -0.5)
    for contraction in ("auto", "dense", "local", "fused"):
        model = KAN(widths, grid_size=grid, spline_order=order, contraction=contraction).to(device=device, dtype=dtype)
        model.load_state_dict(first.state_dict())
        variants[f"fast-{contraction}"] = model
    variants["reference"] = KAN(widths, grid_size=grid, spline_order=order, basis="reference").to(device=device, dtype=dtype)
    variants["mlp"] = MLP(widths).to(device=device, dtype=dtype)
    variants["floor"] = DenseFloor(widths, grid + order, batch, dtype, device)
    variants["floor+base"] = DenseFloor(widths, grid + order + 1, batch, dtype, device)
    missing = {}
    for name in peers:
        try:
            variants[name] = bench_peers.build_peer(name, first, dtype, device)
        except bench_peers.PeerUnavailable as exc:
            missing[name] = str(exc)
    return variants, missing


# -- measurements ------------------------------------------------------------------------------


def sync_device(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _step_fns(model: nn.Module, x: Tensor) -> tuple[Callable[[], None], Callable[[], None]]:
    """(forward under no_grad, forward + backward with fresh gradients) for one model."""
    params = list(model.parameters())
    extra = model.inputs() if isinstance(model, DenseFloor) else []
    for t in extra:
        t.requires_grad_(True)

    def forward() -> None:
        with torch.no_grad():
            model(x)

    def forward_backward() -> None:
        for t in params + extra + [x]:
            t.grad = None
        model(x).sum().backward()

    return forward, forward_backward


def _timed(fn: Callable[[], None], device: str) -> float:
    sync_device(device)
    start = time.perf_counter()
    fn()
    sync_device(device)
    return time.perf_counter() - start


def saved_bytes(model: nn.Module, x: Tensor) -> int:
    """Bytes kept for backward by one forward: unique storages packed by saved-tensor hooks,
    excluding parameters and the input, plus the output."""
    exclude = {p.untyped_storage().data_ptr() for p in model.parameters()}
    exclude.add(x.untyped_storage().data_ptr())
    if isinstance(model, DenseFloor):
        exclude.update(b.untyped_storage().data_ptr() for b in model.inputs())
    seen: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in exclude:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    total = sum(seen.values()) + out.numel() * out.element_size()
    del out
    return total


def cuda_peak_bytes(step: Callable[[], None]) -> int:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def bench_shape(widths, grid, args, batch: int | None = None, dtype_name: str | None = None) -> dict:
    """Times and memory of every variant on one shape (at one batch size and dtype)."""
    batch = args.batch[0] if batch is None else batch
    dtype_name = args.dtype[0] if dtype_name is None else dtype_name
    dtype = getattr(torch, dtype_name)
    # Compiled variants (ours fused, flashkan, inkan) start afresh on every shape: compiled in the
    # warm-up, never past dynamo's recompile limit (which would leave them silently eager).
    fused.reset()
    torch.manual_seed(0)
    peers = [p for p in args.peers if p != "none"]
    variants, missing = make_variants(widths, grid, args.order, batch, dtype, args.device, peers)
    x = (torch.rand(batch, widths[0], dtype=dtype, device=args.device) * 2 - 1).requires_grad_(True)
    peer_info = {name: {"version": bench_peers.peer_version(name), "missing": missing.get(name)} for name in peers}
    for name in peers:
        if name in variants and name in bench_peers.SAME_FUNCTION:
            diff, rel = bench_peers.max_difference(variants[name], variants["fast-auto"], x)
            peer_info[name].update(max_abs_diff=diff, max_rel_diff=rel)
    fns = {name: _step_fns(model, x) for name, model in variants.items()}
    times = {name: {"fwd": [], "fwd_bwd": []} for name in variants}
    for rep in range(args.warmup + args.repeats):
        for name, (fwd, fwd_bwd) in fns.items():  # interleaved: drift hits every variant alike
            t_fwd, t_both = _timed(fwd, args.device), _timed(fwd_bwd, args.device)
            if rep >= args.warmup:
                times[name]["fwd"].append(t_fwd)
                times[name]["fwd_bwd"].append(t_both)
    records = {}
    for name, model in variants.items():
        memory = cuda_peak_bytes(fns[name][1]) if args.device == "cuda" else saved_bytes(model, x)
        records[name] = {
            "fwd_ms": 1e3 * statistics.median(times[name]["fwd"]),
            "fwd_bwd_ms": 1e3 * statistics.median(times[name]["fwd_bwd"]),
            "memory_bytes": memory,
        }
    for rec in records.values():
        rec["vs_reference"] = rec["fwd_bwd_ms"] / records["reference"]["fwd_bwd_ms"]
        rec["vs_floor"] = rec["fwd_bwd_ms"] / records["floor"]["fwd_bwd_ms"]
        rec["memory_vs_reference"] = rec["memory_bytes"] / records["reference"]["memory_bytes"]
    auto = [choose_contraction(grid + args.order, args.order, args.device, batch * w) for w in widths[:-1]]
    return {"widths": widths, "grid": grid, "batch": batch, "dtype": dtype_name, "threads": torch.get_num_threads(),
            "auto_contraction": auto, "variants": records, "peers": peer_info}


def markdown_layer(results: list[dict], device: str) -> str:
    lines = [
        f"{TIMES_CAPTION} {MEMORY_CAPTION[device]}",
        "",
        "| shape | variant | fwd ms | fwd+bwd ms | vs reference | vs floor | memory MiB | memory vs ref |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for res in results:
        shape = f"{res['widths']} G={res['grid']} N={res['batch']} {res['threads']}t {res['dtype']}"
        for name, rec in res["variants"].items():
            label = f"fast-auto ({'/'.join(sorted(set(res['auto_contraction'])))})" if name == "fast-auto" else name
            lines.append(
                f"| {shape} | {label} | {rec['fwd_ms']:.2f} | {rec['fwd_bwd_ms']:.2f} | "
                f"{rec['vs_reference']:.3f}x | {rec['vs_floor']:.2f}x | {rec['memory_bytes'] / 2**20:.2f} | "
                f"{rec['memory_vs_reference']:.3f} |"
            )
    return "\n".join(lines)


PEER_CAPTION = (
    "fwd+bwd median ms in one process, same inputs; `ours` is the default layer (fast-auto), "
    "`fused` the compiled contraction (`contraction=fused`); ratios are ours / fastest available "
    "peer (< 1: ours faster). max Δ: max abs difference of a "
    "peer's output from ours with the same weights (relative to max |ours|)."
)


def markdown_peers(results: list[dict]) -> str:
    """One row per (shape, batch, threads, dtype): ours, the floor and every peer."""
    if not results or not results[0].get("peers"):
        return ""
    names = list(results[0]["peers"])
    header = ["shape", "batch", "threads", "dtype", "ours", "fused", "floor", "floor+base", *names, "ours / best peer",
              "fused / best peer",
              *[f"{n} max Δ (rel)" for n in names if n in bench_peers.SAME_FUNCTION]]
    lines = [PEER_CAPTION, "", "| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for res in results:
        variants = res["variants"]
        cells = [f"{res['widths']} G={res['grid']}", str(res["batch"]), str(res["threads"]), res["dtype"],
                 *(f"{variants[v]['fwd_bwd_ms']:.2f}" for v in ("fast-auto", "fast-fused", "floor", "floor+base"))]
        times = {}
        for name in names:
            if name in variants:
                times[name] = variants[name]["fwd_bwd_ms"]
                cells.append(f"{times[name]:.2f}")
            else:
                reason = res["peers"][name]["missing"] or ""
                cells.append("not installed" if reason.startswith("not installed") else "n/a")
        best = min(times.values()) if times else None
        for ours in ("fast-auto", "fast-fused"):
            cells.append(f"{variants[ours]['fwd_bwd_ms'] / best:.2f}x" if best else "-")
        for name in names:
            if name in bench_peers.SAME_FUNCTION:
                info = res["peers"][name]
                compared = "max_abs_diff" in info
                cells.append(f"{info['max_abs_diff']:.1e} ({info['max_rel_diff']:.1e})" if compared else "-")
        lines.append("| " + " | ".join(cells) + " |")
    notes = {n: r["peers"][n]["missing"] for r in results for n in names if r["peers"][n]["missing"]}
    versions = {n: results[0]["peers"][n]["version"] for n in names if results[0]["peers"][n]["version"]}
    if versions:
        lines += ["", "Versions: " + ", ".join(f"{n} {v}" for n, v in versions.items()) + "."]
    if notes:
        lines += ["", "Missing: " + "; ".join(f"{n}: {why}" for n, why in notes.items()) + "."]
    return "\n".join(lines)


def run_layer(args) -> dict:
    all_cores = torch.get_num_threads()
    results = []
    for threads in args.threads or [all_cores]:
        torch.set_num_threads(threads or all_cores)
        for dtype_name in args.dtype:
            for batch in args.batch:
                results += [bench_shape(widths, grid, args, batch, dtype_name) for widths, grid in args.shapes]
    markdown = markdown_layer(results, args.device)
    peers = markdown_peers(results)
    return {"mode": "layer", "results": results, "markdown": markdown + ("\n\n" + peers if peers else "")}


