"""RELAX for factorised discrete actions (Grathwohl et al. 2018, Sec. 3.3 and 6.3): A2C whose
score term gets RELAX's learned, action-dependent control variate. The estimator is in
:mod:`relax_rl.control_variate`; the update lives here."""

from __future__ import annotations

from typing import Any, ClassVar

import torch as th

from relax_rl.agents.a2c import A2C
from relax_rl.buffers import GumbelRolloutSamples
from relax_rl.control_variate import ControlVariateMixin, OptimalKappa, relax_logit_gradient
from relax_rl.estimators import estimate_with_variance_loss, reinforce, relax_from_values
from relax_rl.on_policy import Losses, total_grad_norm
from relax_rl.tuning import Choice, Distribution


class RELAX(ControlVariateMixin, A2C):
    """Policy gradient with RELAX's action-dependent control variate (paper Eq. 10):

    ``g = sum_t [A_t - c_hat(z~_t, s_t)] dlog pi(a_t|s_t) + dc_hat(z_t, s_t) - dc_hat(z~_t, s_t)``

    where ``A_t = R_t - V(s_t)`` (with ``use_baseline``; the paper's discrete agent has no V and
    uses ``R_t``), ``z_t`` rebuilt from the stored noise at the current logits, ``z~_t ~ p(z |
    a_t, s_t)`` from the stored ``v_t``, and ``c_hat`` the control variate of
    :mod:`relax_rl.control_variate` (per sample in logit space:
    :func:`~relax_rl.control_variate.relax_logit_gradient`). Unbiased for any ``c_hat``. The
    update (:meth:`train`) also steps phi on its own Adam optimizer.

    How it is computed (``per_sample``): each sample's estimate in logit space, ``d
    surrogate_i / d logits_i = g_i + kappa h_i``, sent back through the network once, in the
    same backward pass that trains phi (the two graphs are disjoint). ``batch``
    differentiates the batch surrogate itself (the paper's form).

    The estimator is affine in ``kappa``: ``g = g_A2C + kappa * h``. Two ways to set it:

    - ``kappa_mode="learned"`` (the paper's): ``phi = (MLP, tau, kappa)`` descends the variance
      objective (:meth:`variance_loss`).
    - ``kappa_mode="optimal"`` (default): ``kappa = -E[g_A2C . h] / E[h . h]``, the coefficient
      that minimises the variance of ``g_A2C + kappa h`` (Eq. 3 of the seed; ``h`` has mean 0,
      so these uncentred moments are the covariance and the variance). The moments are those
      of the *per-sample gradients in logit space* (``dsurrogate_i / dlogits_i``), not of the
      batch gradient in parameter space, which would need one backward pass per env. They are
      *cross-fitted* on the current batch, one env left out at a time: each env's samples get
      the ``kappa`` of all the other envs' samples, which are independent of them, so the
      estimator stays unbiased while ``kappa`` follows the current policy (a running average
      over earlier batches lags: when the advantages shrink, a stale ``kappa`` adds variance
      instead of removing it), and shrunk towards 0 by its own standard error (a jackknife
      over those envs, leaving one more out: the steps of one env are correlated), so that a
      noisy estimate of a useless ``kappa`` costs little. With ``normalize_advantage`` the
      moments take the advantages standardised by the mean and std of the envs that supply
      them, not by the batch's, which hold the env's own (the estimate itself keeps A2C's
      whole-batch standardisation: its target is A2C's estimate). With fewer than
      :attr:`MIN_CROSS_FIT_ENVS` (8) envs in the batch, the moments are running averages over
      earlier batches (``kappa_decay``): with few envs the other envs' ratio is too noisy.
      ``bench/kappa_fold.py`` (phi trained at a fixed policy, 3 seeds; the trace ratio
      ``Var(RELAX) / Var(A2C)`` of the update's gradient on the same batches, median; CartPole-v1
      at a partly trained policy): leave one env out / running moments / the earlier
      even-and-odd halves at 2 envs x 5 steps 1.00 / 0.52 / 3.35 (up to 6.34), 3 x 3
      0.82 / 0.55 / 1.07 (up to 2.75), 4 x 5 0.49 / 0.29 / 0.43, 6 x 5 0.29 / 0.25 / 0.34,
      8 x 5 0.25 / 0.24 / 0.26, 16 x 5 0.25 / 0.27 / 0.28; MultiBinaryMatch d = 8 at 2 and 3
      envs 1.00 and 0.077 / 0.074 and 0.074 / 0.087 and 0.116, all three within 0.003 of
      each other from 4 envs on (0.052 to 0.059). Cross-fitting starts where it is within a
      few percent of the running moments at a fixed policy, their best case. The MLP and tau
      maximise the squared correlation of ``h`` with ``g_A2C`` on each batch, i.e. minimise
      the variance left at the best ``kappa``; when ``h`` has nothing to add, ``kappa`` goes
      to 0 and RELAX is A2C.

    :param cv_preset: the control variate's recipe
        (:attr:`~relax_rl.control_variate.ControlVariateConfig.PRESETS`): ``default``,
        ``paper`` (the paper's discrete agent: a [10, 10] MLP, learned kappa, the batch
        objective), ``factorised`` (MultiBinaryMatch's: centred linear and logit terms per
        dimension, a [32, 32] MLP term at the whole action, zero init, learned kappa, phi
        lr 3e-3, scale decay 0.99, the return target) or ``factorised-replay`` (the same
        with ``cv_replay=8``).
        Each ``cv_*`` argument below, where given, overrides it.
    :param cv_learning_rate: phi's learning rate (default: ``learning_rate``).
    :param cv_net_arch: hidden sizes of the MLP term (default ``[64, 64]``).
    :param cv_activation: ``relu`` (the paper's), ``tanh``, ``elu`` or ``leaky_relu``.
    :param kappa_mode: ``optimal`` (default) or ``learned`` (see above).
    :param cv_scale_decay: ``c_hat`` also times a running RMS of the advantages of *earlier*
        batches as the estimator uses them (an exponential average with this decay; the
        current batch's would make ``c_hat`` depend on the samples it corrects: biased), so
        that it shrinks as they do. Unset: the paper's form.
    :param cv_linear_term: add ``(W s + w0) . r``, linear in the relaxed action with
        state-dependent coefficients: for rewards that sum over many action dimensions.
    :param cv_zero_init: start the MLP's output at 0 (RELAX starts as A2C). Needs
        ``kappa_mode='learned'`` (the optimal kappa's objective has no gradient at 0).
    :param cv_per_dimension: each action dimension's score term gets its own control
        variate, ``c_hat`` with that dimension relaxed and the others as sampled.
    :param cv_mlp_per_dimension: with ``cv_per_dimension``, the MLP term per dimension too
        (the default); ``False``: the MLP term at the whole relaxed action (its joint RELAX
        correction, once), the linear and logit terms per dimension (RELAX is linear in
        ``c``: unbiased). ``factorised`` sets ``False``: fewer env steps to solve
        MultiBinaryMatch and 1.2x the speed (BENCHMARKS 13).
    :param cv_logit_term: add ``sum_k u(p_k) r_k``: each value's coefficient a small MLP of
        the policy's (detached) preference for it, shared by every dimension (discrete).
    :param cv_centred: the linear and logit terms act on ``r - E_pi[H]`` and the state minus
        the mean state of earlier batches (mean 0 given the state; discrete).
    :param cv_replay: after each update, phi also takes one step on the last ``cv_replay``
        batches together (the current one included, once used) at the current policy with
        their stored advantages: more samples per update, still never fit on the batch it
        corrects. Saved with the model. 0: phi sees each batch once.
    :param cv_target: ``advantage`` (``c_hat = kappa * c``, tracking ``A = R - V(s)``) or
        ``return`` (``c_hat = kappa (c - V(s))`` with ``V(s)`` the critic's value the
        batch's advantages were computed with: ``c`` models the return, a fixed target for a
        fixed reward; needs ``use_baseline`` and no ``normalize_advantage``).
    :param variance_objective: phi's objective (:meth:`variance_loss`): ``per_sample``
        (default) or ``batch`` (the paper's; learned kappa only).
    :param cv_options: the research switches no shipped config uses, by
        :class:`~relax_rl.control_variate.ControlVariateConfig` field name: ``kappa_init``
        (the learned kappa's start, 1), ``linear_fit`` (``regression``: the linear term fit to
        the return at the taken action by an affine-projection step per batch; BENCHMARKS
        8d), ``linear_step``, ``linear_decay``, ``replay_pass`` (``joint``, the default: one
        phi step on all kept batches at once; ``each``: one step per batch, as before), and
        any field to set to ``None`` over a preset (e.g. ``scale_decay``).
    :param kwargs: :class:`~relax_rl.agents.A2C`'s arguments (same defaults).
    """

    #: ``relax-rl tune``: A2C's space and the control variate's (the mixin's), with kappa's
    #: rule and phi's replay
    search_space: ClassVar[dict[str, Distribution | None]] = {
        "kappa_mode": Choice(("optimal", "learned")),
        "cv_replay": Choice((0, 4, 8)),
    }

    paired_baseline = True

    def __init__(
        self,
        policy: Any,
        env: Any,
        cv_preset: str = "default",
        cv_learning_rate: float | None = None,
        cv_net_arch: list[int] | None = None,
        cv_activation: str | None = None,
        kappa_mode: str | None = None,
        cv_scale_decay: float | None = None,
        cv_linear_term: bool | None = None,
        cv_zero_init: bool | None = None,
        cv_per_dimension: bool | None = None,
        cv_mlp_per_dimension: bool | None = None,
        cv_logit_term: bool | None = None,
        cv_centred: bool | None = None,
        cv_replay: int | None = None,
        cv_target: str | None = None,
        variance_objective: str | None = None,
        cv_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._init_control_variate(
            cv_preset,
            cv_options,
            learning_rate=cv_learning_rate,
            net_arch=cv_net_arch,
            activation=cv_activation,
            kappa=kappa_mode,
            scale_decay=cv_scale_decay,
            linear_term=cv_linear_term,
            zero_init=cv_zero_init,
            per_dimension=cv_per_dimension,
            mlp_per_dimension=cv_mlp_per_dimension,
            logit_term=cv_logit_term,
            centred=cv_centred,
            replay=cv_replay,
            target=cv_target,
            objective=variance_objective,
        )
        self.cv_config.check_agent(
            kwargs.get("use_baseline", True), kwargs.get("normalize_advantage", False)
        )
        # per-sample logit gradients of the score term (g) and of the correction (h, with
        # its graph to phi), and the kappa each sample got
        self._kappa_terms: tuple[th.Tensor, th.Tensor, th.Tensor] | None = None
        self._linear_residual = th.zeros(())  # the regression fit's, logged
        super().__init__(policy, env, **kwargs)

    def _setup_model(self) -> None:
        super()._setup_model()
        self._setup_control_variate()

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_kappa_terms", "_linear_residual"]

    # ---------------------------------------------------------------- the estimator
    def policy_surrogate(
        self,
        data: GumbelRolloutSamples,
        logits: th.Tensor,
        log_prob: th.Tensor,
        advantages: th.Tensor,
    ) -> tuple[th.Tensor, th.Tensor | None]:
        # The state enters c_hat as a constant: c may not depend on theta except through z.
        obs = self.policy.actor_features(data.observations).detach()
        cv, spec = self.control_variate, self.policy.action_spec
        # RELAX is written for a loss f to minimise; here f = -A and c = -c_hat / kappa.
        f_b = -advantages.detach()
        if self.cv_config.objective == "batch":
            # phi's objective differentiates the batch surrogate through the network: the
            # paper's form, with c at z, z~ and the detached z~ in one evaluation.
            z, z_tilde = spec.rebuild(logits, data.actions, data.noise_g, data.noise_v)
            points = th.cat([z, z_tilde, z_tilde.detach()])
            c_z, c_tilde, c_tilde_const = (-cv.shape(points, obs.repeat(3, 1))).chunk(3)
            score = reinforce(f_b, log_prob)  # A2C's term
            correction = relax_from_values(f_b, log_prob, c_z, c_tilde, c_tilde_const)
            self._kappa_terms = None
            return score + cv.kappa * (correction - score), None
        state = data.values if self.cv_config.target == "return" else None
        pieces = (logits, data.actions, data.noise_g, data.noise_v, obs)
        h, score_dir, c_hat_z, c_hat_tilde = relax_logit_gradient(cv, *pieces, value=state)
        g = f_b.unsqueeze(-1) * score_dir
        raw = data.advantages if self.normalize_advantage else None
        kappa = cv.kappa_rule.coefficient(
            g, score_dir, h.detach(), env_index=data.env_index, advantages=raw
        )
        logit_grad = g + (kappa.unsqueeze(-1) if kappa.dim() else kappa) * h.detach()
        self._kappa_terms = (g, h, kappa)
        with th.no_grad():  # the value (logged); the update differentiates through logit_grad
            score = reinforce(f_b, log_prob)  # A2C's term
            c_z, c_tilde = -c_hat_z, -c_hat_tilde
            if c_z.dim() == 2:  # one control variate per dimension: RELAX per dimension, summed
                per_dim = spec.log_prob_per_dimension(logits, data.actions)
                relaxed = relax_from_values(f_b.unsqueeze(-1), per_dim, c_z, c_tilde, c_tilde)
                relaxed = relaxed.sum(-1)
            else:
                relaxed = relax_from_values(f_b, log_prob, c_z, c_tilde, c_tilde)
            surrogate = th.lerp(score, relaxed, kappa)  # score + kappa * (RELAX's - score)
        return surrogate, logit_grad

    # ---------------------------------------------------------------- the update
    def variance_loss(self, losses: Losses) -> tuple[th.Tensor, list[th.Tensor] | None]:
        """phi's objective (Grathwohl et al. 2018, Eq. 11: ``d Var(g)/dphi = E[d g^2/dphi]``),
        and for ``batch`` the actor's gradient estimate computed on the way: ``batch``
        (the paper's) ``||g||^2`` of the batch policy gradient w.r.t. the actor (a double
        backward through the policy network); ``per_sample``, the kappa rule's objective on
        the per-sample logit gradients (:mod:`relax_rl.control_variate`). Any phi keeps the
        estimator unbiased; phi is trained on this batch and used on later ones."""
        if self._kappa_terms is None:  # batch
            grads, loss = estimate_with_variance_loss(
                losses.pg_loss, self.policy.actor_parameters()
            )
            return loss, grads
        g, h, kappa = self._kappa_terms
        return self.control_variate.kappa_rule.objective(g, h, kappa), None

    def train(self) -> None:
        """One update: A2C's (policy gradient with RELAX's surrogate, value loss, entropy) and
        one step of phi on :meth:`variance_loss`, then ``cv_replay``'s steps. Every finiteness
        check comes before any parameter, optimizer state or statistic changes."""
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        data = self.rollout_buffer.get_all()
        losses = self.losses(data)
        critic_and_entropy = self.vf_coef * losses.value_loss
        if self.ent_coef != 0:
            critic_and_entropy = critic_and_entropy - self.ent_coef * losses.entropy
        cv_loss, actor_grads = self.variance_loss(losses)
        cv_params = self._cv_parameters()
        params = [*self._policy_parameters(), *cv_params]
        for p in params:
            p.grad = None
        if actor_grads is None:
            # theta's loss and phi's have disjoint graphs (see policy_surrogate): one pass, to
            # the parameters only (not to the detached logits h was taken at).
            (losses.actor_objective + critic_and_entropy + cv_loss).backward(inputs=params)
        else:  # batch: the actor's gradient came with phi's loss (a double backward)
            if critic_and_entropy.requires_grad:  # (not without a baseline and entropy)
                critic_and_entropy.backward(retain_graph=True)
            cv_loss.backward(inputs=cv_params)
        if actor_grads is not None:
            for p, g in zip(self.policy.actor_parameters(), actor_grads, strict=True):
                p.grad = g.detach() if p.grad is None else p.grad + g.detach()
        cv = self.control_variate
        kappa = cv.kappa if self._kappa_terms is None else self._kappa_terms[2].mean()
        # one read: every check before anything moves, then the policy's step
        values, grad_norm = self._clip_check_step(
            pg_loss=losses.pg_loss,
            value_loss=losses.value_loss,
            entropy=losses.entropy,
            cv_loss=cv_loss,
            cv_grad_norm=total_grad_norm([p.grad for p in cv_params if p.grad is not None]),
            kappa=kappa,  # (logged: the kappa, tau and scale this update used)
            tau=cv.log_tau.exp(),
            cv_scale=cv.scale,
        )
        self.cv_optimizer.step()
        self._update_statistics(data)
        self.n_updates += 1
        if self.cv_config.replay > 0:
            self._replay.append(data)
            self._replay_phi()
        values["policy_loss"] = values.pop("pg_loss")
        del values["cv_grad_norm"]
        if cv.linear_regression:
            values["cv_linear_residual"] = float(self._linear_residual)
        self._log_update(grad_norm, **values)

    def _update_statistics(self, data: GumbelRolloutSamples) -> None:
        """After a successful update, statistics for LATER batches only (the current batch's
        would bias the estimator): the kappa rule's, the centring mean, the linear term's
        regression fit and c_hat's scale."""
        cv, config = self.control_variate, self.cv_config
        with th.no_grad():
            if self._kappa_terms is not None:
                g, h, kappa = self._kappa_terms
                cv.kappa_rule.observe(g, h.detach(), kappa)
            if cv.centred:  # (features only where they are used: this runs every update)
                features = self.policy.actor_features(data.observations)
                cv.observe(features)
                if cv.linear_regression:
                    self._fit_linear(data, features)
            if config.scale_decay is not None:
                # the advantages as the estimator's f uses them (standardised where it does)
                rms = self.batch_advantages(data).pow(2).mean().sqrt()
                d = config.scale_decay
                cv.scale.copy_(rms if self.n_updates == 0 else d * cv.scale + (1 - d) * rms)

    def _fit_linear(self, data: GumbelRolloutSamples, features: th.Tensor) -> None:
        """``linear_fit='regression'``: fold this batch into the linear term's fit, with the
        residual of ``c`` as it is after this update at the taken actions."""
        cv, spec = self.control_variate, self.policy.action_spec
        preferences = spec.preferences(self.policy.logits_and_values(data.observations)[0])
        c_taken = cv.at_actions(data.actions, features, preferences)
        if self.cv_config.target == "return":
            c_taken = c_taken - data.values
        advantages = self.batch_advantages(data)  # what the estimator's c is compared with
        residual = advantages - c_taken
        # logged: the fraction of the advantages' second moment c leaves at the taken actions
        self._linear_residual = residual.pow(2).mean() / advantages.pow(2).mean().clamp_min(1e-12)
        cv.fit_linear(
            features,
            data.actions,
            preferences,
            residual,
            self.cv_config.linear_step,
            self.cv_config.linear_decay,
        )


__all__ = ["RELAX", "OptimalKappa"]
