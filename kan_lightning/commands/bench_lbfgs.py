"""Time the per-model L-BFGS of stacked training: ``python -m kan_lightning.commands.bench_lbfgs``.

Two figures, each measured in this one process (CPU time, best of ``--repeats``):

- the search direction at ``--history`` stored pairs of ``--n`` parameters (float64):
  ``torch.optim.LBFGS``'s two-loop recursion (its code) against
  :meth:`~kan_lightning.stacked.lbfgs_steps.LBFGSHistory.direction` (and the pair update), with
  their relative difference, and the same recursion with fewer tensor ops
  (:class:`~kan_lightning.lit.lean_lbfgs.LBFGS`, the optimizer of single runs: the same bits);
- ``--steps`` L-BFGS steps of ``--models`` KANs [2, 5, 1] (G = 5) on ``--points`` points each,
  the paper toy's L-BFGS settings with history 100: one ``torch.optim.LBFGS`` per separate model
  against the stacked :class:`~kan_lightning.stacked.lbfgs.PerModelLBFGS` (all models' evaluations
  batched), with the largest relative difference of the final losses (rounding, amplified by
  L-BFGS: in float64 ~1e-13 after one step, ~1e-7 after five; in float32 up to ~10%).

    python -m kan_lightning.commands.bench_lbfgs
    python -m kan_lightning.commands.bench_lbfgs --models 16 --points 100 --steps 10
    python -m kan_lightning.commands.bench_lbfgs --models 4 --steps 1 --float64
"""

from __future__ import annotations

import argparse
import functools
import json
import time

import torch
from torch.func import functional_call

from kan_lightning.lit.lean_lbfgs import LBFGS as LeanLBFGS
from kan_lightning.nn import KAN
from kan_lightning.nn.stacked import StackedKAN
from kan_lightning.stacked.lbfgs import PerModelLBFGS
from kan_lightning.stacked.lbfgs_steps import LBFGSHistory


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return min(times)


def direction_times(n: int, history: int, repeats: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen, dtype=torch.float64) / n**0.5
    hessian = a @ a.T + torch.eye(n, dtype=torch.float64)
    pairs = [(s, hessian @ s) for s in torch.randn(history, n, generator=gen, dtype=torch.float64)]
    state = LBFGSHistory(n, history, torch.float64)
    for s, y in pairs:
        state.add(s, y, y.dot(s))
    state.H_diag = pairs[-1][0].dot(pairs[-1][1]) / pairs[-1][1].dot(pairs[-1][1])
    g = torch.randn(n, generator=gen, dtype=torch.float64)

    def two_loop():  # torch.optim.LBFGS.step's recursion
        ro = [1.0 / y.dot(s) for s, y in pairs]
        al = [None] * history
        q = g.neg()
        for i in range(history - 1, -1, -1):
            al[i] = pairs[i][0].dot(q) * ro[i]
            q.add_(pairs[i][1], alpha=-al[i])
        r = torch.mul(q, state.H_diag)
        for i in range(history):
            be_i = pairs[i][1].dot(r) * ro[i]
            r.add_(pairs[i][0], alpha=al[i] - be_i)
        return r

    ro = [1.0 / y.dot(s) for s, y in pairs]
    dirs, stps = [y for _, y in pairs], [s for s, _ in pairs]
    lean = functools.partial(LeanLBFGS._two_loop, None, g, dirs, stps, ro, state.H_diag, [None] * history)
    reference, mine = two_loop(), state.direction(g)
    reps = 50
    t_torch = best_time(lambda: [two_loop() for _ in range(reps)], 3) / reps
    t_lean = best_time(lambda: [lean() for _ in range(reps)], 3) / reps
    t_mine = best_time(lambda: [state.direction(g) for _ in range(reps)], 3) / reps
    t_add = best_time(lambda: [state.add(*pairs[-1], pairs[-1][1].dot(pairs[-1][0])) for _ in range(reps)], 3) / reps
    return {"n": n, "history": history, "two_loop_us": round(t_torch * 1e6), "lean_two_loop_us": round(t_lean * 1e6),
            "lean_equal": torch.equal(lean(), reference), "direction_us": round(t_mine * 1e6),
            "pair_update_us": round(t_add * 1e6), "speedup": round(t_torch / t_mine, 1),
            "speedup_with_update": round(t_torch / (t_mine + t_add), 1),
            "relative_difference": float((mine - reference).norm() / reference.norm())}


def stacked_times(models: int, points: int, steps: int, repeats: int) -> dict:
    factory = functools.partial(torch.optim.LBFGS, lr=1.0, max_iter=20, history_size=100, line_search_fn="strong_wolfe",
                                tolerance_grad=1e-32, tolerance_change=1e-32)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(models, points, 2, generator=gen) * 2 - 1
    y = torch.exp(torch.sin(torch.pi * x[..., :1]) + x[..., 1:] ** 2)

    def kans():
        out = []
        for seed in range(models):
            torch.manual_seed(seed)
            out.append(KAN([2, 5, 1], grid_size=5))
        return out

    losses = {}

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

        def evaluate(params):
            out = functional_call(stack, params, (x,))
            return ((out - y) ** 2).mean(dim=(1, 2)), out

        for _ in range(steps):
            driver.step(evaluate, [True] * models)
        driver.push()
        with torch.no_grad():
            losses["stacked"] = ((stack(x) - y) ** 2).mean(dim=(1, 2)).tolist()

    t_separate, t_stacked = best_time(separate, repeats), best_time(stacked, repeats)
    apart = max(abs(a - losses["separate"][m]) / abs(losses["separate"][m]) for m, a in enumerate(losses["stacked"]))
    return {"models": models, "points": points, "steps": steps, "separate_s": round(t_separate, 2),
            "stacked_s": round(t_stacked, 2), "speedup": round(t_separate / t_stacked, 2),
            "final_loss_relative_difference": apart}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1500, help="parameters of the direction benchmark")
    parser.add_argument("--history", type=int, default=100, help="stored pairs of the direction benchmark")
    parser.add_argument("--models", type=int, default=16, help="models stacked")
    parser.add_argument("--points", type=int, default=1000, help="training points per model")
    parser.add_argument("--steps", type=int, default=5, help="L-BFGS steps (20 iterations each)")
    parser.add_argument("--repeats", type=int, default=2, help="best of this many timings")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--float64", action="store_true", help="the stacked-step benchmark in float64")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.float64:
        torch.set_default_dtype(torch.float64)
    report = {"direction": direction_times(args.n, args.history, args.repeats),
              "stacked_step": stacked_times(args.models, args.points, args.steps, args.repeats)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
