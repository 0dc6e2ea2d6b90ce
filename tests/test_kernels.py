"""The fast spline kernel (kan_lightning.nn.kernels) against independent references: scipy's
BSpline, the full-grid reference layer, gradcheck, finite differences; and the benchmark CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kan_lightning.commands import bench, bench_layer
from kan_lightning.nn import KANLayer, fused, kernels
from kan_lightning.nn.kernels import choose_contraction, local_bases, spline_contract
from kan_lightning.nn.splines import bspline_basis_reference, bspline_local, extend_knots, uniform_grid

BSpline = pytest.importorskip("scipy.interpolate").BSpline

CONTRACTIONS = ["dense", "local"]
# The local contraction computes dL/dcoef by bags, or by per-m segment passes when the tables
# are small; "local-bags" / "local-segments" force one of the two.
# "fused-eager": the fused contraction's functions run uncompiled (tests/test_fused.py compiles).
BACKWARDS = ["dense", "local-bags", "local-segments", "fused-eager"]
GRIDS = ["uniform", "random"]


@pytest.fixture
def contraction(request, monkeypatch) -> str:
    """A contraction name for ``spline_contract``; the local variants pin its dL/dcoef method."""
    name = request.param
    if name == "fused-eager":
        monkeypatch.setattr(fused, "COMPILE", False)
        return "fused"
    if name.startswith("local-"):
        monkeypatch.setattr(kernels, "SEGMENT_MAX_FLOATS", -1 if name == "local-bags" else 2**62)
        return "local"
    return name


def make_grid(kind: str, k: int, grid_size: int = 5, n_in: int = 3, seed: int = 0) -> torch.Tensor:
    """A float64 grid ``(in, G + 2k + 1)``: uniform on [-1, 1], or random strictly increasing knots."""
    if kind == "uniform":
        return uniform_grid(n_in, grid_size, k, (-1.0, 1.0), dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed + 31 * k)
    gaps = torch.rand(n_in, grid_size, generator=gen, dtype=torch.float64) + 0.2
    interior = torch.cat([torch.zeros(n_in, 1, dtype=torch.float64), gaps.cumsum(1)], 1)
    interior = interior / interior[:, -1:] * 2 - 1  # spans [-1, 1]
    return extend_knots(interior, k)


def make_inputs(grid: torch.Tensor, n: int = 300, seed: int = 1) -> torch.Tensor:
    """Random inputs reaching past both ends of the knot vector, plus every knot exactly."""
    gen = torch.Generator().manual_seed(seed)
    lo, hi = grid[:, 0], grid[:, -1]
    span = hi - lo
    x = lo - 0.2 * span + torch.rand(n, grid.shape[0], generator=gen, dtype=grid.dtype) * 1.4 * span
    return torch.cat([x, grid.T], 0)


def away_from_knots(x: torch.Tensor, grid: torch.Tensor, gap: float = 1e-3) -> torch.Tensor:
    """Move inputs within ``gap`` of a knot of their row off it (derivatives jump there for k <= 1)."""
    x = x.clone()
    for i in range(x.shape[1]):
        for _ in range(5):
            close = (x[:, i : i + 1] - grid[i]).abs().min(dim=1).values < gap
            if not close.any():
                break
            x[close, i] += 3 * gap
    return x


def random_coef(n_out: int, grid: torch.Tensor, k: int, seed: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n_out, grid.shape[0], grid.shape[1] - k - 1, generator=gen, dtype=grid.dtype)


# -- exactness ---------------------------------------------------------------------------------


@pytest.mark.parametrize("contraction", CONTRACTIONS + ["fused-eager"], indirect=True)
@pytest.mark.parametrize("kind", GRIDS)
@pytest.mark.parametrize("k", [0, 1, 2, 3, 5])
def test_matches_scipy_per_edge(k: int, kind: str, contraction: str) -> None:
    grid = make_grid(kind, k)
    x = make_inputs(grid)
    coef = random_coef(4, grid, k)
    out = spline_contract(x, grid, coef, k, uniform=kind == "uniform", contraction=contraction)
    g, c, xn = grid.numpy(), coef.numpy(), x.numpy()
    expected = np.zeros((x.shape[0], 4))
    for i in range(grid.shape[0]):
        # Every basis from scipy's own basis element on its k + 2 knots; the reference
        # convention is half-open intervals on the full knot vector (0 at a right end).
        basis = np.zeros((x.shape[0], c.shape[-1]))
        for m in range(c.shape[-1]):
            knots = g[i, m : m + k + 2]
            vals = BSpline.basis_element(knots, extrapolate=False)(xn[:, i])
            basis[:, m] = np.where((xn[:, i] >= knots[0]) & (xn[:, i] < knots[-1]), np.nan_to_num(vals), 0.0)
        expected += basis @ c[:, i, :].T
    err = np.abs(out.numpy() - expected).max()
    assert err <= 1e-12, err


@pytest.mark.parametrize("kind", GRIDS)
@pytest.mark.parametrize("k", [0, 1, 3, 4])
def test_local_bases_match_splines(k: int, kind: str) -> None:
    grid = make_grid(kind, k)
    x = make_inputs(grid)
    values, derivs, start = local_bases(x, grid, k, uniform=kind == "uniform")
    ref_values, ref_start = bspline_local(x, grid, k, uniform=kind == "uniform")
    assert (values - ref_values).abs().max().item() <= 1e-14
    inside = (x >= grid[:, 0]) & (x < grid[:, -1])
    assert torch.equal(start[inside], ref_start[inside])
    # Derivatives against central differences of the reference, away from knots.
    xs = away_from_knots(make_inputs(grid, n=200, seed=5)[:200], grid)
    h = 1e-6
    _, d, s = local_bases(xs, grid, k, uniform=kind == "uniform")
    plus, minus = bspline_basis_reference(xs + h, grid, k), bspline_basis_reference(xs - h, grid, k)
    fd = (plus - minus) / (2 * h)
    idx = (s.unsqueeze(-1) + torch.arange(k + 1)).clamp(0, fd.shape[-1] - 1)
    dense = torch.zeros_like(fd).scatter_add_(-1, idx, d)
    assert (dense - fd).abs().max().item() <= 1e-6


def _layer_pair(k: int, grid_size: int, contraction: str) -> tuple[KANLayer, KANLayer]:
    torch.manual_seed(3)
    fast = KANLayer(3, 4, grid_size=grid_size, spline_order=k).double()
    with torch.no_grad():
        for p in fast.parameters():
            p.copy_(torch.randn_like(p))
    fast.contraction = contraction
    ref = KANLayer(3, 4, grid_size=grid_size, spline_order=k, basis="reference").double()
    ref.load_state_dict(fast.state_dict())
    return fast, ref


@pytest.mark.parametrize("contraction", BACKWARDS, indirect=True)
@pytest.mark.parametrize("adapted", [False, True], ids=["uniform", "updated"])
def test_layer_matches_reference_layer(adapted: bool, contraction: str) -> None:
    fast, ref = _layer_pair(3, 7, contraction)
    if adapted:
        data = torch.rand(300, 3, dtype=torch.float64) ** 2 * 2 - 0.7
        fast.update_grid(data)
        ref.load_state_dict(fast.state_dict())
        assert not fast.uniform_grid
    x = (torch.rand(400, 3, dtype=torch.float64) * 3 - 1.5).requires_grad_(True)
    grad = torch.randn(400, 4, dtype=torch.float64)
    outs, grads = [], []
    for layer in (fast, ref):
        x.grad = None
        layer.zero_grad()
        y = layer(x)
        y.backward(grad)
        outs.append(y.detach())
        grads.append([x.grad.clone()] + [p.grad.clone() for p in layer.parameters()])
    assert (outs[0] - outs[1]).abs().max().item() <= 1e-12
    for a, b in zip(*grads):
        assert (a - b).abs().max().item() <= 1e-10


@pytest.mark.parametrize("contraction", BACKWARDS, indirect=True)
@pytest.mark.parametrize("kind", GRIDS)
@pytest.mark.parametrize("k", range(6))
def test_gradcheck(k: int, kind: str, contraction: str) -> None:
    grid = make_grid(kind, k, grid_size=4, n_in=2)
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(6, 2, generator=gen, dtype=torch.float64) * 2.4 - 1.2  # some outside [-1, 1]
    x = away_from_knots(x, grid, gap=1e-3).requires_grad_(True)
    coef = random_coef(3, grid, k).requires_grad_(True)

    def fn(inp, c):
        return spline_contract(inp, grid, c, k, uniform=kind == "uniform", contraction=contraction)

    assert torch.autograd.gradcheck(fn, (x, coef), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("contraction", BACKWARDS, indirect=True)
@pytest.mark.parametrize("kind", GRIDS)
@pytest.mark.parametrize("k", [0, 1, 3])
def test_base_branch_in_the_contraction(k: int, kind: str, contraction: str) -> None:
    """``base_weight``: the splines plus ``silu(x) @ W_b^T`` (the fused path: columns of one
    product), equal to the two computed apart (the splines against scipy above, ``silu`` by
    torch), and float64 gradcheck in x, the coefficients and ``W_b``."""
    grid = make_grid(kind, k, grid_size=4, n_in=2)
    uniform = kind == "uniform"
    gen = torch.Generator().manual_seed(5)
    x = away_from_knots(torch.rand(6, 2, generator=gen, dtype=torch.float64) * 2.4 - 1.2, grid, gap=1e-3)
    coef = random_coef(3, grid, k)
    weight = torch.randn(3, 2, generator=gen, dtype=torch.float64)
    joint = spline_contract(x, grid, coef, k, uniform=uniform, contraction=contraction, base_weight=weight)
    apart = spline_contract(x, grid, coef, k, uniform=uniform, contraction="dense") + torch.nn.functional.silu(x) @ weight.T
    assert (joint - apart).abs().max().item() <= 1e-13

    def fn(inp, c, w):
        return spline_contract(inp, grid, c, k, uniform=uniform, contraction=contraction, base_weight=w)

    inputs = (x.requires_grad_(True), coef.requires_grad_(True), weight.requires_grad_(True))
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)
    with pytest.raises(ValueError, match=r"base_weight \(out, in\) = \(3, 2\), got \(2, 3\)"):
        fn(x, coef, weight.T)
    with pytest.raises(TypeError, match=r"x, grid, coef, base_weight of one dtype .* got torch.float64, torch.float64, torch.float64, torch.float32"):
        fn(x, coef, weight.float())


@pytest.mark.parametrize("contraction", ["dense", "fused-eager"], indirect=True)
@pytest.mark.parametrize("activation, extrapolate", [("silu", "bases"), ("tanh", "bases"), ("silu", "linear")])
def test_layer_base_branch_joint_or_apart(activation: str, extrapolate: str, contraction: str) -> None:
    """A layer passes its SiLU base branch into the contraction when the splines read the inputs
    themselves; any other activation, or splines on clamped inputs, keep it apart. Either way the
    full-grid reference layer's outputs and gradients."""
    torch.manual_seed(3)
    options = dict(grid_size=5, base_activation=activation, extrapolate=extrapolate)
    fast = KANLayer(3, 4, **options).double()
    with torch.no_grad():
        for p in fast.parameters():
            p.copy_(torch.randn_like(p))
    fast.contraction = contraction
    ref = KANLayer(3, 4, basis="reference", **options).double()
    ref.load_state_dict(fast.state_dict())
    x = (torch.rand(200, 3, dtype=torch.float64) * 3 - 1.5).requires_grad_(True)
    grads = []
    for layer in (fast, ref):
        out = layer(x)
        grads.append([out, *torch.autograd.grad(out.square().sum(), [x, *layer.parameters()])])
    for a, b in zip(*grads):
        assert (a - b).abs().max().item() <= 1e-10


