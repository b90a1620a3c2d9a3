"""RELAX for discrete actions (Grathwohl et al. 2018, Sec. 3.3 and 6.3)."""

from __future__ import annotations

from typing import Any

import torch as th
from torch import nn

from relax_rl.buffers import GumbelRolloutSamples
from relax_rl.estimators import categorical_conditional, categorical_sample, relax
from relax_rl.on_policy import GumbelOnPolicyAlgorithm
from relax_rl.policies import StateActionControlVariate

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU}


class RELAX(GumbelOnPolicyAlgorithm):
    """Policy gradient with RELAX's action-dependent control variate (paper Eq. 10):

    ``g = sum_t [A_t - c_hat(z~_t, s_t)] dlog pi(a_t|s_t) + dc_hat(z_t, s_t) - dc_hat(z~_t, s_t)``

    where ``A_t = R_t - V(s_t)`` (with ``use_baseline``; the paper's discrete agent has no V and
    uses ``R_t``), ``z_t = log pi(.|s_t) + G(u_t)`` is rebuilt from the stored Gumbel noise,
    ``z~_t ~ p(z | a_t, s_t)`` from the stored ``v_t``, and
    ``c_hat(z, s) = kappa * MLP([s, softmax(z / tau)])``. ``phi = (MLP, kappa, tau)`` is trained
    on the squared norm of the batch policy gradient (without the entropy term) by double
    backprop, on its own Adam optimizer. Unbiased for any ``c_hat``.

    :param cv_learning_rate: phi's learning rate (default: ``learning_rate``).
    :param cv_net_arch: hidden sizes of the MLP (the paper: ``[10, 10]``).
    :param cv_activation: ``relu`` (the paper's), ``tanh`` or ``elu``.
    :param kappa_init: initial ``kappa``.
    :param cv_scale_decay: if set, ``c_hat`` is also multiplied by a running RMS of the
        advantages (an exponential average with this decay), so that it shrinks as they do
        instead of adding noise late in training; ``None`` keeps the paper's form. Other
        parameters: see :class:`~relax_rl.on_policy.GumbelOnPolicyAlgorithm`.
    """

    control_variate: StateActionControlVariate

    def __init__(
        self,
        policy: Any,
        env: Any,
        cv_learning_rate: float | None = None,
        cv_net_arch: list[int] | None = None,
        cv_activation: str = "relu",
        kappa_init: float = 1.0,
        cv_scale_decay: float | None = None,
        **kwargs: Any,
    ) -> None:
        if cv_activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown cv_activation {cv_activation!r}; valid: {', '.join(ACTIVATIONS)}"
            )
        self.cv_learning_rate = cv_learning_rate
        self.cv_net_arch = list(cv_net_arch) if cv_net_arch is not None else [64, 64]
        self.cv_activation = cv_activation
        self.kappa_init = kappa_init
        self.cv_scale_decay = cv_scale_decay
        kwargs.setdefault("use_baseline", True)
        super().__init__(policy, env, **kwargs)

    def make_control_variate(self) -> nn.Module:
        obs_dim = int(self.policy.features_dim)
        return StateActionControlVariate(
            obs_dim,
            int(self.action_space.n),
            self.cv_net_arch,
            ACTIVATIONS[self.cv_activation],
            self.kappa_init,
        )

    def make_cv_optimizer(self, control_variate: nn.Module) -> th.optim.Optimizer:
        lr = self.cv_learning_rate if self.cv_learning_rate is not None else self.lr_schedule(1)
        return th.optim.Adam(control_variate.parameters(), lr=lr, eps=1e-5)

    def policy_surrogate(
        self,
        data: GumbelRolloutSamples,
        logits: th.Tensor,
        log_prob: th.Tensor,
        advantages: th.Tensor,
    ) -> th.Tensor:
        z, _ = categorical_sample(logits, data.noise_u)
        z_tilde = categorical_conditional(logits, data.actions, data.noise_v)
        # The state enters c_hat as a constant: c may not depend on theta except through z.
        obs = self.policy.extract_features(data.observations)
        obs = (obs if self.policy.share_features_extractor else obs[0]).detach()
        # RELAX is written for a loss f to minimise; here f = -A and c = -c_hat.
        return relax(-advantages, log_prob, z, z_tilde, lambda x: -self.control_variate(x, obs))

    def _adapt_control_variate(self, data: GumbelRolloutSamples) -> None:
        if self.cv_scale_decay is None:
            return
        rms = data.advantages.pow(2).mean().sqrt()
        scale = self.control_variate.scale
        first = self.n_updates == 0
        scale.copy_(rms if first else self.cv_scale_decay * scale + (1 - self.cv_scale_decay) * rms)

    def record_control_variate_stats(self) -> None:
        self.logger.record("train/kappa", self.control_variate.kappa.item())
        self.logger.record("train/tau", self.control_variate.log_tau.exp().item())
        self.logger.record("train/cv_scale", self.control_variate.scale.item())
