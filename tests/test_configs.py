"""Every YAML under conf/ composes, and each ``_target_`` accepts the keys it is given."""

from __future__ import annotations

import inspect

import pytest
from hydra.utils import get_object
from omegaconf import OmegaConf

from conftest import CONF_DIR

SKIP_GROUPS = {"hydra"}  # Hydra's own settings, composed with every config anyway
INSTANTIATE_KEYS = {"_target_", "_partial_", "_convert_", "_recursive_", "_args_"}


def group_options() -> list[tuple[str, str]]:
    options = []
    for path in sorted(CONF_DIR.rglob("*.yaml")):
        group = path.parent.relative_to(CONF_DIR).as_posix()
        if group != "." and group.split("/")[0] not in SKIP_GROUPS:
            options.append((group, path.stem))
    return options


def _target_nodes(node, path="cfg"):
    if isinstance(node, dict):
        if "_target_" in node:
            yield path, node
        for key, value in node.items():
            yield from _target_nodes(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _target_nodes(value, f"{path}[{i}]")


def check_targets(cfg) -> int:
    """Bind every ``_target_``'s keys to its signature; returns how many were checked."""
    container = OmegaConf.to_container(cfg, resolve=True)
    count = 0
    for path, node in _target_nodes(container):
        target = get_object(node["_target_"])
        kwargs = {k: v for k, v in node.items() if k not in INSTANTIATE_KEYS}
        try:
            inspect.signature(target).bind_partial(**kwargs)
        except TypeError as err:
            raise AssertionError(f"{path}: {node['_target_']} does not accept {sorted(kwargs)}: {err}") from None
        count += 1
    return count


def test_every_yaml_is_checked():
    groups = {group for group, _ in group_options()}
    assert {"model", "data", "optimizer", "scheduler", "trainer", "logger", "callbacks", "experiment"} <= groups


@pytest.mark.parametrize("group,option", group_options())
def test_group_option_composes_and_targets_accept_keys(make_cfg, group, option):
    overrides = {"data/formula": ["data=formula", "data.formula=x0*x1"]}.get(f"{group}/{option}", [])
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
