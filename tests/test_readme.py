"""The README is true: its Python blocks and commands run, its config-group table matches conf/."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
CONF = REPO / "conf"
BIN = Path(sys.executable).parent

# Shorter versions of what trains long (each must still be found in the README).
PYTHON_SHORTENINGS = {"epochs=200": "epochs=2", "patience=50": "patience=1"}
# Appended to (or replacing in) every kan-train command.
SHORT_TRAINING = {"trainer.max_epochs": "1", "data.n_samples": "300", "trainer.enable_model_summary": "false"}
# Commands not run here, each with the reason.
NOT_RUN = {
    "pip install": "installs packages",
    "pytest": "the test suite itself",
    "tensorboard --logdir": "a server: tests/test_dashboards.py starts one on a sweep",
    "launcher=slurm": "needs a SLURM cluster",
    "trainer=ddp trainer.devices=4": "needs 4 GPUs",
    "-m trainer=ddp trainer.devices=2": "needs 2 GPUs",
    "launcher=submitit_local": "tests/test_scaleout.py runs the submitit path",
    "experiment=guide_suite": "Results: an hour of CPU; its preset is run short in tests/test_experiments.py",
    "experiment=paper_grid_extension": "Results: hours of CPU; see tests/test_experiments.py",
    "experiment=paper_scaling": "Results: hours of CPU; see tests/test_experiments.py",
    "sweeps/guide_suite/results": "Results: needs the full sweep",
    "sweeps/paper_grid_extension/results": "Results: needs the full sweep",
    "--scaling": "Results: needs the full sweeps",
    "sweeps/toy_margin": "Results: needs the full runs",
    "experiment=feynman": "Results: hours of CPU; tests/test_paper_benchmarks.py runs the preset short",
    "sweeps/feynman_reduced": "Results: needs the full sweeps",
    "experiment=special_functions": "Results: hours of CPU at the paper's protocol; tests/test_paper_benchmarks.py composes it",
    "sweeps/special_reduced": "Results: needs the full sweeps",
    "sweeps/feynman_lm": "Results: needs the full sweeps",
    "sweeps/feynman_pruned": "Results: needs the full sweeps",
    "sweeps/feynman_full": "Results: needs the full sweeps",
    "sweeps/feynman_fast": "Results: needs the full sweep",
    "sweeps/special_lm": "Results: needs the full sweeps",
    "sweeps/special_full": "Results: needs the full sweeps",
    "sweeps/feyn_ab": "Results: needs the full sweeps",
    "docs/results/grid_extension_ab.py": "Results: trains the toy to G = 100 (minutes)",
    "docs/results/toy_side_by_side.py": "Results: trains the toy and pykan side by side (minutes; pykan is not a dependency)",
    "bench_stacked --experiment paper_grid_extension": "Results: ~10 minutes of CPU, near the per-command limit; tests/test_stacked_grid_extension.py runs stacked grid extension against separate runs",
}


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README, flags=re.M | re.S)


def commands() -> list[str]:
    """Every command of the README's bash blocks: continuation lines joined, comments and
    ``&&`` chains split."""
    found = []
    for block in blocks("bash"):
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            line = re.sub(r"\s#.*$", "", line).strip()
            if line and not line.startswith("#"):
                found.extend(part.strip() for part in line.split("&&"))
    return found


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    python = blocks("python")
    assert len(python) >= 2
    for index, code in enumerate(python):
        for long, short in PYTHON_SHORTENINGS.items():
            code = code.replace(long, short)
        namespace: dict = {"__name__": f"readme_block_{index}"}
        exec(compile(code, f"README.md python block {index}", "exec"), namespace)  # the README's own code
    assert all(any(long in code for code in python) for long in PYTHON_SHORTENINGS), "a shortening no longer applies"


def _options(group: str) -> set[str]:
    return {p.stem for p in (CONF / group).glob("*.yaml")}


def test_readme_config_group_table_lists_every_option():
    table = README.split("### Config groups", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| `([\w/]+)` \| (.*) \|$", table, flags=re.M))
    groups = {p.name for p in CONF.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")) and p.name not in ("local",)}
    assert set(rows) == groups
    for group, text in rows.items():
        listed = set(re.findall(r"\*\*`([\w]+)`\*\*", text))
        assert listed == _options(group), f"{group}: README lists {sorted(listed)}, conf/{group} has {sorted(_options(group))}"


def _shortened(command: str) -> list[str]:
    words = shlex.split(command)
    if words[0] != "kan-train" or "--help" in words:
        return words
    values = dict(SHORT_TRAINING)
    if "hparams_search=optuna" in words:
        values["hydra.sweeper.n_trials"] = "2"
    out = []
    for word in words:
        key = word.split("=", 1)[0]
        out.append(f"{key}={values.pop(key)}" if key in values else word)
    return out + [f"{k}={v}" for k, v in values.items()]


def _fill_placeholders(words: list[str], cwd: Path) -> list[str]:
    """``outputs/train/<time>/...``: the newest run directory there."""
    filled = []
    for word in words:
        match = re.search(r"([\w./=-]*?)<time>", word)
        if match:
            prefix = word[word.index("=") + 1 if "=" in word.split("<time>")[0] else 0 : match.end() - len("<time>")]
            # <time> is a run's timestamp directory (not, say, an Optuna study's folder beside it)
            stamped = [p for p in (cwd / prefix).iterdir() if re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d", p.name)]
            runs = sorted(stamped, key=lambda p: p.stat().st_mtime)
            word = word.replace(f"{prefix}<time>", f"{prefix}{runs[-1].name}")
        filled.append(word)
    return filled


@pytest.mark.slow
def test_readme_commands_run(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    ran, skipped = [], []
    for command in commands():
        reason = next((why for pattern, why in NOT_RUN.items() if pattern in command), None)
        if reason:
            skipped.append((command, reason))
            continue
        words = _fill_placeholders(_shortened(command), tmp_path)
        if words[0] == "kan-bench":
            words = [w if w != "20" else "1" for w in words] + ["--shapes", "4,6,2:5"]
        result = subprocess.run(words, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{command}\n-> {' '.join(words)}\n{result.stderr[-3000:]}"
        if "--help" in words:
            assert result.stdout.startswith(f"{words[0]} is powered by Hydra"), result.stdout[:200]
        ran.append(command)
    assert len(ran) >= 12 and all(c.split()[0] in ("kan-train", "kan-eval", "kan-sweep-summary", "kan-symbolic", "kan-bench", "python") for c in ran)
    assert {"kan-eval", "kan-symbolic", "kan-sweep-summary"} <= {c.split()[0] for c in ran}


@pytest.mark.parametrize("config,app", [("train", "kan-train"), ("eval", "kan-eval"), ("symbolic", "kan-symbolic")])
def test_each_command_names_itself_in_help(config, app):
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module("kan_lightning.conf", version_base="1.3"):
        cfg = compose(config, return_hydra_config=True)
    assert cfg.hydra.help.app_name == app
