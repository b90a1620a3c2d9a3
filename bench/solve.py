"""Steps to solve, side by side: our REINFORCE, A2C and RELAX against SB3's own A2C (and PPO).

Each (agent, seed) trains until the mean return of its last 100 episodes reaches the threshold
(or ``--max-steps``), in a pool of ``--jobs`` processes (one torch thread each), and the table
gives per agent: seeds solved, env steps and episodes to the threshold (median, min-max over
every seed, an unsolved one censored at its budget: ``--max-steps`` env steps, the episodes it
ran) and training env-steps/s (median, min-max). SB3's agents use rl-zoo3's settings
(CartPole-v1 A2C: 8 envs, n_steps 5, ent_coef 0, RMSprop 7e-4); ours take configs/<algo>.yaml
(``--preset`` to use another entry, e.g. ``paper``) plus ``--set`` overrides.

    python bench/solve.py --env CartPole-v1 --seeds 5 --agents a2c relax sb3-a2c
    python bench/solve.py --env CartPole-v1 --preset paper --threshold 195 --seeds 10 \\
        --agents a2c relax --paired a2c relax     # per-seed episode pairs and a sign test
    python bench/solve.py --env InvertedPendulum-v5 --agents a2c relax --seeds 5 \\
        --results runs/ip.json --paired a2c relax # the tables again from a --json file
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from torch import nn

from relax_rl.runner import GridRun, run_grid

SB3_ZOO = {  # rl-zoo3 hyperparameters (a2c.yml / ppo.yml)
    ("sb3-a2c", "CartPole-v1"): dict(n_envs=8, kwargs=dict(ent_coef=0.0)),
    ("sb3-a2c", "Acrobot-v1"): dict(n_envs=16, kwargs=dict(ent_coef=0.0)),
    ("sb3-a2c", "LunarLander-v3"): dict(
        n_envs=8, kwargs=dict(gamma=0.995, learning_rate=0.00083, ent_coef=1e-5)
    ),
    ("sb3-ppo", "CartPole-v1"): dict(
        n_envs=8,
        kwargs=dict(
            n_steps=32,
            batch_size=256,
            gae_lambda=0.8,
            gamma=0.98,
            n_epochs=20,
            ent_coef=0.0,
            learning_rate=0.001,
            clip_range=0.2,
        ),
    ),
    ("sb3-ppo", "Acrobot-v1"): dict(  # (without the zoo's VecNormalize, as configs/ppo.yaml)
        n_envs=16, kwargs=dict(n_steps=256, gae_lambda=0.94, gamma=0.99, n_epochs=4, ent_coef=0.0)
    ),
    ("sb3-ppo", "LunarLander-v3"): dict(
        n_envs=16,
        kwargs=dict(
            n_steps=1024, batch_size=64, gae_lambda=0.98, gamma=0.999, n_epochs=4, ent_coef=0.01
        ),
    ),
    # Box actions, as configs/ (rl-zoo3's settings without gSDE; normalize: VecNormalize).
    ("sb3-a2c", "InvertedPendulum-v5"): dict(n_envs=8, kwargs={}),
    ("sb3-a2c", "HalfCheetah-v5"): dict(n_envs=1, normalize=True, kwargs={}),
    ("sb3-ppo", "InvertedPendulum-v5"): dict(
        n_envs=1,
        normalize=True,
        kwargs=dict(
            batch_size=64,
            n_steps=32,
            gamma=0.999,
            learning_rate=0.000222425,
            ent_coef=1.37976e-07,
            clip_range=0.4,
            n_epochs=5,
            gae_lambda=0.9,
            max_grad_norm=0.3,
            vf_coef=0.19816,
        ),
    ),
    ("sb3-ppo", "HalfCheetah-v5"): dict(
        n_envs=1,
        normalize=True,
        kwargs=dict(
            batch_size=64,
            n_steps=512,
            gamma=0.98,
            learning_rate=2.0633e-05,
            ent_coef=0.000401762,
            clip_range=0.1,
            n_epochs=20,
            gae_lambda=0.92,
            max_grad_norm=0.8,
            vf_coef=0.58096,
            policy_kwargs=dict(
                log_std_init=-2,
                ortho_init=False,
                activation_fn=nn.ReLU,
                net_arch=dict(pi=[256, 256], vf=[256, 256]),
            ),
        ),
    ),
    ("sb3-ppo", "Walker2d-v5"): dict(  # (the zoo's Walker2d-v4 entry)
        n_envs=1,
        normalize=True,
        kwargs=dict(
            batch_size=32,
            n_steps=512,
            gamma=0.99,
            learning_rate=5.05041e-05,
            ent_coef=0.000585045,
            clip_range=0.1,
            n_epochs=20,
            gae_lambda=0.95,
            max_grad_norm=1.0,
            vf_coef=0.871923,
        ),
    ),
    # The factorised bandit: SB3's defaults over the same 16 envs our agents use, A2C with our
    # one-step rollouts, PPO with n_steps 128 (16 x 128 = SB3's default 2,048 samples per update).
    ("sb3-a2c", "relax_rl/MultiBinaryMatch-v0"): dict(n_envs=16, kwargs=dict(n_steps=1)),
    ("sb3-ppo", "relax_rl/MultiBinaryMatch-v0"): dict(n_envs=16, kwargs=dict(n_steps=128)),
}


def run_one(
    cell: GridRun,
    max_steps: int,
    threshold: float,
    preset: str | None,
    overrides: list[str],
    env_kwargs: dict | None = None,
    budgets: tuple[int, ...] = (),
) -> dict:
    """Train one agent on one seed until solved; return its numbers (a grid worker), with the
    mean return of the last 100 episodes at each of ``budgets`` env steps."""
    agent, env_id, seed = cell.algo, cell.env_id, cell.seed
    import torch

    torch.set_num_threads(1)
    from stable_baselines3 import A2C as SB3A2C
    from stable_baselines3 import PPO as SB3PPO

    from relax_rl import config as cfg
    from relax_rl.agents import ALGOS
    from relax_rl.callbacks import EpisodeTracker
    from relax_rl.envs import make_env, normalize_env

    if agent.startswith("sb3-"):
        zoo = SB3_ZOO[(agent, env_id)]
        env = make_env(
            env_id, zoo["n_envs"], seed, env_kwargs=env_kwargs, discretize=zoo.get("discretize")
        )
        if zoo.get("normalize"):
            env = normalize_env(env, zoo["kwargs"].get("gamma", 0.99))
        algo = {"sb3-a2c": SB3A2C, "sb3-ppo": SB3PPO}[agent]
        model = algo("MlpPolicy", env, seed=seed, device="cpu", **zoo["kwargs"])
    else:
        # "relax+cv_replay=0+cv_net_arch=[32,32]": a variant of an agent, by its own overrides
        name, *variant = agent.split("+")
        algo = ALGOS[name]
        path = Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml"
        data = cfg.load_config_file(path)
        settings = cfg.select(data, preset or env_id, path)
        settings = cfg.merge(settings, cfg.parse_set([*overrides, *variant]))
        if env_kwargs:
            settings = cfg.merge(settings, {"env_kwargs": env_kwargs})
        run, kwargs = cfg.validate(settings, algo)
        env = make_env(
            env_id,
            run["n_envs"],
            seed,
            env_kwargs=run["env_kwargs"],
            discretize=run["discretize"],
        )
        env = algo.prepare_env(env, seed, kwargs)  # (group baselines: envs in groups)
        if run["normalize"]:
            gamma = kwargs.get("gamma", cfg.algo_parameters(algo)["gamma"].default)
            env = normalize_env(env, gamma, run["normalize_kwargs"])
        model = algo("MlpPolicy", env, seed=seed, device="cpu", **kwargs)
    tracker = EpisodeTracker(threshold, stop_when_solved=True)
    at_budget = BudgetReturns(tracker, budgets)
    _reset_peak_rss()  # (a pool worker runs many cells: this run's peak only)
    start = time.perf_counter()
    model.learn(max_steps, callback=[tracker, at_budget])
    wall = time.perf_counter() - start
    env.close()
    return {
        "agent": agent,
        "seed": seed,
        "solved_at_env_steps": tracker.solved_at_env_steps,
        "solved_at_episodes": tracker.solved_at_episodes,
        "env_steps": int(model.num_timesteps),
        "max_steps": max_steps,
        "episodes": tracker.episodes,
        "wall_s": wall,
        "env_steps_per_s": model.num_timesteps / wall,
        "peak_rss_mb": _peak_rss_mb(),
        "final_mean_return_100": tracker.mean_return,
        "returns_at": at_budget.returns,
    }


class BudgetReturns(BaseCallback):
    """The tracker's mean return of the last 100 episodes when the run passes each budget
    (env steps): ``returns[str(budget)]``."""

    def __init__(self, tracker, budgets: tuple[int, ...]) -> None:
        super().__init__()
        self.tracker, self.pending = tracker, sorted(budgets)
        self.returns: dict[str, float | None] = {}

    def _on_step(self) -> bool:
        while self.pending and self.num_timesteps >= self.pending[0]:
            self.returns[str(self.pending.pop(0))] = self.tracker.mean_return
        return True


def _reset_peak_rss() -> None:
    """Reset the process's peak resident memory (Linux: ``/proc/self/clear_refs``), so that a
    pool worker's peak is that of the run it is on; elsewhere a no-op."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _peak_rss_mb() -> float | None:
    """The process's peak resident memory since :func:`_reset_peak_rss`, in MiB (Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _fmt(xs: list[float], digits: int = 0) -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    return f"{statistics.median(xs):,.{digits}f} ({min(xs):,.{digits}f} to {max(xs):,.{digits}f})"


def step_budget(results: list[dict]) -> int:
    """The env-step budget the runs were given: ``--max-steps`` (recorded with each run), or for
    records without it the most env steps an unsolved run ran (SB3 stops at the first full
    rollout past the budget, so never fewer than it)."""
    return max(
        [r.get("max_steps") or 0 for r in results]
        + [r["env_steps"] for r in results if r["solved_at_env_steps"] is None]
        + [0]
    )


def to_solve(rs: list[dict], key: str, budget: int) -> tuple[list[float], list[bool]]:
    """Each run's ``key`` (env steps or episodes to the threshold), an unsolved run censored at
    its budget: ``budget`` env steps, or the episodes it ran; with which are censored."""
    censored = [r[key] is None for r in rs]
    at_budget = [budget if key == "solved_at_env_steps" else r["episodes"] for r in rs]
    values = [float(b if c else r[key]) for r, c, b in zip(rs, censored, at_budget, strict=True)]
    return values, censored


def _fmt_censored(values: list[float], censored: list[bool]) -> str:
    """``median (min to max)``, a value resting on censored runs marked ">=" (a lower bound)."""
    if not values:
        return "-"
    from relax_rl.report import lower_bounds

    def point(v):
        return {"median": float(statistics.median(v)), "max": float(max(v))}

    est = point(values)
    marked = lower_bounds(point, np.asarray(values), np.asarray(censored, dtype=bool))
    med, high = ((">= " if k in marked else "") + f"{est[k]:,.0f}" for k in ("median", "max"))
    return f"{med} ({min(values):,.0f} to {high})"


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact sign-test p-value (ties dropped): scipy's binomial test at 1/2."""
    from scipy.stats import binomtest

    n = wins + losses
    return 1.0 if n == 0 else float(binomtest(wins, n, 0.5).pvalue)


