"""Proximal policy optimisation (Schulman et al. 2017) on the shared base: SB3 PPO's algorithm,
defaults and argument names, with the project's collect loop, buffer, returns and evaluation."""

from __future__ import annotations

import sys
from typing import Any, ClassVar

import numpy as np
import torch as th
import torch.nn.functional as F
from stable_baselines3.common.type_aliases import GymEnv, Schedule
from stable_baselines3.common.utils import explained_variance

from relax_rl.buffers import GumbelRolloutSamples
from relax_rl.on_policy import GumbelOnPolicyAlgorithm
from relax_rl.policies import GumbelPolicy
from relax_rl.tuning import Choice, Distribution, LogUniform

RATIOS = ("joint", "per_dimension")


def _schedule(value: float | Schedule) -> Schedule:
    """SB3's schedule of a constant or a callable (FloatSchedule from SB3 2.6, earlier
    get_schedule_fn, which 2.6+ deprecates)."""
    try:
        from stable_baselines3.common.utils import FloatSchedule
    except ImportError:  # SB3 < 2.6
        from stable_baselines3.common.utils import get_schedule_fn

        return get_schedule_fn(value)
    return FloatSchedule(value)


def clipped_objective(
    advantages: th.Tensor, ratio: th.Tensor, clip_range: float
) -> tuple[th.Tensor, th.Tensor]:
    """PPO's per-sample clipped surrogate to *minimise* (Schulman et al. 2017, Eq. 7),
    ``-min(r A, clip(r, 1 - eps, 1 + eps) A)``, and its unclipped indicator: 1 where the
    gradient flows through ``r A`` (the sample is inside the trust region or the clip would
    not bind), 0 where the clip holds it (``A > 0, r > 1 + eps`` or ``A < 0, r < 1 - eps``)."""
    clipped_ratio = th.clamp(ratio, 1 - clip_range, 1 + clip_range)
    surrogate = -th.min(ratio * advantages, clipped_ratio * advantages)
    with th.no_grad():
        held = ((advantages > 0) & (ratio > 1 + clip_range)) | (
            (advantages < 0) & (ratio < 1 - clip_range)
        )
    return surrogate, (~held).to(ratio.dtype)


