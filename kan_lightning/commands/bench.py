"""Speed and memory benchmarks: ``python -m kan_lightning.commands.bench`` (or ``kan-bench``).

``--mode layer`` times forward and forward+backward of KANs against the reference KAN (full-grid
Cox-de Boor with autograd through the recursion), an MLP of the same widths, the dense-matmul
floor and the other KAN libraries (:mod:`kan_lightning.commands.bench_peers`; a missing one is reported),
for every combination of the batch sizes, thread counts and dtypes asked for. ``--mode e2e``
times a training step of a small KAN under a Lightning Trainer against a bare PyTorch loop.

Example::

    python -m kan_lightning.commands.bench --shapes "64,64,64:5 256,256:50" --repeats 20 --json bench.json
    kan-bench --batch 64,1024,4096 --threads 1,all --dtype float32,float64
"""

from __future__ import annotations

import argparse
import json
from typing import Callable

import torch

from . import bench_peers
from .bench_e2e import run_e2e
from .bench_layer import run_layer

DEFAULT_SHAPES = "64,64,64:5 64,64,64:20 256,256:5 256,256:50"


# -- arguments ---------------------------------------------------------------------------------


def parse_shapes(text: str) -> list[tuple[list[int], int]]:
    """``"64,64,64:5 256,256:50"`` -> ``[([64, 64, 64], 5), ([256, 256], 50)]``."""
    shapes = []
    for item in text.replace(";", " ").split():
        try:
            widths, grid = item.split(":")
            parsed = ([int(w) for w in widths.split(",")], int(grid))
        except ValueError:
            raise argparse.ArgumentTypeError(f"shape {item!r} is not 'w0,w1,...:G'") from None
        if len(parsed[0]) < 2 or min(parsed[0]) < 1 or parsed[1] < 1:
            raise argparse.ArgumentTypeError(f"shape {item!r} needs two or more widths >= 1 and G >= 1")
        shapes.append(parsed)
    if not shapes:
        raise argparse.ArgumentTypeError("no shapes given")
    return shapes


def _list_of(convert: Callable[[str], object], what: str) -> Callable[[str], list]:
    def parse(text: str) -> list:
        try:
            items = [convert(v.strip()) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of {what}") from None
        if not items:
            raise argparse.ArgumentTypeError(f"no {what} given")
        return items

    return parse


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def _threads(text: str) -> int | None:
    """``"all"`` -> ``None`` (every core torch sees at start), else a count >= 1."""
    return None if text == "all" else _positive(text)


def _dtype(text: str) -> str:
    if text not in ("float32", "float64"):
        raise ValueError(text)
    return text


def _peer(text: str) -> str:
    if text not in bench_peers.PEERS and text != "none":
        raise ValueError(text)
    return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kan-bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=("layer", "e2e"), default="layer")
    p.add_argument("--shapes", type=parse_shapes, default=parse_shapes(DEFAULT_SHAPES),
                   help=f"space-separated 'widths:grid' items (default: '{DEFAULT_SHAPES}')")
    p.add_argument("--batch", type=_list_of(_positive, "batch sizes"), default=[1024],
                   help="comma-separated batch sizes (default: 1024)")
    p.add_argument("--order", type=int, default=3, help="spline order k")
    p.add_argument("--dtype", type=_list_of(_dtype, "dtypes (float32, float64)"), default=["float32"],
                   help="comma-separated: float32, float64 (default: float32)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=_list_of(_threads, "thread counts or 'all'"), default=None,
                   help="comma-separated torch.set_num_threads values, 'all' = every core (default: unchanged)")
    p.add_argument("--peers", type=_list_of(_peer, "peer names"), default=list(bench_peers.PEERS),
                   help=f"other KAN libraries to time, or 'none' (default: {','.join(bench_peers.PEERS)})")
    p.add_argument("--json", default=None, metavar="PATH", help="write the results here")
    return p


# -- entry points ------------------------------------------------------------------------------


def run(argv: list[str] | None = None) -> dict:
    """Parse ``argv``, run the benchmark, print the Markdown table, write JSON; return the results."""
    args = build_parser().parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available")
    result = run_e2e(args) if args.mode == "e2e" else run_layer(args)
    result["config"] = {
        "batch": args.batch,
        "order": args.order,
        "dtype": args.dtype,
        "peers": args.peers,
        "device": args.device,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "shapes": [f"{','.join(map(str, w))}:{g}" for w, g in args.shapes],
    }
    print(result["markdown"])
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return result


def main(argv: list[str] | None = None) -> int:
    run(argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
