"""Read a Hydra multirun directory into a table (CSV + Markdown) and plots.

``kan-sweep-summary sweeps/<task>/<time> [--metric test/rmse] [--no-plot]``
(or ``python -m kan_lightning.analysis.sweeps ...``) writes ``summary.csv``, ``summary.md`` and
one ``summary_<param>.png`` per swept parameter into the sweep directory (``--format pdf|svg``,
``--dpi N``); jobs that differ only in their seed are drawn as mean ± std.

``kan-sweep-summary <dir> --group-by data.function,model --aggregate seed`` also writes
``summary_grouped.csv`` and ``summary_grouped.md``: one row per combination of the group-by
override values (``model=kan`` appears as ``model: kan``), with the mean and standard deviation
of every metric over the completed jobs of the group (the seeds). Swept keys that are neither
grouped by nor aggregated over are added to the grouping, so nothing is averaged silently.

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
HYDRA_FILE = Path(".hydra") / "hydra.yaml"
EXTRA_METRICS = ("num_parameters", "wall_time_s")
COMPLETED = "completed"


# ---------------------------------------------------------------------------------------------
# Reading


def job_number(job_dir: Path) -> int | None:
    """Hydra's number of a multirun job: its directory's name when that is a number, else the
    ``hydra.job.num`` Hydra saved in ``.hydra/hydra.yaml`` (directories named by their swept
    values, ``grid_size=5,l1=0.001``)."""
    if job_dir.name.isdigit():
        return int(job_dir.name)
    try:
        num = ((yaml.safe_load((job_dir / HYDRA_FILE).read_text()) or {}).get("hydra") or {}).get("job", {}).get("num")
    except (OSError, ValueError, yaml.YAMLError, AttributeError):  # ValueError: not UTF-8
        return None
    return num if isinstance(num, int) else None


def _job_key(path: Path) -> tuple:
    # Hydra numbers jobs 0, 1, ..., 10: sort 2 before 10, jobs without a number after.
    number = job_number(path)
    return (0, number, "") if number is not None else (1, 0, path.name)


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
    (still running, killed, or never started: the directory cannot tell which). A job whose
    files cannot be read (bad JSON or YAML, not UTF-8, the wrong shape) is a ``failed`` row
    saying which file and why, never an exception: one bad job must not hide the others.
    """
    job_dir = Path(job_dir)
    number = job_number(job_dir)
    row: dict[str, Any] = {"job": job_dir.name if number is None else str(number), "dir": job_dir.name, "status": "missing", "error": None, "overrides": {}, "metrics": {}}
    try:
        _fill_row(row, job_dir)
    except Exception as err:  # a malformed file of any kind: the row says what is wrong
        row["status"], row["error"] = "failed", f"unreadable job: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    return row


def _bad_file(name: str, problem: str) -> ValueError:
    return ValueError(f"{name}: {problem}")


def _fill_row(row: dict[str, Any], job_dir: Path) -> None:
    record: dict[str, Any] = {}
    if (job_dir / METRICS_FILE).is_file():
        try:
            record = json.loads((job_dir / METRICS_FILE).read_bytes().decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as err:
            row["status"], row["error"] = "failed", f"unreadable {METRICS_FILE}: {err}"
            record = {}
        else:
            if not isinstance(record, dict):
                row["status"], row["error"] = "failed", f"unreadable {METRICS_FILE}: a JSON {type(record).__name__} is not a run record"
                record = {}
            else:
                status = record.get("status", "unknown")
                row["status"] = status if isinstance(status, str) else "unknown"

    if (job_dir / OVERRIDES_FILE).is_file():
        try:
            overrides = yaml.safe_load((job_dir / OVERRIDES_FILE).read_bytes().decode("utf-8")) or []
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise _bad_file(str(OVERRIDES_FILE), f"not valid YAML ({str(err).splitlines()[0]})") from None
    else:  # metrics.json keeps the overrides too
        overrides = record.get("overrides") or []
    if not isinstance(overrides, list):
        raise _bad_file(str(OVERRIDES_FILE), f"a {type(overrides).__name__} is not a list of overrides")
    row["overrides"] = parse_overrides(overrides)

    metrics = record.get("metrics") or {}
    if not isinstance(metrics, dict):
        row["status"], row["error"] = "failed", f"{METRICS_FILE}: 'metrics' is a {type(metrics).__name__}, not a mapping"
        metrics = {}
    metrics = {str(k): v for k, v in metrics.items() if _is_number(v)}
    metrics.update({k: record[k] for k in EXTRA_METRICS if _is_number(record.get(k))})
    row["metrics"] = metrics

    # A completed job's log may hold a handled traceback: look for errors only in the others.
    error = record.get("error") or (_job_error(job_dir) if row["status"] != COMPLETED else None)
    if error:
        row["error"] = row["error"] or str(error)
        if row["status"] == "missing":
            row["status"] = "failed"


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
# Grouped tables (mean and std over seeds)


def _split_keys(text: str | None) -> list[str]:
    return [k.strip() for k in (text or "").split(",") if k.strip()]


def grouping_keys(rows: Sequence[dict[str, Any]], group_by: Sequence[str], aggregate: Sequence[str] | None = None) -> list[str]:
    """``group_by`` plus, when ``aggregate`` is given, every other swept key that is not
    aggregated over (so a sweep over seeds and learning rates, aggregated over seeds only,
    keeps one row per learning rate)."""
    keys = list(dict.fromkeys(group_by))
    if aggregate is not None:
        keys += [k for k in swept_parameters(rows) if k not in keys and k not in aggregate]
    return keys


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``n - 1``; NaN for a single value)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = math.fsum(values) / n
    if n == 1:
        return mean, math.nan
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


