"""REINFORCE (Williams 1992) with Monte-Carlo returns and an optional learned state baseline."""

from __future__ import annotations

from typing import Any

import torch as th

from relax_rl.buffers import GumbelRolloutSamples
from relax_rl.estimators import reinforce
from relax_rl.on_policy import GumbelOnPolicyAlgorithm


class REINFORCE(GumbelOnPolicyAlgorithm):
    """Score-function policy gradient ``g = sum_t (G_t - b(s_t)) dlog pi(a_t|s_t)``.

    Defaults: whole-episode Monte-Carlo returns (``n_steps=0``, one env), no baseline, Adam,
    and the gradient variance measured every 5 updates (an update is a whole episode, so this
    costs about as little as every 50 short rollouts of the other agents).
    ``use_baseline=True`` adds a learned V(s) as ``b(s)``. Other parameters: see
    :class:`~relax_rl.on_policy.GumbelOnPolicyAlgorithm`.
    """

    def __init__(self, policy: Any, env: Any, **kwargs: Any) -> None:
        for key, value in dict(
            learning_rate=1e-3,
            n_steps=0,
            gae_lambda=1.0,
            ent_coef=0.0,
            max_grad_norm=None,
            use_baseline=False,
            optimizer="adam",
            grad_var_freq=5,
        ).items():
            kwargs.setdefault(key, value)
        super().__init__(policy, env, **kwargs)

    def policy_surrogate(
        self,
        data: GumbelRolloutSamples,
        logits: th.Tensor,
        log_prob: th.Tensor,
        advantages: th.Tensor,
    ) -> th.Tensor:
        return reinforce(-advantages, log_prob)
