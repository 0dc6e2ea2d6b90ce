"""Sweep figures: a metric against every swept parameter, seeds as mean ± std."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

from kan_lightning.analysis.sweep_groups import mean_std
from kan_lightning.analysis.sweeps import is_finite, is_number, swept_parameters


def use_log_scale(values: Iterable[Any], factor: float = 20.0) -> bool:
    """Log axis when every value is a positive number and they span more than ``factor``."""
    values = list(values)
    if not values or not all(is_finite(v) and v > 0 for v in values):
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
    points = [row for row in rows if is_finite(row["metrics"].get(metric))]
    figures = {}
    for param in params:
        used = [row for row in points if row["overrides"].get(param) is not None]
        if not used:
            continue
        xs = [row["overrides"][param] for row in used]
        numeric = all(is_number(x) for x in xs)
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
