"""Our runs of the KAN paper's benchmarks beside the paper's tables.

    python -m kan_lightning.commands.paper_tables feynman|special <run or sweep dir> [...] [--out DIR] [--name NAME]

finds every completed run below the given directories (``experiment=feynman`` or
``experiment=special_functions``, KAN or MLP, pruned or not), sorts each into a family (``kan``,
``kan_pruned``, ``mlp``), keeps per benchmark and family the run with the lowest *validation*
RMSE (over depths, seeds, activations) and reports its test RMSE beside the paper's column:
unpruned KAN / pruned KAN / MLP (Feynman, Table 2) or best KAN / minimal KAN / MLP (special
functions, Table 1). The paper picks its figure by *test* RMSE over depths and seeds; ours never
looks at test to choose (within a run, ``GridExtension(keep_best)`` picks the grid stage by
validation too). Writes ``<name>.md`` and prints it, with the counts of benchmarks where ours is
at or below the paper, and the same counts with each run chosen by test RMSE, the paper's way.

"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from kan_lightning.analysis.grid_extension_report import delivered_stage, load_record
from kan_lightning.data.paper_benchmarks import FEYNMAN, FEYNMAN_COLUMNS, SPECIAL, SPECIAL_COLUMNS

FAMILIES = ("kan", "kan_pruned", "mlp")
FAMILY_NAMES = {"kan": "KAN", "kan_pruned": "pruned KAN", "mlp": "MLP"}
# our family -> the paper's column it is compared with
PAPER_COLUMN = {
    "feynman": dict(zip(FAMILIES, (FEYNMAN_COLUMNS[0], FEYNMAN_COLUMNS[1], FEYNMAN_COLUMNS[3]))),
    "special": dict(zip(FAMILIES, (SPECIAL_COLUMNS[0], SPECIAL_COLUMNS[1], SPECIAL_COLUMNS[2]))),
}
TABLES = {"feynman": FEYNMAN, "special": SPECIAL}


def run_family(record: Mapping[str, Any]) -> str:
    """``mlp``, ``kan_pruned`` (a pruning callback in the config) or ``kan``."""
    config = record.get("config") or {}
    target = str((config.get("model") or {}).get("_target_", ""))
    if target.endswith("MLP"):
        return "mlp"
    return "kan_pruned" if "pruning" in (config.get("callbacks") or {}) else "kan"


def run_result(record: Mapping[str, Any]) -> tuple[float, float, str] | None:
    """``(validation RMSE, test RMSE, label)`` of the model a run delivered, or ``None``; the
    label names the run: widths, seed, delivered grid, the hidden grids' range if not the default, and a
    pruned run's L1 weight."""
    metrics = record.get("metrics") or {}
    test = metrics.get("test/rmse")
    delivered = delivered_stage(dict(record))
    val = delivered.get("val/rmse") if delivered else metrics.get("val/rmse")
    if not isinstance(test, (int, float)) or not isinstance(val, (int, float)):
        return None
    config = record.get("config") or {}
    label = f"{list((config.get('model') or {}).get('layers_hidden') or [])}"
    pruned = (((record.get("callbacks") or {}).get("pruning") or {}).get("widths") or {}).get("after")
    if pruned:
        label += f" pruned to {list(pruned)}"
    label += f" seed {record.get('seed', config.get('seed'))}"
    if delivered:
        label += f", G = {delivered.get('grid')}"
    hidden_range = ((config.get("callbacks") or {}).get("grid_extension") or {}).get("hidden_range", "margin")
    if hidden_range != "margin":
        label += f", {hidden_range}"
    l1 = ((config.get("model") or {}).get("regularization") or {}).get("l1")
    if pruned and isinstance(l1, (int, float)) and l1:  # the paper's pruned KANs take lambda 1e-2 or 1e-3
        label += f", l1 {l1:g}"
    return float(val), float(test), label


def best_by_validation(results: Sequence[tuple[float, float, str]]) -> tuple[float, float, str] | None:
    """The result with the lowest validation RMSE (NaN-safe)."""
    finite = [r for r in results if math.isfinite(r[0])]
    return min(finite) if finite else None


