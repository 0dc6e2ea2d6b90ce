"""Read a Hydra multirun directory into a table (CSV + Markdown) and plots.

``kan-sweep-summary sweeps/<task>/<time> [--metric test/rmse] [--no-plot]``
(or ``python -m kan_lightning.analysis.sweeps ...``) writes ``summary.csv``, ``summary.md`` and
one ``summary_<param>.png`` per swept parameter into the sweep directory.

Each job directory holds ``.hydra/overrides.yaml`` (written by Hydra before the job starts) and,
once the job has finished, ``metrics.json`` (written by ``kan_lightning.train``). Only files are
read here: no Lightning or Hydra import.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

METRICS_FILE = "metrics.json"
OVERRIDES_FILE = Path(".hydra") / "overrides.yaml"
EXTRA_METRICS = ("num_parameters", "wall_time_s")
COMPLETED = "completed"


# ---------------------------------------------------------------------------------------------
# Reading


def _job_key(path: Path) -> tuple:
    # Hydra numbers jobs 0, 1, ..., 10: sort 2 before 10, names that are not numbers after.
    return (0, int(path.name), "") if path.name.isdigit() else (1, 0, path.name)


def _job_dirs(sweep_dir: Path) -> list[Path]:
    dirs = [p for p in sweep_dir.iterdir() if p.is_dir() and ((p / OVERRIDES_FILE).is_file() or (p / METRICS_FILE).is_file())]
    return sorted(dirs, key=_job_key)


def parse_value(text: str) -> Any:
    """An override's value as YAML reads it (``3`` -> 3, ``true`` -> True); PyYAML reads ``1e-3``
    as a string (YAML 1.1), so numbers are tried too. Lists and dicts stay strings: table cells
    and plot groups need hashable scalars."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    if value is None and text.strip() not in ("", "null", "~", "None"):
        return text
    return value if isinstance(value, (bool, int, float, str, type(None))) else text


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """``["model.grid_size=5", "+x=1", "~y"]`` -> ``{"model.grid_size": 5, "x": 1, "y": None}``."""
    parsed: dict[str, Any] = {}
    for item in overrides:
        key, sep, value = str(item).partition("=")
        parsed[key.lstrip("+~")] = parse_value(value) if sep else None
    return parsed


def _last_line(text: str) -> str | None:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else None


def _job_error(job_dir: Path) -> str | None:
    """The last line of ``error.txt``, or of the traceback that ends ``train.log``."""
    error_file = job_dir / "error.txt"
    if error_file.is_file():
        return _last_line(error_file.read_text(errors="replace"))
    for log in sorted(job_dir.glob("*.log")):
        text = log.read_text(errors="replace")
        start = text.rfind("Traceback (most recent call last)")
        if start >= 0:
            return _last_line(text[start:])
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def load_job(job_dir: str | Path) -> dict[str, Any]:
    """One row: ``job``, ``status``, ``error``, ``overrides`` {key: value}, ``metrics`` {name: number}.

    A job without ``metrics.json`` is ``failed`` when it left an error behind, else ``missing``
    (still running, killed, or never started: the directory cannot tell which).
    """
    job_dir = Path(job_dir)
    row: dict[str, Any] = {"job": job_dir.name, "status": "missing", "error": None, "overrides": {}, "metrics": {}}
    record: dict[str, Any] = {}
    if (job_dir / METRICS_FILE).is_file():
        try:
            record = json.loads((job_dir / METRICS_FILE).read_text())
            row["status"] = record.get("status", "unknown")
        except (json.JSONDecodeError, OSError) as err:
            row["status"], row["error"] = "failed", f"unreadable {METRICS_FILE}: {err}"

    if (job_dir / OVERRIDES_FILE).is_file():
        row["overrides"] = parse_overrides(yaml.safe_load((job_dir / OVERRIDES_FILE).read_text()) or [])
    else:  # metrics.json keeps the overrides too
        row["overrides"] = parse_overrides(record.get("overrides") or [])

    metrics = {k: v for k, v in (record.get("metrics") or {}).items() if _is_number(v)}
    metrics.update({k: record[k] for k in EXTRA_METRICS if _is_number(record.get(k))})
    row["metrics"] = metrics

    # A completed job's log may hold a handled traceback: look for errors only in the others.
    error = record.get("error") or (_job_error(job_dir) if row["status"] != COMPLETED else None)
    if error:
        row["error"] = row["error"] or str(error)
        if row["status"] == "missing":
            row["status"] = "failed"
    return row