def rank_sum_test(a: list[float], b: list[float], n_resamples: int = 20_000) -> float:
    """Two-sided Mann-Whitney U p-value by scipy's permutation method (exact when the
    arrangements number fewer than ``n_resamples``; ties, such as unsolved = +inf, allowed)."""
    from scipy.stats import PermutationMethod, mannwhitneyu

    method = PermutationMethod(n_resamples=n_resamples, rng=0)
    return float(mannwhitneyu(a, b, alternative="two-sided", method=method).pvalue)


def _interval(est: dict | None, key: str, digits: int) -> str:
    """``point [low, high]`` of one of relax_rl.report's rliable estimates."""
    if est is None:
        return "-"
    ci = "no CI: 1 run" if est["ci"] is None else ", ".join(f"{x:,.{digits}f}" for x in est["ci"])
    mark = ">= " if key in est.get("lower_bounds", ()) else ""
    return f"{mark}{est[key]:,.{digits}f} [{ci}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--agents", nargs="+", default=["reinforce", "a2c", "relax", "sb3-a2c"])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=500_000)
    parser.add_argument("--threshold", type=float, default=None, help="default: the env's")
    parser.add_argument("--preset", default=None, help="config entry for our agents")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--paired",
        nargs=2,
        action="append",
        metavar=("A", "B"),
        default=[],
        help="per-seed episodes to solve, A vs B, and a sign test (repeat for more pairs)",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help="print the tables from this --json file of an earlier invocation (no training)",
    )
    parser.add_argument(
        "--compare",
        nargs=2,
        action="append",
        metavar=("A", "B"),
        default=[],
        help="A vs B on env steps to solve and on the last-100 mean return at the end: IQMs, "
        "probability of improvement, rank-sum test (repeat for more pairs)",
    )
    parser.add_argument(
        "--env-kwargs",
        type=json.loads,
        default=None,
        metavar="JSON",
        help="the env's options for every agent, e.g. '{\"d\": 128}'",
    )
    parser.add_argument(
        "--budgets",
        type=lambda v: tuple(int(float(x)) for x in v.split(",")),
        default=(),
        metavar="N,N,...",
        help="also record each run's last-100 mean return at these env steps, e.g. "
        "250000,500000,1000000",
    )
    parser.add_argument("--json", type=Path, default=None, help="write all runs here")
    args = parser.parse_args()

    from relax_rl.envs import reward_threshold

    threshold = args.threshold if args.threshold is not None else reward_threshold(args.env)
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    jobs = [(a, s) for s in seeds for a in args.agents]  # interleaved: agents share the load
    if args.results is not None:
        results = [r for r in json.loads(args.results.read_text()) if r["seed"] in seeds]
        print(f"{args.env}: the runs of {args.results}")
    else:
        results = run_all(args, threshold, jobs)
    head = (
        f"{'agent':<11}{'solved':>8}{'env steps to solve':>30}{'episodes to solve':>30}"
        f"{'env-steps/s':>24}{'seconds (to solve)':>24}{'peak MiB':>20}"
        f"{'last-100 return at the end':>34}"
    )
    budget = step_budget(results)
    print(head)
    censored = []
    for agent in args.agents:
        rs = [r for r in results if r["agent"] == agent]
        solved = [r for r in rs if r["solved_at_env_steps"] is not None]
        censored.append(f"{agent} {len(rs) - len(solved)}/{len(rs)}")
        print(
            f"{agent:<11}{len(solved):>5}/{len(rs):<2}"
            f"{_fmt_censored(*to_solve(rs, 'solved_at_env_steps', budget)):>30}"
            f"{_fmt_censored(*to_solve(rs, 'solved_at_episodes', budget)):>30}"
            f"{_fmt([r['env_steps_per_s'] for r in rs]):>24}"
            f"{_fmt([r['wall_s'] for r in rs], 1):>24}"
            f"{_fmt([r.get('peak_rss_mb') or 0 for r in rs]):>20}"
            f"{_fmt([r['final_mean_return_100'] for r in rs], 1):>34}"
        )
    print(
        f"to solve: every seed counts, an unsolved one censored at its budget ({budget:,} env "
        f"steps; the episodes it ran), a value marked >= rests on censored runs (a lower bound); "
        f"censored: {', '.join(censored)}"
    )
    budgets = sorted({int(b) for r in results for b in r.get("returns_at") or {}})
    if budgets:
        print("\nlast-100 mean return at env-step budgets: median (min to max) over seeds")
        print(f"{'agent':<11}" + "".join(f"{b:>30,}" for b in budgets))
        for agent in args.agents:
            rs = [r for r in results if r["agent"] == agent]
            at = [[(r.get("returns_at") or {}).get(str(b)) for r in rs] for b in budgets]
            print(f"{agent:<11}" + "".join(f"{_fmt(xs, 1):>30}" for xs in at))
    for a, b in args.paired:
        print(
            f"\nper-seed episodes to solve ({a} vs {b}; an unsolved run, censored at the "
            f"budget, counts as never: behind every solved one):"
        )
        wins = losses = 0
        for s in seeds:
            ra = next(r for r in results if r["agent"] == a and r["seed"] == s)
            rb = next(r for r in results if r["agent"] == b and r["seed"] == s)
            ea = ra["solved_at_episodes"] or math.inf
            eb = rb["solved_at_episodes"] or math.inf
            mark = "<" if eb < ea else (">" if eb > ea else "=")
            wins += eb < ea
            losses += eb > ea
            print(f"  seed {s}: {a} {ea}  {mark}  {b} {eb}")
        print(
            f"{b} needs fewer episodes in {wins} of {wins + losses} seeds "
            f"(sign test p = {sign_test(wins, losses):.3f})"
        )

    for a, b in args.compare:
        compare(results, a, b, budget)


