"""What every report figure shares: the file format and resolution chosen on the command line,
and axis limits set by the data (a guide line, e.g. a theory slope, must not squash it)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Iterable

FORMATS = ("png", "pdf", "svg")
DEFAULT_DPI = 150


def add_figure_args(parser: argparse.ArgumentParser) -> None:
    """``--format png|pdf|svg`` and ``--dpi N`` (for raster output)."""
    parser.add_argument("--format", choices=FORMATS, default="png", help="figure file format (default: png)")
    parser.add_argument("--dpi", type=_dpi, default=DEFAULT_DPI, help=f"resolution of PNG figures (default: {DEFAULT_DPI})")


def _dpi(text: str) -> int:
    value = int(text)
    if not 20 <= value <= 1200:
        raise argparse.ArgumentTypeError(f"--dpi={text} must be between 20 and 1200")
    return value


def save(fig, path: Path, dpi: int = DEFAULT_DPI) -> Path:
    """Save ``fig`` to ``path`` (the format from its suffix), creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, facecolor="white")
    return path


def limit_to_data(ax, values: Iterable[float], log: bool, margin: float = 0.08) -> None:
    """Y limits spanning ``values`` (the data, not guide lines) with a margin: a fraction of
    the range, of the decades on a log axis."""
    values = [v for v in values if v is not None and math.isfinite(v) and (v > 0 or not log)]
    if not values:
        return
    lo, hi = min(values), max(values)
    if log:
        span = max(math.log10(hi / lo), 0.5)
        ax.set_ylim(lo / 10 ** (margin * span), hi * 10 ** (margin * span))
    else:
        span = (hi - lo) or abs(hi) or 1.0
        ax.set_ylim(lo - margin * span, hi + margin * span)
