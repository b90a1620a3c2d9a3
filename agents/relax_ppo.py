"""PPO whose advantage term carries RELAX's learned, action-dependent control variate
(Grathwohl et al. 2018, Eq. 10, inside Schulman et al. 2017's clipped surrogate). The whole
update lives here and in :class:`~relax_rl.agents.PPO`, whose loop it reuses."""

from __future__ import annotations

from typing import Any, ClassVar

import torch as th

from relax_rl.agents.ppo import PPO
from relax_rl.buffers import GumbelRolloutSamples
from relax_rl.control_variate import (
    FORM_FIELDS,
    ControlVariate,
    ControlVariateMixin,
    relax_logit_gradient,
)
from relax_rl.on_policy import total_grad_norm


class RELAXPPO(ControlVariateMixin, PPO):
    """PPO with RELAX's control variate on the advantage term. Per sample, with the ratio
    ``r = pi(a|s) / pi_old(a|s)``, the normalised advantage ``A`` (PPO's), PPO's unclipped
    indicator ``m`` (1 unless the clip holds the sample: ``A > 0, r > 1 + eps`` or
    ``A < 0, r < 1 - eps``) and ``c_hat(z, s) = kappa * c(z, s)``
    (:class:`~relax_rl.control_variate.ControlVariate`, in the units of ``A``), the
    gradient estimate is

    ``g = m r A dlog pi(a|s) + C``,  ``C = dc_hat(z) - r [c_hat(z~) dlog pi(a|s) + dc_hat(z~)]``

    PPO's clipped-surrogate gradient plus a correction ``C`` whose mean over ``a ~ pi_old`` is
    0 at any ``theta`` (Grathwohl et al. 2018, Eq. 10, importance-weighted):

    - Every term that depends on the taken action (the score term and ``c_hat(z~)``, with
      ``z~ ~ p(z | a)`` at the *current* logits from the stored ``v``) carries the ratio: it is
      the importance weight of ``a ~ pi_old`` for ``a ~ pi``. ``z~`` is an exact conditional
      sample at the current parameters at every epoch, since ``v`` is independent of ``a``.
    - ``dc_hat(z)`` needs ``z ~ p(z | theta)``, no action: ``z = log pi + G(u)`` rebuilt from
      the stored ``u`` at the current logits is one (``u`` is uniform whatever the action it
      made), so it carries no ratio; keeping the stored ``u`` keeps ``z`` coupled with ``z~``
      (the same action while the policy has not moved far), which is where RELAX's reduction
      comes from.
    - ``C`` is *not* multiplied by ``m``: its mean is 0 only averaged over every action, and
      ``m`` depends on the action, so a masked correction is biased (it pulls the update
      towards 0 where the clip is mixed). ``E_old[g]`` is PPO's clipped-surrogate gradient
      ``E_old[m r A dlog pi]`` at every epoch, for any ``c_hat``; at the first epoch
      (``r = 1``, ``m = 1``) ``g`` is exactly on-policy RELAX.
    - ``c_hat`` is in the units of the normalised ``A`` (about 1).
    - With one control variate per dimension (``cv_per_dimension``), ``c_d(z)`` relaxes
      dimension ``d`` and keeps the others *as sampled* from ``pi_old``: under the joint ratio
      its term carries ``r / r_d`` (the other dimensions' importance weight), ``c_d(z~)``'s
      terms the joint ``r``; under ``ratio="per_dimension"`` dimension ``d``'s PPO term is
      ``m_d r_d A dlog pi_d``, and its ``c_d(z~)`` terms carry ``r_d``, ``c_d(z)`` none.

    phi (the MLP, ``tau`` and ``kappa``) is fit on the variance objective
    (Grathwohl et al. 2018, Eq. 11) of the estimate that is applied, per sample in logit
    space, ``mean_i ||g_i||^2``, on its own
    Adam optimizer, one step per minibatch of the first ``cv_n_epochs`` epochs (default: the
    first epoch only, where the ratio is near 1). The
    correction applied to a rollout uses phi as it was *before* that rollout (a frozen copy),
    so phi is never fit on the samples it corrects; outside an update the two are equal.

    :param cv_preset: the control variate's recipe (its form only:
        :attr:`~relax_rl.control_variate.ControlVariateConfig.PRESETS`; ``factorised`` is per
        dimension with linear, logit and centred terms); each ``cv_*`` argument overrides it.
    :param cv_learning_rate: phi's learning rate (default: ``learning_rate``).
    :param cv_net_arch: hidden sizes of ``c``'s MLP (default ``[64, 64]``).
    :param cv_activation: ``relu`` (default), ``tanh``, ``elu`` or ``leaky_relu``.
    :param cv_linear_term: add to ``c`` a term linear in the relaxed action with
        state-dependent coefficients (for rewards that sum over many action dimensions).
    :param cv_zero_init: start ``c``'s MLP output at 0 (default: RELAX-PPO starts as PPO).
    :param cv_n_epochs: epochs of each rollout whose minibatches also step phi (``None``: all).
        The variance objective is of the estimator near ``r = 1``: in later epochs a few
        samples with large joint ratios dominate ``||g||^2`` (on MultiBinaryMatch d = 128, where
        PPO's joint ratio leaves the clip range for 72-75% of the samples, phi fit on every
        epoch drove ``cv_loss`` to 1e5-1e7 and the policy back to random; with 1, stable).
    :param cv_per_dimension: one control variate per action dimension (that dimension
        relaxed, the others at their sampled values).
    :param cv_logit_term: add to ``c`` a term linear in the relaxed action whose coefficient
        for each value is a small MLP of the policy's (detached) preference for it, shared by
        every dimension (discrete actions).
    :param cv_centred: the linear and logit terms act on the relaxed action minus the
        policy's mean of the sampled one (mean 0 given the state; discrete actions).
    :param cv_options: research switches by
        :class:`~relax_rl.control_variate.ControlVariateConfig` field (``kappa_init``: the
        learned kappa's start, 1).
    :param kwargs: :class:`~relax_rl.agents.PPO`'s arguments (same defaults). Its ``ratio``
        (``joint`` or ``per_dimension``): with ``per_dimension`` each dimension's terms carry
        that dimension's ratio, its PPO term its clip indicator, ``g_d = m_d r_d A dlog pi_d
        - r_d [c_hat_d(z~) dlog pi_d + dc_hat_d(z~)] + dc_hat_d(z)``, which needs
        ``cv_per_dimension`` where there is more than one dimension (discrete actions: a
        Gaussian's control variate is over the whole action).
    """

    paired_baseline = True
    paired_baseline_name = "PPO"

    #: RELAX-PPO's control variate: phi starts at 0 (RELAX-PPO starts as PPO), learned kappa
    CV_DEFAULTS: ClassVar[dict[str, Any]] = {"zero_init": True, "kappa": "learned"}
    CV_FIELDS: ClassVar[tuple[str, ...] | None] = (
        *FORM_FIELDS,
        "learning_rate",
        "kappa_init",
    )

    def __init__(
        self,
        policy: Any,
        env: Any,
        cv_preset: str = "default",
        cv_learning_rate: float | None = None,
        cv_net_arch: list[int] | None = None,
        cv_activation: str | None = None,
        cv_linear_term: bool | None = None,
        cv_zero_init: bool | None = None,
        cv_n_epochs: int | None = 1,
        cv_per_dimension: bool | None = None,
        cv_logit_term: bool | None = None,
        cv_centred: bool | None = None,
        cv_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._init_control_variate(
            cv_preset,
            cv_options,
            learning_rate=cv_learning_rate,
            net_arch=cv_net_arch,
            activation=cv_activation,
            linear_term=cv_linear_term,
            zero_init=cv_zero_init,
            per_dimension=cv_per_dimension,
            logit_term=cv_logit_term,
            centred=cv_centred,
        )
        if kwargs.get("ratio", "joint") == "per_dimension" and not self.cv_config.per_dimension:
            raise ValueError(
                "ratio='per_dimension' weighs each dimension's correction by its own ratio: "
                "set cv_per_dimension=True as well (or use ratio='joint')"
            )
        if cv_n_epochs is not None and cv_n_epochs < 0:
            raise ValueError(f"cv_n_epochs must be >= 0 or None (all), got {cv_n_epochs}")
        self.cv_n_epochs = cv_n_epochs
        self._in_update = False  # inside train(): corrections by the frozen copy
        self._cv_loss: th.Tensor | None = None  # this minibatch's phi objective, if it fits phi
        self._cv_losses: list[th.Tensor] = []
        super().__init__(policy, env, **kwargs)

    # ---------------------------------------------------------------- set-up and save/load
    def _setup_model(self) -> None:
        super()._setup_model()
        spec = self.policy.action_spec
        if self.ratio == "per_dimension" and spec.continuous and spec.n_dims > 1:
            raise ValueError(
                f"ratio='per_dimension' needs a control variate per dimension, which a "
                f"Gaussian's (LAX) is not: use ratio='joint' for {spec.space}"
            )
        self._setup_control_variate()
        features = int(self.policy.features_dim)
        frozen = ControlVariate(features, spec, self.cv_config).to(self.device)
        self._frozen_cv = frozen.requires_grad_(False)

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_frozen_cv", "_cv_loss", "_cv_losses"]

    # ---------------------------------------------------------------- the estimator
    def policy_surrogate(
        self,
        data: GumbelRolloutSamples,
        logits: th.Tensor,
        log_prob: th.Tensor,
        advantages: th.Tensor,
    ) -> tuple[th.Tensor, th.Tensor]:
        """PPO's clipped surrogate (its value, logged) and the logit gradients of the
        corrected estimate (the class docstring's ``-g`` per sample, in logit space)."""
        spec = self.policy.action_spec
        surrogate, ratio, unclipped = self.clipped_surrogate(data, logits, log_prob, advantages)
        ratio = ratio.detach()
        cv = self._frozen_cv if self._in_update else self.control_variate
        z_weight = None
        if ratio.dim() == 2:  # per dimension: each logit carries its dimension's ratio and clip
            r, mask = ratio[:, spec.column_dims], unclipped[:, spec.column_dims]
            tilde_weight = ratio if cv.per_dimension else ratio.squeeze(-1)
        else:
            r, mask = ratio.unsqueeze(-1), unclipped.unsqueeze(-1)
            tilde_weight = ratio
            if cv.per_dimension:
                # c_d(z) sees the other dimensions as sampled from pi_old: weight r / r_d
                new_dims = spec.log_prob_per_dimension(logits.detach(), data.actions)
                log_r = (log_prob.detach() - data.log_probs).unsqueeze(-1)
                z_weight = th.exp(log_r - (new_dims - data.log_prob_dims))
        obs = self.policy.actor_features(data.observations).detach()  # constant in theta
        pieces = (logits, data.actions, data.noise_g, data.noise_v, obs)
        weights = {"tilde_weight": tilde_weight, "z_weight": z_weight}
        corr = relax_logit_gradient(cv, *pieces, create_graph=False, **weights)
        # PPO's term carries the clip; the correction must not (its mean is 0 only over every
        # action, and the clip indicator depends on the action)
        ppo_term = -(mask * r * advantages.detach().unsqueeze(-1)) * corr.score
        logit_grad = ppo_term + cv.kappa.detach() * corr.h
        n_fit = self.n_epochs if self.cv_n_epochs is None else self.cv_n_epochs
        if self._in_update and self._epoch < n_fit:
            # phi's objective: the estimate that is applied, with the live phi (its graph to
            # phi only)
            live = self.control_variate
            h = relax_logit_gradient(live, *pieces, **weights).h
            self._cv_loss = (ppo_term + live.kappa * h).pow(2).sum(-1).mean()
        return surrogate.detach(), logit_grad

    # ---------------------------------------------------------------- the update
    def train(self) -> None:
        """PPO's epochs with the correction from phi as it was before this rollout, and phi's
        steps on the first ``cv_n_epochs`` epochs' minibatches."""
        self._frozen_cv.load_state_dict(self.control_variate.state_dict())
        self._in_update, self._cv_losses = True, []
        try:
            super().train()
        finally:
            self._in_update, self._cv_loss = False, None
        cv = self.control_variate
        if cv.centred:  # for the next rollouts' corrections (this one's would bias them)
            with th.no_grad():
                obs = self.rollout_buffer.get_all().observations
                cv.observe(self.policy.actor_features(obs))
        scalars = [cv.kappa.detach(), cv.log_tau.detach().exp()]
        if self._cv_losses:
            scalars.append(th.stack(self._cv_losses).mean())
        names = ("kappa", "tau", "cv_loss")[: len(scalars)]
        for name, value in zip(names, th.stack(scalars).tolist(), strict=True):
            self.logger.record(f"train/{name}", value)

    def _step(self, loss: th.Tensor) -> float:
        """PPO's step, and where this minibatch fits phi, phi's step on its variance objective
        (the two graphs are disjoint: one backward pass)."""
        cv_loss, self._cv_loss = self._cv_loss, None
        if cv_loss is None:
            return super()._step(loss)
        cv_params = self._cv_parameters()
        params = [*self._policy_parameters(), *cv_params]
        for p in params:
            p.grad = None
        (loss + cv_loss).backward(inputs=params)
        self._check_finite(
            cv_loss=cv_loss,
            cv_grad_norm=total_grad_norm([p.grad for p in cv_params if p.grad is not None]),
        )
        grad_norm = self._clip_and_check()
        self.policy.optimizer.step()
        self.cv_optimizer.step()
        self._cv_losses.append(cv_loss.detach())
        return grad_norm
