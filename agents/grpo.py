"""Group relative policy optimisation (GRPO; Shao et al. 2024): PPO's clipped update with
group-normalised advantages instead of a critic, and Dr. GRPO (Liu et al. 2025) as its
``scale_rewards="none"``."""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import torch as th
from stable_baselines3.common.type_aliases import GymEnv, Schedule

from relax_rl.agents.ppo import PPO
from relax_rl.buffers import GumbelRolloutSamples
from relax_rl.estimators import GROUP_SCALES, group_advantages
from relax_rl.groups import GROUP_RETURNS, GroupRolloutMixin, group_env
from relax_rl.policies import GumbelPolicy
from relax_rl.tuning import Choice, Distribution


class GRPO(GroupRolloutMixin, PPO):
    """PPO-Clip (Schulman et al. 2017, Eq. 7) with the group advantage
    ``A_i = (R_i - mean_j R_j) / (std_j R_j + eps)`` over the ``k`` members of a group, whose
    episodes start from one seed (:class:`~relax_rl.groups.GroupVecEnv`), and no critic (Shao
    et al. 2024, Eq. 3), optionally minus ``kl_coef`` times a KL penalty to a reference policy
    (Eq. 4). What ``scale_rewards`` does to the estimate (at ratio 1, the first step of a
    rollout):

    - ``none`` (Dr. GRPO, Liu et al. 2025): ``R_i - mean_j R_j``, exactly ``(k - 1) / k`` times
      RLOO's unbiased estimate: the true gradient scaled by ``(k - 1) / k`` (tested through
      ``train()``).
    - ``group`` (GRPO's): each group divided by its own standard deviation, a factor that depends
      on the samples themselves and weighs groups by 1 / std: biased towards groups with little
      spread (nearly all solved or nearly all failed), which Dr. GRPO removes.
    - ``batch``: one standard deviation for the whole rollout: the direction of ``none``'s
      estimate, its length rescaled per rollout (a data-dependent step size).

    Groups whose returns are all equal get advantage 0, never a NaN; their share is logged as
    ``train/zero_std_group_fraction``. The loss is averaged over the rollout's steps, as every
    agent's here (not per episode first, GRPO's ``1/|o_i|``: Dr. GRPO's second bias, towards
    short episodes, does not arise).

    A rollout is one round: one whole episode per env (``n_envs`` = ``group_size`` x the number
    of groups); ``num_timesteps`` counts the steps of running envs only. Defaults: one optimizer
    step per rollout on all of it (GRPO's ``mu = 1``, as in DeepSeekMath and TRL: the ratio is
    1 and the clip does nothing; ``n_epochs > 1`` or minibatches reuse a rollout through it),
    PPO's Adam 3e-4 and clip 0.2. On CartPole-v1, 4 or 20 epochs of the same rollouts
    (minibatches of 256) learned worse than one step (BENCHMARKS.md section 14).

    :param policy: ``"MlpPolicy"`` (a :class:`~relax_rl.policies.GumbelPolicy`) or a subclass.
    :param env: an env id (one group), or a VecEnv of ``n_envs`` a multiple of ``group_size``
        (wrapped in :class:`~relax_rl.groups.GroupVecEnv` unless it is in groups already).
    :param learning_rate: learning rate of the policy, or a schedule.
    :param group_size: ``k``, the envs that share a start state (>= 2).
    :param scale_rewards: ``group`` (GRPO: each group's advantages divided by its std; biased
        towards groups with little spread), ``batch`` (by the rollout's std) or ``none`` (Dr.
        GRPO: ``(k - 1) / k`` times RLOO's unbiased estimate).
    :param scale_eps: added to the standard deviation before dividing by it.
    :param returns: ``episode`` (GRPO's outcome reward: every step weighted by its episode's
        normalised discounted return) or ``to_go`` (each step's return-to-go, normalised with the
        other members' at the same time step, 0 after a member's episode ended).
    :param kl_coef: ``beta``: weight of the penalty ``KL(pi || pi_ref)``, estimated per sample by
        ``r - log r - 1``, ``r = pi_ref(a|s) / pi(a|s)`` (Schulman's k3, GRPO's Eq. 4);
        ``train/kl_ref`` logs its mean. 0: none (Dr. GRPO's and most recent practice).
    :param ref_update_interval: ``pi_ref`` is the initial policy (0) or the policy of every
        ``ref_update_interval``-th update (iterative GRPO).
    :param n_epochs: passes over each rollout.
    :param batch_size: minibatch size (``None``: the whole rollout).
    :param gamma: discount factor.
    :param clip_range: the ratio's clip ``eps``, or a schedule of the remaining progress.
    :param ent_coef: entropy bonus.
    :param max_grad_norm: clip of the gradient norm (``None``: no clipping).
    :param grad_clip: ``joint`` or ``separate`` (see
        :class:`~relax_rl.on_policy.GumbelOnPolicyAlgorithm`).
    :param target_kl: stop the rollout's epochs past ``1.5 * target_kl`` (``None``: never).
    :param ratio: ``joint`` or ``per_dimension`` (:class:`~relax_rl.agents.PPO`).
    :param optimizer: ``"adam"`` (PPO's) or ``"rmsprop"``.
    :param optimizer_kwargs: overrides of the optimizer's settings.
    :param max_episode_steps: the longest episode the buffer takes when the env has no time
        limit.
    :param stats_window_size: episodes in SB3's rollout statistics.
    :param tensorboard_log: SB3's tensorboard folder.
    :param policy_kwargs: SB3 policy arguments (``net_arch``, ``activation_fn``, ...).
    :param verbose: SB3's verbosity.
    :param seed: seed of the network, the group seeds, the acting noise and the minibatches.
    :param device: torch device (``"cpu"``, ``"cuda"``, ``"auto"``).
    """

    #: ``relax-rl tune``: PPO's space without the rollout length and GAE, with the reward scale
    search_space: ClassVar[dict[str, Distribution | None]] = {
        "n_steps": None,
        "gae_lambda": None,
        "scale_rewards": Choice(("group", "batch", "none")),
    }

    uses_critic: ClassVar[bool] = False
    reference_policy: GumbelPolicy | None

    def __init__(
        self,
        policy: str | type[GumbelPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 3e-4,
        group_size: int = 4,
        scale_rewards: str = "group",
        scale_eps: float = 1e-4,
        returns: str = "episode",
        kl_coef: float = 0.0,
        ref_update_interval: int = 0,
        n_epochs: int = 1,
        batch_size: int | None = None,
        gamma: float = 0.99,
        clip_range: float | Schedule = 0.2,
        ent_coef: float = 0.0,
        max_grad_norm: float | None = 0.5,
        grad_clip: str = "joint",
        target_kl: float | None = None,
        ratio: str = "joint",
        optimizer: str = "adam",
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
        if scale_rewards not in GROUP_SCALES:
            raise ValueError(
                f"unknown scale_rewards {scale_rewards!r}; valid: {', '.join(GROUP_SCALES)}"
            )
        if returns not in GROUP_RETURNS:
            raise ValueError(f"unknown returns {returns!r}; valid: {', '.join(GROUP_RETURNS)}")
        if not scale_eps >= 0:
            raise ValueError(f"scale_eps must be >= 0, got {scale_eps}")
        if not kl_coef >= 0:
            raise ValueError(f"kl_coef must be >= 0 (0: no KL penalty), got {kl_coef}")
        if isinstance(ref_update_interval, bool) or ref_update_interval < 0:
            raise ValueError(
                f"ref_update_interval must be >= 0 (0: the initial policy), got "
                f"{ref_update_interval}"
            )
        self.group_size = group_size
        self.scale_rewards = scale_rewards
        self.scale_eps = scale_eps
        self.returns = returns
        self.kl_coef = kl_coef
        self.ref_update_interval = ref_update_interval
        self._kl_values: list[th.Tensor] = []
        super().__init__(
            policy,
            group_env(env, group_size, seed) if isinstance(env, str) else env,
            learning_rate=learning_rate,
            n_steps=0,
            batch_size=batch_size,
            n_epochs=n_epochs,
            gamma=gamma,
            gae_lambda=1.0,
            clip_range=clip_range,
            normalize_advantage=False,  # the group advantages are normalised already
            ent_coef=ent_coef,
            max_grad_norm=max_grad_norm,
            grad_clip=grad_clip,
            target_kl=target_kl,
            ratio=ratio,
            optimizer=optimizer,
            optimizer_kwargs=optimizer_kwargs,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            policy_kwargs=policy_kwargs,
            verbose=verbose,
            seed=seed,
            device=device,
            _init_setup_model=False,
        )
        self.max_episode_steps = max_episode_steps
        if _init_setup_model:
            self._setup_model()

    def _setup_model(self) -> None:
        super()._setup_model()
        self.reference_policy = None
        if self.kl_coef > 0:  # a frozen copy (a loaded model gets the saved one's weights)
            self.reference_policy = copy.deepcopy(self.policy)
            self.reference_policy.optimizer = None  # type: ignore[assignment]
            self.reference_policy.requires_grad_(False)

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        state_dicts, tensors = super()._get_torch_save_params()
        if self.reference_policy is not None:
            state_dicts = [*state_dicts, "reference_policy"]
        return state_dicts, tensors

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "reference_policy", "_kl_values"]

    def group_advantage(self, returns: th.Tensor, valid: th.Tensor) -> th.Tensor:
        """The group-normalised advantages (:func:`~relax_rl.estimators.group_advantages`)."""
        return group_advantages(
            returns, baseline="mean", scale=self.scale_rewards, eps=self.scale_eps, valid=valid
        )

    def policy_surrogate(
        self,
        data: GumbelRolloutSamples,
        logits: th.Tensor,
        log_prob: th.Tensor,
        advantages: th.Tensor,
    ) -> tuple[th.Tensor, th.Tensor | None]:
        """PPO's clipped surrogate plus ``kl_coef`` times the k3 estimate of
        ``KL(pi || pi_ref)`` at the batch's actions."""
        surrogate, _ = super().policy_surrogate(data, logits, log_prob, advantages)
        if self.reference_policy is None:
            return surrogate, None
        with th.no_grad():
            ref_logits, _ = self.reference_policy.logits_and_values(data.observations)
            ref_log_prob, _ = self.policy.action_spec.log_prob_and_entropy(ref_logits, data.actions)
        log_r = ref_log_prob - log_prob
        kl = th.exp(log_r) - log_r - 1
        self._kl_values.append(kl.detach().mean())
        return surrogate + self.kl_coef * kl, None

    def train(self) -> None:
        """PPO's update (:meth:`PPO.train <relax_rl.agents.PPO.train>`), then the reference
        policy's refresh every ``ref_update_interval`` updates."""
        self._kl_values = []
        super().train()
        if self._kl_values:
            self.logger.record("train/kl_ref", float(th.stack(self._kl_values).mean()))
        interval = self.ref_update_interval
        if self.reference_policy is not None and interval and self.n_updates % interval == 0:
            self.reference_policy.load_state_dict(self.policy.state_dict())
