"""Group rollouts: ``k`` envs reset from one seed, so that ``k`` independent action sequences
start from one state (what group baselines such as RLOO and GRPO average over).

:class:`GroupVecEnv` puts a VecEnv's envs in groups of ``group_size`` consecutive envs and plays
*rounds*: each env plays one episode; an env whose episode has ended waits for the others (its
steps are reported with ``info[GROUP_WAITING]``, reward 0 and ``done``, and are neither samples
nor env steps); once every env has ended its episode, every group restarts from a fresh seed of
its own, all members of a group from the same one.

What a group shares. The seed fixes the env's random number generator at the reset, so the
members start from one state and draw the same stream of env randomness afterwards (common
random numbers): on a deterministic env their trajectories differ only through their actions;
on a stochastic one (noisy rewards, random transitions) they also differ where the same draw
lands on different states or a member draws more often. The acting noise is each member's own,
so a baseline made of the *other* members' returns stays independent of a member's action given
its state: the leave-one-out baseline is unbiased either way. An env whose reset ignores the
seed (members of a group starting from different observations) is refused at the reset that
shows it.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
import torch as th
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper, VecMonitor, unwrap_vec_wrapper
from stable_baselines3.common.vec_env.base_vec_env import VecEnvObs, VecEnvStepReturn

from relax_rl.estimators import group_advantages
from relax_rl.seeding import IndependentSeeds

if TYPE_CHECKING:
    from relax_rl.buffers import GumbelRolloutBuffer

#: ``info`` key of an env's step while it waits for the rest of its group (its episode ended)
GROUP_WAITING = "group_waiting"
#: Which returns a group's statistics are taken over (:class:`GroupRolloutMixin`)
GROUP_RETURNS = ("to_go", "episode")


def _check_group_size(group_size: Any) -> int:
    if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)):
        raise ValueError(f"group_size must be an integer >= 2, got {group_size!r}")
    if group_size < 2:
        raise ValueError(
            f"group_size must be >= 2 (a group baseline needs other samples), got {group_size}"
        )
    return int(group_size)


class GroupVecEnv(VecEnvWrapper):
    """``venv``'s envs in groups of ``group_size`` consecutive envs (envs ``g*k .. g*k+k-1``
    form group ``g``), reset group by group from one seed each, in rounds of one episode per env
    (see the module's docstring).

    It must wrap the envs directly (a ``DummyVecEnv``, ``SubprocVecEnv`` or a ``VecMonitor`` of
    one): a group is reset through ``env_method("reset", seed=...)``, which a wrapper that
    changes observations (``VecNormalize``) would not see; put such wrappers outside it.

    :param venv: the envs, ``n_envs`` a multiple of ``group_size``.
    :param group_size: envs per group (>= 2).
    :param seed: seed of the stream of group seeds (an int or ints, numpy's ``SeedSequence``
        entropy; SB3's ``seed()`` sets it too); different seeds draw unrelated group seeds.
    """

    def __init__(
        self, venv: VecEnv, group_size: int, seed: int | Sequence[int] | None = None
    ) -> None:
        group_size = _check_group_size(group_size)
        if venv.num_envs == 1:
            raise ValueError(
                f"a group needs group_size={group_size} copies of the env, got one env: give "
                f"n_envs a multiple of {group_size} (--n-envs; in Python a VecEnv of that many "
                "envs, or the env's id)"
            )
        if venv.num_envs % group_size:
            below = venv.num_envs // group_size * group_size
            near = f"{below} or {below + group_size}" if below else f"{group_size}"
            raise ValueError(
                f"n_envs={venv.num_envs} is not a multiple of group_size={group_size}; use "
                f"n_envs = group_size x the number of groups (e.g. {near})"
            )
        try:  # can one env be called alone? (envpool's pool cannot)
            venv.env_method("get_wrapper_attr", "spec", indices=[0])
        except (AttributeError, NotImplementedError):
            raise ValueError(
                f"group rollouts reset each group's envs from one seed of its own, which "
                f"{type(unwrap_base(venv)).__name__} cannot do (its envs are seeded once, at "
                "construction): use vec_env dummy or subproc"
            ) from None
        super().__init__(venv)
        self.group_size = group_size
        self.n_groups = venv.num_envs // group_size
        self._rng = np.random.default_rng(seed)
        self._pending_seed: tuple[int | Sequence[int] | None] | None = None
        self._waiting = np.zeros(self.num_envs, dtype=bool)
        self._obs: np.ndarray | None = None
        self._stepped = False  # whether the round has stepped since its reset
        #: the seed each group's current round started from
        self.group_seeds = np.zeros(self.n_groups, dtype=np.int64)

    @property
    def at_round_start(self) -> bool:
        """Whether every env is at the first step of an episode of the current round."""
        return self._obs is not None and not self._stepped

    def seed(self, seed: int | Sequence[int] | None = None) -> list[Any]:
        """Reseed the stream of group seeds from the next :meth:`reset` on (as SB3's VecEnvs
        apply a seed at their next reset; the envs' own generators are reseeded by every
        group reset)."""
        self._pending_seed = (seed,)
        return [seed] * self.num_envs

    def reset(self) -> VecEnvObs:
        """Start a round: every group from a fresh seed of its own."""
        if self._pending_seed is not None:
            self._rng = np.random.default_rng(self._pending_seed[0])
            self._pending_seed = None
        return self._new_round()

    def _new_round(self) -> np.ndarray:
        k = self.group_size
        self.group_seeds = self._rng.integers(0, 2**31 - 1, self.n_groups)
        obs, infos = [], []
        for g, seed in enumerate(self.group_seeds):
            results = self.venv.env_method("reset", seed=int(seed), indices=range(g * k, g * k + k))
            obs.extend(o for o, _ in results)
            infos.extend(info for _, info in results)
        space = self.observation_space
        stacked = np.stack([np.asarray(o, dtype=space.dtype) for o in obs])
        self._check_shared_start(stacked)
        self.reset_infos = infos
        self._waiting[:] = False
        self._obs, self._stepped = stacked.copy(), False
        return stacked

    def _check_shared_start(self, obs: np.ndarray) -> None:
        members = obs.reshape(self.n_groups, self.group_size, -1)
        differ = ~(members == members[:, :1]).all(axis=(1, 2))
        if differ.any():
            g = int(np.flatnonzero(differ)[0])
            spec = self.venv.get_attr("spec", indices=[0])[0]
            name = getattr(spec, "id", None) or type(unwrap_base(self.venv)).__name__
            raise ValueError(
                f"{name}: the {self.group_size} envs of group {g}, reset with one seed "
                f"({self.group_seeds[g]}), started from different observations: its reset "
                "ignores the seed (or draws from a generator of its own), so a group would not "
                "share a start state; group baselines need an env whose reset(seed=...) fixes it"
            )

    def step_async(self, actions: np.ndarray) -> None:
        self.venv.step_async(actions)

    def step_wait(self) -> VecEnvStepReturn:
        obs, rewards, dones, infos = self.venv.step_wait()
        infos = list(infos)  # (SubprocVecEnv hands a tuple)
        self._stepped = True
        waited = self._waiting.copy()
        for i in np.flatnonzero(waited):
            # the env it wraps stepped an episode of no one's (dropped): the waiting env stays
            # where its episode ended
            obs[i], rewards[i], dones[i] = self._obs[i], 0.0, True
            infos[i] = {GROUP_WAITING: True}
        ended = np.flatnonzero(dones & ~waited)
        for i in ended:
            terminal = infos[i].get("terminal_observation")
            if terminal is not None:  # (its next episode is the next round's)
                obs[i] = terminal
        self._waiting[ended] = True
        if self._waiting.all():  # every env has ended its episode: the next round
            return self._new_round(), rewards, dones, infos
        self._obs = np.array(obs, copy=True)
        return obs, rewards, dones, infos


def unwrap_base(venv: VecEnv) -> VecEnv:
    """The innermost VecEnv under ``venv``'s VecEnv wrappers."""
    while isinstance(venv, VecEnvWrapper):
        venv = venv.venv
    return venv


def group_env(env: Any, group_size: int, seed: int | None = None) -> VecEnv:
    """``env`` as envs in groups of ``group_size`` (:class:`GroupVecEnv`): an env id gives one
    group (``group_size`` copies); a VecEnv is wrapped (it must not be wrapped in a
    VecNormalize yet: see :class:`GroupVecEnv`); one already in groups is returned as it is."""
    group_size = _check_group_size(group_size)
    if isinstance(env, str):
        from relax_rl.envs import make_env  # (the env registry: imported when needed)

        return GroupVecEnv(make_env(env, group_size, seed), group_size, seed)
    if isinstance(env, gym.Env):
        raise ValueError(
            f"a group needs group_size={group_size} copies of the env, got one env: pass its id, "
            f"or a VecEnv of n_envs a multiple of {group_size}"
        )
    if not isinstance(env, VecEnv):
        raise ValueError(f"expected an env id or a VecEnv, got {type(env).__name__}")
    grouped = unwrap_vec_wrapper(env, GroupVecEnv)
    if grouped is not None:
        if grouped.group_size != group_size:
            raise ValueError(
                f"the env is in groups of {grouped.group_size}, the agent's group_size is "
                f"{group_size}"
            )
        return env
    if isinstance(env, VecEnvWrapper) and not isinstance(env, (VecMonitor, IndependentSeeds)):
        raise ValueError(
            f"{type(env).__name__} wraps the envs before they are in groups; build "
            f"GroupVecEnv(venv, {group_size}) first and wrap that (e.g. "
            f"VecNormalize(GroupVecEnv(venv, {group_size})))"
        )
    return GroupVecEnv(env, group_size, seed)


class GroupRolloutMixin(ABC):
    """What the group-baseline agents (RLOO, GRPO) share over the on-policy base: envs in
    groups (:func:`group_env`), rollouts of one round (one whole episode per env), and the
    group advantages set once per rollout (:meth:`finish_rollout`: the agent's
    ``group_advantage`` of the group's returns), with ``train/zero_std_group_fraction`` (the
    share of groups whose episode returns are all equal: advantage 0, no gradient) logged.

    ``returns``: ``to_go`` (each step's return-to-go, compared with the other members' at the
    same time step, 0 for a member whose episode has ended) or ``episode`` (every step of an
    episode weighted by its whole discounted return, GRPO's outcome reward).
    """

    group_size: int
    returns: str
    n_envs: int
    logger: Any
    env: VecEnv | None
    seed: int | None
    num_timesteps: int
    _last_obs: Any
    _last_episode_starts: Any

    @abstractmethod
    def group_advantage(self, returns: th.Tensor, valid: th.Tensor) -> th.Tensor:
        """The advantages of ``returns`` ``(..., group_size)`` (the members of a group on the
        last dimension; ``valid``: which entries are steps of running envs): what each agent
        defines (the agents are ABCs through SB3's base, so one without it cannot be built)."""

    def _setup_model(self) -> None:
        # (here rather than in __init__: SB3's load() builds the agent with the default
        # group_size and sets the saved one before it calls this)
        if self.env is not None:
            self.env = group_env(self.env, self.group_size, self.seed)
        super()._setup_model()  # type: ignore[misc]
        grouped = None if self.env is None else unwrap_vec_wrapper(self.env, GroupVecEnv)
        if grouped is not None and self.seed is not None:
            # (from the next reset, over SB3's agent seed: a continued run draws other groups
            # than its first session's, and than a run of another seed)
            grouped.seed([self.seed, self.num_timesteps])

    def set_env(self, env: Any, force_reset: bool = True) -> None:
        super().set_env(group_env(env, self.group_size, self.seed), force_reset)  # type: ignore[misc]

    @classmethod
    def prepare_env(cls, env: VecEnv, seed: int | None, settings: Mapping[str, Any]) -> VecEnv:
        """The training env in groups (before any VecNormalize)."""
        default = inspect.signature(cls.__init__).parameters["group_size"].default
        return group_env(env, settings.get("group_size", default), seed)

    def independent_units(self, data: Any) -> tuple[th.Tensor, int]:
        """The groups: members of a group share their start state and baseline."""
        return data.env_index // self.group_size, self.n_envs // self.group_size

    def collect_rollouts(self, env: VecEnv, *args: Any, **kwargs: Any) -> bool:
        """The base's collect loop, from a round's first step: after a rollout cut short (a
        callback stopped training) the round restarts."""
        grouped = unwrap_vec_wrapper(env, GroupVecEnv)
        if grouped is not None and not grouped.at_round_start:
            self._last_obs = env.reset()
            self._last_episode_starts = np.ones(env.num_envs, dtype=bool)
        return super().collect_rollouts(env, *args, **kwargs)  # type: ignore[misc]

    def finish_rollout(self, buffer: GumbelRolloutBuffer) -> None:
        n, k = buffer.pos, self.group_size
        returns = th.from_numpy(buffer.returns[:n]).reshape(n, -1, k)  # (T, groups, k)
        valid = th.from_numpy(buffer.running[:n]).reshape(n, -1, k)
        episode = returns[0]  # every env starts its episode at the round's first step
        if self.returns == "episode":
            advantages = self.group_advantage(episode, valid[0]).expand_as(returns)
        else:
            advantages = self.group_advantage(returns, valid)
        buffer.set_advantages(advantages.reshape(n, -1).numpy())
        zero_std = (episode == episode[:, :1]).all(-1)
        self.logger.record("train/zero_std_group_fraction", float(zero_std.double().mean()))


__all__ = [
    "GROUP_RETURNS",
    "GROUP_WAITING",
    "GroupRolloutMixin",
    "GroupVecEnv",
    "group_advantages",
    "group_env",
    "unwrap_base",
]