def run_all(args: argparse.Namespace, threshold: float, jobs: list[tuple[str, int]]) -> list[dict]:
    """Train every (agent, seed) of ``jobs``; print each run as it ends; write ``--json`` after
    each run, so a long grid stopped part way keeps the runs that ended."""
    print(
        f"{args.env}: threshold {threshold}, up to {args.max_steps:,} env steps, "
        f"{args.seeds} seeds, {args.jobs} parallel jobs, preset {args.preset or args.env}",
        flush=True,
    )
    results: list[dict] = []

    def report(cell: GridRun, r: dict) -> None:  # each run as it ends: long grids show progress
        if r.get("status") == "failed":
            print(f"  {cell.algo} seed {cell.seed}: failed: {r['error']}", flush=True)
            return
        results.append(r)
        print(
            f"  {r['agent']} seed {r['seed']}: solved at {r['solved_at_env_steps']} env "
            f"steps ({r['solved_at_episodes']} episodes), {r['env_steps_per_s']:,.0f} "
            f"steps/s, {r['wall_s']:.1f} s, peak {r['peak_rss_mb'] or 0:.0f} MiB, "
            f"last-100 mean {r['final_mean_return_100']}, at budgets {r.get('returns_at')}",
            flush=True,
        )
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))

    # The project's grid runner (process pool); no run folders: results come back as dicts.
    with tempfile.TemporaryDirectory() as scratch:
        cells = [GridRun(a, args.env, s, Path(scratch) / f"{a}-s{s}") for a, s in jobs]
        worker = functools.partial(
            run_one,
            max_steps=args.max_steps,
            threshold=threshold,
            preset=args.preset,
            overrides=args.set,
            env_kwargs=args.env_kwargs,
            budgets=args.budgets,
        )
        run_grid(cells, worker, jobs=args.jobs, on_done=report)
    return results