@pytest.mark.parametrize("contraction", BACKWARDS, indirect=True)
def test_grad_x_finite_differences(contraction: str) -> None:
    k = 3
    grid = make_grid("random", k, grid_size=12, n_in=5)
    coef = random_coef(7, grid, k)
    x = away_from_knots(make_inputs(grid, n=100)[:100], grid).requires_grad_(True)
    weights = torch.randn(100, 7, dtype=torch.float64)
    (spline_contract(x, grid, coef, k, contraction=contraction) * weights).sum().backward()
    h = 1e-6
    fd = torch.zeros_like(x)
    with torch.no_grad():
        for i in range(5):
            step = torch.zeros_like(x)
            step[:, i] = h
            plus = (spline_contract(x + step, grid, coef, k, contraction=contraction) * weights).sum(1)
            minus = (spline_contract(x - step, grid, coef, k, contraction=contraction) * weights).sum(1)
            fd[:, i] = (plus - minus) / (2 * h)
    assert (x.grad - fd).abs().max().item() <= 1e-6


@pytest.mark.parametrize("contraction", CONTRACTIONS)
def test_float32_close_to_float64_at_g50(contraction: str) -> None:
    torch.manual_seed(6)
    layer = KANLayer(16, 8, grid_size=50, spline_order=3)
    layer.contraction = contraction
    with torch.no_grad():
        layer.spline_weight.normal_()
    x = torch.rand(512, 16) * 2.2 - 1.1
    wide = KANLayer(16, 8, grid_size=50, spline_order=3, basis="reference").double()
    wide.load_state_dict({name: v.double() for name, v in layer.state_dict().items()})
    wide.grid = uniform_grid(16, 50, 3, dtype=torch.float64)  # exact float64 knots
    err = (layer(x).double() - wide(x.double())).abs().max().item()
    print(f"[float32 vs float64, G=50, {contraction}] max abs error {err:.2e}")
    assert err <= 1e-5


