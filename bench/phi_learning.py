"""How fast does RELAX's control variate learn when the policy holds still?

Trains our A2C on ``relax_rl/MultiBinaryMatch-v0`` for ``--pretrain`` env steps, copies its
policy and critic into a RELAX agent whose learning rate is 0 (so only phi moves), and prints,
every ``--block`` phi steps, the paired log10 variance reduction of RELAX's update gradient
against the plain advantage estimator on the same batches (``grad/log10_var_reduction``,
measured on every batch), with kappa and tau. It separates what the control variate *can*
remove at a fixed policy from how fast phi gets there, which is what a run's average is made
of.

    python bench/phi_learning.py --d 32 --pretrain 40000
    python bench/phi_learning.py --d 128 --pretrain 100000 --blocks 12 --set cv_replay=8

``--oracle`` gives ``c_hat`` the task's exact return instead, ``Q(b, t) = mean_i 1[b_i = t_i]``
(the linear term's ``W = 2/d I``, ``w0 = -1/d``, the MLP the constant ``1 - mean(t)``, with
``cv_target=return``: ``c_hat = kappa (Q - V)``), and steps only kappa and tau: the most a
control variate of this form can remove at this policy, the ceiling phi learns towards.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch as th
import yaml

from relax_rl import config as cfg
from relax_rl.agents import A2C, RELAX
from relax_rl.diagnostics import GradientVarianceCallback, gradient_variance
from relax_rl.envs import MATCH_ENV_ID, make_env

N_ENVS = 16


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d", type=int, default=32, help="bits (default 32)")
    parser.add_argument("--pretrain", type=int, default=40_000, help="A2C env steps first")
    parser.add_argument("--blocks", type=int, default=8, help="blocks of phi steps")
    parser.add_argument("--block", type=int, default=250, help="phi steps per block")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--oracle", action="store_true", help="c_hat's shape = the exact return; learn kappa, tau"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="RELAX setting over MultiBinaryMatch's config (repeatable; YAML values)",
    )
    args = parser.parse_args(argv)
    path = Path("configs/relax.yaml")  # (its entry with a2c.yaml's under it: inherit)
    settings = cfg.select(cfg.load_config_file(path), MATCH_ENV_ID, path)
    for item in args.set:
        key, _, value = item.partition("=")
        settings[key] = yaml.safe_load(value)
    for key in ("n_envs", "total_steps"):
        settings.pop(key, None)
    if args.oracle:  # the exact Q is uncentred and unscaled
        settings.update(
            cv_target="return", cv_centred=False, cv_scale_decay=None, cv_linear_term=True
        )
    env_kwargs = {"d": args.d}
    a2c = A2C(
        "MlpPolicy",
        make_env(MATCH_ENV_ID, N_ENVS, args.seed, env_kwargs=env_kwargs),
        n_steps=1,
        seed=args.seed,
    )
    a2c.learn(args.pretrain)
    settings.update(learning_rate=0.0, seed=args.seed + 1)
    relax = RELAX(
        "MlpPolicy",
        make_env(MATCH_ENV_ID, N_ENVS, args.seed + 1, env_kwargs=env_kwargs),
        **settings,
    )
    relax.policy.load_state_dict(a2c.policy.state_dict())
    if args.oracle:
        set_exact_return(relax, args.d)
    measured: list[float] = []

    class EveryBatch(GradientVarianceCallback):
        def _on_rollout_end(self) -> None:
            values = gradient_variance(self.model, self.model.rollout_buffer.get_all())
            measured.append(values.get("grad/log10_var_reduction", math.nan))

    returns = [e["r"] for e in a2c.ep_info_buffer]
    print(
        f"d = {args.d}, policy after {args.pretrain:,} A2C steps: mean return "
        f"{np.mean(returns):.3f}; RELAX settings {settings}"
    )
    cv = relax.control_variate
    for block in range(1, args.blocks + 1):
        measured.clear()
        relax.learn(N_ENVS * args.block, reset_num_timesteps=False, callback=EveryBatch())
        print(
            f"phi steps {block * args.block:>6}: reduction {np.nanmean(measured):+.2f}  "
            f"kappa {float(cv.kappa.detach()):.3f}  tau {float(cv.log_tau.detach().exp()):.2f}",
            flush=True,
        )


def set_exact_return(relax: RELAX, d: int) -> None:
    """Give ``c_hat / kappa`` MultiBinaryMatch's exact return, ``(2t - 1) . b / d + 1 -
    mean(t)``, and leave phi's optimizer only kappa and tau."""
    cv = relax.control_variate
    with th.no_grad():
        for module in (cv.net, cv.coefficients, cv.preference_net):
            for p in module.parameters() if module is not None else ():
                p.zero_()
        cv.coefficients.weight.copy_(th.eye(d) * 2 / d)
        cv.coefficients.bias.fill_(-1 / d)
        # the MLP's one live path: relu(1 - mean(t)) through every hidden layer
        layers = [m for m in cv.net if isinstance(m, th.nn.Linear)]
        layers[0].weight[0, :d] = -1 / d
        layers[0].bias[0] = 1.0
        for layer in layers[1:]:
            layer.weight[0, 0] = 1.0
    cv.kappa.data.fill_(1.0)
    relax.cv_optimizer = th.optim.Adam(
        [cv.kappa, cv.log_tau], lr=relax.cv_optimizer.param_groups[0]["lr"], eps=1e-5
    )


if __name__ == "__main__":
    main()
