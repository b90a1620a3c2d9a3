"""Advantage actor-critic (Mnih et al. 2016), synchronous: SB3 A2C's algorithm and defaults."""

from __future__ import annotations

from typing import Any, ClassVar

import torch as th
from stable_baselines3.common.type_aliases import GymEnv, Schedule

from relax_rl.buffers import GumbelRolloutSamples
from relax_rl.estimators import reinforce
from relax_rl.on_policy import GumbelOnPolicyAlgorithm
from relax_rl.policies import GumbelPolicy
from relax_rl.tuning import Choice, Distribution, LogUniform


class A2C(GumbelOnPolicyAlgorithm):
    """``g = sum_t A_t dlog pi(a_t|s_t)`` with n-step / GAE(lambda) advantages ``A_t`` from a
    learned V(s) that also bootstraps at cuts and time-limit truncations (Mnih et al. 2016,
    Alg. S3; GAE: Schulman et al. 2016, Eq. 16). One update per rollout on all of it.

    Defaults are SB3 A2C's (RMSprop alpha 0.99 eps 1e-5).

    :param policy: ``"MlpPolicy"`` (a :class:`~relax_rl.policies.GumbelPolicy`) or a subclass.
    :param env: a gymnasium env, a VecEnv or an env id.
    :param learning_rate: learning rate of the policy (actor and critic), or a schedule.
    :param n_steps: steps per env per update; ``0`` collects one whole episode per update
        (Monte-Carlo returns without any bootstrap; needs one env).
    :param gamma: discount factor.
    :param gae_lambda: GAE(lambda); 1 gives n-step Monte-Carlo advantages.
    :param ent_coef: entropy bonus (on the policy only).
    :param vf_coef: weight of the value loss.
    :param max_grad_norm: clip of the policy's gradient norm (``None``: no clipping).
    :param grad_clip: ``joint`` (SB3's: one norm over actor and critic) or ``separate`` (each
        by its own norm; :class:`~relax_rl.on_policy.GumbelOnPolicyAlgorithm`).
    :param use_baseline: learn V(s) and use it as the baseline and for bootstrapping. Without
        it, advantages are the plain discounted returns, which needs ``n_steps=0``.
    :param normalize_advantage: standardise advantages per batch.
    :param optimizer: ``"rmsprop"`` (SB3 A2C's) or ``"adam"``.
    :param optimizer_kwargs: overrides of the optimizer's settings.
    :param max_episode_steps: buffer capacity for ``n_steps=0`` when the env has no time limit.
    :param stats_window_size: episodes in SB3's rollout statistics.
    :param tensorboard_log: SB3's tensorboard folder.
    :param policy_kwargs: SB3 policy arguments (``net_arch``, ``activation_fn``, ...).
    :param verbose: SB3's verbosity.
    :param seed: seed of the networks, the envs and the acting noise.
    :param device: torch device (``"cpu"``, ``"cuda"``, ``"auto"``).
    """

    #: ``relax-rl tune``'s search space (:mod:`relax_rl.tuning`): rl-zoo3's A2C ranges, narrowed
    search_space: ClassVar[dict[str, Distribution | None]] = {
        "learning_rate": LogUniform(1e-5, 1e-2),
        "n_steps": Choice((5, 8, 16, 32, 64, 128)),
        "gamma": Choice((0.9, 0.95, 0.98, 0.99, 0.995, 0.999)),
        "gae_lambda": Choice((0.8, 0.9, 0.95, 0.98, 1.0)),
        "ent_coef": LogUniform(1e-8, 0.1),
        "max_grad_norm": Choice((0.3, 0.5, 1.0, 2.0, 5.0)),
        "normalize_advantage": Choice((False, True)),
    }

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

    def policy_surrogate(
        self,
        data: GumbelRolloutSamples,
        logits: th.Tensor,
        log_prob: th.Tensor,
        advantages: th.Tensor,
    ) -> tuple[th.Tensor, None]:
        return reinforce(-advantages, log_prob), None

    def train(self) -> None:
        """One update on the whole rollout: ``pg_loss + vf_coef * value_loss - ent_coef *
        entropy``, clipped, one optimizer step. A NaN/inf anywhere raises
        :class:`~relax_rl.errors.TrainingDivergedError` before any parameter moves."""
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        losses = self.losses(self.rollout_buffer.get_all())
        pg_loss = losses.pg_loss
        # (without logit gradients the actor's objective is the surrogate's mean: pg_loss)
        loss = (pg_loss if losses.logit_grad is None else losses.actor_objective) + (
            self.vf_coef * losses.value_loss
        )
        if self.ent_coef != 0:
            loss = loss - self.ent_coef * losses.entropy
        self._zero_policy_grads()
        loss.backward()
        # one read from the device: the losses' finiteness, the clip and the logged values
        values, grad_norm = self._clip_check_step(
            pg_loss=pg_loss, value_loss=losses.value_loss, entropy=losses.entropy
        )
        self.n_updates += 1
        self._log_update(
            grad_norm,
            policy_loss=values["pg_loss"],
            value_loss=values["value_loss"],
            entropy=values["entropy"],
        )