def grouped_table(
    rows: Sequence[dict[str, Any]],
    group_by: Sequence[str],
    aggregate: Sequence[str] | None = None,
    metrics: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """One record per group (first-appearance order): the group's key values, ``jobs``,
    ``completed``, for each ``aggregate`` key the values seen (``"1,2,3"``), and for each metric
    ``<metric>_mean``, ``<metric>_std`` over the completed jobs with a finite value (``n - 1``
    standard deviation), and ``<metric>_n`` (how many values went in)."""
    if not group_by:
        raise ValueError("group_by needs at least one override key")
    keys = grouping_keys(rows, group_by, aggregate)
    metrics = list(metrics) if metrics is not None else default_metrics(rows)
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row["overrides"].get(k) for k in keys), []).append(row)
    records = []
    for values, members in groups.items():
        done = [r for r in members if r["status"] == COMPLETED]
        record: dict[str, Any] = dict(zip(keys, values))
        record["jobs"] = len(members)
        record["completed"] = len(done)
        for key in aggregate or []:
            seen = list(dict.fromkeys(r["overrides"].get(key) for r in members))
            record[key] = ",".join(format_value(v) for v in seen)
        for metric in metrics:
            finite = [float(r["metrics"][metric]) for r in done if _finite(r["metrics"].get(metric))]
            mean, std = mean_std(finite)
            record[f"{metric}_mean"], record[f"{metric}_std"], record[f"{metric}_n"] = mean, std, len(finite)
        records.append(record)
    return records


def format_mean_std(mean: float, std: float) -> str:
    """``1.23e-04 ± 4.5e-05``; just the mean when the spread is 0 (parameter counts) or unknown."""
    if not _finite(mean):
        return "—"
    if float(mean).is_integer() and (std == 0 or not _finite(std)) and abs(mean) < 1e15:
        return str(int(mean))
    if not _finite(std):
        return f"{mean:.3g}"
    if std == 0:
        return f"{mean:.4g}"
    return f"{mean:.3g} ± {std:.2g}"


def grouped_markdown(records: Sequence[dict[str, Any]], metrics: Sequence[str], title: str | None = None, note: str | None = None) -> str:
    """The grouped records as Markdown: key columns, job counts, ``mean ± std`` per metric."""
    if not records:
        return ""
    stat_suffixes = ("_mean", "_std", "_n")
    plain = [c for c in records[0] if not any(c == f"{m}{s}" for m in metrics for s in stat_suffixes)]
    header = plain + [f"{m} (mean ± std)" for m in metrics]
    lines = [f"# {title}\n" if title else "", f"{note}\n" if note else ""]
    lines = [line for line in lines if line]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" for _ in header) + "|")
    for record in records:
        cells = [format_value(record[c]) for c in plain]
        cells += [format_mean_std(record[f"{m}_mean"], record[f"{m}_std"]) for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def pivot_markdown(records: Sequence[dict[str, Any]], row_key: str, column_key: str, metric: str) -> str:
    """``metric`` as ``mean ± std`` with one row per ``row_key`` value and one column per
    ``column_key`` value (e.g. functions x models)."""
    row_values = list(dict.fromkeys(r.get(row_key) for r in records))
    col_values = list(dict.fromkeys(r.get(column_key) for r in records))
    cell = {(r.get(row_key), r.get(column_key)): format_mean_std(r[f"{metric}_mean"], r[f"{metric}_std"]) for r in records}
    lines = [
        "| " + " | ".join([row_key, *(format_value(c) for c in col_values)]) + " |",
        "|" + "|".join("---" for _ in range(len(col_values) + 1)) + "|",
    ]
    for rv in row_values:
        lines.append("| " + " | ".join([format_value(rv), *(cell.get((rv, cv), "—") for cv in col_values)]) + " |")
    return "\n".join(lines) + "\n"


def write_grouped_summary(
    sweep_dir: str | Path,
    rows: Sequence[dict[str, Any]],
    group_by: Sequence[str],
    aggregate: Sequence[str] | None = None,
    metrics: Sequence[str] | None = None,
) -> tuple[Path, Path]:
    """Write ``summary_grouped.csv`` (full precision) and ``summary_grouped.md``."""
    sweep_dir = Path(sweep_dir)
    metrics = list(metrics) if metrics is not None else default_metrics(rows)
    records = grouped_table(rows, group_by, aggregate, metrics)
    keys = grouping_keys(rows, group_by, aggregate)
    csv_path, md_path = sweep_dir / "summary_grouped.csv", sweep_dir / "summary_grouped.md"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]) if records else [*keys, "jobs", "completed"])
        writer.writeheader()
        writer.writerows(records)
    over = ", ".join(aggregate) if aggregate else "the other jobs of each group"
    extra = [k for k in keys if k not in group_by]
    note = (
        f"{len(rows)} jobs in {len(records)} groups by {', '.join(keys)}"
        + (f" ({', '.join(extra)} added: swept but not aggregated)" if extra else "")
        + f"; mean ± sample std (n - 1) over {over}, completed jobs only."
    )
    title = f"Sweep {'/'.join(sweep_dir.resolve().parts[-2:])}, grouped"
    md_path.write_text(grouped_markdown(records, metrics, title=title, note=note))
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