def load_sweep(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One row per job directory of a multirun (see ``load_job``), in job order."""
    return [load_job(job_dir) for job_dir in _job_dirs(Path(sweep_dir))]


def swept_parameters(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Override keys whose values differ across jobs (a key some jobs lack counts as differing)."""
    keys = list(dict.fromkeys(k for row in rows for k in row["overrides"]))
    return [k for k in keys if len({repr(row["overrides"].get(k)) for row in rows}) > 1]


# ---------------------------------------------------------------------------------------------
# Tables


def default_metrics(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Every ``test/*`` then ``val/*`` metric present, then parameter count and wall time."""
    names = {name for row in rows for name in row["metrics"]}
    chosen = sorted(n for n in names if n.startswith("test/")) + sorted(n for n in names if n.startswith("val/"))
    return chosen + [n for n in EXTRA_METRICS if n in names]


def summary_table(rows: Sequence[dict[str, Any]], metrics: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Flat records, one per job in job order, with the columns job, status, each swept
    parameter, the chosen metrics (default: ``default_metrics``) and error."""
    params = swept_parameters(rows)
    metrics = list(metrics) if metrics is not None else default_metrics(rows)
    return [
        {
            "job": row["job"],
            "status": row["status"],
            **{p: row["overrides"].get(p) for p in params},
            **{m: row["metrics"].get(m) for m in metrics},
            "error": row["error"],
        }
        for row in rows
    ]


def _finite(value: Any) -> bool:
    return _is_number(value) and math.isfinite(value)


def sort_records(records: Sequence[dict[str, Any]], sort_by: str) -> list[dict[str, Any]]:
    """Completed jobs by ``sort_by`` ascending; jobs that failed or lack the metric last."""
    def key(item: tuple[int, dict[str, Any]]) -> tuple:
        index, record = item
        ok = record["status"] == COMPLETED and _finite(record.get(sort_by))
        return (0, record[sort_by], index) if ok else (1, 0.0, index)

    return [record for _, record in sorted(enumerate(records), key=key)]


def format_value(value: Any) -> str:
    """Markdown cell: floats to 4 significant digits, integers in full, nothing as a dash."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", r"\|").replace("\n", " ")


def markdown_table(records: Sequence[dict[str, Any]]) -> str:
    if not records:
        return ""
    columns = list(records[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for record in records:
        cells = dict(record)
        if record["status"] != COMPLETED:  # make failed, diverged and missing jobs stand out
            cells["status"] = f"**{str(record['status']).upper()}**"
        lines.append("| " + " | ".join(format_value(cells[c]) for c in columns) + " |")
    return "\n".join(lines)


def summary_markdown(sweep_dir: str | Path, rows: Sequence[dict[str, Any]], metrics: Sequence[str] | None = None, sort_by: str = "test/rmse") -> str:
    """A title line, the job counts and the table sorted by ``sort_by``."""
    records = summary_table(rows, _with_primary(rows, metrics, sort_by))
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    count_text = ", ".join(f"{n} {status}" for status, n in counts.items())
    swept = ", ".join(swept_parameters(rows)) or "nothing"
    return (
        f"# Sweep {'/'.join(Path(sweep_dir).resolve().parts[-2:])}\n\n"
        f"{len(rows)} jobs ({count_text}); swept: {swept}; sorted by {sort_by} (failed last).\n\n"
        f"{markdown_table(sort_records(records, sort_by))}\n"
    )


def _with_primary(rows: Sequence[dict[str, Any]], metrics: Sequence[str] | None, sort_by: str) -> list[str]:
    # The sort metric is always a column, even when it is not a test/val metric.
    chosen = list(metrics) if metrics is not None else default_metrics(rows)
    present = any(sort_by in row["metrics"] for row in rows)
    return chosen if sort_by in chosen or not present else [sort_by, *chosen]


def write_summary(sweep_dir: str | Path, rows: Sequence[dict[str, Any]], metrics: Sequence[str] | None = None, sort_by: str = "test/rmse") -> tuple[Path, Path]:
    """Write ``summary.csv`` (job order, full precision) and ``summary.md`` (sorted by ``sort_by``)."""
    sweep_dir = Path(sweep_dir)
    records = summary_table(rows, _with_primary(rows, metrics, sort_by))
    csv_path, md_path = sweep_dir / "summary.csv", sweep_dir / "summary.md"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]) if records else ["job", "status", "error"])
        writer.writeheader()
        writer.writerows(records)  # floats as repr: round-trips exactly
    md_path.write_text(summary_markdown(sweep_dir, rows, metrics, sort_by))
    return csv_path, md_path


# ---------------------------------------------------------------------------------------------
# Plots


def use_log_scale(values: Iterable[Any], factor: float = 20.0) -> bool:
    """Log axis when every value is a positive number and they span more than ``factor``."""
    values = list(values)
    if not values or not all(_finite(v) and v > 0 for v in values):
        return False
    return max(values) / min(values) > factor


def _safe_name(name: str) -> str:
    return re.sub(r"[^\w.\-]+", "_", name)


def plot_sweep(sweep_dir: str | Path, rows: Sequence[dict[str, Any]], metric: str = "test/rmse") -> list[Path]:
    """One figure per swept parameter: ``metric`` against it, one line per combination of the
    other swept parameters. Saves ``summary_<param>.png`` into the sweep dir; returns the paths."""
    # Figure + the Agg canvas directly: no pyplot, no global backend switch, never a window.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    params = swept_parameters(rows)
    points = [row for row in rows if _finite(row["metrics"].get(metric))]
    paths = []
    for param in params:
        used = [row for row in points if row["overrides"].get(param) is not None]
        if not used:
            continue
        xs = [row["overrides"][param] for row in used]
        numeric = all(_is_number(x) for x in xs)
        categories = list(dict.fromkeys(map(str, xs)))  # first-appearance order

        others = [p for p in params if p != param]
        lines: dict[tuple, list[tuple[Any, float]]] = {}
        for row, x in zip(used, xs):
            group = tuple(row["overrides"].get(p) for p in others)
            lines.setdefault(group, []).append((x if numeric else categories.index(str(x)), row["metrics"][metric]))

        fig = Figure(figsize=(6, 4), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        for group, pts in lines.items():
            pts.sort(key=lambda p: p[0])
            label = ", ".join(f"{p}={v}" for p, v in zip(others, group)) or None
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        if numeric and use_log_scale(xs):
            ax.set_xscale("log")
        elif numeric and all(isinstance(x, int) for x in xs):  # grid sizes, widths: no 3.25 ticks
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if not numeric:
            ax.set_xticks(range(len(categories)), categories, rotation=30 if len(categories) > 4 else 0)
        if use_log_scale(row["metrics"][metric] for row in used):
            ax.set_yscale("log")
        ax.set_xlabel(param)
        ax.set_ylabel(metric)
        ax.grid(True, which="both", alpha=0.3)
        if others:
            ax.legend(fontsize="small")
        path = Path(sweep_dir) / f"summary_{_safe_name(param)}.png"
        fig.savefig(path, dpi=100)
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------------
# Command line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kan-sweep-summary", description="Summarize a Hydra multirun directory (sweeps/<task>/<time>/).")
    parser.add_argument("sweep_dir", type=Path, help="the multirun directory holding one sub-directory per job")
    parser.add_argument("--metric", default="test/rmse", help="metric to sort the table by and to plot (default: test/rmse)")
    parser.add_argument("--no-plot", action="store_true", help="write only summary.csv and summary.md")
    parser.add_argument(
        "--metrics",
        help="comma-separated metric columns (default: every test/* and val/* metric, parameters, wall time)",
    )
    args = parser.parse_args(argv)
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None

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
    if not args.no_plot:
        for path in plot_sweep(args.sweep_dir, rows, args.metric):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
