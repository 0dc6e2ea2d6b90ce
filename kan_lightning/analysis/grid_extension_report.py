"""Reports of grid-extension runs: RMSE per grid, log-log plots, fitted slopes, and the KAN-vs-MLP
scaling figure (test RMSE against parameter count); the command is
:mod:`kan_lightning.commands.grid_extension_report`.

Only files are read here: no Lightning or Hydra import.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from kan_lightning.analysis.figures import DEFAULT_DPI, limit_to_data, save
from kan_lightning.analysis.scaling import PowerLaw, fit_before_floor

METRICS_FILE = "metrics.json"
STAGES_KEY = ("callbacks", "grid_extension", "stages")
THEORY_SLOPE = -4.0  # cubic splines: RMSE ~ G^-(k+1)


# ---------------------------------------------------------------------------------------------
# Reading


def load_record(run_dir: str | Path) -> dict:
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {METRICS_FILE} in {str(run_dir)!r}")
    return json.loads(path.read_text())


def record_stages(record: dict) -> list[dict]:
    """The grid stages of a run record (empty when it has none)."""
    node: Any = record
    for key in STAGES_KEY:
        node = node.get(key) if isinstance(node, dict) else None
    return list(node or [])


def delivered_stage(record: dict) -> dict | None:
    """The stage a run delivered (``GridExtension(keep_best=True)``), or ``None``."""
    node = (record.get("callbacks") or {}).get("grid_extension") or {}
    return node.get("delivered")


def best_validation_stage(stages: Sequence[dict]) -> dict | None:
    """The stage with the lowest validation RMSE (the one ``keep_best`` delivers), for runs
    recorded with ``val`` but without ``keep_best``; ``None`` without validation RMSE."""
    scored = [s for s in stages if _positive(s.get("val/rmse"))]
    return min(scored, key=lambda s: s["val/rmse"]) if scored else None


def load_stages(run_dir: str | Path) -> list[dict]:
    """The per-grid records of a run (``grid``, ``num_parameters``, ``train/rmse``, ``test/rmse``)."""
    stages = record_stages(load_record(run_dir))
    if not stages:
        raise ValueError(
            f"{Path(run_dir) / METRICS_FILE} has no grid-extension stages (was the run made with "
            "callbacks grid_extension and evaluate_splits?)"
        )
    return stages


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Run directories (holding ``metrics.json``) given directly or found below sweep/output
    directories, in sorted order without duplicates."""
    found: list[Path] = []
    for path in map(Path, paths):
        if (path / METRICS_FILE).is_file():
            found.append(path)
        elif path.is_dir():
            found.extend(sorted(p.parent for p in path.rglob(METRICS_FILE)))
        else:
            raise FileNotFoundError(f"{str(path)!r} is not a directory")
    return list(dict.fromkeys(p.resolve() for p in found))


def parse_reference(text: str) -> tuple[str, dict[int, float]]:
    """``"pykan 0.2.8=3:1.5e-3,5:7.3e-4"`` -> ``("pykan 0.2.8", {3: 1.5e-3, 5: 7.3e-4})``."""
    label, sep, pairs = text.rpartition("=")
    if not sep:
        label, pairs = "reference", text
    values: dict[int, float] = {}
    for item in pairs.split(","):
        grid, colon, value = item.strip().partition(":")
        if not colon:
            raise ValueError(f"reference entry {item!r} is not grid:value")
        values[int(grid)] = float(value)
    return label.strip() or "reference", values


# ---------------------------------------------------------------------------------------------
# Slopes and tables


def stage_slope(stages: Sequence[dict], metric: str = "test/rmse", x_key: str = "grid") -> PowerLaw:
    """Power law of ``metric`` against ``x_key`` over the stages before the error floor."""
    usable = [s for s in stages if _positive(s.get(metric)) and _positive(s.get(x_key))]
    return fit_before_floor([s[x_key] for s in usable], [s[metric] for s in usable])


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _cell(value: Any, fmt: str = ".3g") -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return format(value, fmt)
    return "—"


