"""Where does RELAX's cross-fitted optimal kappa pay, and how few envs are too few?

For each ``(n_envs, n_steps)``, a RELAX agent at a fixed policy (learning rate 0: the actor and
the critic hold still, phi trains) first trains phi alone for ``--phi-updates`` updates, then,
on each of the next ``--updates`` batches, the update's actor gradient is computed with four
kappas on the very same batch (and phi): 0 (A2C's estimator), the other half's (even and odd
envs, jackknife over samples: the scheme before leave-one-env-out), all other envs'
(leave one env out, jackknife over envs) and the running moments of earlier batches
(``kappa_decay``). Printed: the trace ratio ``sum Var(RELAX) / sum Var(A2C)`` over the actor's
coordinates for each (variances from successive batches' differences), median and [min, max]
over the seeds (< 1: RELAX has less variance).

CartPole-v1 at an A2C policy trained for ``--pretrain`` env steps (8 envs; its mean return is
printed), and relax_rl/MultiBinaryMatch-v0 (d = 8, ``cv_linear_term``) at its initial policy.
``--policy-lr`` lets the policy and critic learn instead (RELAX's own update, from the same
start): the running moments then lag behind the policy.

    python bench/kappa_fold.py              # about 5 CPU minutes (12 wall on 2 shared cores)
    python bench/kappa_fold.py --envs CartPole-v1 --sizes 3x3 8x5 --policy-lr 7e-4
    python bench/kappa_fold.py --sizes 3x3 16x5 --seeds 0-4 --updates 600
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch as th

from relax_rl.agents import A2C, RELAX
from relax_rl.control_variate import cross_fitted_kappa as _cross_fitted_kappa
from relax_rl.envs import MATCH_ENV_ID, make_env

SCHEMES = ("halves", "leave-one-env-out", "running")
ENVS = {  # name: (env id, env kwargs, RELAX kwargs)
    "CartPole-v1": ("CartPole-v1", None, {}),
    "MultiBinaryMatch d=8": (MATCH_ENV_ID, {"d": 8}, {"cv_linear_term": True}),
}
POLICY = {"net_arch": [64, 64]}


def pretrained(env_id: str, env_kwargs: dict | None, steps: int) -> dict:
    """An A2C policy (and critic) after ``steps`` env steps on 8 envs."""
    model = A2C("MlpPolicy", make_env(env_id, 8, 100, env_kwargs=env_kwargs), seed=100)
    if steps:
        model.learn(steps)
        returns = [e["r"] for e in model.ep_info_buffer]
        print(f"{env_id}: A2C after {steps} steps, last-100 mean return {np.mean(returns):.1f}")
    return model.policy.state_dict()


def trace_ratios(
    env: str,
    state: dict,
    n_envs: int,
    n_steps: int,
    seed: int,
    phi_updates: int,
    updates: int,
    policy_lr: float = 0.0,
) -> dict[str, float]:
    env_id, env_kwargs, kwargs = ENVS[env]
    model = RELAX(
        "MlpPolicy",
        make_env(env_id, n_envs, seed, env_kwargs=env_kwargs),
        n_steps=n_steps,
        learning_rate=policy_lr,
        cv_learning_rate=3e-3,
        seed=seed,
        policy_kwargs=POLICY,
        **kwargs,
    )
    model.policy.load_state_dict(state)
    model.learn(phi_updates * n_envs * n_steps)  # phi alone
    actor = model.policy.actor_parameters()
    grads: dict[str, list[th.Tensor]] = {name: [] for name in ("a2c", *SCHEMES)}
    variance_loss = model.variance_loss

    def measured(losses):  # every kappa on this batch, before the update steps phi
        g, h, _ = model._kappa_terms
        h = h.detach()
        data = model.rollout_buffer.get_all()
        gh = (g * h).double().sum(1).numpy()
        hh = h.double().pow(2).sum(1).numpy()
        env_index = data.env_index.numpy()
        cv = model.control_variate
        running = (
            float(-cv.kappa_rule.mean_gh / cv.kappa_rule.mean_hh)
            if float(cv.kappa_rule.mean_hh) > 0
            else 0.0
        )
        kappas = {
            "a2c": np.zeros(len(gh)),
            "halves": _cross_fitted_kappa(gh, hh, env_index % 2),
            "leave-one-env-out": _cross_fitted_kappa(gh, hh, env_index, env_index),
            "running": np.full(len(gh), running),
        }
        for name, kappa in kappas.items():
            logit_grad = g + th.as_tensor(kappa, dtype=g.dtype)[:, None] * h
            objective = (losses.logits * logit_grad).sum(-1).mean()
            flat = th.autograd.grad(objective, actor, retain_graph=True)
            grads[name].append(th.cat([x.reshape(-1) for x in flat]))
        return variance_loss(losses)

    model.variance_loss = measured
    model.learn(updates * n_envs * n_steps, reset_num_timesteps=False)
    base = total_variance(grads["a2c"])
    return {name: total_variance(grads[name]) / base for name in SCHEMES}


def total_variance(grads: list[th.Tensor]) -> float:
    """The variance summed over coordinates, from successive batches' differences (von
    Neumann's): the slow drift of the expected gradient while a policy learns cancels."""
    g = th.stack(grads)
    return float((g[1:] - g[:-1]).pow(2).sum(1).mean() / 2)


def seeds(text: str) -> list[int]:
    low, _, high = text.partition("-")
    return list(range(int(low), int(high or low) + 1))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["2x5", "3x3", "4x5", "6x5", "8x5", "16x5"])
    parser.add_argument("--envs", nargs="+", default=list(ENVS), choices=list(ENVS))
    parser.add_argument("--seeds", default="0-2")
    parser.add_argument("--pretrain", type=int, default=40_000, help="CartPole A2C env steps")
    parser.add_argument("--phi-updates", type=int, default=400)
    parser.add_argument("--updates", type=int, default=300, help="measured batches per run")
    parser.add_argument("--policy-lr", type=float, default=0.0, help="0: a fixed policy")
    args = parser.parse_args(argv)
    th.set_num_threads(1)
    for env in args.envs:
        env_id, env_kwargs, _ = ENVS[env]
        state = pretrained(env_id, env_kwargs, args.pretrain if env_id == "CartPole-v1" else 0)
        print(f"\n{env}: trace ratio Var(RELAX) / Var(A2C), median [min, max] over seeds")
        print(f"{'envs x steps':>12}  " + "  ".join(f"{s:>24}" for s in SCHEMES))
        for size in args.sizes:
            n_envs, n_steps = (int(x) for x in size.split("x"))
            runs = [
                trace_ratios(
                    env, state, n_envs, n_steps, s, args.phi_updates, args.updates, args.policy_lr
                )
                for s in seeds(args.seeds)
            ]
            cells = []
            for name in SCHEMES:
                r = [run[name] for run in runs]
                cells.append(f"{statistics.median(r):.3f} [{min(r):.3f}, {max(r):.3f}]")
            print(f"{size:>12}  " + "  ".join(f"{c:>24}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
