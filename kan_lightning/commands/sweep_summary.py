"""``kan-sweep-summary``: the table (CSV + Markdown), grouped tables and figures of a Hydra
multirun directory (see :mod:`kan_lightning.analysis.sweeps`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from kan_lightning.analysis.sweep_groups import write_grouped_summary
from kan_lightning.analysis.sweep_plots import plot_sweep
from kan_lightning.analysis.sweeps import METRICS_FILE, OVERRIDES_FILE, load_sweep, write_summary


def _split_keys(text: str | None) -> list[str]:
    return [k.strip() for k in (text or "").split(",") if k.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    from kan_lightning.analysis.figures import add_figure_args

    parser = argparse.ArgumentParser(prog="kan-sweep-summary", description="Summarize a Hydra multirun directory (sweeps/<task>/<time>/).")
    parser.add_argument("sweep_dir", type=Path, help="the multirun directory holding one sub-directory per job")
    parser.add_argument("--metric", default="test/rmse", help="metric to sort the table by and to plot (default: test/rmse)")
    parser.add_argument("--no-plot", action="store_true", help="write only summary.csv and summary.md")
    add_figure_args(parser)
    parser.add_argument(
        "--metrics",
        help="comma-separated metric columns (default: every test/* and val/* metric, parameters, wall time)",
    )
    parser.add_argument(
        "--group-by",
        help="comma-separated override keys (e.g. data.function,model): also write summary_grouped.md/csv "
        "with the mean ± std of every metric per group",
    )
    parser.add_argument(
        "--aggregate",
        help="comma-separated override keys averaged over within a group (e.g. seed); other swept keys "
        "are then grouped by too (default: average over everything not grouped by)",
    )
    args = parser.parse_args(argv)
    metrics = _split_keys(args.metrics) or None
    group_by, aggregate = _split_keys(args.group_by), _split_keys(args.aggregate) or None
    if aggregate and not group_by:
        parser.error("--aggregate needs --group-by")

    if not args.sweep_dir.is_dir():
        print(f"kan-sweep-summary: error: {args.sweep_dir} is not a directory", file=sys.stderr)
        return 2
    rows = load_sweep(args.sweep_dir)
    if not rows:
        print(
            f"kan-sweep-summary: error: no jobs in {args.sweep_dir} (expected sub-directories "
            f"with {OVERRIDES_FILE.as_posix()} or {METRICS_FILE}; is this a multirun directory?)",
            file=sys.stderr,
        )
        return 1
    if not any(args.metric in row["metrics"] for row in rows):
        print(f"kan-sweep-summary: warning: no job reports {args.metric!r}", file=sys.stderr)

    _, md_path = write_summary(args.sweep_dir, rows, metrics=metrics, sort_by=args.metric)
    print(md_path.read_text(), end="")
    if group_by:
        unknown = [k for k in [*group_by, *(aggregate or [])] if not any(k in row["overrides"] for row in rows)]
        if unknown:
            print(f"kan-sweep-summary: warning: no job has the override(s) {', '.join(unknown)}", file=sys.stderr)
        _, grouped_path = write_grouped_summary(args.sweep_dir, rows, group_by, aggregate, metrics)
        print()
        print(grouped_path.read_text(), end="")
    if not args.no_plot:
        for path in plot_sweep(args.sweep_dir, rows, args.metric, args.format, args.dpi, aggregate or ("seed",)):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
