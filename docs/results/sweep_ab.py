"""Two grid-extension sweeps of the same jobs side by side (README "Results": polish_patience).

A and B hold the same job directories (same overrides but the option under test). Per job: the
delivered stage (chosen by validation), its validation and test RMSE, the stages fitted, the
Levenberg-Marquardt iterations (from each job's ``train.log``: a count that no machine load
changes) and the job's wall time. Per benchmark function: the job with the lowest validation RMSE
of each sweep, and the ratio of their test RMSEs.

    python docs/results/sweep_ab.py sweeps/feyn_ab_base sweeps/feyn_ab_p30 [--jobs]
"""
import argparse, json, re, statistics
from pathlib import Path

p = argparse.ArgumentParser()
p.add_argument("a"); p.add_argument("b"); p.add_argument("--jobs", action="store_true", help="one line per job")
args = p.parse_args()


def load(sweep):
    jobs = {}
    for path in Path(sweep).glob("*/metrics.json"):
        r = json.loads(path.read_text())
        if r.get("status") != "completed":
            continue
        ext = r["callbacks"]["grid_extension"]
        log = path.with_name("train.log").read_text() if path.with_name("train.log").exists() else ""
        jobs[path.parent.name] = {
            "function": r["config"]["data"]["function"], "G": ext["delivered"]["grid"],
            "val": ext["delivered"]["val/rmse"], "test": ext["delivered"]["test/rmse"], "stages": len(ext["stages"]),
            "lm": sum(int(n) for n in re.findall(r"Levenberg-Marquardt at grid \d+, (\d+) iterations", log)),
            "time": r["wall_time_s"],
        }
    return jobs


def chosen(jobs, names):
    best = {}
    for name in names:
        job = jobs[name]
        if job["function"] not in best or job["val"] < best[job["function"]]["val"]:
            best[job["function"]] = job
    return best


def summary(ratios):
    return (f"median {statistics.median(ratios):.3f} (lower on {sum(r < 1 for r in ratios)}, "
            f"higher on {sum(r > 1 for r in ratios)}, of {len(ratios)})")


A, B = load(args.a), load(args.b)
names = sorted(set(A) & set(B))
print(f"{len(names)} jobs in both; the same delivered G on {sum(A[n]['G'] == B[n]['G'] for n in names)}")
print("B / A per job, validation RMSE:", summary([B[n]["val"] / A[n]["val"] for n in names]))
print("B / A per job, test RMSE:", summary([B[n]["test"] / A[n]["test"] for n in names]))
ca, cb = chosen(A, names), chosen(B, names)
print("B / A per function (each sweep's job chosen by validation), test RMSE:", summary([cb[f]["test"] / ca[f]["test"] for f in ca]))
for key in ("stages", "lm", "time"):
    sa, sb = sum(A[n][key] for n in names), sum(B[n][key] for n in names)
    print(f"{key}: A {sa:.0f}, B {sb:.0f}, A / B {sa / sb:.3f}")
if args.jobs:
    for n in names:
        a, b = A[n], B[n]
        print(f"{n}: G {a['G']} -> {b['G']}, val {a['val']:.2e} -> {b['val']:.2e}, test {a['test']:.2e} -> {b['test']:.2e}, "
              f"LM iterations {a['lm']} -> {b['lm']}, {a['time']:.0f} -> {b['time']:.0f} s")
