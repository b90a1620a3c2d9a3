"""Advantage actor-critic (Mnih et al. 2016), synchronous: SB3 A2C's algorithm and defaults."""

from __future__ import annotations

from typing import Any

import torch as th

from relax_rl.buffers import GumbelRolloutSamples
from relax_rl.estimators import reinforce
from relax_rl.on_policy import GumbelOnPolicyAlgorithm


class A2C(GumbelOnPolicyAlgorithm):
    """``g = sum_t A_t dlog pi(a_t|s_t)`` with n-step / GAE(lambda) advantages ``A_t`` from a
    learned V(s) that also bootstraps at cuts and time-limit truncations.

    Defaults are SB3 A2C's (lr 7e-4, n_steps 5, gamma 0.99, lambda 1, ent 0, vf 0.5, clip 0.5,
    RMSprop alpha 0.99 eps 1e-5). Parameters: see
    :class:`~relax_rl.on_policy.GumbelOnPolicyAlgorithm`.
    """

    def __init__(self, policy: Any, env: Any, **kwargs: Any) -> None:
        kwargs.setdefault("use_baseline", True)
        super().__init__(policy, env, **kwargs)

    def policy_surrogate(
        self,
        data: GumbelRolloutSamples,
        logits: th.Tensor,
        log_prob: th.Tensor,
        advantages: th.Tensor,
    ) -> th.Tensor:
        return reinforce(-advantages, log_prob)
