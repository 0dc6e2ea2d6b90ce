"""``python -m kan_lightning.commands.paper_tables``: our runs of the KAN paper's benchmarks beside
the paper's tables (see :mod:`kan_lightning.analysis.paper_tables`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from kan_lightning.analysis.grid_extension_report import find_runs
from kan_lightning.analysis.paper_tables import TABLES, collect, markdown


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kan_lightning.commands.paper_tables", description=__doc__.split("\n\n")[0])
    parser.add_argument("table", choices=sorted(TABLES))
    parser.add_argument("runs", nargs="+", help="run or sweep directories")
    parser.add_argument("--out", default=None, help="folder for <name>.md (default: print only)")
    parser.add_argument("--name", default=None, help="file name stem (default: the table)")
    args = parser.parse_args(argv)
    missing = [r for r in args.runs if not Path(r).exists()]
    if missing:
        print(f"error: no such run or sweep directory: {missing[0]}", file=sys.stderr)
        return 2
    runs = find_runs(args.runs)
    if not runs:
        print(f"error: no metrics.json below {', '.join(args.runs)}", file=sys.stderr)
        return 2
    chosen: dict[str, str] = {}
    by_test: dict[str, dict[str, float]] = {}
    text = markdown(collect(runs, args.table, chosen, by_test), args.table, chosen, by_test)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{args.name or args.table}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