def stage_table(
    stages: Sequence[dict],
    metric: str = "test/rmse",
    label: str = "",
    reference: tuple[str, dict[int, float]] | None = None,
) -> tuple[str, float | None]:
    """A Markdown table of the stages and the power-law slope of ``metric`` against grid size
    (and parameter count), fitted over the grids before the error floor. Returns the text and
    the slope against grid size (``None`` when none could be fitted)."""
    ref_label, ref = reference or ("", {})
    timed = any("time_s" in s for s in stages)
    with_val = any("val/rmse" in s for s in stages)
    header = [label or "grid", "parameters", "epochs", "train RMSE"] + (["val RMSE"] if with_val else []) + ["test RMSE"]
    if ref:
        header.append(f"{ref_label} test RMSE")
    if timed:
        header.append("time (s)")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for s in stages:
        row = [str(s["grid"]), str(s["num_parameters"]), str(s.get("epoch", "—")), _cell(s.get("train/rmse"))]
        row += [_cell(s.get("val/rmse"))] if with_val else []
        row.append(_cell(s.get("test/rmse")))
        if ref:
            row.append(_cell(ref.get(int(s["grid"]))))
        if timed:
            row.append(_cell(s.get("time_s"), ".1f"))
        lines.append("| " + " | ".join(row) + " |")
    slope = None
    lines.append("")
    try:
        law = stage_slope(stages, metric)
        slope = law.slope
        used = [stages[i]["grid"] for i in law.points]
        by_params = stage_slope(stages, metric, "num_parameters").slope
        lines.append(
            f"Fitted slope of {metric} over G = {used[0]}..{used[-1]} (before the error floor): "
            f"**{slope:.2f}** against grid size, {by_params:.2f} against parameter count "
            f"(cubic-spline theory: {THEORY_SLOPE:.0f})."
        )
    except ValueError as err:
        lines.append(f"No slope fitted: {err}")
    return "\n".join(lines), slope


# ---------------------------------------------------------------------------------------------
# Plots


def _figure(size=(6, 4.2)):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig


def _theory_line(ax, xs: Sequence[float], x0: float, y0: float, slope: float = THEORY_SLOPE, label: str | None = None) -> None:
    lo, hi = min(xs), max(xs)
    ax.plot([lo, hi], [y0 * (lo / x0) ** slope, y0 * (hi / x0) ** slope], "k:", label=label or f"slope {slope:g}")


