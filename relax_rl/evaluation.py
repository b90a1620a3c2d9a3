"""The one evaluation loop: SB3's ``evaluate_policy``, returning per-episode numbers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecEnv


@dataclass
class EvalResult:
    returns: list[float]
    lengths: list[int]

    @property
    def mean(self) -> float:
        return float(np.mean(self.returns))

    @property
    def std(self) -> float:
        return float(np.std(self.returns))


def evaluate(
    model: BaseAlgorithm, env: VecEnv, n_episodes: int = 10, deterministic: bool = True
) -> EvalResult:
    """Run ``n_episodes`` episodes of ``model`` on ``env`` (Monitor-wrapped for true returns)."""
    returns, lengths = evaluate_policy(
        model,
        env,
        n_eval_episodes=n_episodes,
        deterministic=deterministic,
        return_episode_rewards=True,
        warn=False,
    )
    return EvalResult([float(r) for r in returns], [int(n) for n in lengths])
