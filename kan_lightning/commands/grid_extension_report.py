"""Reports of grid-extension runs: RMSE per grid, log-log plots, fitted slopes, and the KAN-vs-MLP
scaling figure (test RMSE against parameter count).

Grid extension (one or more runs made with the ``GridExtension`` callback and
``evaluate_splits: [train, test]``, e.g. ``kan-train experiment=paper_grid_extension``)::

    python -m kan_lightning.commands.grid_extension_report <run dir> [<run dir> ...] [--out DIR]
        [--x grid|num_parameters] [--reference "pykan=3:1.5e-3,5:7.3e-4"] [--name grid_extension]

reads each run's ``metrics.json`` (``record["callbacks"]["grid_extension"]["stages"]``) and
writes ``<name>.md`` and ``<name>.png`` next to the first run, or into ``--out``.

Scaling (``kan-train -m experiment=paper_scaling`` for the KAN shapes, the MLP multirun of that
preset's header for the MLPs; any run or sweep directories)::

    python -m kan_lightning.commands.grid_extension_report --scaling <dir> [<dir> ...] --out DIR [--name paper_scaling]

finds every completed run below the given directories: KAN runs give one point per grid stage,
runs without stages (the MLPs) one point each (final ``test/rmse`` and ``num_parameters``); all go
into one log-log figure with the ``N^-4`` line of cubic-spline theory.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from kan_lightning.analysis.figures import add_figure_args
from kan_lightning.analysis.grid_extension_report import (
    METRICS_FILE,
    find_runs,
    load_record,
    parse_reference,
    plot_scaling,
    record_stages,
    scaling_markdown,
    scaling_series,
    write_grid_extension_report,
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kan_lightning.commands.grid_extension_report", description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (outputs/<task>/<time>) or sweep directories holding them")
    parser.add_argument("--out", type=Path, help="where to write <name>.md/.png (default: the first directory)")
    parser.add_argument("--name", help="file name stem (default: grid_extension, or paper_scaling with --scaling)")
    parser.add_argument("--x", choices=("grid", "num_parameters"), default="grid", help="plot against grid size or parameters")
    parser.add_argument("--reference", help='a reference test RMSE per grid for table and plot, "label=G:rmse,G:rmse,..."')
    parser.add_argument("--scaling", action="store_true", help="the KAN-vs-MLP figure: test RMSE against parameters for every run found")
    add_figure_args(parser)
    args = parser.parse_args(argv)
    out = args.out or args.runs[0]
    try:
        reference = parse_reference(args.reference) if args.reference else None
        if args.scaling:
            name = args.name or "paper_scaling"
            series = scaling_series(find_runs(args.runs))
            if not series:
                raise ValueError(f"no completed runs below {', '.join(map(str, args.runs))}")
            out.mkdir(parents=True, exist_ok=True)
            text = scaling_markdown(series)
            (out / f"{name}.md").write_text(text)
            plot_scaling(series, out / f"{name}.{args.format}", args.dpi)
        else:
            name = args.name or "grid_extension"
            given = {r.resolve() for r in args.runs if (r / METRICS_FILE).is_file()}
            # runs named directly must have stages (load_stages says so); runs found below a
            # sweep directory without stages (failed jobs, MLPs) are left out
            run_dirs = [r for r in find_runs(args.runs) if r in given or record_stages(load_record(r))]
            if not run_dirs:
                raise ValueError(f"no runs below {', '.join(map(str, args.runs))}")
            text = write_grid_extension_report(run_dirs, out, name, args.x, reference, args.format, args.dpi)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(text, end="")
    print(f"wrote {out / (name + '.md')} and {out / (name + '.' + args.format)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
