"""The package's shape, read from its source with ``ast`` (nothing is imported): no import circle,
the layering between folders, ``conf/`` YAML only, and no module grown past a readable size."""

from __future__ import annotations

import ast
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "kan_lightning"
SOURCES = sorted([*PACKAGE.rglob("*.py"), *(REPO / "hydra_plugins").rglob("*.py")])

MAX_LINES = 400
LONG_MODULES = {
    # the compute kernels: one piece of arithmetic written for several devices and precisions
    "kan_lightning/nn/kernels.py",
}
LINE_LIMITS = {"kan_lightning/commands/train.py": 150, "kan_lightning/api.py": 300}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


# the package and its Hydra plugins (which import it, and which it registers)
MODULES = {module_name(path): path for path in SOURCES}


def known(name: str) -> str | None:
    """The module of ours ``name`` lives in: itself, or the nearest package of ours above it."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(path: Path) -> list[tuple[str, int]]:
    """Every module of ours ``path`` imports, wherever the import stands (module level, inside
    functions, under ``TYPE_CHECKING``), as ``(module, line)``. ``from P import name`` counts as
    importing the submodule ``P.name`` where there is one, else ``P``; relative imports are
    resolved; ``importlib.import_module(...)`` counts too: with a literal name, that module, with
    a computed one (a table of lazy names), every module of ours the file names in a string."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    named = [
        (node.value, node.lineno)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in MODULES
    ]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                found.append((submodule if submodule in MODULES else source, node.lineno))
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module" and node.args:
            argument = node.args[0]
            literal = isinstance(argument, ast.Constant) and isinstance(argument.value, str)
            found += [(argument.value, node.lineno)] if literal else named
    return [(known(module) or module, line) for module, line in found]


IMPORTS = {module_name(path): imports_of(path) for path in SOURCES}
GRAPH = {name: {module for module, _ in found if module in MODULES and module != name} for name, found in IMPORTS.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` as ``[a, b, ..., a]``, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def violations(folder: str, forbidden: tuple[str, ...]) -> list[str]:
    """``module:line -> import`` for each import from ``folder``'s modules of a name under
    ``forbidden`` (dotted prefixes: our modules or other packages)."""
    prefix = f"kan_lightning.{folder}"
    return [
        f"{name}:{line} -> {module}"
        for name, found in IMPORTS.items()
        if name == prefix or name.startswith(prefix + ".")
        for module, line in found
        if any(module == f or module.startswith(f + ".") for f in forbidden)
    ]


def test_the_finder_sees_a_circle_and_a_clean_graph():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_import_reader_resolves_relative_in_function_and_lazy_imports():
    # kan_lightning.lit.callbacks imports its modules relatively; the datamodule imports sampling
    assert "kan_lightning.lit.callbacks.grid_update" in GRAPH["kan_lightning.lit.callbacks"]
    assert "kan_lightning.data.sampling" in GRAPH["kan_lightning.data.datamodule"]
    # an import inside a function (pipeline builds the datamodule lazily)
    assert "kan_lightning.data" in GRAPH["kan_lightning.pipeline"]
    # names the package loads on first use, through importlib
    assert "kan_lightning.api" in GRAPH["kan_lightning"]
    # the plugins and the package, both ways
    assert "hydra_plugins.kan_lightning_stacked" in GRAPH["kan_lightning.resolvers"]
    assert "kan_lightning.slurm" in GRAPH["hydra_plugins.kan_lightning_slurm"]


def test_no_import_circle():
    assert find_cycle(GRAPH) is None, " -> ".join(find_cycle(GRAPH) or [])


def test_nn_stands_alone():
    """The networks import nothing of training, data, analysis or the commands, nor Lightning,
    Hydra or matplotlib: ``import kan_lightning.nn`` is torch alone."""
    ours = tuple(f"kan_lightning.{folder}" for folder in ("lit", "data", "analysis", "commands"))
    assert violations("nn", (*ours, "lightning", "pytorch_lightning", "hydra", "matplotlib")) == []


def test_analysis_does_not_train():
    ours = tuple(f"kan_lightning.{folder}" for folder in ("lit", "commands", "pipeline"))
    assert violations("analysis", ours) == []


def test_only_commands_import_commands():
    importers = [
        f"{name}:{line} -> {module}"
        for name, found in IMPORTS.items()
        if not name.startswith("kan_lightning.commands")
        for module, line in found
        if module.startswith("kan_lightning.commands")
    ]
    assert importers == []


def test_conf_is_yaml_only():
    """``conf/__init__.py`` only makes the folder a package Hydra can find: comments, no code."""
    for path in (REPO / "conf").rglob("*.py"):
        assert ast.parse(path.read_text()).body == [], path


def test_no_module_grows_past_a_readable_size():
    sizes = {str(path.relative_to(REPO)): len(path.read_text().splitlines()) for path in SOURCES}
    too_long = {
        where: lines
        for where, lines in sizes.items()
        if where not in LONG_MODULES and lines > LINE_LIMITS.get(where, MAX_LINES)
    }
    assert too_long == {}
    assert set(LINE_LIMITS) <= set(sizes)  # the limits name files that exist
