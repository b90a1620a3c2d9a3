"""Is RELAX ever worse than the estimator it extends? The paired variance reduction per seed.

For each env, ``relax-rl compare --algos a2c relax`` runs the seeds with the gradient variance
measured every ``--freq`` updates; RELAX logs, on each measured batch, log10 Var of the plain
advantage estimator minus log10 Var of its own (``grad/log10_var_reduction``: > 0 means RELAX
has less variance). Per seed this prints the mean reduction over the run and over its first
half, each with twice its standard error across measurements, and the env steps A2C and RELAX
took to the env's threshold (where it has one).

    python bench/paired_reduction.py                      # the ladder and CartPole-v1, 5 seeds
    python bench/paired_reduction.py --envs relax_rl/ContextualBandit10-v0 --seeds 0-1
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

DEFAULT_ENVS = [
    "relax_rl/ContextualBandit2-v0",
    "relax_rl/ContextualBandit10-v0",
    "relax_rl/ContextualBandit50-v0",
    "CartPole-v1",
]
FREQ = {"CartPole-v1": 10}  # measurements every this many updates (bandits: every update)


def reductions(run_dir: Path) -> tuple[list[float], list[float]]:
    steps, red = [], []
    with open(run_dir / "progress.csv") as fh:
        for row in csv.DictReader(fh):
            if row.get("grad/log10_var_reduction"):
                steps.append(float(row["time/total_timesteps"]))
                red.append(float(row["grad/log10_var_reduction"]))
    return steps, red


def mean_2se(xs: list[float]) -> str:
    if len(xs) < 2:
        return "-"
    se = statistics.stdev(xs) / math.sqrt(len(xs))
    return f"{statistics.fmean(xs):+.3f} +- {2 * se:.3f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--envs", nargs="+", default=DEFAULT_ENVS)
    p.add_argument("--seeds", default="0-4")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--freq", type=int, default=None, help="grad_var_freq (default: per env)")
    p.add_argument("--out", type=Path, default=Path("runs/paired_reduction"))
    p.add_argument("--set", nargs="*", default=[], help="extra --set key=value for both agents")
    args = p.parse_args()
    cli = Path(sys.executable).with_name("relax-rl")
    env = {**os.environ, "WANDB_MODE": "disabled"}
    for env_id in args.envs:
        out = args.out / env_id.replace("/", "_")
        freq = args.freq or FREQ.get(env_id, 1)
        cmd = [str(cli), "compare", "--algos", "a2c", "relax", "--env", env_id]
        cmd += ["--seeds", args.seeds, "--jobs", str(args.jobs), "--out", str(out)]
        # One progress.csv row per measurement (log_interval = freq): the error bars are over
        # measurements.
        cmd += ["--set", f"grad_var_freq={freq}", "--log-interval", str(freq)]
        cmd += [token for kv in args.set for token in ("--set", kv)]
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        summaries = json.loads((out / "summary.json").read_text())
        summaries = summaries.get("runs", summaries) if isinstance(summaries, dict) else summaries
        solved = {(s["algo"], s["seed"]): s.get("solved_at_env_steps") for s in summaries}
        threshold = summaries[0].get("threshold")
        print(f"\n{env_id} (grad_var_freq {freq})")
        print(
            f"{'seed':>4} {'reduction, run':>18} {'reduction, 1st half':>20} "
            f"{'env steps to the threshold (a2c, relax)':>40}"
        )
        per_seed = []
        for run_dir in sorted(out.glob("relax-s*")):
            seed = int(run_dir.name.split("-s")[-1])
            steps, red = reductions(run_dir)
            half = [r for s, r in zip(steps, red, strict=True) if s <= steps[-1] / 2]
            per_seed.append(statistics.fmean(red))
            a2c, rlx = solved.get(("a2c", seed)), solved.get(("relax", seed))
            to_go = "no threshold" if threshold is None else f"{a2c or '-'}, {rlx or '-'}"
            print(f"{seed:>4} {mean_2se(red):>18} {mean_2se(half):>20} {to_go:>40}")
        print(
            f"median {statistics.median(per_seed):+.3f} "
            f"(min {min(per_seed):+.3f}, max {max(per_seed):+.3f}) over seeds"
        )


if __name__ == "__main__":
    main()
