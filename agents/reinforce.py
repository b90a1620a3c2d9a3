"""REINFORCE (Williams 1992): A2C's update with Monte-Carlo returns over whole episodes."""

from __future__ import annotations

from typing import Any, ClassVar

import torch as th
from stable_baselines3.common.type_aliases import GymEnv, Schedule

from relax_rl.agents.a2c import A2C
from relax_rl.policies import GumbelPolicy
from relax_rl.tuning import Distribution


class REINFORCE(A2C):
    """Score-function policy gradient ``g = sum_t (G_t - b(s_t)) dlog pi(a_t|s_t)`` (Williams
    1992, Eq. 11): :class:`~relax_rl.agents.A2C` with other defaults, namely one whole episode
    per update (``n_steps=0``, one env) with its Monte-Carlo returns, no baseline, no gradient
    clipping, Adam at 1e-3. ``use_baseline=True`` adds a learned V(s) as ``b(s)``. The
    parameters are :class:`~relax_rl.agents.A2C`'s.
    """

    #: ``relax-rl tune``: A2C's space with whole episodes (Monte-Carlo returns) kept
    search_space: ClassVar[dict[str, Distribution | None]] = {"n_steps": None, "gae_lambda": None}

    def __init__(
        self,
        policy: str | type[GumbelPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 1e-3,
        n_steps: int = 0,
        gamma: float = 0.99,
        gae_lambda: float = 1.0,
        ent_coef: float = 0.0,
        vf_coef: float = 0.5,
        max_grad_norm: float | None = None,
        grad_clip: str = "joint",
        use_baseline: bool = False,
        normalize_advantage: bool = False,
        optimizer: str = "adam",
        optimizer_kwargs: dict[str, Any] | None = None,
        max_episode_steps: int = 10_000,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "cpu",
        _init_setup_model: bool = True,
    ) -> None:
        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            n_steps=n_steps,
            gamma=gamma,
            gae_lambda=gae_lambda,
            ent_coef=ent_coef,
            vf_coef=vf_coef,
            max_grad_norm=max_grad_norm,
            grad_clip=grad_clip,
            use_baseline=use_baseline,
            normalize_advantage=normalize_advantage,
            optimizer=optimizer,
            optimizer_kwargs=optimizer_kwargs,
            max_episode_steps=max_episode_steps,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            policy_kwargs=policy_kwargs,
            verbose=verbose,
            seed=seed,
            device=device,
            _init_setup_model=_init_setup_model,
        )
