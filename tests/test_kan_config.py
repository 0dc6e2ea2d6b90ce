"""The KAN's hyperparameters have one home (KANConfig), its constructors own their checks, and
the config checker reports those checks by key before anything is built."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch

from kan_lightning.config_checks import ConfigError, validate_config
from kan_lightning.data.formula import compile_formula
from kan_lightning.nn import KAN, KANConfig, KANLayer, SplineConfig


def test_signatures_list_the_config_fields():
    assert list(inspect.signature(KAN).parameters) == ["layers_hidden"] + [
        f.name for f in dataclasses.fields(KANConfig) if f.name != "layers_hidden"
    ]
    assert list(inspect.signature(KANLayer).parameters) == ["in_features", "out_features"] + [
        f.name for f in dataclasses.fields(SplineConfig)
    ]
    # positional and keyword calls map onto the same fields
    assert KAN([2, 3, 1], 4, 2).config == KAN(layers_hidden=[2, 3, 1], grid_size=4, spline_order=2).config
    with pytest.raises(TypeError, match="grid_sze"):
        KAN([2, 1], grid_sze=3)


def test_config_follows_the_model_and_rebuilds_it():
    torch.manual_seed(0)
    kan = KAN([2, 3, 1], grid_size=4, regularization={"l1": 1e-3}, extrapolate="linear")
    assert kan.config == KANConfig(
        layers_hidden=[2, 3, 1], grid_size=4, regularization={"l1": 1e-3}, extrapolate="linear"
    ).as_dict()
    kan.extend_grid(8)
    kan.regularization["l1"] = 0.5  # schedules change the weights in place
    config = kan.config
    assert config["grid_size"] == 8 and config["regularization"]["l1"] == 0.5
    rebuilt = KAN(**config)
    rebuilt.load_state_dict(kan.state_dict())
    x = torch.rand(16, 2) * 2 - 1
    assert torch.equal(rebuilt(x), kan(x))
    assert rebuilt.config == config


def test_config_checks_its_values():
    with pytest.raises(ValueError, match=r"^grid_size must be an integer >= 1, got 0$"):
        KANConfig(layers_hidden=[2, 1], grid_size=0)
    with pytest.raises(ValueError, match=r"^contraction must be one of 'auto', 'dense', 'local', 'fused', got 'x'$"):
        SplineConfig(contraction="x")
    with pytest.raises(ValueError, match=r"regularization\.l2 is an unknown regularization term \(did you mean regularization\.l1\?\)"):
        KANConfig(layers_hidden=[2, 1], regularization={"l2": 1.0})


@pytest.mark.parametrize(
    "overrides,message",
    [
        # checks that live only in the constructors, reported by key before anything is built
        (["model.contraction=bogus"], "model.contraction='bogus' must be one of 'auto', 'dense', 'local', 'fused'"),
        (["model.extrapolate=far"], "model.extrapolate='far' must be one of 'bases', 'linear'"),
        (["model.scale_base=inf"], "model.scale_base=inf must be a finite number"),
        (["data.normalize_inputs=maybe"], "data.normalize_inputs='maybe' must be true or false"),
        (["data.sampling=grid", "data.function=high_dim_100", "data.n_samples=100"], "data.sampling='grid' needs"),
    ],
)
def test_constructor_checks_are_reported_by_key(make_cfg, overrides, message):
    with pytest.raises(ConfigError) as info:
        validate_config(make_cfg(*overrides))
    assert str(info.value).startswith(message), str(info.value)


def test_a_formula_is_parsed_once(make_cfg):
    from hydra.utils import instantiate

    cfg = make_cfg("data=formula", "data.formula='sin(x0)*x1+0.125'")
    compile_formula.cache_clear()
    validate_config(cfg)
    datamodule = instantiate(cfg.data, _convert_="all")
    assert datamodule.target.input_dim == 2
    assert compile_formula.cache_info().misses == 1
