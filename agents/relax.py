"""RELAX for factorised discrete actions (Grathwohl et al. 2018, Sec. 3.3 and 6.3): A2C whose
score term gets RELAX's learned, action-dependent control variate. The whole update lives here."""

from __future__ import annotations

import io
from collections import deque
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.type_aliases import GymEnv, Schedule

from relax_rl.agents.a2c import A2C
from relax_rl.buffers import GumbelRolloutSamples
from relax_rl.estimators import (
    estimate_with_variance_loss,
    reinforce,
    relax_from_values,
)
from relax_rl.on_policy import Losses, total_grad_norm
from relax_rl.policies import ACTIVATIONS, GumbelPolicy, StateActionControlVariate

KAPPA_MODES = ("optimal", "learned")
VARIANCE_OBJECTIVES = ("per_sample", "batch")
CV_TARGETS = ("advantage", "return")
CV_LINEAR_FITS = ("variance", "regression")


def _cross_fitted_kappa(
    gh: np.ndarray,
    hh: np.ndarray,
    groups: np.ndarray,
    clusters: np.ndarray | None = None,
    advantages: np.ndarray | None = None,
) -> np.ndarray:
    """Each sample's ``kappa``: ``-sum gh / sum hh`` over the samples of all OTHER groups
    (leave one group out; ``groups`` must be independent of each other, as envs are), shrunk
    towards 0 by its own noise: ``kappa * max(0, 1 - se^2 / kappa^2)`` (positive-part
    James-Stein), with ``se`` the jackknife's over the ``clusters`` of those samples (leave one
    cluster out; by default each sample is its own, for independent samples; the agent's
    clusters are its envs, whose steps are correlated). The jackknife sees what a delta-method
    error misses: a ratio carried by one rare sample (an exploratory action of a
    near-deterministic policy). An estimated kappa adds ``(kappa - kappa*)^2 E[h.h]`` of
    variance; where ``h`` does not help, shrinking it cuts that cost, so that RELAX falls back
    to its baseline estimator. Samples supplied by fewer than 2 clusters or without ``h`` give
    0. Clusters lie within groups.

    With ``advantages`` (``normalize_advantage``), ``gh`` is each sample's ``g.h`` per unit of
    its advantage, and the moments take the advantages standardised (as
    :meth:`~relax_rl.on_policy.GumbelOnPolicyAlgorithm.batch_advantages` does) by the mean and
    std of the samples that supply them (the fold, or the jackknife's fold less one cluster):
    the whole batch's statistics would carry each sample's own advantage into its kappa. In
    float64 numpy, in closed form from per-cluster sums: a statistic of a few hundred numbers,
    where torch's per-call overhead would cost more than the arithmetic."""
    tiny = np.finfo(np.float64).tiny
    group_ids, groups = np.unique(groups, return_inverse=True)
    if clusters is None:
        clusters = np.arange(gh.size)
    clusters = np.unique(clusters, return_inverse=True)[1]
    n_clusters = int(clusters.max()) + 1 if clusters.size else 0
    # per-cluster sums: count, gh, hh (and A, A^2, A gh to standardise A by any set of clusters)
    a = np.ones_like(gh) if advantages is None else advantages.astype(np.float64)
    columns = (np.ones_like(gh), gh, hh, a, a * a, a * gh)
    sums = np.stack([np.bincount(clusters, c, minlength=n_clusters) for c in columns], -1)
    cluster_group = np.zeros(n_clusters, dtype=np.int64)
    cluster_group[clusters] = groups
    in_group = cluster_group[None, :] == np.arange(group_ids.size)[:, None]  # (G, C)
    by_group = in_group.astype(np.float64) @ sums  # (G, 6)
    fold = sums.sum(0) - by_group  # the other groups' sums, (G, 6)
    loo = fold[:, None, :] - sums[None, :, :]  # ... less one of their clusters, (G, C, 6)

    def ratio(s: np.ndarray) -> np.ndarray:
        n, s_gh, s_hh = s[..., 0], s[..., 1], s[..., 2]
        if advantages is not None:  # sum_i gh_i (A_i - mean) / (std + 1e-8), with n > 1
            mean = s[..., 3] / np.maximum(n, 1)
            std = np.sqrt(np.maximum(s[..., 4] - n * mean**2, 0) / np.maximum(n - 1, 1))
            s_gh = np.where(n > 1, (s[..., 5] - mean * s_gh) / (std + 1e-8), s[..., 5])
        return -s_gh / np.maximum(s_hh, tiny)

    m = (~in_group).sum(1)  # clusters behind each group's kappa
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):  # folds without h
        kappa = ratio(fold)
        jack = np.where(in_group, 0.0, ratio(loo))
        spread = np.where(in_group, 0.0, jack - (jack.sum(1) / np.maximum(m, 1))[:, None])
        se2 = (m - 1) / np.maximum(m, 1) * np.square(spread).sum(1)
        kappa = kappa * np.maximum(0.0, 1 - se2 / np.maximum(np.square(kappa), tiny))
    kappa[(m < 2) | (fold[:, 2] <= 0) | ~np.isfinite(kappa)] = 0.0
    return kappa[groups]


