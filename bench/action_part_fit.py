"""How much of MultiBinaryMatch's return does a RELAX run's control variate know?

For each of a run's checkpoints (every ``--every``-th), at 256 targets ``t`` and 64 of the
policy's own actions ``b`` at each, the action part of the exact return,
``Q(b, t) - E_pi[Q | t]`` with ``Q = mean_i 1[b_i = t_i]``, against ``kappa * c_hat``'s at the
same hard actions (its own mean over the 64 subtracted). Prints R^2 = 1 - var(error) /
var(action part) and ``-log10(1 - R^2)``: the reduction of the other bits' noise that an
estimator left with that error could have at best.

    python bench/action_part_fit.py runs/mbm_d128/relax-s0 --d 128
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

import torch as th

from relax_rl.agents import RELAX
from relax_rl.envs import MATCH_ENV_ID, make_env


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a RELAX run's folder (with checkpoints/)")
    parser.add_argument("--d", type=int, default=32, help="the run's bits (default 32)")
    parser.add_argument("--every", type=int, default=4, help="every N-th checkpoint")
    args = parser.parse_args(argv)
    paths = sorted(
        (args.run_dir / "checkpoints").glob("model_*_steps.zip"),
        key=lambda p: int(re.findall(r"(\d+)_steps", p.name)[0]),
    )
    if not paths:
        parser.error(f"no checkpoints in {args.run_dir / 'checkpoints'}")
    chosen = paths[args.every - 1 :: args.every]
    if paths[-1] not in chosen:
        chosen.append(paths[-1])
    env = make_env(MATCH_ENV_ID, 1, 0, env_kwargs={"d": args.d})
    for path in chosen:
        model = RELAX.load(path, env=env)
        cv, spec = model.control_variate, model.policy.action_spec
        gen = th.Generator().manual_seed(0)
        targets = (th.rand(256, args.d, generator=gen) < 0.5).float()
        with th.no_grad():
            obs = model.policy.actor_features(targets)
            preferences = spec.preferences(model.policy.logits_and_values(targets)[0])
            mean = spec.mean_hard(preferences)
            c_hat, exact = [], []
            for _ in range(64):
                b = (th.rand(mean.shape, generator=gen) < mean).float()
                c_hat.append(cv.kappa * cv._at(b, obs, preferences))
                exact.append((b == targets).float().mean(1))
            fit, truth = th.stack(c_hat), th.stack(exact)
            fit, truth = fit - fit.mean(0), truth - truth.mean(0)
            r2 = float(1 - (fit - truth).var() / truth.var())
        bound = -math.log10(1 - r2) if r2 < 1 else math.inf
        steps = re.findall(r"(\d+)_steps", path.name)[0]
        print(
            f"{int(steps):>9,} env steps: R^2 {r2:.3f}, -log10(1 - R^2) {bound:+.2f}, "
            f"kappa {float(cv.kappa.detach()):.2f}"
        )


if __name__ == "__main__":
    main()
