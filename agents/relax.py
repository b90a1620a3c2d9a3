"""RELAX for discrete actions (Grathwohl et al. 2018, Sec. 3.3 and 6.3)."""

from __future__ import annotations

from typing import Any

import torch as th
from torch import nn

from relax_rl.buffers import GumbelRolloutSamples
from relax_rl.estimators import categorical_conditional, categorical_sample, reinforce, relax
from relax_rl.on_policy import GumbelOnPolicyAlgorithm, Losses
from relax_rl.policies import StateActionControlVariate

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU}


KAPPA_MODES = ("optimal", "learned")


def _shrunk_ratio(gh: th.Tensor, hh: th.Tensor) -> th.Tensor:
    """``kappa = -sum gh / sum hh`` from per-sample moments, shrunk towards 0 by its own noise:
    ``kappa * max(0, 1 - se^2 / kappa^2)`` (positive-part James-Stein), with ``se`` the
    jackknife's (leave one sample out), which sees what a delta-method error misses: a ratio
    carried by one rare sample (an exploratory action of a near-deterministic policy). An
    estimated kappa adds ``(kappa - kappa*)^2 E[h.h]`` of variance; where ``h`` does not help,
    shrinking it cuts that cost, so that RELAX falls back to its baseline estimator."""
    m, total_gh, total_hh = gh.numel(), gh.sum(), hh.sum()
    if m < 2 or float(total_hh) <= 0:
        return th.zeros((), dtype=hh.dtype, device=hh.device)
    kappa = -total_gh / total_hh
    loo = -(total_gh - gh) / (total_hh - hh).clamp_min(th.finfo(hh.dtype).tiny)
    se2 = (m - 1) / m * (loo - loo.mean()).pow(2).sum()
    return kappa * (1 - se2 / kappa.pow(2).clamp_min(th.finfo(hh.dtype).tiny)).clamp_min(0)