class RELAX(A2C):
    """Policy gradient with RELAX's action-dependent control variate (paper Eq. 10):

    ``g = sum_t [A_t - c_hat(z~_t, s_t)] dlog pi(a_t|s_t) + dc_hat(z_t, s_t) - dc_hat(z~_t, s_t)``

    where ``A_t = R_t - V(s_t)`` (with ``use_baseline``; the paper's discrete agent has no V and
    uses ``R_t``), ``z_t`` is rebuilt from the stored noise at the current logits
    (``log pi + G(u_t)`` per categorical dimension, ``l + logit(u_t)`` per bit),
    ``z~_t ~ p(z | a_t, s_t)`` from the stored ``v_t``, ``log pi`` sums over the action's
    dimensions, and ``c_hat(z, s) = kappa * MLP([s, relax(z / tau)])`` sees the relaxed sample
    of all dimensions at once (:class:`~relax_rl.policies.StateActionControlVariate`). Unbiased
    for any ``c_hat``. The update (:meth:`train`) also steps phi on its own Adam optimizer.

    How it is computed (``per_sample``): each sample's estimate in logit space,
    ``d surrogate_i / d logits_i = g_i + kappa h_i``, with the score terms in closed form
    (``d log pi(a)/d logits``: ``onehot(a) - pi`` per categorical, ``a - sigmoid(l)`` per
    bit) and c's terms by one autograd pass through
    ``c_hat`` evaluated at ``z`` and ``z~`` in one batch (its graph to phi kept for the
    variance objective); the actor's gradient is those logit gradients sent back through the
    network once, in the same backward pass that trains phi (the two graphs are disjoint).
    ``batch`` differentiates the batch surrogate itself (the paper's form).

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

    :param cv_learning_rate: phi's learning rate (default: ``learning_rate``).
    :param cv_net_arch: hidden sizes of the MLP (default ``[64, 64]``; the paper:
        ``[10, 10]``).
    :param cv_activation: ``relu`` (the paper's), ``tanh`` or ``elu``.
    :param kappa_mode: ``optimal`` or ``learned`` (see above).
    :param kappa_init: initial ``kappa`` (``learned``; ``optimal`` starts at 0, as A2C).
    :param kappa_decay: decay of the running moments behind the optimal ``kappa`` with fewer
        than :attr:`MIN_CROSS_FIT_ENVS` envs.
    :param cv_scale_decay: if set, ``c_hat`` is also multiplied by a running RMS of the
        advantages of *earlier* batches as the estimator uses them (standardised with
        ``normalize_advantage``; an exponential average with this decay; the current batch's
        would make ``c_hat`` depend on the samples it corrects: biased), so that it shrinks
        as they do; ``None`` keeps the paper's form.
    :param cv_linear_term: add to ``c_hat`` a term linear in the relaxed action with
        state-dependent coefficients, ``(W s + w0) . r``
        (:class:`~relax_rl.policies.StateActionControlVariate`): for rewards that are sums over
        many action dimensions.
    :param cv_zero_init: start the MLP's output layer at 0 (``c_hat = 0``: RELAX starts as
        A2C, and phi's first Adam steps grow ``c_hat`` from there instead of correcting with a
        random function the size of the default initialisation).
    :param cv_per_dimension: each action dimension's score term gets its own control variate,
        ``c_hat`` with that dimension relaxed and the others at their sampled values
        (:class:`~relax_rl.policies.StateActionControlVariate`): the other dimensions' noise
        leaves each dimension's term, instead of being removed only as far as the relaxation
        matches the sample. Needs ``variance_objective="per_sample"``.
    :param cv_logit_term: add to ``c_hat`` a term linear in the relaxed action whose
        coefficient for each value is a small MLP of the policy's preference for it (its
        logit or log-probability, detached), shared by every dimension
        (:class:`~relax_rl.policies.StateActionControlVariate`). Discrete actions; needs
        ``variance_objective="per_sample"``.
    :param cv_centred: the linear and logit terms act on the relaxed action minus the
        policy's mean of the sampled one
        (:class:`~relax_rl.policies.StateActionControlVariate`'s ``centred``): they have mean 0
        given the state, and their coefficients are fit on centred features. Discrete actions;
        needs ``variance_objective="per_sample"``.
    :param cv_replay: after each update, phi also takes one step on each of the last
        ``cv_replay`` batches (the current one included, once it has been used), at the
        current policy, with their stored advantages: phi learns from more samples per
        update, and it is still never fit on the batch it corrects, so the estimator stays
        unbiased. The kept batches are saved with the model: a loaded model goes on as the run
        would have. 0 (the default): phi sees each batch once. Needs
        ``variance_objective="per_sample"``.
    :param cv_target: what ``c_hat``'s learned part models. ``advantage`` (the default):
        ``c_hat = kappa * MLP(...)`` tracks ``A = R - V(s)``, a target that moves with the
        critic. ``return``: ``c_hat = kappa * (MLP(...) - V(s))`` with ``V(s)`` the critic's
        value the batch's advantages were computed with (a function of the state, fixed
        before the batch: unbiased), so that the MLP models the return as a function of the
        action and state (a Q-function, as in Q-Prop's control variate), a fixed target for a
        fixed reward, while the critic's improvement reaches the estimator at once. At
        ``kappa = 0`` RELAX is still A2C; but with a zero-initialised MLP and a critic that
        already knows the returns (a loaded model), RELAX starts as A2C *without* its
        baseline until phi has learned the mean return (MultiBinaryMatch d = 128 at a
        100k-step A2C policy: -0.36 decades over phi's first 250 steps, 0 by 750). Needs
        ``variance_objective="per_sample"``, ``use_baseline`` and no
        ``normalize_advantage``.
    :param cv_linear_fit: how the linear term's coefficients are learned. ``variance`` (the
        default): with the rest of phi, on the variance objective. ``regression``: fit to the
        return at the taken action by an affine-projection step (block normalised least mean
        squares) after each update, for later batches
        (:meth:`~relax_rl.policies.StateActionControlVariate.fit_linear`), while the MLP, logit
        term, kappa and tau still descend the variance objective (kappa sets how much of the
        fit to use). The linear term has ``K (obs_dim + 1)`` weights; the variance objective
        reaches each only through a product of two noisy per-sample terms, the regression's
        residual directly. Unbiased: the fit uses earlier batches only. Needs
        ``cv_linear_term`` and ``cv_centred``; leave ``cv_logit_term`` off with it (also
        linear in the action and learned by the variance objective, it pulled against the
        fit: MultiBinaryMatch d = 32, BENCHMARKS section 8d).
    :param cv_linear_step: ``regression``'s normalised step in (0, 2): the fraction of each
        sample's residual one step explains (larger: faster, noisier).
    :param cv_linear_decay: ``regression``'s per-batch decay of the running mean square of
        each state feature (its diagonal preconditioner).
    :param variance_objective: phi's objective (:meth:`variance_loss`): ``per_sample`` (the
        default) or ``batch`` (the paper's; ``learned`` kappa only).
    The other parameters are :class:`~relax_rl.agents.A2C`'s (same defaults).
    """

    paired_baseline = True
    control_variate: StateActionControlVariate
    #: the fewest envs (``env_index`` values) in a batch whose optimal kappa is cross-fitted
    #: (leave one env out); below it, the running moments of earlier batches (measured: see
    #: the class docstring)
    MIN_CROSS_FIT_ENVS = 8

    def __init__(
        self,
        policy: str | type[GumbelPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 7e-4,
        n_steps: int = 5,
        gamma: float = 0.99,
        gae_lambda: float = 1.0,
        ent_coef: float = 0.0,
        vf_coef: float = 0.5,
        max_grad_norm: float | None = 0.5,
        grad_clip: str = "joint",
        use_baseline: bool = True,
        normalize_advantage: bool = False,
        optimizer: str = "rmsprop",
        optimizer_kwargs: dict[str, Any] | None = None,
        max_episode_steps: int = 10_000,
        cv_learning_rate: float | None = None,
        cv_net_arch: list[int] | None = None,
        cv_activation: str = "relu",
        kappa_mode: str = "optimal",
        kappa_init: float = 1.0,
        kappa_decay: float = 0.95,
        cv_scale_decay: float | None = None,
        cv_linear_term: bool = False,
        cv_zero_init: bool = False,
        cv_per_dimension: bool = False,
        cv_logit_term: bool = False,
        cv_centred: bool = False,
        cv_replay: int = 0,
        cv_target: str = "advantage",
        cv_linear_fit: str = "variance",
        cv_linear_step: float = 0.5,
        cv_linear_decay: float = 0.99,
        variance_objective: str = "per_sample",
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "cpu",
        _init_setup_model: bool = True,
    ) -> None:
        if cv_activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown cv_activation {cv_activation!r}; valid: {', '.join(ACTIVATIONS)}"
            )
        if kappa_mode not in KAPPA_MODES:
            raise ValueError(f"unknown kappa_mode {kappa_mode!r}; valid: {', '.join(KAPPA_MODES)}")
        if variance_objective not in VARIANCE_OBJECTIVES:
            raise ValueError(
                f"unknown variance_objective {variance_objective!r}; "
                f"valid: {', '.join(VARIANCE_OBJECTIVES)}"
            )
        if cv_replay < 0:
            raise ValueError(f"cv_replay must be >= 0 (batches), got {cv_replay}")
        for name, value in (
            ("cv_per_dimension", cv_per_dimension),
            ("cv_logit_term", cv_logit_term),
            ("cv_centred", cv_centred),
            ("cv_replay", cv_replay),
        ):
            if value and variance_objective == "batch":
                raise ValueError(
                    f"{name} works on per-sample gradients; "
                    f"use variance_objective='per_sample' or {name}=False"
                )
        if cv_linear_fit not in CV_LINEAR_FITS:
            raise ValueError(
                f"unknown cv_linear_fit {cv_linear_fit!r}; valid: {', '.join(CV_LINEAR_FITS)}"
            )
        if cv_linear_fit == "regression" and not (cv_linear_term and cv_centred):
            raise ValueError(
                "cv_linear_fit='regression' fits the centred linear term: set "
                "cv_linear_term=True and cv_centred=True, or use cv_linear_fit='variance'"
            )
        if not 0.0 < cv_linear_decay <= 1.0:
            raise ValueError(f"cv_linear_decay must be in (0, 1], got {cv_linear_decay}")
        if not 0.0 < cv_linear_step < 2.0:
            raise ValueError(f"cv_linear_step must be in (0, 2), got {cv_linear_step}")
        if cv_target not in CV_TARGETS:
            raise ValueError(f"unknown cv_target {cv_target!r}; valid: {', '.join(CV_TARGETS)}")
        if cv_target == "return":
            for bad, needed in (
                (variance_objective == "batch", "variance_objective='per_sample'"),
                (not use_baseline, "use_baseline=True"),
                (normalize_advantage, "normalize_advantage=False"),
            ):
                if bad:
                    raise ValueError(
                        f"cv_target='return' moves the critic's value into c_hat: set {needed} "
                        "or use cv_target='advantage'"
                    )
        if kappa_mode == "optimal" and cv_zero_init:
            # the correlation objective has no gradient at c_hat = 0: phi would never move
            raise ValueError(
                "cv_zero_init starts c_hat at 0, where kappa_mode='optimal' gives phi no "
                "gradient; use kappa_mode='learned' or cv_zero_init=False"
            )
        if kappa_mode == "optimal" and variance_objective == "batch":
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
        self.cv_linear_term = cv_linear_term
        self.cv_zero_init = cv_zero_init
        self.cv_per_dimension = cv_per_dimension
        self.cv_logit_term = cv_logit_term
        self.cv_centred = cv_centred
        self.cv_replay = cv_replay
        self.cv_target = cv_target
        self.cv_linear_fit = cv_linear_fit
        self.cv_linear_decay = cv_linear_decay
        self.cv_linear_step = cv_linear_step
        self.variance_objective = variance_objective
        # Optimal kappa: per-sample logit gradients of the score term (g) and of the
        # correction (h, with its graph to phi), and the kappa each sample got.
        self._kappa_terms: tuple[th.Tensor, th.Tensor, th.Tensor] | None = None
        self._linear_residual = th.zeros(())  # cv_linear_fit="regression"'s, logged
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

    # ---------------------------------------------------------------- set-up and save/load
    def _setup_model(self) -> None:
        super()._setup_model()
        # (here, not in __init__: SB3's load sets cv_replay after __init__, then calls this)
        self._replay: deque[GumbelRolloutSamples] = deque(maxlen=max(self.cv_replay, 1))
        self.replay_state = th.zeros(0, dtype=th.uint8)  # the kept batches, only while saved
        optimal = self.kappa_mode == "optimal"
        cv = StateActionControlVariate(
            int(self.policy.features_dim),
            self.policy.action_spec,
            self.cv_net_arch,
            ACTIVATIONS[self.cv_activation],
            0.0 if optimal else self.kappa_init,
            linear_term=self.cv_linear_term,
            zero_init=self.cv_zero_init,
            per_dimension=self.cv_per_dimension,
            logit_term=self.cv_logit_term,
            centred=self.cv_centred,
            linear_regression=self.cv_linear_fit == "regression",
        )
        if optimal:
            cv.kappa.requires_grad_(False)
            # Running uncentred moments behind the one-env kappa = -mean_gh / mean_hh.
            cv.register_buffer("mean_gh", th.zeros(()))
            cv.register_buffer("mean_hh", th.zeros(()))
        cv.scaled = self.cv_scale_decay is not None
        self.control_variate = cv.to(self.device)
        lr = self.cv_learning_rate if self.cv_learning_rate is not None else self.lr_schedule(1)
        params = [p for p in cv.parameters() if p.requires_grad]
        self.cv_optimizer = th.optim.Adam(params, lr=lr, eps=1e-5, fused=True)

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        state_dicts, tensors = super()._get_torch_save_params()
        return [*state_dicts, "control_variate", "cv_optimizer"], [*tensors, "replay_state"]

    def _excluded_save_params(self) -> list[str]:
        # (the kept batches travel as replay_state, a tensor: see save)
        return [*super()._excluded_save_params(), "_replay", "_kappa_terms", "_linear_residual"]

    def save(self, *args: Any, **kwargs: Any) -> None:
        """SB3's, with ``cv_replay``'s kept batches: phi's next steps use them, so that a
        loaded model goes on as the run would have (one ``uint8`` tensor, ``torch.save``'s
        bytes of the batches' tensors by field name, among the model's torch variables)."""
        if self._replay:
            buffer = io.BytesIO()
            batches = [[x.detach().cpu().clone() for x in batch] for batch in self._replay]
            th.save({"fields": list(GumbelRolloutSamples._fields), "batches": batches}, buffer)
            self.replay_state = th.frombuffer(bytearray(buffer.getvalue()), dtype=th.uint8)
        try:
            super().save(*args, **kwargs)
        finally:
            self.replay_state = th.zeros(0, dtype=th.uint8)

    @classmethod
    def load(cls, *args: Any, **kwargs: Any) -> RELAX:  # type: ignore[override]
        model = super().load(*args, **kwargs)
        if model.replay_state.numel():  # (a model saved without kept batches has none)
            raw = io.BytesIO(model.replay_state.cpu().numpy().tobytes())
            saved = th.load(raw, map_location=model.device, weights_only=True)
            for batch in saved["batches"]:
                fields = dict(zip(saved["fields"], batch, strict=True))
                model._replay.append(GumbelRolloutSamples(**fields))
            model.replay_state = th.zeros(0, dtype=th.uint8)
        return model

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
        cv = self.control_variate
        # RELAX is written for a loss f to minimise; here f = -A and c = -c_hat / kappa.
        f_b = -advantages.detach()
        spec = self.policy.action_spec
        if self.variance_objective == "batch":
            # phi's objective differentiates the batch surrogate through the network: the
            # paper's form, with c at z, z~ and the detached z~ in one evaluation of the MLP.
            z, z_tilde = spec.rebuild(logits, data.actions, data.noise_g, data.noise_v)
            points = th.cat([z, z_tilde, z_tilde.detach()])
            c_z, c_tilde, c_tilde_const = (-cv.shape(points, obs.repeat(3, 1))).chunk(3)
            score = reinforce(f_b, log_prob)  # A2C's term
            correction = relax_from_values(f_b, log_prob, c_z, c_tilde, c_tilde_const) - score
            self._kappa_terms = None
            return score + cv.kappa * correction, None
        # Per-sample logit gradients: the update sends them through the network, and phi's
        # objective (a function of h) gets a graph of its own.
        h, score_dir, c_hat_z, c_hat_tilde = cv.correction(
            logits, data.actions, data.noise_g, data.noise_v, obs, value=self._state_term(data)
        )
        g = f_b.unsqueeze(-1) * score_dir
        if self.kappa_mode == "learned":
            kappa = cv.kappa
            logit_grad = g + kappa.detach() * h.detach()
        else:
            kappa = self._optimal_kappa(g, score_dir, h.detach(), data)
            logit_grad = th.addcmul(g, kappa.unsqueeze(-1), h.detach())
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

    def _state_term(self, data: GumbelRolloutSamples) -> th.Tensor | None:
        """``cv_target="return"``'s state term of ``c_hat / kappa``: the critic's value at
        each sample's state as the buffer stored it (the one the batch's advantages were
        computed with, fixed before this batch), so that ``c_hat``'s learned part models
        the return."""
        return data.values if self.cv_target == "return" else None

    def _optimal_kappa(
        self, g: th.Tensor, score_dir: th.Tensor, h: th.Tensor, data: GumbelRolloutSamples
    ) -> th.Tensor:
        """Per-sample ``kappa = -sum g.h / sum h.h`` over the samples of the other envs
        (``data.env_index``: with :attr:`MIN_CROSS_FIT_ENVS` or more), with each fold's own
        standardisation of the advantages where ``normalize_advantage``; else from the
        running moments of earlier batches. Constant in theta and phi."""
        groups = data.env_index.cpu().numpy()
        if np.unique(groups).size < self.MIN_CROSS_FIT_ENVS:
            cv = self.control_variate
            kappa = -cv.mean_gh / cv.mean_hh if float(cv.mean_hh) > 0 else th.zeros(())
            return kappa.to(g.device).expand(g.shape[0])
        h64 = h.cpu().numpy().astype(np.float64)
        advantages = None
        if self.normalize_advantage:  # g.h per unit advantage, standardised fold by fold
            gh = -(score_dir.cpu().numpy().astype(np.float64) * h64).sum(1)
            advantages = data.advantages.cpu().numpy()
        else:
            gh = (g.cpu().numpy().astype(np.float64) * h64).sum(1)
        kappa = _cross_fitted_kappa(gh, np.square(h64).sum(1), groups, groups, advantages)
        return th.from_numpy(kappa.astype(np.float32)).to(g.device)

    # ---------------------------------------------------------------- the update
    def variance_loss(self, losses: Losses) -> tuple[th.Tensor, list[th.Tensor] | None]:
        """phi's objective (Grathwohl et al. 2018, Eq. 11: ``d Var(g)/dphi = E[d g^2/dphi]``),
        and for ``batch`` the actor's gradient estimate computed on the way.

        - ``batch`` (the paper's): ``||g||^2`` with ``g`` the batch policy gradient w.r.t. the
          actor's parameters (double backward through the policy network).
        - ``per_sample``, learned kappa: the mean over samples of ``||dsurrogate_i/dlogits_i||^2``
          (each sample's estimate in logit space: no cross terms between samples, no double
          backward through the network).
        - ``per_sample``, optimal kappa: the MLP and tau maximise the squared correlation of
          ``h`` with ``g`` (the variance left at the best kappa is ``gg - gh^2 / hh``).

        Any phi keeps the estimator unbiased; phi is trained on this batch and used on later
        ones.
        """
        if self._kappa_terms is None:  # batch
            grads, loss = estimate_with_variance_loss(
                losses.pg_loss, self.policy.actor_parameters()
            )
            return loss, grads
        g, h, kappa = self._kappa_terms
        if self.kappa_mode == "learned":
            return (g + kappa * h).pow(2).sum(-1).mean(), None
        g_flat, h_flat = g.reshape(-1), h.reshape(-1)
        gh, hh = th.dot(g_flat, h_flat), th.dot(h_flat, h_flat)
        gg = float(th.dot(g_flat, g_flat))  # g is constant in phi
        return -gh * gh / (hh * gg).clamp_min(1e-12), None

    def train(self) -> None:
        """One update: A2C's (policy gradient with RELAX's surrogate, value loss, entropy) and
        one step of phi on :meth:`variance_loss`. Every finiteness check comes before any
        parameter, optimizer state or statistic changes."""
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        data = self.rollout_buffer.get_all()
        losses = self.losses(data)
        critic_and_entropy = self.vf_coef * losses.value_loss
        if self.ent_coef != 0:
            critic_and_entropy = critic_and_entropy - self.ent_coef * losses.entropy
        cv_loss, actor_grads = self.variance_loss(losses)
        cv_params = [p for group in self.cv_optimizer.param_groups for p in group["params"]]
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
        self._check_finite(
            pg_loss=losses.pg_loss,
            value_loss=losses.value_loss,
            entropy=losses.entropy,
            cv_loss=cv_loss,
            cv_grad_norm=total_grad_norm([p.grad for p in cv_params if p.grad is not None]),
        )
        if actor_grads is not None:
            for p, g in zip(self.policy.actor_parameters(), actor_grads, strict=True):
                p.grad = g.detach() if p.grad is None else p.grad + g.detach()
        grad_norm = self._clip_and_check()
        self.policy.optimizer.step()
        self.cv_optimizer.step()
        self._update_statistics(data)
        self.n_updates += 1
        if self.cv_replay > 0:
            self._replay.append(data)
            self._replay_phi(cv_params)
        cv = self.control_variate
        self._record_update(
            losses,
            grad_norm,
            cv_loss=cv_loss,
            kappa=cv.kappa,
            tau=cv.log_tau.exp(),
            cv_scale=cv.scale,
            **({"cv_linear_residual": self._linear_residual} if cv.linear_regression else {}),
        )

    def _replay_phi(self, cv_params: list[th.Tensor]) -> None:
        """``cv_replay``'s extra steps of phi: one on each kept batch, its variance objective
        at the current policy (logits, features) and the advantages it was collected with."""
        cv = self.control_variate
        for data in self._replay:
            with th.no_grad():
                logits = self.policy.logits_and_values(data.observations)[0]
                obs = self.policy.actor_features(data.observations)
                advantages = self.batch_advantages(data)
            pieces = (logits, data.actions, data.noise_g, data.noise_v, obs)
            h, score, _, _ = cv.correction(*pieces, value=self._state_term(data))
            g = -advantages.unsqueeze(-1) * score  # the score term, f = -A
            self._kappa_terms = (g, h, cv.kappa)
            loss, _ = self.variance_loss(None)  # type: ignore[arg-type]  (per_sample: unused)
            for p in cv_params:
                p.grad = None
            loss.backward(inputs=cv_params)
            self._check_finite(cv_replay_loss=loss)
            self.cv_optimizer.step()
        self._kappa_terms = None

    def _fit_linear(self, data: GumbelRolloutSamples, features: th.Tensor) -> None:
        """``cv_linear_fit="regression"``: fold this batch into the linear term's fit,
        with the residual of ``c`` as it is after this update at the taken actions."""
        cv, spec = self.control_variate, self.policy.action_spec
        preferences = spec.preferences(self.policy.logits_and_values(data.observations)[0])
        c_taken = cv._at(spec.hard(data.actions), features, preferences)
        state_term = self._state_term(data)
        if state_term is not None:
            c_taken = c_taken - state_term
        advantages = self.batch_advantages(data)  # what the estimator's c is compared with
        residual = advantages - c_taken
        # logged: the fraction of the advantages' second moment c leaves at the taken actions
        self._linear_residual = residual.pow(2).mean() / advantages.pow(2).mean().clamp_min(1e-12)
        cv.fit_linear(
            features,
            data.actions,
            preferences,
            residual,
            self.cv_linear_step,
            self.cv_linear_decay,
        )

    def _update_statistics(self, data: GumbelRolloutSamples) -> None:
        """After a successful update, statistics for LATER batches only: the one-env kappa's
        moments and c_hat's scale (the current batch's would bias the estimator)."""
        cv = self.control_variate
        with th.no_grad():
            if self._kappa_terms is not None and self.kappa_mode == "optimal":
                g, h, kappa = self._kappa_terms
                # (with any number of envs: a batch of fewer groups, as the variance
                # decomposition builds, takes its kappa from these)
                d, n = self.kappa_decay, g.shape[0]
                cv.mean_gh.mul_(d).add_((1 - d) * (g * h).sum() / n)
                cv.mean_hh.mul_(d).add_((1 - d) * h.pow(2).sum() / n)
                cv.kappa.fill_(kappa.mean())  # the kappa this update used (logged, saved)
            if cv.centred:  # (features only where they are used: this runs every update)
                features = self.policy.actor_features(data.observations)
                cv.observe(features)
                if cv.linear_regression:
                    self._fit_linear(data, features)
            if self.cv_scale_decay is not None:
                # the advantages as the estimator's f uses them (standardised where it does)
                rms = self.batch_advantages(data).pow(2).mean().sqrt()
                d = self.cv_scale_decay
                cv.scale.copy_(rms if self.n_updates == 0 else d * cv.scale + (1 - d) * rms)