class PPO(GumbelOnPolicyAlgorithm):
    """PPO-Clip: ``n_epochs`` passes of minibatch gradient steps on the clipped surrogate
    ``E[min(r_t A_t, clip(r_t, 1 - eps, 1 + eps) A_t)]``, ``r_t = pi(a_t|s_t) / pi_old(a_t|s_t)``
    (Schulman et al. 2017, Eq. 7), GAE(lambda) advantages (Schulman et al. 2016, Eq. 16)
    normalised per minibatch, value loss optionally clipped around the old values, early stop
    of the epochs at ``approx_kl > 1.5 target_kl``. SB3 PPO's defaults and names (Adam,
    eps 1e-5); ``log pi`` is the sum over the action's dimensions, so on a factorised action
    the ratio is the joint one (the product of the per-dimension ratios), as in SB3.

    ``n_updates`` counts rollouts (one ``train()`` each, as for the other agents: the
    gradient-variance diagnostics measure every ``grad_var_freq``-th of them, on the whole
    rollout at the collecting policy, i.e. the first epoch's gradient); ``train/n_epochs``
    logs the epochs actually run.

    :param policy: ``"MlpPolicy"`` (a :class:`~relax_rl.policies.GumbelPolicy`) or a subclass.
    :param env: a gymnasium env, a VecEnv or an env id.
    :param learning_rate: learning rate of the policy (actor and critic), or a schedule.
    :param n_steps: steps per env per rollout.
    :param batch_size: minibatch size (``None``: the whole rollout, one step per epoch).
    :param n_epochs: passes over each rollout.
    :param gamma: discount factor.
    :param gae_lambda: GAE(lambda).
    :param clip_range: the ratio's clip ``eps``, or a schedule of the remaining progress.
    :param clip_range_vf: clip of the value prediction around the old one (``None``: none;
        in the units of the returns).
    :param normalize_advantage: standardise the advantages per minibatch.
    :param ent_coef: entropy bonus.
    :param vf_coef: weight of the value loss.
    :param max_grad_norm: clip of the gradient norm (``None``: no clipping).
    :param grad_clip: ``joint`` (SB3's: one norm over actor and critic) or ``separate`` (each
        by its own norm; :class:`~relax_rl.on_policy.GumbelOnPolicyAlgorithm`).
    :param target_kl: stop the rollout's epochs once a minibatch's approximate KL to the
        collecting policy exceeds ``1.5 * target_kl`` (``None``: never).
    :param ratio: ``joint`` (SB3's: ``r = pi(a|s) / pi_old(a|s)`` over the whole action, the
        product of the dimensions' ratios) or ``per_dimension``: one clipped term per action
        dimension, ``sum_d min(r_d A, clip(r_d) A)`` with ``r_d`` that dimension's ratio (the
        same gradient at ``r = 1``; with many dimensions the joint ratio leaves the clip range
        after a small change per dimension). ``train/clip_fraction`` is of the joint ratio
        either way; ``per_dimension`` also logs ``train/clip_fraction_per_dimension``.
    :param optimizer: ``"adam"`` (SB3 PPO's) or ``"rmsprop"``.
    :param optimizer_kwargs: overrides of the optimizer's settings.
    :param stats_window_size: episodes in SB3's rollout statistics.
    :param tensorboard_log: SB3's tensorboard folder.
    :param policy_kwargs: SB3 policy arguments (``net_arch``, ``activation_fn``, ...).
    :param verbose: SB3's verbosity.
    :param seed: seed of the networks, the envs, the acting noise and the minibatch order
        (``minibatch_rng``, a ``numpy.random.RandomState``: SB3's permutation for the same
        seed of numpy's global generator).
    :param device: torch device (``"cpu"``, ``"cuda"``, ``"auto"``).
    """

    #: ``relax-rl tune``'s search space (:mod:`relax_rl.tuning`): rl-zoo3's PPO ranges, narrowed
    search_space: ClassVar[dict[str, Distribution | None]] = {
        "learning_rate": LogUniform(1e-5, 1e-2),
        "n_steps": Choice((32, 64, 128, 256, 512, 1024, 2048)),
        "batch_size": Choice((32, 64, 128, 256)),
        "n_epochs": Choice((1, 5, 10, 20)),
        "gamma": Choice((0.9, 0.95, 0.98, 0.99, 0.995, 0.999)),
        "gae_lambda": Choice((0.8, 0.9, 0.95, 0.98, 1.0)),
        "clip_range": Choice((0.1, 0.2, 0.3, 0.4)),
        "ent_coef": LogUniform(1e-8, 0.1),
        "max_grad_norm": Choice((0.3, 0.5, 1.0, 2.0, 5.0)),
    }

    #: Whether the agent learns V(s) for its advantages (PPO: GAE over ``n_steps`` windows);
    #: without one, rollouts are whole episodes (``n_steps=0``; group baselines).
    uses_critic: ClassVar[bool] = True

    def __init__(
        self,
        policy: str | type[GumbelPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 3e-4,
        n_steps: int = 2048,
        batch_size: int | None = 64,
        n_epochs: int = 10,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        clip_range: float | Schedule = 0.2,
        clip_range_vf: float | None = None,
        normalize_advantage: bool = True,
        ent_coef: float = 0.0,
        vf_coef: float = 0.5,
        max_grad_norm: float | None = 0.5,
        grad_clip: str = "joint",
        target_kl: float | None = None,
        ratio: str = "joint",
        optimizer: str = "adam",
        optimizer_kwargs: dict[str, Any] | None = None,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "cpu",
        _init_setup_model: bool = True,
    ) -> None:
        if ratio not in RATIOS:
            raise ValueError(f"unknown ratio {ratio!r}; valid: {', '.join(RATIOS)}")
        if n_steps < 1 and self.uses_critic:
            raise ValueError(
                f"n_steps must be >= 1 for PPO (steps per env per rollout), got {n_steps}"
            )
        if batch_size is not None and batch_size < 2 and normalize_advantage:
            raise ValueError(
                f"batch_size must be >= 2 to normalise advantages per minibatch, got {batch_size}"
            )
        if batch_size is not None and batch_size < 1:
            raise ValueError(
                f"batch_size must be >= 1 or None (the whole rollout), got {batch_size}"
            )
        if n_epochs < 1:
            raise ValueError(f"n_epochs must be >= 1, got {n_epochs}")
        if isinstance(clip_range, (int, float)) and clip_range <= 0:
            raise ValueError(f"clip_range must be > 0, got {clip_range}")
        if clip_range_vf is not None and clip_range_vf <= 0:
            raise ValueError(f"clip_range_vf must be > 0 or None, got {clip_range_vf}")
        if target_kl is not None and target_kl <= 0:
            raise ValueError(f"target_kl must be > 0 or None, got {target_kl}")
        self.batch_size = batch_size
        self.n_epochs = n_epochs
        self.clip_range = clip_range  # a schedule after _setup_model (SB3's convention)
        self.clip_range_vf = clip_range_vf
        self.target_kl = target_kl
        self.ratio = ratio
        self.minibatch_rng: np.random.RandomState | None = None
        self._dims_clipped = th.zeros(())
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
            use_baseline=self.uses_critic,
            normalize_advantage=normalize_advantage,
            optimizer=optimizer,
            optimizer_kwargs=optimizer_kwargs,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            policy_kwargs=policy_kwargs,
            verbose=verbose,
            seed=seed,
            device=device,
            _init_setup_model=_init_setup_model,
        )

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_dims_clipped"]

    def _setup_model(self) -> None:
        super()._setup_model()
        # The minibatch order has its own generator, saved with the model (a loaded model
        # keeps its state), so that a run continued from a checkpoint draws the minibatches a
        # straight run would; SB3 uses numpy's global one.
        if getattr(self, "minibatch_rng", None) is None:
            self.minibatch_rng = np.random.RandomState(self.seed)
        self.clip_range = _schedule(self.clip_range)
        self._clip = float(self.clip_range(1.0))
        self._epoch = 0  # the epoch train() is in

    # ---------------------------------------------------------------- the estimator
    def policy_surrogate(
        self,
        data: GumbelRolloutSamples,
        logits: th.Tensor,
        log_prob: th.Tensor,
        advantages: th.Tensor,
    ) -> tuple[th.Tensor, th.Tensor | None]:
        return self.clipped_surrogate(data, logits, log_prob, advantages)[0], None

    def clipped_surrogate(
        self,
        data: GumbelRolloutSamples,
        logits: th.Tensor,
        log_prob: th.Tensor,
        advantages: th.Tensor,
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        """PPO's clipped surrogate per sample, and the ratio and unclipped indicator behind it:
        ``(N,)`` for the joint ratio, ``(N, D)`` per dimension (``ratio``'s setting), both
        against the policy that acted (the log-probs the buffer stored)."""
        if self.ratio == "per_dimension":
            new = self.policy.action_spec.log_prob_per_dimension(logits, data.actions)
            ratios = th.exp(new - data.log_prob_dims)
            surrogate, unclipped = clipped_objective(advantages.unsqueeze(-1), ratios, self._clip)
            with th.no_grad():  # (logged: the share of (sample, dimension) terms out of range)
                self._dims_clipped = ((ratios - 1).abs() > self._clip).float().mean()
            return surrogate.sum(-1), ratios, unclipped
        ratio = th.exp(log_prob - data.log_probs)
        surrogate, unclipped = clipped_objective(advantages, ratio, self._clip)
        return surrogate, ratio, unclipped

    def value_loss(self, values: th.Tensor, data: GumbelRolloutSamples) -> th.Tensor:
        """SB3's: the squared error of the value prediction, clipped to ``clip_range_vf``
        around the value at collection time where that is set."""
        if self.clip_range_vf is not None:
            values = data.values + th.clamp(
                values - data.values, -self.clip_range_vf, self.clip_range_vf
            )
        return F.mse_loss(values, data.returns)

    # ---------------------------------------------------------------- the update
    def train(self) -> None:
        """``n_epochs`` passes over the rollout in minibatches, one optimizer step each on
        ``pg_loss + vf_coef * value_loss - ent_coef * entropy`` (clipped), with the early stop
        at ``target_kl``. A NaN/inf raises :class:`~relax_rl.errors.TrainingDivergedError`
        before the step it would have spoiled."""
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        self._clip = float(self.clip_range(self._current_progress_remaining))
        per_dimension = self.ratio == "per_dimension"
        batch_size = self.batch_size or sys.maxsize  # None: the whole rollout
        sums: dict[str, list[th.Tensor]] = {}
        grad_norms: list[float] = []
        epochs = 0
        stopped = False
        for epoch in range(self.n_epochs):
            self._epoch = epoch
            for batch in self.rollout_buffer.minibatches(batch_size, self.minibatch_rng):
                losses = self.losses(batch)
                with th.no_grad():
                    log_ratio = losses.log_prob - batch.log_probs
                    approx_kl = ((th.exp(log_ratio) - 1) - log_ratio).mean()
                if self.target_kl is not None and float(approx_kl) > 1.5 * self.target_kl:
                    stopped = True
                    break
                self._check_finite(
                    pg_loss=losses.pg_loss, value_loss=losses.value_loss, entropy=losses.entropy
                )
                loss = losses.actor_objective + self.vf_coef * losses.value_loss
                if self.ent_coef != 0:
                    loss = loss - self.ent_coef * losses.entropy
                grad_norms.append(self._step(loss))
                with th.no_grad():  # SB3's clip_fraction: |r - 1| > eps
                    clipped = ((th.exp(log_ratio) - 1).abs() > self._clip).float().mean()
                for key, value in (
                    ("policy_gradient_loss", losses.pg_loss),
                    *([("value_loss", losses.value_loss)] if self.use_baseline else []),
                    ("entropy_loss", -losses.entropy),
                    ("approx_kl", approx_kl),
                    ("clip_fraction", clipped),
                    ("loss", loss),
                    *(
                        [("clip_fraction_per_dimension", self._dims_clipped)]
                        if per_dimension
                        else []
                    ),
                ):
                    sums.setdefault(key, []).append(value.detach())
            epochs = epoch + 1 - int(stopped)
            if stopped:
                break
        self.n_updates += 1
        buffer = self.rollout_buffer
        with th.no_grad():
            means = {k: float(th.stack(v).mean()) for k, v in sums.items()}
        for key, value in means.items():
            self.logger.record(f"train/{key}", value)
        self.logger.record("train/n_updates", self.n_updates, exclude="tensorboard")
        self.logger.record("train/n_epochs", epochs)
        self.logger.record("train/clip_range", self._clip)
        if self.clip_range_vf is not None:
            self.logger.record("train/clip_range_vf", self.clip_range_vf)
        if grad_norms:
            self.logger.record("train/grad_norm", float(np.mean(grad_norms)))
        self._record_grad_clipping()
        n = buffer.pos
        if self.use_baseline:
            self.logger.record(
                "train/explained_variance",
                float(explained_variance(buffer.values[:n].ravel(), buffer.returns[:n].ravel())),
            )

    def _step(self, loss: th.Tensor) -> float:
        """One optimizer step on ``loss``; returns the gradient norm before clipping."""
        self._zero_policy_grads()
        loss.backward()
        _, grad_norm = self._clip_check_step()  # clip, check the norm, step: one read
        return grad_norm
