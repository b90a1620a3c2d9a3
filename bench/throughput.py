"""Training throughput, side by side in one process: our A2C and RELAX against SB3's A2C.

CartPole-v1, 8 envs in a DummyVecEnv, n_steps 5 (rl-zoo3's A2C settings), one torch thread
(``--threads``). ``relax`` is RELAX with its defaults (optimal kappa, per-sample objective),
``relax-batch`` with the paper's batch objective and learned kappa (double backward through the
policy network); ``NAME@envpool`` the same agent on ``vec_env: envpool`` (where installed).
Each repeat trains every agent for ``--steps`` env steps from a fresh model, in ``--chunks``
``learn()`` calls that the agents take in turn (the first agent rotating), so that a change of
load on a shared machine falls on every agent alike (``--chunks 1``: each agent's whole run in
one go, one after the other); the table gives env-steps/s and the ratio to SB3 A2C *within the
same repeat*, as median (min-max) over ``--repeats``. Then the cost split of one update
(collect, forward, the variance objective, optimizer steps, the rest of train) in
microseconds.

    python bench/throughput.py [--steps 50000] [--repeats 5] [--chunks 10]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch as th

from relax_rl.envs.envpool_vec import envpool_ids


def _fmt(xs: list[float], digits: int = 0) -> str:
    return f"{statistics.median(xs):,.{digits}f} ({min(xs):,.{digits}f}-{max(xs):,.{digits}f})"


def _make(name: str, seed: int):
    from stable_baselines3 import A2C as SB3A2C

    from relax_rl.agents import A2C, RELAX
    from relax_rl.envs import make_env

    name, _, vec = name.partition("@")  # "a2c@envpool": the same agent on envpool's pool
    env = make_env("CartPole-v1", 8, seed, vec_env=vec or "dummy")
    if name == "sb3-a2c":
        return SB3A2C("MlpPolicy", env, seed=seed, ent_coef=0.0, device="cpu")
    if name == "relax-batch":  # the paper's variance objective: double backward through the net
        return RELAX(
            "MlpPolicy",
            env,
            seed=seed,
            ent_coef=0.0,
            variance_objective="batch",
            kappa_mode="learned",
        )
    return {"a2c": A2C, "relax": RELAX}[name]("MlpPolicy", env, seed=seed, ent_coef=0.0)


def _time_calls(
    obj: object, method: str, seconds: dict[str, float], phase: str, depth: list[int] | None = None
) -> None:
    """Wrap ``obj.method`` (on this instance only) to add its wall time to ``seconds[phase]``;
    methods that share ``depth`` (one calls the other) count only the outermost call."""
    inner = getattr(obj, method)
    depth = [0] if depth is None else depth

    def timed(*args, **kwargs):
        depth[0] += 1
        t0 = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            depth[0] -= 1
            if depth[0] == 0:
                seconds[phase] = seconds.get(phase, 0.0) + time.perf_counter() - t0

    setattr(obj, method, timed)


def update_cost_split(name: str, n_updates: int = 300) -> dict[str, float]:
    """Microseconds per update in each phase, timed from outside the agent (no instrumentation
    in the algorithm): collect_rollouts; within train(), the forward pass (``losses``), phi's
    objective (``variance_loss``, RELAX), the optimizers' steps, and the rest of train() (the
    backward passes, clipping and checks)."""
    model = _make(name, 0)
    model.learn(2_000)
    _, callback = model._setup_learn(10**9, None)
    seconds: dict[str, float] = {}
    _time_calls(model, "losses", seconds, "forward")
    if hasattr(model, "variance_loss"):
        _time_calls(model, "variance_loss", seconds, "variance objective")
    for opt in (model.policy.optimizer, getattr(model, "cv_optimizer", None)):
        if opt is not None:  # (step_unprofiled: FlatRMSprop's step without torch's wrapper)
            depth = [0]
            for method in ("step", "step_unprofiled"):
                if hasattr(opt, method):
                    _time_calls(opt, method, seconds, "optimizer steps", depth)
    collect = train = 0.0
    for _ in range(n_updates):
        t0 = time.perf_counter()
        model.collect_rollouts(model.env, callback, model.rollout_buffer, model.n_steps)
        t1 = time.perf_counter()
        model.train()
        collect, train = collect + t1 - t0, train + time.perf_counter() - t1
    phases = {"collect 5x8 steps": collect, **seconds}
    phases["backward, clip, checks"] = train - sum(seconds.values())
    return {k: 1e6 * v / n_updates for k, v in phases.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--agents",
        nargs="+",
        default=None,
        help="agents besides sb3-a2c (default: a2c relax relax-batch, and @envpool rows)",
    )
    parser.add_argument(
        "--chunks",
        type=int,
        default=10,
        help="learn() calls per run, the agents taking turns (1: each run in one go)",
    )
    parser.add_argument("--no-split", action="store_true", help="skip the cost split")
    args = parser.parse_args()
    th.set_num_threads(args.threads)
    agents = ["sb3-a2c", *(args.agents or ["a2c", "relax", "relax-batch"])]
    if args.agents is None and envpool_ids():
        agents += ["a2c@envpool", "relax@envpool"]
    fps: dict[str, list[float]] = {a: [] for a in agents}
    ratio: dict[str, list[float]] = {a: [] for a in agents}
    chunks = max(1, args.chunks)
    for r in range(args.repeats):
        models = {a: _make(a, r) for a in agents}
        seconds = dict.fromkeys(agents, 0.0)
        for c in range(chunks):
            steps = args.steps * (c + 1) // chunks - args.steps * c // chunks
            for a in agents[c % len(agents) :] + agents[: c % len(agents)]:
                start = time.perf_counter()
                models[a].learn(steps, reset_num_timesteps=c == 0)
                seconds[a] += time.perf_counter() - start
        this = {a: models[a].num_timesteps / seconds[a] for a in agents}
        for a in agents:
            fps[a].append(this[a])
            ratio[a].append(this[a] / this["sb3-a2c"])
    print(
        f"CartPole-v1, 8 envs, n_steps 5, {args.steps:,} env steps per run in {chunks} "
        f"interleaved chunk(s), {args.threads} torch thread(s), median (min-max) of "
        f"{args.repeats} repeats"
    )
    print(f"{'agent':<10}{'env-steps/s':>26}{'x SB3 A2C (same repeat)':>28}")
    for a in agents:
        print(f"{a:<10}{_fmt(fps[a]):>26}{_fmt(ratio[a], 2):>28}")
    for name in [] if args.no_split else [a for a in agents if a != "sb3-a2c"]:
        split = update_cost_split(name)
        total = sum(split.values())
        print(f"\n{name} update cost split (us per update of 40 steps; total {total:,.0f}):")
        for k, v in split.items():
            print(f"  {k:<40}{v:>10,.0f}  ({100 * v / total:4.1f}%)")


if __name__ == "__main__":
    main()