class RELAX(GumbelOnPolicyAlgorithm):
    """Policy gradient with RELAX's action-dependent control variate (paper Eq. 10):

    ``g = sum_t [A_t - c_hat(z~_t, s_t)] dlog pi(a_t|s_t) + dc_hat(z_t, s_t) - dc_hat(z~_t, s_t)``

    where ``A_t = R_t - V(s_t)`` (with ``use_baseline``; the paper's discrete agent has no V and
    uses ``R_t``), ``z_t = log pi(.|s_t) + G(u_t)`` is rebuilt from the stored Gumbel noise,
    ``z~_t ~ p(z | a_t, s_t)`` from the stored ``v_t``, and
    ``c_hat(z, s) = kappa * MLP([s, softmax(z / tau)])``. Unbiased for any ``c_hat``.

    The estimator is affine in ``kappa``: ``g = g_A2C + kappa * h``. Two ways to set it:

    - ``kappa_mode="learned"`` (the paper's): ``phi = (MLP, tau, kappa)`` descends the variance
      objective (:meth:`~relax_rl.on_policy.GumbelOnPolicyAlgorithm.variance_loss`).
    - ``kappa_mode="optimal"`` (default): ``kappa = -E[g_A2C . h] / E[h . h]``, the coefficient
      that minimises the variance of ``g_A2C + kappa h`` (Eq. 3 of the seed; ``h`` has mean 0,
      so these uncentred moments are the covariance and the variance). The moments are those
      of the *per-sample gradients in logit space* (``dsurrogate_i / dlogits_i``), not of the
      batch gradient in parameter space, which would need one backward pass per env. They are
      *cross-fitted* on the current batch: the envs are split in two halves (even and odd
      index), and each half's ``kappa`` comes from the other half's samples, which are
      independent of it, so the estimator stays unbiased while ``kappa`` follows the current
      policy (a running average over earlier batches lags: when the advantages shrink, a stale
      ``kappa`` adds variance instead of removing it), and shrunk towards 0 by its own
      (jackknife) standard error, so that a noisy estimate of a useless ``kappa`` costs
      little. With one env, the moments are running averages over earlier batches
      (``kappa_decay``). The MLP and tau maximise the squared correlation of ``h`` with
      ``g_A2C`` on each batch, i.e. minimise the variance left at the best ``kappa``; when
      ``h`` has nothing to add, ``kappa`` goes to 0 and RELAX is A2C.

    :param cv_learning_rate: phi's learning rate (default: ``learning_rate``).
    :param cv_net_arch: hidden sizes of the MLP (the paper: ``[10, 10]``).
    :param cv_activation: ``relu`` (the paper's), ``tanh`` or ``elu``.
    :param kappa_mode: ``optimal`` or ``learned`` (see above).
    :param kappa_init: initial ``kappa`` (``learned``; ``optimal`` starts at 0, as A2C).
    :param kappa_decay: decay of the running moments behind the optimal ``kappa`` with one env.
    :param cv_scale_decay: if set, ``c_hat`` is also multiplied by a running RMS of the
        advantages of *earlier* batches (an exponential average with this decay; the current
        batch's would make ``c_hat`` depend on the samples it corrects: biased), so that it
        shrinks as they do; ``None`` keeps the paper's form.
    :param variance_objective: ``per_sample`` by default; ``batch`` is the paper's (and the only
        one for ``learned`` kappa with double backprop through the policy network). Other
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
        kappa_mode: str = "optimal",
        kappa_init: float = 1.0,
        kappa_decay: float = 0.95,
        cv_scale_decay: float | None = None,
        **kwargs: Any,
    ) -> None:
        if cv_activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown cv_activation {cv_activation!r}; valid: {', '.join(ACTIVATIONS)}"
            )
        if kappa_mode not in KAPPA_MODES:
            raise ValueError(f"unknown kappa_mode {kappa_mode!r}; valid: {', '.join(KAPPA_MODES)}")
        if kappa_mode == "optimal" and kwargs.get("variance_objective") == "batch":
            raise ValueError(
                "kappa_mode='optimal' works on per-sample gradients; "
                "use variance_objective='per_sample' or kappa_mode='learned'"
            )
        self.cv_learning_rate = cv_learning_rate
        self.cv_net_arch = list(cv_net_arch) if cv_net_arch is not None else [64, 64]
        self.cv_activation = cv_activation
        self.kappa_mode = kappa_mode
        self.kappa_init = kappa_init
        self.kappa_decay = kappa_decay
        self.cv_scale_decay = cv_scale_decay
        # Per-sample logit gradients of the plain and the correction term, and the kappa used.
        self._parts: tuple[th.Tensor, th.Tensor, th.Tensor] | None = None
        kwargs.setdefault("use_baseline", True)
        kwargs.setdefault("variance_objective", "per_sample")
        super().__init__(policy, env, **kwargs)

    def make_control_variate(self) -> nn.Module:
        optimal = self.kappa_mode == "optimal"
        cv = StateActionControlVariate(
            int(self.policy.features_dim),
            int(self.action_space.n),
            self.cv_net_arch,
            ACTIVATIONS[self.cv_activation],
            0.0 if optimal else self.kappa_init,
        )
        if optimal:
            cv.kappa.requires_grad_(False)
            # Running uncentred moments behind the one-env kappa = -mean_gh / mean_hh.
            cv.register_buffer("mean_gh", th.zeros(()))
            cv.register_buffer("mean_hh", th.zeros(()))
        return cv

    def make_cv_optimizer(self, control_variate: nn.Module) -> th.optim.Optimizer:
        lr = self.cv_learning_rate if self.cv_learning_rate is not None else self.lr_schedule(1)
        params = [p for p in control_variate.parameters() if p.requires_grad]
        return th.optim.Adam(params, lr=lr, eps=1e-5, foreach=True)

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
        cv = self.control_variate
        plain = reinforce(-advantages, log_prob)
        # RELAX is written for a loss f to minimise; here f = -A and c = -c_hat (kappa = 1).
        unit = relax(-advantages, log_prob, z, z_tilde, lambda x: -cv.unit(x, obs)) - plain
        if self.kappa_mode == "learned":
            self._parts = None
            return plain + cv.kappa * unit
        (g,) = th.autograd.grad(plain.sum(), logits, retain_graph=True)
        (h,) = th.autograd.grad(unit.sum(), logits, create_graph=True)
        kappa = self._optimal_kappa(g.detach(), h.detach(), data.env_index)
        self._parts = (g.detach(), h, kappa)
        return plain + kappa * unit

    def _optimal_kappa(self, g: th.Tensor, h: th.Tensor, env_index: th.Tensor) -> th.Tensor:
        """Per-sample ``kappa = -sum g.h / sum h.h`` over the other half of the envs (or, with
        one env, from the running moments of earlier batches); constant in theta and phi."""
        gh, hh = (g * h).sum(-1), h.pow(2).sum(-1)
        if self.n_envs >= 2:
            odd = (env_index % 2).bool()
            return th.where(odd, _shrunk_ratio(gh[~odd], hh[~odd]), _shrunk_ratio(gh[odd], hh[odd]))
        cv = self.control_variate
        kappa = -cv.mean_gh / cv.mean_hh if float(cv.mean_hh) > 0 else th.zeros(())
        return kappa.expand_as(gh)

    def variance_loss(self, losses: Losses) -> tuple[th.Tensor, list[th.Tensor] | None]:
        if self.kappa_mode == "learned":
            return super().variance_loss(losses)
        assert self._parts is not None
        g, h, _ = self._parts
        gh, hh, gg = (g * h).sum(), h.pow(2).sum(), g.pow(2).sum()
        # The variance left at the best kappa is gg - gh^2 / hh: maximise gh^2 / (hh gg).
        return -gh.pow(2) / (hh * gg).clamp_min(1e-12), None

    def _after_update(self, data: GumbelRolloutSamples, losses: Losses) -> None:
        """Statistics for LATER batches only: the one-env kappa's moments and c_hat's scale."""
        cv = self.control_variate
        with th.no_grad():
            if self._parts is not None:
                g, h, kappa = self._parts
                d, n = self.kappa_decay, g.shape[0]
                cv.mean_gh.mul_(d).add_((1 - d) * (g * h).sum() / n)
                cv.mean_hh.mul_(d).add_((1 - d) * h.pow(2).sum() / n)
                cv.kappa.fill_(kappa.mean())  # the kappa this update used (logged, saved)
            if self.cv_scale_decay is not None:
                rms = data.advantages.pow(2).mean().sqrt()
                d = self.cv_scale_decay
                cv.scale.copy_(rms if self.n_updates == 0 else d * cv.scale + (1 - d) * rms)

    def record_control_variate_stats(self) -> None:
        self.logger.record("train/kappa", self.control_variate.kappa.item())
        self.logger.record("train/tau", self.control_variate.log_tau.exp().item())
        self.logger.record("train/cv_scale", self.control_variate.scale.item())
