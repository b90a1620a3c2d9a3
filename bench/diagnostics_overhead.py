"""What the gradient-variance diagnostics cost: training throughput at several ``grad_var_freq``
values, side by side in one process, relative to the same agent with diagnostics off.

CartPole-v1 with each agent's own configs/<algo>.yaml settings, one torch thread. Each repeat
trains every (agent, frequency) pair for ``--steps`` env steps from a fresh model with the same
seed, in turn; the table gives env-steps/s and the ratio to ``grad_var_freq=0`` *within the same
repeat*, as median (min-max) over ``--repeats``, and the cost of one measurement in
microseconds (from the throughput difference at the highest frequency).

    python bench/diagnostics_overhead.py [--steps 30000] [--repeats 5] [--freqs 0 5 10 20 50]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch as th

from relax_rl.diagnostics import GradientVarianceCallback

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _fmt(xs: list[float], digits: int = 0) -> str:
    return f"{statistics.median(xs):,.{digits}f} ({min(xs):,.{digits}f}-{max(xs):,.{digits}f})"


def _make(algo: str, seed: int):
    from relax_rl import config as cfg
    from relax_rl.agents import ALGOS
    from relax_rl.envs import make_env

    path = CONFIGS / f"{algo}.yaml"
    settings = cfg.select(cfg.load_config_file(path), "CartPole-v1", path)
    run, agent_kwargs = cfg.validate(settings, ALGOS[algo])
    env = make_env("CartPole-v1", run["n_envs"], seed)
    return ALGOS[algo]("MlpPolicy", env, seed=seed, **agent_kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--freqs", type=int, nargs="+", default=[0, 5, 10, 20, 50])
    # REINFORCE (one env) is not measured: the diagnostics need >= 4 envs.
    parser.add_argument("--algos", nargs="+", default=["a2c", "relax"])
    args = parser.parse_args()
    th.set_num_threads(1)
    freqs = sorted(set(args.freqs) | {0})
    fps = {(a, f): [] for a in args.algos for f in freqs}
    ratio = {(a, f): [] for a in args.algos for f in freqs}
    updates = {a: [] for a in args.algos}
    for r in range(args.repeats):
        for a in args.algos:
            this = {}
            for f in freqs:
                model = _make(a, seed=r)
                start = time.perf_counter()
                model.learn(args.steps, callback=GradientVarianceCallback(f))
                this[f] = model.num_timesteps / (time.perf_counter() - start)
                fps[a, f].append(this[f])
                if f == 0:
                    updates[a].append(model.n_updates)
            for f in freqs:
                ratio[a, f].append(this[f] / this[0])
        print(f"repeat {r + 1}/{args.repeats} done", flush=True)
    print(
        f"CartPole-v1, configs/<algo>.yaml settings, {args.steps:,} env steps per run, 1 torch "
        f"thread, median (min-max) of {args.repeats} repeats"
    )
    print(f"{'agent':<10}{'grad_var_freq':>14}{'env-steps/s':>26}{'x freq 0 (same repeat)':>26}")
    for a in args.algos:
        for f in freqs:
            print(f"{a:<10}{f:>14}{_fmt(fps[a, f]):>26}{_fmt(ratio[a, f], 3):>26}")
    top = min(f for f in freqs if f > 0) if len(freqs) > 1 else 0
    if top > 0:  # the most frequent measurement gives the least noisy cost per measurement
        print(f"\ncost of one measurement (from grad_var_freq={top} vs 0), and per update:")
        for a in args.algos:
            n_up = statistics.median(updates[a])
            per_run = [
                args.steps / fps[a, top][i] - args.steps / fps[a, 0][i] for i in range(args.repeats)
            ]
            per_update = [args.steps / x / n_up * 1e6 for x in fps[a, 0]]
            per_meas = [t / (n_up / top) * 1e6 for t in per_run]
            print(
                f"  {a:<10} {_fmt(per_meas)} us per measurement; "
                f"{_fmt(per_update)} us per update ({n_up:,.0f} updates)"
            )


if __name__ == "__main__":
    main()
