"""Read a Hydra multirun directory into a table (CSV + Markdown) and plots.

``kan-sweep-summary sweeps/<task>/<time> [--metric test/rmse] [--no-plot]``
(or ``python -m kan_lightning.commands.sweep_summary ...``) writes ``summary.csv``, ``summary.md`` and
one ``summary_<param>.png`` per swept parameter into the sweep directory (``--format pdf|svg``,
``--dpi N``); jobs that differ only in their seed are drawn as mean ± std.

``kan-sweep-summary <dir> --group-by data.function,model --aggregate seed`` also writes
``summary_grouped.csv`` and ``summary_grouped.md``: one row per combination of the group-by
override values (``model=kan`` appears as ``model: kan``), with the mean and standard deviation
of every metric over the completed jobs of the group (the seeds). Swept keys that are neither
grouped by nor aggregated over are added to the grouping, so nothing is averaged silently.

Each job directory holds ``.hydra/overrides.yaml`` (written by Hydra before the job starts) and,
once the job has finished, ``metrics.json`` (written by ``kan_lightning.commands.train``). Only files are
read here: no Lightning or Hydra import.
"""

from __future__ import annotations

import csv
import json
import math
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


def is_number(value: Any) -> bool:
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
    metrics = {str(k): v for k, v in metrics.items() if is_number(v)}
    metrics.update({k: record[k] for k in EXTRA_METRICS if is_number(record.get(k))})
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


def is_finite(value: Any) -> bool:
    return is_number(value) and math.isfinite(value)


def sort_records(records: Sequence[dict[str, Any]], sort_by: str) -> list[dict[str, Any]]:
    """Completed jobs by ``sort_by`` ascending; jobs that failed or lack the metric last."""
    def key(item: tuple[int, dict[str, Any]]) -> tuple:
        index, record = item
        ok = record["status"] == COMPLETED and is_finite(record.get(sort_by))
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