def plot_stages(
    runs: dict[str, Sequence[dict]],
    path: Path,
    x_key: str = "grid",
    reference: tuple[str, dict[int, float]] | None = None,
    dpi: int = DEFAULT_DPI,
) -> Path:
    """Log-log plot of train and test RMSE against grid size (or parameter count), one line
    pair per run, with the slope -4 line through the first test point (and a reference curve
    against grid size, e.g. pykan's). The axes span the data; the slope line is cut to them.
    The format follows ``path``'s suffix."""
    fig = _figure()
    ax = fig.add_subplot()
    shown: list[float] = []
    for name, stages in runs.items():
        pts = [s for s in stages if _positive(s.get("test/rmse"))]
        xs = [s[x_key] for s in pts]
        line = ax.plot(xs, [s["test/rmse"] for s in pts], "o-", label=f"{name} test")[0]
        train = [s for s in pts if _positive(s.get("train/rmse"))]
        ax.plot([s[x_key] for s in train], [s["train/rmse"] for s in train], "x--", color=line.get_color(), alpha=0.6, label=f"{name} train")
        shown += [s["test/rmse"] for s in pts] + [s["train/rmse"] for s in train]
    first = [s for s in next(iter(runs.values())) if _positive(s.get("test/rmse"))]
    if first:
        _theory_line(ax, [s[x_key] for s in first], first[0][x_key], first[0]["test/rmse"], label=f"slope {THEORY_SLOPE:g}")
    if reference and reference[1] and x_key == "grid":
        grids = sorted(reference[1])
        ax.plot(grids, [reference[1][g] for g in grids], "s:", color="grey", label=f"{reference[0]} test")
        shown += [reference[1][g] for g in grids]
    ax.set_xscale("log")
    ax.set_yscale("log")
    limit_to_data(ax, shown, log=True)
    ax.set_xlabel("grid size G" if x_key == "grid" else "parameters")
    ax.set_ylabel("RMSE (train: dashed)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save(fig, path, dpi)


# ---------------------------------------------------------------------------------------------
# Scaling: KAN grid stages and MLP runs on one figure


@dataclass
class ScalingSeries:
    """One curve of the scaling figure: a KAN shape (points = grid stages) or an MLP depth
    (points = runs of different widths)."""

    kind: str  # "KAN" or "MLP"
    label: str
    points: list[dict] = field(default_factory=list)  # num_parameters, test/rmse, train/rmse, (grid | widths)


def _widths_text(widths: Sequence[int]) -> str:
    return "[" + ", ".join(str(w) for w in widths) + "]"


def scaling_series(run_dirs: Iterable[Path]) -> list[ScalingSeries]:
    """KAN series (one per run: its grid stages) and MLP series (one per depth: its runs, sorted
    by parameter count) from completed runs."""
    kan: list[ScalingSeries] = []
    mlp: dict[int, ScalingSeries] = {}
    for run in run_dirs:
        record = load_record(run)
        if record.get("status") != "completed":
            continue
        model = (record.get("config") or {}).get("model") or {}
        widths = list(model.get("layers_hidden") or [])
        stages = record_stages(record)
        if stages:
            label = f"KAN {_widths_text(widths)}" if widths else f"KAN {run.name}"
            points = [
                {"num_parameters": s["num_parameters"], "test/rmse": s.get("test/rmse"), "train/rmse": s.get("train/rmse"), "grid": s["grid"]}
                for s in stages
            ]
            kan.append(ScalingSeries("KAN", label, points))
            continue
        metrics = record.get("metrics") or {}
        if not _positive(metrics.get("test/rmse")):
            continue
        kind = "MLP" if str(model.get("_target_", "")).endswith("MLP") else "model"
        depth = max(len(widths) - 2, 0)
        series = mlp.setdefault(depth, ScalingSeries(kind, f"{kind} depth {depth}"))
        series.points.append(
            {"num_parameters": record.get("num_parameters"), "test/rmse": metrics.get("test/rmse"), "train/rmse": metrics.get("train/rmse"), "widths": widths}
        )
    for series in mlp.values():
        series.points.sort(key=lambda p: p["num_parameters"])
    # identical labels (the same shape twice): number them
    seen: dict[str, int] = {}
    for series in kan:
        seen[series.label] = seen.get(series.label, 0) + 1
        if seen[series.label] > 1:
            series.label += f" ({seen[series.label]})"
    return kan + [mlp[d] for d in sorted(mlp)]


def plot_scaling(series: Sequence[ScalingSeries], path: Path, dpi: int = DEFAULT_DPI) -> Path:
    """Test RMSE against parameter count, log-log: KAN lines (grid stages), MLP lines (widths),
    and the N^-4 line of cubic-spline theory through the best KAN's first point, cut to the
    data's range. The format follows ``path``'s suffix."""
    fig = _figure((6.4, 4.5))
    ax = fig.add_subplot()
    xs_all: list[float] = []
    shown: list[float] = []
    for s in series:
        pts = [p for p in s.points if _positive(p.get("test/rmse"))]
        xs = [p["num_parameters"] for p in pts]
        xs_all += xs
        shown += [p["test/rmse"] for p in pts]
        style = "o-" if s.kind == "KAN" else "s--"
        ax.plot(xs, [p["test/rmse"] for p in pts], style, label=s.label)
    kans = [s for s in series if s.kind == "KAN" and any(_positive(p.get("test/rmse")) for p in s.points)]
    if kans and xs_all:
        best = min(kans, key=lambda s: min(p["test/rmse"] for p in s.points if _positive(p.get("test/rmse"))))
        p0 = next(p for p in best.points if _positive(p.get("test/rmse")))
        _theory_line(ax, xs_all, p0["num_parameters"], p0["test/rmse"], label=f"N^{THEORY_SLOPE:g} (theory)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    limit_to_data(ax, shown, log=True)
    ax.set_xlabel("number of parameters")
    ax.set_ylabel("test RMSE")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save(fig, path, dpi)


def scaling_markdown(series: Sequence[ScalingSeries]) -> str:
    """Per KAN shape: its stage table with the fitted slopes; then the MLP runs."""
    parts = []
    for s in series:
        if s.kind != "KAN":
            continue
        stages = [{**p, "epoch": "—"} for p in s.points]
        table, _ = stage_table(stages)
        parts.append(f"### {s.label}\n\n{table}")
    rows = [(s, p) for s in series if s.kind != "KAN" for p in s.points]
    if rows:
        lines = ["| model | widths | parameters | train RMSE | test RMSE |", "|---|---|---|---|---|"]
        for s, p in sorted(rows, key=lambda sp: sp[1]["num_parameters"]):
            lines.append(
                f"| {s.label} | {_widths_text(p['widths'])} | {p['num_parameters']} | {_cell(p.get('train/rmse'))} | {_cell(p.get('test/rmse'))} |"
            )
        mlp_slopes = []
        for s in series:
            if s.kind != "KAN" and len(s.points) >= 2:
                try:
                    law = fit_before_floor([p["num_parameters"] for p in s.points], [p["test/rmse"] for p in s.points])
                    mlp_slopes.append(f"{s.label}: {law.slope:.2f}")
                except ValueError:
                    mlp_slopes.append(f"{s.label}: no decreasing run")
        text = "\n".join(lines)
        if mlp_slopes:
            text += "\n\nFitted slope of test RMSE against parameter count (before the floor): " + "; ".join(mlp_slopes) + "."
        parts.append(f"### MLPs\n\n{text}")
    return "\n\n".join(parts) + "\n"


# ---------------------------------------------------------------------------------------------
# Command line


def run_labels(run_dirs: Sequence[Path], records: Sequence[dict]) -> list[str]:
    """``KAN`` for a single run; ``seed <n>`` when the runs differ by seed; else directory names."""
    if len(run_dirs) == 1:
        return ["KAN"]
    seeds = [r.get("seed") for r in records]
    if None not in seeds and len(set(seeds)) == len(seeds):
        return [f"seed {s}" for s in seeds]
    names = [Path(r).name for r in run_dirs]
    return names if len(set(names)) == len(names) else [str(r) for r in run_dirs]


def write_grid_extension_report(run_dirs: Sequence[Path], out: Path, name: str, x_key: str, reference, fmt: str = "png", dpi: int = DEFAULT_DPI) -> str:
    runs: dict[str, list[dict]] = {}
    walls: dict[str, float | None] = {}
    delivereds: dict[str, dict | None] = {}
    records = [load_record(run) for run in run_dirs]
    for run, record, key in zip(run_dirs, records, run_labels(run_dirs, records)):
        runs[key] = load_stages(run)
        walls[key] = record.get("wall_time_s")
        delivereds[key] = delivered_stage(record) or best_validation_stage(runs[key])
    parts = []
    for key, stages in runs.items():
        table, _ = stage_table(stages, label="grid", reference=reference)
        wall, delivered = walls[key], delivereds[key]
        if delivered:
            table += (
                f"\n\nDelivered (lowest validation RMSE; selected on validation, never on test): grid "
                f"{delivered['grid']}, test RMSE {_cell(delivered.get('test/rmse'))}."
            )
        if isinstance(wall, (int, float)):
            table += f"\n\nWall time of the run (fit + test): {wall:.1f} s."
        parts.append(f"### {key}\n\n{table}" if len(runs) > 1 else table)
    text = "\n\n".join(parts) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.md").write_text(text)
    plot_stages(runs, out / f"{name}.{fmt}", x_key, reference, dpi)
    return text
