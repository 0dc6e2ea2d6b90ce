"""``python -m kan_lightning.commands.grid_diagnostics``: why a grid-extension run's test error rose
(see :mod:`kan_lightning.analysis.grid_diagnostics`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from kan_lightning.analysis.grid_diagnostics import report


def load_run(run_dir: str | Path, ckpt: str = "last.ckpt"):
    """``(network, datamodule)`` of a finished run, the network in float64 as the checkpoint
    ``<run_dir>/checkpoints/<ckpt>`` holds it (its grid size and, after pruning, its widths),
    the data rebuilt from its config."""
    from kan_lightning.lit.checkpoint import datamodule_from_checkpoint, model_from_checkpoint, read_checkpoint

    checkpoint = read_checkpoint(Path(run_dir) / "checkpoints" / ckpt)
    return model_from_checkpoint(checkpoint).double(), datamodule_from_checkpoint(checkpoint)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kan_lightning.commands.grid_diagnostics", description=__doc__.split("\n\n")[0])
    parser.add_argument("run")
    parser.add_argument("--ckpt", default="last.ckpt")
    parser.add_argument("--refit", type=int, default=None)
    parser.add_argument("--margins", default="0.5,1,2.5")
    args = parser.parse_args(argv)
    try:
        margins = [float(v) for v in args.margins.split(",")]
        print(report(*load_run(args.run, args.ckpt), f"{args.run} ({args.ckpt})", args.refit, margins))
    except (FileNotFoundError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
