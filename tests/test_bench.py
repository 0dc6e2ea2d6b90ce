"""kan-bench against other KAN libraries (tiny shapes; a peer's test skips when it is not installed)."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from kan_lightning.commands import bench, bench_peers
from kan_lightning.nn import KAN, fused

TINY = ["--shapes", "3,4,2:5", "--batch", "16", "--repeats", "1", "--warmup", "0"]


@pytest.fixture(autouse=True)
def _fused_uncompiled(monkeypatch):
    """The fast-fused variant runs its functions eagerly here (compile time is not under test)."""
    monkeypatch.setattr(fused, "COMPILE", False)


def _installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def test_grid_of_runs_and_missing_peers_reported(tmp_path) -> None:
    """Every (threads, dtype, batch) combination is a result; a peer that cannot run is a row
    saying so, never dropped."""
    path = tmp_path / "bench.json"
    result = bench.run([*TINY, "--batch", "8,16", "--dtype", "float32,float64", "--threads", "1,all",
                        "--peers", "efficient-kan", "--json", str(path)])
    data = json.loads(path.read_text())
    combos = {(r["threads"], r["dtype"], r["batch"]) for r in data["results"]}
    assert len(combos) == len(data["results"]) == 2 * 2 * 2 or torch.get_num_threads() == 1
    assert {r["dtype"] for r in data["results"]} == {"float32", "float64"}
    assert data["results"][0]["peers"]["efficient-kan"]["missing"].startswith("not on PyPI")
    assert "efficient-kan" in result["markdown"] and "not on PyPI" in result["markdown"]


@pytest.mark.skipif(_installed("kan"), reason="pykan is installed here")
def test_pykan_not_installed_is_reported() -> None:
    result = bench.run([*TINY, "--peers", "pykan"])
    assert "not installed" in result["markdown"]
    assert result["results"][0]["peers"]["pykan"]["missing"].startswith("not installed")


@pytest.mark.parametrize("bad", [["--batch", "0"], ["--dtype", "float16"], ["--threads", "x"], ["--peers", "nokan"]])
def test_bad_lists_rejected(bad) -> None:
    with pytest.raises(SystemExit):
        bench.build_parser().parse_args(bad)


@pytest.mark.skipif(not _installed("inkan"), reason="inkan not installed (pip install 'kan-lightning[bench]')")
def test_inkan_computes_our_function_in_float64() -> None:
    """inkan's eager piecewise polynomials with our weights: the same network to float64
    rounding (an independent implementation of the uniform cubic B-spline KAN)."""
    torch.manual_seed(0)
    torch.set_default_dtype(torch.float64)  # knots built in float64
    try:
        ours = KAN([3, 5, 2], grid_size=7)
        with torch.no_grad():
            for layer in ours.layers:
                layer.spline_weight.normal_()
        peer = bench_peers.build_peer("inkan-eager", ours, torch.float64, "cpu")
    finally:
        torch.set_default_dtype(torch.float32)
    x = torch.rand(200, 3, dtype=torch.float64) * 2 - 1
    diff, rel = bench_peers.max_difference(peer, ours, x)
    assert diff <= 1e-12 and rel <= 1e-12


@pytest.mark.skipif(not _installed("inkan"), reason="inkan not installed (pip install 'kan-lightning[bench]')")
def test_bench_times_and_compares_inkan() -> None:
    result = bench.run([*TINY, "--dtype", "float64", "--peers", "inkan-eager"])
    res = result["results"][0]
    assert res["variants"]["inkan-eager"]["fwd_bwd_ms"] > 0
    assert res["peers"]["inkan-eager"]["max_abs_diff"] <= 1e-12
    assert "inkan-eager" in result["markdown"]


def test_a_peer_whose_to_takes_only_a_device_is_built_in_the_dtype(monkeypatch) -> None:
    """pykan's ``MultKAN.to(device)`` takes no dtype keyword: kan-bench failed with it installed."""

    class DeviceOnly(torch.nn.Linear):
        def to(self, device):  # pykan's signature
            return super().to(device)

    monkeypatch.setitem(bench_peers.ADAPTERS, "pykan", lambda ours: DeviceOnly(2, 1))
    peer = bench_peers.build_peer("pykan", KAN([2, 1], grid_size=5), torch.float64, "cpu")
    assert peer.weight.dtype == torch.float64


@pytest.mark.skipif(not _installed("kan"), reason="pykan not installed (pip install pykan)")
def test_pykan_peer_runs_in_float64() -> None:
    peer = bench_peers.build_peer("pykan", KAN([2, 3, 1], grid_size=5), torch.float64, "cpu")
    assert peer(torch.rand(8, 2, dtype=torch.float64)).dtype == torch.float64


def test_peers_refuse_shapes_they_lack() -> None:
    if not _installed("inkan"):
        pytest.skip("inkan not installed (pip install 'kan-lightning[bench]')")
    with pytest.raises(bench_peers.PeerUnavailable, match="cubic"):
        bench_peers.build_peer("inkan", KAN([2, 1], grid_size=5, spline_order=2), torch.float32, "cpu")


@pytest.mark.slow
@pytest.mark.skipif(not _installed("flashkan"), reason="flashkan not installed (pip install 'kan-lightning[bench]')")
def test_flashkan_cancels_at_fine_grids() -> None:
    """flashkan's truncated-power sum: close to ours at G = 5, off by far more at G = 50 (float32)."""
    result = bench.run(["--shapes", "3,2:5 3,2:50", "--batch", "64", "--repeats", "1", "--warmup", "0",
                        "--peers", "flashkan"])
    coarse, fine = (r["peers"]["flashkan"]["max_rel_diff"] for r in result["results"])
    assert coarse <= 1e-3 and fine >= 10 * coarse
