"""Time the per-model L-BFGS of stacked training: ``python -m kan_lightning.commands.bench_lbfgs``.

Two figures, each measured in this one process (CPU time):

- ``--direction-models`` search directions at ``--history`` stored pairs of ``--n`` parameters
  (float64, best of ``--repeats``): ``torch.optim.LBFGS``'s two-loop recursion (its code) model
  by model against one batched
  :meth:`~kan_lightning.stacked.lbfgs_history.StackedHistory.direction` (with its pair update),
  with their relative difference, and the same recursion with fewer tensor ops
  (:class:`~kan_lightning.lit.lean_lbfgs.LBFGS`, the optimizer of single runs: the same bits);
- ``--steps`` L-BFGS steps of ``--models`` KANs ``--width`` (G = 5) on ``--points`` points each,
  the paper toy's L-BFGS settings with history 100: one ``torch.optim.LBFGS`` per separate model
  against the stacked :class:`~kan_lightning.stacked.lbfgs.PerModelLBFGS` (all models' evaluations
  batched), back to back per repeat (medians of ``--repeats``), the stack's optimizer overhead
  per model and step (its time less its rounds x one batched forward and backward), and the
  largest relative difference of the final losses (rounding, amplified by L-BFGS: in float64
  ~1e-13 after one step, ~1e-7 after five; in float32 up to ~10%).

    python -m kan_lightning.commands.bench_lbfgs
    python -m kan_lightning.commands.bench_lbfgs --float64 --models 48 --width 3,5,5,1 --points 20 --steps 6
    python -m kan_lightning.commands.bench_lbfgs --float64 --models 16 --width 2,5,1 --points 1000 --steps 3
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time

import torch
from torch.func import functional_call

from kan_lightning.lit.lean_lbfgs import LBFGS as LeanLBFGS
from kan_lightning.lit.lean_lbfgs import LBFGS as LeanLBFGS
from kan_lightning.nn import KAN
from kan_lightning.nn.stacked import StackedKAN
from kan_lightning.stacked.lbfgs import PerModelLBFGS
from kan_lightning.stacked.lbfgs_history import StackedHistory
from kan_lightning.stacked.lbfgs_steps import ModelState


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return min(times)


def direction_times(n: int, history: int, repeats: int, models: int = 16) -> dict:
    """``models`` directions at ``history`` pairs: torch's two-loop model by model against one
    batched :meth:`StackedHistory.direction` (with a pair update, as every iteration has)."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen, dtype=torch.float64) / n**0.5
    hessian = a @ a.T + torch.eye(n, dtype=torch.float64)
    pairs = [(s, hessian @ s) for s in torch.randn(history, n, generator=gen, dtype=torch.float64)]
    g = torch.randn(models, n, generator=gen, dtype=torch.float64)
    stacked = StackedHistory(models, n, history, torch.float64)
    states = [ModelState(history) for _ in range(models)]

    def add(s, y):  # the pair for every model, then all directions
        ys = (y * s).sum().expand(models)
        added = [(m, *state.keeps_pair(float(ys[m]), float(y.dot(y)))) for m, state in enumerate(states)]
        return stacked.direction(g, s.expand(models, n), y.expand(models, n), ys, added, states)

    for s, y in pairs:
        mine = add(s, y)
    H = pairs[-1][0].dot(pairs[-1][1]) / pairs[-1][1].dot(pairs[-1][1])

    def two_loop(g):  # torch.optim.LBFGS.step's recursion
        ro = [1.0 / y.dot(s) for s, y in pairs]
        al = [None] * history
        q = g.neg()
        for i in range(history - 1, -1, -1):
            al[i] = pairs[i][0].dot(q) * ro[i]
            q.add_(pairs[i][1], alpha=-al[i])
        r = torch.mul(q, H)
        for i in range(history):
            be_i = pairs[i][1].dot(r) * ro[i]
            r.add_(pairs[i][0], alpha=al[i] - be_i)
        return r

    ro = [1.0 / y.dot(s) for s, y in pairs]
    dirs, stps = [y for _, y in pairs], [s for s, _ in pairs]

    def lean(g):  # the single-run optimizer's recursion
        return LeanLBFGS._two_loop(None, g, dirs, stps, ro, H, [None] * history)

    reference = torch.stack([two_loop(row) for row in g])
    reps = 10
    t_torch = best_time(lambda: [[two_loop(row) for row in g] for _ in range(reps)], 3) / reps
    t_lean = best_time(lambda: [[lean(row) for row in g] for _ in range(reps)], 3) / reps
    t_mine = best_time(lambda: [add(*pairs[-1]) for _ in range(reps)], 3) / reps
    return {"n": n, "history": history, "models": models, "two_loops_us": round(t_torch * 1e6),
            "lean_two_loops_us": round(t_lean * 1e6), "lean_equal": torch.equal(torch.stack([lean(row) for row in g]), reference),
            "batched_with_pair_update_us": round(t_mine * 1e6), "speedup": round(t_torch / t_mine, 1),
            "relative_difference": float((mine - reference).norm() / reference.norm())}


