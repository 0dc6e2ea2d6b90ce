"""Report of a grid-extension run: RMSE per grid, a log-log plot and the fitted slope.

``python -m kan_lightning.analysis.grid_extension <run dir> [<run dir> ...]`` reads each run's
``metrics.json`` (the ``GridExtension`` callback records train/test RMSE at the end of every
grid stage) and writes ``grid_extension.md`` and ``grid_extension.png`` next to the first run,
or into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from kan_lightning.analysis.scaling import fit_before_floor

STAGES_KEY = ("callbacks", "grid_extension", "stages")


def load_stages(run_dir: str | Path) -> list[dict]:
    """The per-grid records of a run (``grid``, ``num_parameters``, ``train/rmse``, ``test/rmse``)."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"no metrics.json in {str(run_dir)!r}")
    node = json.loads(path.read_text())
    for key in STAGES_KEY:
        node = node.get(key) if isinstance(node, dict) else None
    if not node:
        raise ValueError(f"{path} has no grid-extension stages (was the run made with callbacks grid_extension?)")
    return node


def stage_table(stages: Sequence[dict], metric: str = "test/rmse", label: str = "") -> tuple[str, float | None]:
    """A Markdown table of the stages and the power-law slope of ``metric`` against grid size,
    fitted over the grids before the error floor."""
    lines = [
        f"| {label or 'grid'} | parameters | train RMSE | test RMSE |",
        "|---|---|---|---|",
    ]
    for s in stages:
        lines.append(f"| {s['grid']} | {s['num_parameters']} | {s['train/rmse']:.3g} | {s['test/rmse']:.3g} |")
    slope = None
    try:
        law = fit_before_floor([s["grid"] for s in stages], [s[metric] for s in stages])
        slope = law.slope
        used = [stages[i]["grid"] for i in law.points]
        lines.append("")
        lines.append(f"Fitted slope of {metric} vs grid size over G = {used[0]}..{used[-1]}: **{slope:.2f}** (cubic-spline theory: -4).")
    except ValueError as err:
        lines.append("")
        lines.append(f"No slope fitted: {err}")
    return "\n".join(lines), slope


def plot_stages(runs: dict[str, Sequence[dict]], path: Path, x_key: str = "grid") -> Path:
    """Log-log plot of train and test RMSE against grid size (or parameter count), one line
    pair per run, with the G^-4 reference line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, stages in runs.items():
        xs = [s[x_key] for s in stages]
        line = ax.plot(xs, [s["test/rmse"] for s in stages], "o-", label=f"{name} test")[0]
        ax.plot(xs, [s["train/rmse"] for s in stages], "x--", color=line.get_color(), alpha=0.6, label=f"{name} train")
    first = next(iter(runs.values()))
    x0, y0 = first[0][x_key], first[0]["test/rmse"]
    xs = [s[x_key] for s in first]
    ax.plot(xs, [y0 * (x / x0) ** -4 for x in xs], "k:", label="slope -4")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("grid size G" if x_key == "grid" else "parameters")
    ax.set_ylabel("RMSE")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kan_lightning.analysis.grid_extension", description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (outputs/<task>/<time>)")
    parser.add_argument("--out", type=Path, help="where to write grid_extension.md/.png (default: the first run)")
    parser.add_argument("--x", choices=("grid", "num_parameters"), default="grid", help="plot against grid size or parameters")
    args = parser.parse_args(argv)
    try:
        runs = {run.name if len(args.runs) > 1 else "KAN": load_stages(run) for run in args.runs}
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = args.out or args.runs[0]
    out.mkdir(parents=True, exist_ok=True)
    parts = []
    for name, stages in runs.items():
        table, _ = stage_table(stages, label="grid")
        parts.append(f"### {name}\n\n{table}" if len(runs) > 1 else table)
    text = "\n\n".join(parts) + "\n"
    (out / "grid_extension.md").write_text(text)
    plot_stages(runs, out / "grid_extension.png", args.x)
    print(text, end="")
    print(f"wrote {out / 'grid_extension.md'} and {out / 'grid_extension.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
