"""RELAX-PPO off-policy: bias and variance of the update's gradient against PPO's.

The harness of ``tests/test_off_policy.py``: a one-step bandit with a fixed reward per
(context, action), the policy held (learning rate 0) and moved between collection and update
(ratio != 1, the clip holding part of the mass), phi trained first. For each action space and
setting it prints, over ``--updates`` updates of ``train()``: the z-scores of the mean gradient
against PPO's clipped-surrogate gradient enumerated exactly (mean z^2 ~ 1 and max |z| below
~4 for an unbiased estimator over ~40 coordinates), and the log10 change of the gradient's
variance (trace) against PPO's on the very same batches (same seed: the same rollouts;
> 0: RELAX-PPO has less variance).

    python bench/off_policy_bias.py                 # every case, mixed clip, 1,500 updates
    python bench/off_policy_bias.py --move inside --updates 600
    python bench/off_policy_bias.py --skip per_dimension-ratio   # joint-ratio cases only
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch as th

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from conftest import run_updates
from test_off_policy import (
    BANDIT_ID,
    CASES,
    MOVES,
    PPO,
    RELAXPPO,
    MoveActor,
    _agent,
    _case_id,
    exact_clipped_gradient,
)


def measure(case, move: str, updates: int, seed: int) -> tuple[float, float, float]:
    """Mean z^2, max |z| against the exact target, and log10 Var(PPO) - log10 Var(model)."""
    space, cls, kwargs = case
    delta = th.tensor(MOVES[space][move])
    ppo_kwargs = {k: v for k, v in kwargs.items() if k == "ratio"}
    model = _agent(cls, BANDIT_ID, seed=seed, env_kwargs={"space": space}, **kwargs)
    ppo = _agent(PPO, BANDIT_ID, seed=seed, env_kwargs={"space": space}, **ppo_kwargs)
    ppo.policy.load_state_dict(model.policy.state_dict())
    movers = MoveActor(delta), MoveActor(delta)
    warm = 200 if cls is RELAXPPO else 0
    run_updates(model, warm, callback=movers[0])
    run_updates(ppo, warm, callback=movers[1])  # the same batches from here on
    grads, _ = run_updates(model, updates, callback=movers[0])
    base, _ = run_updates(ppo, updates, callback=movers[1])
    with th.no_grad():
        model.policy.action_net.bias.copy_(movers[0].old + delta)
    expected, _ = exact_clipped_gradient(model, space, delta)
    se = grads.std(0) / math.sqrt(len(grads))
    z = (grads.mean(0) - expected) / se.clamp_min(1e-12)
    change = math.log10(float(base.var(0).sum())) - math.log10(float(grads.var(0).sum()))
    return float((z**2).mean()), float(z.abs().max()), change


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--move", choices=["inside", "mixed"], default="mixed")
    parser.add_argument("--updates", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument(
        "--skip", action="append", default=[], help="leave out the cases whose id has this text"
    )
    args = parser.parse_args()
    th.set_num_threads(1)
    print(f"clip {args.move}, {args.updates} updates, seed {args.seed}")
    print("| case | mean z^2 | max abs z | log10 variance change vs PPO |")
    print("|---|---|---|---|")
    for case in CASES:
        if case[1] is PPO or any(text in _case_id(case) for text in args.skip):
            continue
        z2, zmax, change = measure(case, args.move, args.updates, args.seed)
        print(f"| {_case_id(case)} | {z2:.2f} | {zmax:.1f} | {change:+.2f} |", flush=True)


if __name__ == "__main__":
    main()