def stacked_times(models: int, points: int, steps: int, repeats: int, width: tuple[int, ...] = (2, 5, 1)) -> dict:
    """``steps`` L-BFGS steps of ``models`` KANs of ``width``: separate ``torch.optim.LBFGS`` runs
    and the stack, back to back per repeat (medians); the stack's optimizer overhead per model
    and step is its time less its rounds x one batched forward and backward."""
    factory = functools.partial(torch.optim.LBFGS, lr=1.0, max_iter=20, history_size=100, line_search_fn="strong_wolfe",
                                tolerance_grad=1e-32, tolerance_change=1e-32)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(models, points, width[0], generator=gen) * 2 - 1
    y = torch.exp(torch.sin(torch.pi * x[..., :1]) + x[..., 1:2] ** 2) + x[..., 2:].sum(-1, keepdim=True)

    def kans():
        out = []
        for seed in range(models):
            torch.manual_seed(seed)
            out.append(KAN(list(width), grid_size=5))
        return out

    losses, rounds = {}, [0]

    def separate():
        for m, model in enumerate(kans()):
            opt = factory(model.parameters())

            def closure(model=model, m=m):
                opt.zero_grad()
                loss = ((model(x[m]) - y[m]) ** 2).mean()
                loss.backward()
                return loss

            for _ in range(steps):
                opt.step(closure)
            with torch.no_grad():
                losses.setdefault("separate", {})[m] = float(((model(x[m]) - y[m]) ** 2).mean())

    def stacked():
        stack = StackedKAN(kans())
        driver = PerModelLBFGS(stack, factory)
        rounds[0] = 0

        def evaluate(params):
            rounds[0] += 1
            out = functional_call(stack, params, (x,))
            return ((out - y) ** 2).mean(dim=(1, 2)), out

        for _ in range(steps):
            driver.step(evaluate, [True] * models)
        driver.push()
        with torch.no_grad():
            losses["stacked"] = ((stack(x) - y) ** 2).mean(dim=(1, 2)).tolist()

    def one_evaluation():  # a round's batched forward and backward alone
        stack = StackedKAN(kans())
        for _ in range(20):
            ((stack(x) - y) ** 2).mean(dim=(1, 2)).sum().backward()

    times = [(best_time(separate, 1), best_time(stacked, 1)) for _ in range(repeats)]
    t_separate, t_stacked = (statistics.median(t) for t in zip(*times))
    t_round = statistics.median(best_time(one_evaluation, 1) / 20 for _ in range(3))
    apart = max(abs(a - losses["separate"][m]) / abs(losses["separate"][m]) for m, a in enumerate(losses["stacked"]))
    return {"models": models, "width": list(width), "points": points, "steps": steps, "separate_s": round(t_separate, 2),
            "stacked_s": round(t_stacked, 2), "speedup": round(statistics.median(a / b for a, b in times), 2),
            "rounds": rounds[0], "round_ms": round(t_round * 1e3, 2),
            "overhead_ms_per_model_step": round((t_stacked - rounds[0] * t_round) / (models * steps) * 1e3, 2),
            "final_loss_relative_difference": apart}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1500, help="parameters of the direction benchmark")
    parser.add_argument("--history", type=int, default=100, help="stored pairs of the direction benchmark")
    parser.add_argument("--models", type=int, default=16, help="models stacked")
    parser.add_argument("--width", default="2,5,1", help="the stacked KANs' widths")
    parser.add_argument("--direction-models", type=int, default=16, help="models of the direction benchmark")
    parser.add_argument("--points", type=int, default=1000, help="training points per model")
    parser.add_argument("--steps", type=int, default=5, help="L-BFGS steps (20 iterations each)")
    parser.add_argument("--repeats", type=int, default=3, help="timings (direction: best; stacked: median)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--float64", action="store_true", help="the stacked-step benchmark in float64")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.float64:
        torch.set_default_dtype(torch.float64)
    width = tuple(int(w) for w in args.width.split(","))
    report = {"direction": direction_times(args.n, args.history, args.repeats, args.direction_models),
              "stacked_step": stacked_times(args.models, args.points, args.steps, args.repeats, width)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
