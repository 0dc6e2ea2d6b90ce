"""Every YAML under conf/ composes, and each ``_target_`` accepts the keys it is given."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from conftest import CONF_DIR
from kan_lightning import config_checks

SKIP_GROUPS = {"hydra"}  # Hydra's own settings, composed with every config anyway


def group_options() -> list[tuple[str, str]]:
    options = []
    for path in sorted(CONF_DIR.rglob("*.yaml")):
        group = path.parent.relative_to(CONF_DIR).as_posix()
        if group != "." and group.split("/")[0] not in SKIP_GROUPS:
            options.append((group, path.stem))
    return options


def check_targets(cfg) -> int:
    """Every ``_target_`` imports and accepts the keys of its node (the check ``kan-train``
    runs); returns how many were checked."""
    return config_checks.check_targets(OmegaConf.to_container(cfg, resolve=True))


def test_every_yaml_is_checked():
    groups = {group for group, _ in group_options()}
    assert {"model", "data", "optimizer", "scheduler", "trainer", "logger", "callbacks", "experiment"} <= groups


@pytest.mark.parametrize("group,option", group_options())
def test_group_option_composes_and_targets_accept_keys(make_cfg, group, option):
    overrides = {
        "data/formula": ["data=formula", "data.formula=x0*x1"],
        "fit/lm": ["experiment=paper_grid_extension", "fit=lm"],  # a fit of grid-extension stages
        "fit/lm_fast": ["experiment=paper_grid_extension", "fit=lm_fast"],
    }.get(f"{group}/{option}", [])
    cfg = make_cfg(*(overrides or [f"{group}={option}"]))
    assert check_targets(cfg) >= 3  # model, data, trainer at least


def test_train_defaults(make_cfg):
    cfg = make_cfg()
    assert cfg.model.layers_hidden == ["auto", 20, 20, "auto"]
    assert (cfg.model.grid_size, cfg.model.spline_order) == (5, 3)
    assert cfg.optimizer._target_ == "torch.optim.Adam" and cfg.optimizer.lr == 0.01
    assert cfg.trainer.accelerator == "cpu"
    assert cfg.data.function == "guide_example"


def test_eval_config_composes(make_cfg):
    cfg = make_cfg("ckpt_path=x.ckpt", config_name="eval")
    assert cfg.split == "test"
    check_targets(cfg)
