"""Grouped sweep tables: the mean and standard deviation of every metric over the jobs of a group
(the seeds), as CSV and Markdown (``kan-sweep-summary --group-by``)."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Sequence

from kan_lightning.analysis.sweeps import COMPLETED, default_metrics, format_value, is_finite, swept_parameters


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
            finite = [float(r["metrics"][metric]) for r in done if is_finite(r["metrics"].get(metric))]
            mean, std = mean_std(finite)
            record[f"{metric}_mean"], record[f"{metric}_std"], record[f"{metric}_n"] = mean, std, len(finite)
        records.append(record)
    return records


def format_mean_std(mean: float, std: float) -> str:
    """``1.23e-04 ± 4.5e-05``; just the mean when the spread is 0 (parameter counts) or unknown."""
    if not is_finite(mean):
        return "—"
    if float(mean).is_integer() and (std == 0 or not is_finite(std)) and abs(mean) < 1e15:
        return str(int(mean))
    if not is_finite(std):
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
