"""Power-law fits and parameter matching, on synthetic inputs with known answers."""

from __future__ import annotations

import pytest

from kan_lightning.analysis.scaling import (
    fit_before_floor,
    fit_power_law,
    kan_parameter_count,
    matching_mlp_widths,
    mlp_parameter_count,
)
from kan_lightning.nn import KAN, MLP


def test_power_law_recovers_exponent():
    sizes = [3, 5, 10, 20, 50]
    law = fit_power_law(sizes, [2.5 * g**-4 for g in sizes])
    assert law.slope == pytest.approx(-4, abs=1e-12)
    assert law.coefficient == pytest.approx(2.5, rel=1e-10)
    assert law(10) == pytest.approx(2.5e-4)


def test_fit_stops_at_the_error_floor():
    sizes = [3, 5, 10, 20, 50, 100]
    errors = [g**-4 for g in sizes[:4]] + [5e-6, 5.5e-6]  # a floor from G=50 on
    law = fit_before_floor(sizes, errors)
    assert law.points == (0, 1, 2, 3)
    assert law.slope == pytest.approx(-4, abs=1e-12)


def test_fit_rejects_bad_input():
    with pytest.raises(ValueError, match="positive finite"):
        fit_power_law([1, 2], [0.0, 1.0])
    with pytest.raises(ValueError, match="no decreasing run"):
        fit_before_floor([1, 2, 3], [1.0, 1.0, 1.0])


@pytest.mark.parametrize("widths,grid,order", [([2, 20, 20, 1], 5, 3), ([2, 5, 1], 10, 2), ([3, 1], 1, 0)])
def test_parameter_counts_match_the_models(widths, grid, order):
    assert kan_parameter_count(widths, grid, order) == sum(p.numel() for p in KAN(widths, grid, order).parameters())
    assert mlp_parameter_count(widths) == sum(p.numel() for p in MLP(widths).parameters())


def test_matching_mlp_is_within_five_percent():
    target = kan_parameter_count([2, 20, 20, 1], 5, 3)
    widths = matching_mlp_widths(target, 2, 1, depth=2)
    assert abs(mlp_parameter_count(widths) - target) / target < 0.05
    assert widths[0] == 2 and widths[-1] == 1 and len(widths) == 4