def plot_sweep(
    sweep_dir: str | Path, rows: Sequence[dict[str, Any]], metric: str = "test/rmse", fmt: str = "png", dpi: int = 150,
    aggregate: Sequence[str] = ("seed",),
) -> list[Path]:
    """Save the figures of :func:`sweep_figures` as ``summary_<param>.<fmt>`` into the sweep
    directory; returns the paths."""
    from kan_lightning.analysis.figures import save

    figures = sweep_figures(rows, metric, aggregate)
    return [save(fig, Path(sweep_dir) / f"summary_{_safe_name(param)}.{fmt}", dpi) for param, fig in figures.items()]


def sweep_figures(rows: Sequence[dict[str, Any]], metric: str = "test/rmse", aggregate: Sequence[str] = ("seed",)) -> dict[str, Any]:
    """One figure per swept parameter: ``metric`` against it, one series per combination of
    the other swept parameters. Jobs that differ only in an ``aggregate`` key (the seed) make
    one point: their mean, with a band (numeric x) or error bar (categorical x) of ± one
    standard deviation. Categorical x values are not joined by lines. Labels are words
    (``test RMSE``, ``grid size G``); axes are logarithmic where values span decades, and
    their limits follow the data."""
    # Figure + the Agg canvas directly: no pyplot, no global backend switch, never a window.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    from kan_lightning.analysis.figures import limit_to_data
    from kan_lightning.analysis.labels import label

    swept = swept_parameters(rows)
    over = [p for p in swept if p in aggregate]
    params = [p for p in swept if p not in over]
    points = [row for row in rows if _finite(row["metrics"].get(metric))]
    figures = {}
    for param in params:
        used = [row for row in points if row["overrides"].get(param) is not None]
        if not used:
            continue
        xs = [row["overrides"][param] for row in used]
        numeric = all(_is_number(x) for x in xs)
        categories = list(dict.fromkeys(map(str, xs)))  # first-appearance order

        others = [p for p in params if p != param]
        series: dict[tuple, dict[Any, list[float]]] = {}
        for row, x in zip(used, xs):
            group = tuple(row["overrides"].get(p) for p in others)
            key = x if numeric else categories.index(str(x))
            series.setdefault(group, {}).setdefault(key, []).append(row["metrics"][metric])

        log_y = use_log_scale(row["metrics"][metric] for row in used)
        fig = Figure(figsize=(6, 4), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        shown: list[float] = []
        width = 0.6 / max(len(series), 1)  # categorical: series side by side around each tick
        for index, (group, by_x) in enumerate(series.items()):
            keys = sorted(by_x)
            stats = [mean_std(by_x[k]) for k in keys]
            means = [m for m, _ in stats]
            stds = [0.0 if math.isnan(sd) else sd for _, sd in stats]
            lows = [max(m - sd, m / 10) if log_y else m - sd for m, sd in zip(means, stds)]
            highs = [m + sd for m, sd in zip(means, stds)]
            shown += lows + highs
            name = ", ".join(f"{label(p)} = {v}" for p, v in zip(others, group)) or None
            if numeric:
                line = ax.plot(keys, means, marker="o", label=name)[0]
                if any(stds):
                    ax.fill_between(keys, lows, highs, color=line.get_color(), alpha=0.2, linewidth=0)
            else:
                offset = (index - (len(series) - 1) / 2) * width
                errors = [[m - lo for m, lo in zip(means, lows)], [hi - m for m, hi in zip(means, highs)]]
                ax.errorbar([k + offset for k in keys], means, yerr=errors if any(stds) else None, fmt="o", capsize=3, label=name)
        if numeric and use_log_scale(xs):
            ax.set_xscale("log")
        elif numeric and all(isinstance(x, int) for x in xs):  # grid sizes, widths: no 3.25 ticks
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if not numeric:
            ax.set_xticks(range(len(categories)), categories, rotation=30 if len(categories) > 4 else 0)
            ax.set_xlim(-0.5, len(categories) - 0.5)
        if log_y:
            ax.set_yscale("log")
        limit_to_data(ax, shown, log_y)
        ax.set_xlabel(label(param))
        seeds = f" (mean ± std over {', '.join(label(p) for p in over)})" if over else ""
        ax.set_ylabel(label(metric) + seeds)
        ax.grid(True, which="both", alpha=0.3)
        if others:
            ax.legend(fontsize="small")
        figures[param] = fig
    return figures


# ---------------------------------------------------------------------------------------------
# Command line


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