def collect(
    run_dirs: Sequence[Path], table: str, chosen: dict[str, dict[str, str]] | None = None,
    by_test: dict[str, dict[str, float]] | None = None,
) -> dict[str, dict[str, float]]:
    """``{benchmark name: {family: test RMSE of the best-by-validation run}}``; ``chosen``, if
    given, receives ``{benchmark name: {family: label of the run chosen}}``, and ``by_test``
    ``{benchmark name: {family: the lowest test RMSE}}`` (the paper's way of choosing)."""
    names = {b.function_name: b.name for b in TABLES[table]}
    found: dict[str, dict[str, list[tuple[float, float, str]]]] = {}
    for run in run_dirs:
        record = load_record(run)
        if record.get("status") != "completed":
            continue
        function = ((record.get("config") or {}).get("data") or {}).get("function")
        result = run_result(record)
        if function not in names or result is None:
            continue
        found.setdefault(names[function], {}).setdefault(run_family(record), []).append(result)
    best = {name: {fam: best_by_validation(rs) for fam, rs in fams.items()} for name, fams in found.items()}
    if by_test is not None:
        by_test.update({name: {fam: min((r[1] for r in rs if math.isfinite(r[1])), default=math.nan) for fam, rs in fams.items()}
                        for name, fams in found.items()})  # (NaN-safe, as best_by_validation)
    if chosen is not None:
        chosen.update({name: {fam: r[2] for fam, r in fams.items() if r} for name, fams in best.items()})
    return {name: {fam: r[1] if r else math.nan for fam, r in fams.items()} for name, fams in best.items()}


def count_at_or_below(ours: Mapping[str, Mapping[str, float]], table: str) -> dict[str, tuple[int, int]]:
    """Per family: (benchmarks where ours <= the paper's column, benchmarks with a result of ours);
    plus ``kan_vs_mlp``: where our KAN <= our MLP (among those with both)."""
    paper = {b.name: b.paper for b in TABLES[table]}
    counts = {}
    for family, column in PAPER_COLUMN[table].items():
        pairs = [(fams[family], paper[name][column]) for name, fams in ours.items() if family in fams and name in paper]
        counts[family] = (sum(1 for o, p in pairs if o <= p), len(pairs))
    both = [(f["kan"], f["mlp"]) for f in ours.values() if "kan" in f and "mlp" in f]
    counts["kan_vs_mlp"] = (sum(1 for k, m in both if k <= m), len(both))
    return counts


def _cell(value: float | None) -> str:
    return f"{value:.2e}" if isinstance(value, float) and math.isfinite(value) else "—"


def markdown(
    ours: Mapping[str, Mapping[str, float]], table: str, chosen: Mapping[str, Mapping[str, str]] | None = None,
    by_test: Mapping[str, Mapping[str, float]] | None = None,
) -> str:
    columns = PAPER_COLUMN[table]
    paper_label = {"unpruned_kan": "unpruned KAN", "pruned_kan": "pruned KAN", "best_kan": "best KAN", "minimal_kan": "minimal KAN", "mlp": "MLP"}
    header = ["benchmark", "formula / function", "domain"]
    for family, column in columns.items():
        header += [f"paper {paper_label[column]}", f"ours {family.replace('_', ' ')}"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * (len(header) - 3)) + "|"]
    for b in TABLES[table]:
        fams = ours.get(b.name, {})
        domain = " × ".join(f"[{lo:.3g}, {hi:.3g}]" for lo, hi in b.domain)
        row = [b.name, f"`{b.formula}`", domain]
        for family, column in columns.items():
            mark = " ✓" if family in fams and fams[family] <= b.paper[column] else ""
            row += [_cell(b.paper[column]), _cell(fams.get(family)) + mark]
        lines.append("| " + " | ".join(row) + " |")
    counts = count_at_or_below(ours, table)
    lines.append("")
    for family, column in columns.items():
        at, total = counts[family]
        lines.append(f"- ours {family.replace('_', ' ')} at or below the paper's {paper_label[column]}: **{at} of {total}** run")
    at, total = counts["kan_vs_mlp"]
    lines.append(f"- our KAN at or below our MLP: {at} of {total}")
    if by_test:
        counts = count_at_or_below(by_test, table)
        lines.append("- chosen by test RMSE instead, as the paper chooses: " + ", ".join(
            f"ours {family.replace('_', ' ')} {counts[family][0]} of {counts[family][1]}" for family in columns))
    for family in columns if chosen else ():
        picked = [f"{b.name} {chosen[b.name][family]}" for b in TABLES[table] if family in chosen.get(b.name, {})]
        if picked:
            lines.append(f"\nThe {FAMILY_NAMES[family]} run chosen (lowest validation RMSE of those given): " + "; ".join(picked) + ".")
    lines.append(
        "\nOurs: per benchmark and family the run with the lowest validation RMSE, its test RMSE "
        "(grid stage chosen by validation too). The paper's figures are the best by test RMSE over "
        "depths 2-6 and 3 seeds. ✓: ours at or below the paper."
    )
    return "\n".join(lines) + "\n"