# -- contraction rule, compile, API ------------------------------------------------------------


def test_auto_rule_picks_both(monkeypatch) -> None:
    monkeypatch.setattr(fused, "COMPILE", False)  # the eager rule alone
    big, mid, tiny = 1024 * 64, 128 * 64, 64 * 8
    assert choose_contraction(5 + 3, 3, "cpu", big) == "dense"
    assert choose_contraction(50 + 3, 3, "cpu", big) == "local"
    assert choose_contraction(20 + 3, 3, "cpu", mid) == "dense"
    assert choose_contraction(50 + 3, 3, "cpu", mid) == "local"
    assert choose_contraction(100 + 3, 3, "cpu", tiny) == "dense"
    assert choose_contraction(50 + 3, 3, "cpu") == "local"  # batch unknown: a large one


def test_auto_rule_takes_fused_for_large_small_grid_problems(monkeypatch) -> None:
    """Where dense would win and the problem is large, the compiled path when a C++ compiler
    is on the PATH; never for small problems, large grids, CUDA, or without a compiler."""
    monkeypatch.setattr(fused, "_cpp_compiler_found", lambda: True)
    big, small = 1024 * 64, 200 * 3
    assert choose_contraction(5 + 3, 3, "cpu", big) == "fused"
    assert choose_contraction(10 + 3, 3, "cpu", 1024 * 256) == "fused"
    assert choose_contraction(5 + 3, 3, "cpu", small) == "dense"
    assert choose_contraction(50 + 3, 3, "cpu", big) == "local"
    assert choose_contraction(5 + 3, 3, "cuda", 2**20) == "dense"
    monkeypatch.setattr(fused, "_cpp_compiler_found", lambda: False)
    assert choose_contraction(5 + 3, 3, "cpu", big) == "dense"
    monkeypatch.setattr(fused, "_cpp_compiler_found", lambda: True)
    monkeypatch.setattr(fused, "_FAILED", ["RuntimeError: no compiler"])
    assert choose_contraction(5 + 3, 3, "cpu", big) == "dense"


