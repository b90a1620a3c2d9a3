"""REINFORCE with a leave-one-out group baseline (RLOO; Kool et al. 2019, Ahmadian et al. 2024):
``k`` envs start each episode from one seed, and each one's baseline is the mean return of the
other ``k - 1``. No critic."""

from __future__ import annotations

from typing import Any, ClassVar

import torch as th
from stable_baselines3.common.type_aliases import GymEnv, Schedule

from relax_rl.agents.ppo import PPO
from relax_rl.estimators import group_advantages
from relax_rl.groups import GROUP_RETURNS, GroupRolloutMixin, group_env
from relax_rl.policies import GumbelPolicy
from relax_rl.tuning import Choice, Distribution


class RLOO(GroupRolloutMixin, PPO):
    """``g = sum_i sum_t (G_{i,t} - 1/(k-1) sum_{j != i} G_{j,t}) dlog pi(a_{i,t}|s_{i,t})``
    over the ``k`` members ``i`` of each group (Kool et al. 2019, Eq. 8; Ahmadian et al. 2024,
    Eq. 9), the members' episodes started from one seed
    (:class:`~relax_rl.groups.GroupVecEnv`). The baseline of member ``i`` is made of the other
    members' returns only, whose actions are drawn independently of member ``i``'s: the estimate
    is unbiased (tested against the exact gradient through ``train()``). Groups whose returns
    are all equal give 0 (``train/zero_std_group_fraction``).

    A rollout is one round: one whole episode per env (``n_envs`` = ``group_size`` x the number
    of groups); ``num_timesteps`` counts the steps of running envs only (a member whose episode
    ended waits for its group). Defaults: A2C's optimizer (RMSprop 7e-4, gradient clip 0.5) and
    one step per rollout on all of it (``n_epochs=1``, ``batch_size=None``), the plain policy
    gradient at ratio 1; ``n_epochs > 1`` or minibatches reuse a rollout through PPO's clipped
    ratio (``clip_range``, ``target_kl``, ``ratio``; :class:`~relax_rl.agents.PPO`).

    :param policy: ``"MlpPolicy"`` (a :class:`~relax_rl.policies.GumbelPolicy`) or a subclass.
    :param env: an env id (one group), or a VecEnv of ``n_envs`` a multiple of ``group_size``
        (wrapped in :class:`~relax_rl.groups.GroupVecEnv` unless it is in groups already).
    :param learning_rate: learning rate of the policy, or a schedule.
    :param group_size: ``k``, the envs that share a start state (>= 2).
    :param returns: ``to_go`` (each step's discounted return-to-go against the other members'
        at the same time step, 0 after a member's episode ended) or ``episode`` (every step
        weighted by its episode's discounted return).
    :param n_epochs: passes over each rollout.
    :param batch_size: minibatch size (``None``: the whole rollout).
    :param gamma: discount factor.
    :param clip_range: PPO's ratio clip, for ``n_epochs > 1`` or minibatches (the first step of
        a rollout is at ratio 1, where the clip does nothing).
    :param normalize_advantage: standardise the advantages per minibatch (off: the estimate
        would no longer be unbiased).
    :param ent_coef: entropy bonus.
    :param max_grad_norm: clip of the gradient norm (``None``: no clipping).
    :param grad_clip: ``joint`` or ``separate`` (see
        :class:`~relax_rl.on_policy.GumbelOnPolicyAlgorithm`).
    :param target_kl: stop the rollout's epochs past ``1.5 * target_kl`` (``None``: never).
    :param ratio: ``joint`` or ``per_dimension`` (:class:`~relax_rl.agents.PPO`).
    :param optimizer: ``"rmsprop"`` (A2C's) or ``"adam"``.
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

    #: ``relax-rl tune``: PPO's space without the rollout length and GAE (a rollout is a round of
    #: episodes, advantages are group baselines), with the return's form
    search_space: ClassVar[dict[str, Distribution | None]] = {
        "n_steps": None,
        "gae_lambda": None,
        "returns": Choice(("to_go", "episode")),
    }

    uses_critic: ClassVar[bool] = False

    def __init__(
        self,
        policy: str | type[GumbelPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 7e-4,
        group_size: int = 4,
        returns: str = "to_go",
        n_epochs: int = 1,
        batch_size: int | None = None,
        gamma: float = 0.99,
        clip_range: float | Schedule = 0.2,
        normalize_advantage: bool = False,
        ent_coef: float = 0.0,
        max_grad_norm: float | None = 0.5,
        grad_clip: str = "joint",
        target_kl: float | None = None,
        ratio: str = "joint",
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
        if returns not in GROUP_RETURNS:
            raise ValueError(f"unknown returns {returns!r}; valid: {', '.join(GROUP_RETURNS)}")
        self.returns = returns
        self.group_size = group_size
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
            normalize_advantage=normalize_advantage,
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

    def group_advantage(self, returns: th.Tensor, valid: th.Tensor) -> th.Tensor:
        """The leave-one-out advantages (:func:`~relax_rl.estimators.group_advantages`)."""
        return group_advantages(returns, baseline="loo", scale="none")
