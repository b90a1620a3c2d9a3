"""Per-sample gradient variance of RELAX, A2C, RLOO and GRPO, paired on the same states and
actions (issue 28).

For each seed a RELAX agent trains on MultiBinaryMatch with its shipped config; at each of
``--points`` (env steps) its policy is held and the variance decomposition
(:func:`relax_rl.decomposition.decompose`) measures, at that one policy, on the same ``N`` states
and the same ``K`` actions per state:

- RELAX's estimator (its V(s) and trained control variate) and A2C's on the very same samples
  (``A = r - V(s)`` with RELAX's critic);
- RLOO with ``k`` = 4 and 8, Dr. GRPO (``scale_rewards=none``) and GRPO (group std) with
  ``k`` = 4: the same policy in the group agent, each sample with ``k - 1`` partners of its own
  from its state (fresh actions).

Per estimator: log10 of the per-sample variance (summed over the actor's parameters), its
difference with A2C's on the same samples (> 0: A2C's is smaller) and the shares of the action
and trajectory terms; medians (min-max) over seeds. GRPO's std scaling changes the gradient's
units, so its variance is not comparable with the others' (the JSON rows also hold log10 of
``Var / ||E g||^2``, which is, but the design's estimate of ``||E g||^2`` is often too noisy to
be positive).

    python bench/group_variance.py --d 32 --seeds 0-4 --points 0 20000 50000
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch as th

from relax_rl.agents import GRPO, RLOO
from relax_rl.decomposition import decompose
from relax_rl.envs import MATCH_ENV_ID, make_env
from relax_rl.training import RunSpec, build

GROUPS: dict[str, tuple[type, dict[str, Any]]] = {
    "RLOO k=4": (RLOO, {"group_size": 4}),
    "RLOO k=8": (RLOO, {"group_size": 8}),
    "Dr. GRPO k=4": (GRPO, {"group_size": 4, "scale_rewards": "none"}),
    "GRPO k=4": (GRPO, {"group_size": 4, "scale_rewards": "group"}),
}


def _seeds(text: str) -> list[int]:
    if "-" in text:
        a, b = text.split("-")
        return list(range(int(a), int(b) + 1))
    return [int(x) for x in text.split(",")]


def _figures(dec: Any, a2c_total: float) -> dict[str, float | None]:
    total = dec.total
    log_total = math.log10(total) if total > 0 else None
    relative = math.log10(total / dec.signal) if dec.signal is not None and dec.signal > 0 else None
    return {
        "log10_var": log_total,
        "vs_a2c": None if log_total is None else log_total - math.log10(a2c_total),
        "log10_relative": relative,
        "share_action": dec.action / total if total > 0 else None,
        "share_trajectory": dec.trajectory / total if total > 0 else None,
    }


def measure(d: int, seed: int, points: list[int], n: int, k: int, m: int) -> list[dict]:
    env_kwargs = {"d": d}
    spec = RunSpec.create(
        "relax", MATCH_ENV_ID, seed=seed, out="/tmp/unused", settings={"env_kwargs": env_kwargs}
    )
    model, env = build(spec)
    rows = []
    done = 0
    for point in points:
        if point > done:
            model.learn(point - done, reset_num_timesteps=done == 0)
            done = model.num_timesteps
        relax, a2c = decompose(model, MATCH_ENV_ID, env_kwargs, n, k, m, seed=seed)
        row = {"seed": seed, "env_steps": done, "estimators": {}}
        row["estimators"]["A2C"] = _figures(a2c, a2c.total)
        row["estimators"]["RELAX"] = _figures(relax, a2c.total)
        for name, (cls, kwargs) in GROUPS.items():
            group = cls(
                "MlpPolicy",
                make_env(MATCH_ENV_ID, kwargs["group_size"], seed, env_kwargs=env_kwargs),
                seed=seed,
                **kwargs,
            )
            group.policy.load_state_dict(model.policy.state_dict())
            (dec,) = decompose(group, MATCH_ENV_ID, env_kwargs, n, k, m, seed=seed)
            row["estimators"][name] = _figures(dec, a2c.total)
            group.env.close()
        rows.append(row)
        print(json.dumps(row), flush=True)
    env.close()
    return rows


def _summary(values: list[float | None]) -> str:
    xs = [v for v in values if v is not None]
    if not xs:
        return "-"
    return f"{statistics.median(xs):+.2f} ({min(xs):+.2f} to {max(xs):+.2f})"


def table(rows: list[dict]) -> str:
    lines = [
        "| env steps | estimator | log10 per-sample var | minus A2C's (paired) | "
        "action share | trajectory share |",
        "|---|---|---|---|---|---|",
    ]
    for point in sorted({r["env_steps"] for r in rows}):
        at = [r for r in rows if r["env_steps"] == point]
        for name in at[0]["estimators"]:
            figs = [r["estimators"][name] for r in at]
            lines.append(
                f"| {point:,} | {name} | {_summary([f['log10_var'] for f in figs])} | "
                f"{_summary([f['vs_a2c'] for f in figs])} | "
                f"{_summary([f['share_action'] for f in figs])} | "
                f"{_summary([f['share_trajectory'] for f in figs])} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--d", type=int, default=32)
    parser.add_argument("--seeds", default="0-4")
    parser.add_argument("--points", type=int, nargs="+", default=[0, 20_000, 50_000])
    parser.add_argument("--states", type=int, default=32, help="N states per measurement")
    parser.add_argument("--actions", type=int, default=8, help="K actions per state")
    parser.add_argument("--continuations", type=int, default=2, help="M per action")
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    parser.add_argument(
        "--results", type=Path, default=None, help="print the table of an earlier --out file"
    )
    args = parser.parse_args()
    if args.results is not None:
        print(table(json.loads(args.results.read_text())))
        return
    th.set_num_threads(1)
    start = time.perf_counter()
    rows = []
    for seed in _seeds(args.seeds):
        rows += measure(
            args.d, seed, sorted(args.points), args.states, args.actions, args.continuations
        )
    if args.out is not None:
        args.out.write_text(json.dumps(rows, indent=1))
    print(
        f"\nMultiBinaryMatch d={args.d}, seeds {args.seeds}, N={args.states} states, "
        f"K={args.actions} actions, M={args.continuations}; {time.perf_counter() - start:.0f} s"
    )
    print(table(rows))


if __name__ == "__main__":
    main()