def compare(results: list[dict], a: str, b: str, budget: int | None = None) -> None:
    """``a`` vs ``b``: env steps and episodes to solve, then, where a run did not solve, the
    last-100 mean return where the runs ended (``--max-steps``). An unsolved run is censored at
    its budget: in env steps it counts as ``budget`` (default :func:`step_budget`) in the IQM
    and the tests; in episodes as the episodes it ran in the IQM (a lower bound), and behind
    every solved run in the tests (its budget in episodes is its own)."""
    from relax_rl.report import improvement_probability, iqm_interval, iqm_point, lower_bounds

    budget = step_budget(results) if budget is None else budget
    for key, unit in (("solved_at_env_steps", "env steps"), ("solved_at_episodes", "episodes")):
        where = f"{budget:,} env steps" if key == "solved_at_env_steps" else "the episodes it ran"
        print(f"\n{unit} to solve, {a} vs {b} (an unsolved run censored at its budget, {where}):")
        at: dict[str, list[float]] = {}
        for name in (a, b):
            rs = [r for r in results if r["agent"] == name]
            values, censored = to_solve(rs, key, budget)
            at[name] = (
                values
                if key == "solved_at_env_steps"
                else [math.inf if c else x for x, c in zip(values, censored, strict=True)]
            )
            est = iqm_interval(values)
            if est is not None:
                marked = lower_bounds(iqm_point, np.asarray(values), np.asarray(censored, bool))
                est["lower_bounds"] = marked
            print(
                f"  {name}: {len(rs) - sum(censored)}/{len(rs)} solved, {sum(censored)} censored; "
                f"IQM {_interval(est, 'iqm', 0)} over every seed"
            )
        # rliable's P(X > Y) wants finite scores, higher better: negate, unsolved the worst
        score = {
            k: [-sys.float_info.max if x == math.inf else -x for x in v] for k, v in at.items()
        }
        poi = improvement_probability(score[b], score[a])
        p = f"{rank_sum_test(at[a], at[b]):.3f}" if at[a] and at[b] else "-"
        print(
            f"  P({b} solves in fewer {unit} than {a}) = {_interval(poi, 'p', 2)} "
            f"(rliable, 95% bootstrap CI); Mann-Whitney U permutation p = {p} (scipy)"
        )
    pair = [r for r in results if r["agent"] in (a, b)]
    if all(r["solved_at_env_steps"] is not None for r in pair):
        return  # (every run stopped at the threshold: their final returns say nothing more)
    print(f"last-100 mean return at the end, {a} vs {b}:")
    ret = {
        name: [r["final_mean_return_100"] for r in pair if r["agent"] == name] for name in (a, b)
    }
    for name, xs in ret.items():
        print(f"  {name}: IQM {_interval(iqm_interval(xs), 'iqm', 1)}, per seed {xs}")
    if ret[a] and ret[b]:
        poi = improvement_probability(ret[b], ret[a])
        print(
            f"  P({b} ends with a higher return than {a}) = {_interval(poi, 'p', 2)}; "
            f"Mann-Whitney U permutation p = {rank_sum_test(ret[a], ret[b]):.3f}"
        )


if __name__ == "__main__":
    main()