@pytest.mark.parametrize("contraction", BACKWARDS, indirect=True)
def test_torch_compile_matches_eager(contraction: str) -> None:
    torch.manual_seed(7)
    layer = KANLayer(3, 2, grid_size=20)
    layer.contraction = contraction
    x = (torch.rand(64, 3) * 2 - 1).requires_grad_(True)
    expected = layer(x)
    expected.sum().backward()
    eager_grads = [x.grad.clone()] + [p.grad.clone() for p in layer.parameters()]
    x.grad = None
    layer.zero_grad()
    got = torch.compile(layer, backend="aot_eager")(x)
    assert (got - expected).abs().max().item() <= 1e-6
    got.sum().backward()
    for a, b in zip([x.grad] + [p.grad for p in layer.parameters()], eager_grads):
        assert (a - b).abs().max().item() <= 1e-5


def test_errors_and_double_backward() -> None:
    grid = make_grid("uniform", 3)
    coef = random_coef(2, grid, 3)
    x = torch.rand(5, 3, dtype=torch.float64, requires_grad=True)
    with pytest.raises(ValueError, match="contraction"):
        spline_contract(x, grid, coef, 3, contraction="sparse")
    with pytest.raises(ValueError, match="bases"):
        spline_contract(x, grid, coef[..., :-1], 3)
    with pytest.raises(TypeError, match="dtype"):
        spline_contract(x.float(), grid, coef, 3)
    (g,) = torch.autograd.grad(spline_contract(x, grid, coef, 3).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):
        g.sum().backward()


