"""``python -m kan_lightning.commands.grid_diagnostics``: why a grid-extension run's test error rose
(see :mod:`kan_lightning.analysis.grid_diagnostics`)."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from kan_lightning.analysis.grid_diagnostics import report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kan_lightning.commands.grid_diagnostics", description=__doc__.split("\n\n")[0])
    parser.add_argument("run")
    parser.add_argument("--ckpt", default="last.ckpt")
    parser.add_argument("--refit", type=int, default=None)
    parser.add_argument("--margins", default="0.5,1,2.5")
    args = parser.parse_args(argv)
    try:
        margins = [float(v) for v in args.margins.split(",")]
        print(report(args.run, args.ckpt, args.refit, margins))
    except (FileNotFoundError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