def test_dense_scratch_matrices_change_nothing(monkeypatch) -> None:
    """The dense contraction's kept scratch matrices give, call after call on new inputs of one
    shape, the bits that fresh matrices give (scratch off: SCRATCH_MAX_ELEMENTS = -1)."""
    grid = make_grid("random", 3, grid_size=7)
    coef = random_coef(4, grid, 3).requires_grad_(True)

    def run():
        results = []
        for seed in (1, 2, 1):  # (a shape seen before: the scratch matrices are reused)
            x = make_inputs(grid, seed=seed).requires_grad_(True)
            out = spline_contract(x, grid, coef, 3, contraction="dense")
            gx, gc = torch.autograd.grad(out.square().sum(), (x, coef))
            results += [out.detach(), gx, gc]
        return results

    kernels._SCRATCH.clear()
    with torch.inference_mode():  # (a validation loop's scratch matrices: not reused outside)
        spline_contract(make_inputs(grid), grid, coef, 3, contraction="dense")
    kept = run()
    assert kernels._SCRATCH  # (the CPU path used them)
    monkeypatch.setattr(kernels, "SCRATCH_MAX_ELEMENTS", -1)
    fresh = run()
    assert all(torch.equal(a, b) for a, b in zip(kept, fresh))
    assert torch.equal(kept[0], kept[6]) and not torch.equal(kept[0], kept[3])


def test_saves_little_for_backward() -> None:
    """Bytes kept for backward by the fast layer are a small fraction of the reference's."""
    torch.manual_seed(8)
    x = (torch.rand(256, 16) * 2 - 1).requires_grad_(True)
    for grid_size in (5, 30):
        fast = KANLayer(16, 16, grid_size=grid_size)
        ref = KANLayer(16, 16, grid_size=grid_size, basis="reference")
        assert bench_layer.saved_bytes(fast, x) <= 0.5 * bench_layer.saved_bytes(ref, x)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("contraction", CONTRACTIONS)
def test_cuda_matches_cpu(contraction: str) -> None:
    fast, _ = _layer_pair(3, 20, contraction)
    x = torch.rand(300, 3, dtype=torch.float64) * 3 - 1.5
    gpu = KANLayer(3, 4, grid_size=20).double().cuda()
    gpu.load_state_dict(fast.state_dict())
    gpu.contraction = contraction
    xg = x.cuda().requires_grad_(True)
    xc = x.clone().requires_grad_(True)
    gpu(xg).sum().backward()
    fast(xc).sum().backward()
    assert (xg.grad.cpu() - xc.grad).abs().max().item() <= 1e-10
    assert (gpu.spline_weight.grad.cpu() - fast.spline_weight.grad).abs().max().item() <= 1e-10


# -- benchmark CLI -----------------------------------------------------------------------------


def test_bench_layer_mode_writes_json(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(fused, "COMPILE", False)  # compile time is not what this tests
    path = tmp_path / "bench.json"
    result = bench.run(["--shapes", "4,6,2:5 4,3:20", "--batch", "32", "--repeats", "1", "--warmup", "0",
                        "--peers", "none", "--json", str(path)])
    data = json.loads(path.read_text())
    assert data["mode"] == "layer" and len(data["results"]) == 2
    first = data["results"][0]
    assert first["auto_contraction"] == ["dense", "dense"]  # tiny batch: dense
    for name in ("fast-auto", "fast-dense", "fast-local", "fast-fused", "reference", "mlp", "floor", "floor+base"):
        rec = first["variants"][name]
        assert rec["fwd_bwd_ms"] > 0 and rec["memory_bytes"] > 0
    # the base branch's columns: one more per input than the splines' G + k
    floors = bench_layer.make_variants([4, 6, 2], 5, 3, 32, torch.float32, "cpu")[0]
    assert [w.shape[0] for w in floors["floor+base"].weights] == [4 * 9, 6 * 9]
    assert first["variants"]["reference"]["vs_reference"] == 1.0
    assert "| shape |" in result["markdown"]


def test_bench_e2e_mode(tmp_path) -> None:
    path = tmp_path / "e2e.json"
    bench.run(["--mode", "e2e", "--repeats", "1", "--warmup", "0", "--json", str(path)])
    rec = json.loads(path.read_text())["results"]
    assert rec["lightning_ms"] > 0 and rec["bare_ms"] > 0 and rec["ratio"] > 0
    assert rec["minimal_lightning_ms"] > 0 and rec["minimal_ratio"] > 0
