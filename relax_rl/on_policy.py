"""The one on-policy base that every agent shares (an SB3 ``OnPolicyAlgorithm``).

It owns what every agent shares: the collect loop (actions from stored noise), the rollout
buffer, the returns (:func:`relax_rl.buffers.compute_gae`), a batch's forward pass
(:meth:`~GumbelOnPolicyAlgorithm.losses`: log-probs, entropy, value loss and the agent's
surrogate), the finiteness checks, gradient clipping, logging and save/load. Each algorithm owns
its update (``train``, SB3's pattern) and says how its policy-gradient surrogate is built
(``policy_surrogate``); the base never asks which agent it is running.
"""

from __future__ import annotations

import math
import sys
from abc import abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, NamedTuple, TypeVar

import numpy as np
import torch as th
import torch.nn.functional as F
from gymnasium import spaces
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import HumanOutputFormat, Logger
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule
from stable_baselines3.common.utils import obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv, unwrap_vec_wrapper

from relax_rl.actions import ActionSpec
from relax_rl.buffers import GumbelRolloutBuffer, GumbelRolloutSamples
from relax_rl.errors import TrainingDivergedError
from relax_rl.groups import GROUP_WAITING, GroupVecEnv
from relax_rl.optim import FlatRMSprop
from relax_rl.policies import GumbelPolicy

SelfAlgo = TypeVar("SelfAlgo", bound="GumbelOnPolicyAlgorithm")

OPTIMIZERS: dict[str, tuple[type[th.optim.Optimizer], dict[str, Any]]] = {
    # SB3 A2C's RMSprop settings (alpha 0.99, eps 1e-5) and SB3's Adam eps; foreach: one
    # multi-tensor kernel per operation instead of a Python loop over parameters (same numbers);
    # fused (Adam only): one kernel for the whole step. FlatRMSprop: torch's RMSprop, its step
    # on the CPU done on one flat buffer (same numbers, state and save format; relax_rl.optim).
    "rmsprop": (
        FlatRMSprop,
        {"alpha": 0.99, "eps": 1e-5, "weight_decay": 0.0, "foreach": True},
    ),
    "adam": (th.optim.Adam, {"eps": 1e-5, "fused": True}),
}


#: How ``max_grad_norm`` applies (:class:`GumbelOnPolicyAlgorithm`'s ``grad_clip``).
GRAD_CLIPS = ("joint", "separate")


def total_grad_norm(grads: list[th.Tensor]) -> th.Tensor:
    """The global 2-norm of ``grads``: ``get_total_norm``'s number, in three ops (torch's also
    moves every per-tensor norm to one device: a call per parameter)."""
    if not grads:
        return th.zeros(())
    return th.linalg.vector_norm(th.stack(th._foreach_norm(grads)))


class Losses(NamedTuple):
    """A batch's losses: the per-sample policy surrogate, the logits it was built from and,
    where the agent computed them anyway, its per-sample logit gradients."""

    surrogate: th.Tensor
    logits: th.Tensor
    value_loss: th.Tensor
    entropy: th.Tensor
    advantages: th.Tensor
    #: ``d surrogate_i / d logits_i`` (constant), or None: then autograd differentiates the
    #: surrogate itself.
    logit_grad: th.Tensor | None = None
    #: ``log pi(a_i | s_i)`` at the current parameters (with its graph)
    log_prob: th.Tensor | None = None

    @property
    def pg_loss(self) -> th.Tensor:
        """The batch mean of the surrogate (its value is what is logged)."""
        return self.surrogate.mean()

    @property
    def per_sample_objective(self) -> th.Tensor:
        """Per-sample scalars whose gradients w.r.t. the actor are the per-sample surrogates'
        (minus the per-sample policy-gradient estimates): ``logits_i . logit_grad_i`` where the
        logit gradients are known (the chain rule from there on, without a second pass through
        the surrogate's graph), else the surrogate."""
        if self.logit_grad is None:
            return self.surrogate
        return (self.logits * self.logit_grad).sum(-1)

    @property
    def actor_objective(self) -> th.Tensor:
        """A scalar with the gradient of ``pg_loss`` w.r.t. the actor (what the update
        backpropagates)."""
        return self.per_sample_objective.mean()


def _obs_to_tensor(device: th.device) -> Callable[[Any], th.Tensor]:
    """SB3's ``obs_as_tensor`` for the collect loop: a numpy array shares its memory with the
    tensor (the env hands a fresh array each step) and moves only to a device other than the
    CPU; anything else goes through ``obs_as_tensor``."""
    on_cpu = th.device(device).type == "cpu"

    def as_tensor(obs: Any) -> th.Tensor:
        if type(obs) is np.ndarray:
            try:
                tensor = th.from_numpy(obs)
            except (TypeError, ValueError):  # a dtype or layout torch does not share
                return obs_as_tensor(obs, device)
            return tensor if on_cpu else tensor.to(device)
        return obs_as_tensor(obs, device)

    return as_tensor


def _check_observation_space(agent: str, space: spaces.Space) -> None:
    """Refuse what the MLP policy cannot take (SB3 would suggest policies that do not exist
    here, or train on raw pixels)."""
    if isinstance(space, (spaces.Dict, spaces.Tuple)):
        raise ValueError(
            f"{agent} needs a flat observation space (Box, Discrete), got {space}; flatten it "
            "with gymnasium.wrappers.FlattenObservation"
        )
    if is_image_space(space, check_channels=False):
        raise ValueError(
            f"{agent} has an MLP policy; image observations {space} would train it on raw "
            "pixels (a CNN policy is not supported yet): featurise them with a gymnasium wrapper"
        )


class GumbelOnPolicyAlgorithm(OnPolicyAlgorithm):
    """Shared base of REINFORCE, A2C and RELAX for factorised discrete action spaces
    (``Discrete``, ``MultiDiscrete``, ``MultiBinary``; abstract: an algorithm adds its
    ``policy_surrogate`` and its ``train``).

    :param policy: ``"MlpPolicy"`` (a :class:`~relax_rl.policies.GumbelPolicy`) or a subclass.
    :param env: a gymnasium env, a VecEnv or an env id.
    :param learning_rate: learning rate of the policy (actor and critic), or a schedule.
    :param n_steps: steps per env per update; ``0`` collects one whole episode per update
        (Monte-Carlo returns without any bootstrap; needs one env).
    :param gamma: discount factor.
    :param gae_lambda: GAE(lambda); 1 gives n-step Monte-Carlo advantages.
    :param ent_coef: entropy bonus (on the policy only; not part of the variance objective).
    :param vf_coef: weight of the value loss.
    :param max_grad_norm: clip of the policy's gradient norm (``None``: no clipping).
    :param grad_clip: how ``max_grad_norm`` applies: ``joint`` (SB3's: one norm over the actor
        and the critic together, so a large critic gradient shrinks the actor's step) or
        ``separate`` (the actor's parameters and the rest, the critic's, each clipped to
        ``max_grad_norm`` by their own norm). ``train/grad_clip_fraction`` logs the share of
        optimizer steps that were clipped, ``train/actor_grad_clip_fraction`` those where the
        actor's gradient was, ``train/actor_grad_scale`` the mean factor applied to it.
    :param use_baseline: learn V(s) and use it as a baseline and for bootstrapping at cuts and
        time-limit truncations. Without it, advantages are the plain (discounted) returns, which
        needs whole episodes (``n_steps=0``).
    :param normalize_advantage: standardise advantages per batch.
    :param optimizer: ``"rmsprop"`` (SB3 A2C's) or ``"adam"``; ``optimizer_kwargs`` override.
    :param max_episode_steps: buffer capacity for ``n_steps=0`` when the env has no time limit.
    """

    policy_aliases: ClassVar[dict[str, type[GumbelPolicy]]] = {"MlpPolicy": GumbelPolicy}
    #: Whether the gradient-variance diagnostics should also measure the plain advantage
    #: estimator on the same batch (agents whose estimator adds a control variate to it).
    paired_baseline: ClassVar[bool] = False
    #: The name of that plain estimator (the agent it is the estimator of).
    paired_baseline_name: ClassVar[str] = "A2C"
    policy: GumbelPolicy
    rollout_buffer: GumbelRolloutBuffer

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
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
        if grad_clip not in GRAD_CLIPS:
            raise ValueError(f"unknown grad_clip {grad_clip!r}; valid: {', '.join(GRAD_CLIPS)}")
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise ValueError(
                f"max_grad_norm must be > 0 or None (no clipping), got {max_grad_norm}"
            )
        self.grad_clip = grad_clip
        # per optimizer step since the last log: (clipped at all, the actor's clip factor)
        self._grad_clipped: list[tuple[bool, float]] = []
        observation_space = getattr(env, "observation_space", None)
        if observation_space is not None:
            _check_observation_space(type(self).__name__, observation_space)
        if n_steps < 0:
            raise ValueError(f"n_steps must be >= 0 (0: whole episodes), got {n_steps}")
        for name, value in (("gamma", gamma), ("gae_lambda", gae_lambda)):
            if not 0.0 <= value <= 1.0:  # (NaN fails it too)
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if not use_baseline and n_steps > 0:
            # Without V(s) a cut rollout would bootstrap with 0: silently truncated returns.
            raise ValueError(
                f"use_baseline=False needs whole-episode returns (n_steps=0), got "
                f"n_steps={n_steps}; set n_steps=0 or use_baseline=True"
            )
        policy_kwargs = dict(policy_kwargs or {})
        if "optimizer_class" not in policy_kwargs:
            opt_class, opt_kwargs = OPTIMIZERS[optimizer]
            policy_kwargs["optimizer_class"] = opt_class
            policy_kwargs["optimizer_kwargs"] = {**opt_kwargs, **(optimizer_kwargs or {})}
        self.use_baseline = use_baseline
        self.normalize_advantage = normalize_advantage
        self.optimizer = optimizer
        self.max_episode_steps = max_episode_steps
        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            n_steps=n_steps,
            gamma=gamma,
            gae_lambda=gae_lambda,
            ent_coef=ent_coef,
            vf_coef=vf_coef,
            max_grad_norm=max_grad_norm,  # type: ignore[arg-type]
            use_sde=False,
            sde_sample_freq=-1,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            policy_kwargs=policy_kwargs,
            verbose=verbose,
            seed=seed,
            device=device,
            _init_setup_model=False,
        )
        action_space = getattr(self, "action_space", None)  # None while SB3's load() builds us
        if action_space is not None:
            try:
                ActionSpec(action_space)
            except ValueError as exc:
                raise ValueError(f"{type(self).__name__}: {exc}") from None
        if _init_setup_model:
            self._setup_model()

    # ---------------------------------------------------------------- set-up and save/load
    def _buffer_capacity(self) -> int:
        if self.n_steps > 0:
            return self.n_steps
        spec = self.env.get_attr("spec")[0] if self.env is not None else None
        limit = getattr(spec, "max_episode_steps", None)
        return int(limit) if limit else self.max_episode_steps

    def _setup_model(self) -> None:
        if self.env is not None:
            self._check_whole_episodes(self.env)
        self._setup_lr_schedule()
        self.set_random_seed(self.seed)
        self.rollout_buffer = GumbelRolloutBuffer(
            self._buffer_capacity(),
            self.observation_space,
            self.action_space,
            device=self.device,
            gamma=self.gamma,
            gae_lambda=self.gae_lambda,
            n_envs=self.n_envs,
            grow=self.n_steps == 0,
        )
        self.policy = self.policy_class(  # type: ignore[assignment]
            self.observation_space, self.action_space, self.lr_schedule, **self.policy_kwargs
        ).to(self.device)
        # The acting noise has its own generator, saved with the model, so that a run
        # continued from a checkpoint draws exactly the noise a straight run would.
        self._noise_gen = th.Generator().manual_seed(
            int(self.seed) if self.seed is not None else int(th.randint(0, 2**31, ()).item())
        )
        self.noise_rng_state = self._noise_gen.get_state()
        # (a loaded model keeps its count: SB3's load sets the attributes, then calls this)
        self.n_updates = getattr(self, "n_updates", 0)

    @classmethod
    def prepare_env(cls, env: VecEnv, seed: int | None, settings: Mapping[str, Any]) -> VecEnv:
        """The training env as the algorithm needs it, before any ``VecNormalize`` wraps it
        (``settings``: the agent's arguments): ``env`` itself here; group baselines put its
        envs in groups."""
        return env

    def _check_whole_episodes(self, env: VecEnv) -> None:
        """Whole-episode rollouts (``n_steps=0``) of several envs need their episodes in step:
        envs in groups (:class:`~relax_rl.groups.GroupVecEnv`), which wait for each other."""
        if self.n_steps == 0 and env.num_envs != 1 and unwrap_vec_wrapper(env, GroupVecEnv) is None:
            raise ValueError(
                f"n_steps=0 (whole episodes) needs n_envs=1 or envs in groups (GroupVecEnv), got "
                f"n_envs={env.num_envs}"
            )

    def set_env(self, env: GymEnv, force_reset: bool = True) -> None:
        super().set_env(env, force_reset)
        self._check_whole_episodes(self.env)

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        return ["policy", "policy.optimizer"], ["noise_rng_state"]

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_noise_gen", "_grad_clipped", "_forward_cache"]

    def save(self, *args: Any, **kwargs: Any) -> None:
        self.noise_rng_state = self._noise_gen.get_state()
        self.saved_by = type(self).__name__  # (load refuses another algo's weights)
        super().save(*args, **kwargs)

    @classmethod
    def load(cls: type[SelfAlgo], *args: Any, **kwargs: Any) -> SelfAlgo:  # type: ignore[override]
        model = super().load(*args, **kwargs)
        saved_by = getattr(model, "saved_by", None)  # (None: saved before it was recorded)
        if saved_by is not None and saved_by != cls.__name__:
            raise ValueError(f"the model was saved by {saved_by}, not {cls.__name__}")
        # The generator lives on the CPU whatever the device (SB3 loads tensors onto it).
        model._noise_gen.set_state(model.noise_rng_state.to("cpu", th.uint8))
        return model

    # ---------------------------------------------------------------- collect
    def collect_rollouts(
        self,
        env: VecEnv,
        callback: BaseCallback,
        rollout_buffer: GumbelRolloutBuffer,  # type: ignore[override]
        n_rollout_steps: int,
    ) -> bool:
        """Fill the buffer with ``n_steps`` steps per env (or one whole episode).

        Lean on purpose (it is most of the wall time): one forward pass per step for logits and
        values, the action ``argmax(log p + G(u))`` from uniforms drawn here and stored, no
        distribution objects. SB3's callback protocol is kept step by step.
        """
        assert self._last_obs is not None, "No previous observation was provided"
        self.policy.set_training_mode(False)
        rollout_buffer.reset()
        callback.on_rollout_start()
        capacity = rollout_buffer.buffer_size
        whole_episode = self.n_steps == 0
        n_envs, device = env.num_envs, self.device
        # each step's G(u): the whole rollout's drawn at once, as views made once (a whole
        # episode draws step by step: its length is not known)
        noise_g = () if whole_episode else rollout_buffer.draw_noise(self._noise_gen).unbind(0)
        # Envs in groups (GroupVecEnv) play one episode each per rollout: an env whose episode
        # ended waits for its group, and its steps are neither samples nor env steps.
        grouped = whole_episode and n_envs > 1
        finished = np.zeros(n_envs, dtype=bool)
        running = None
        no_values = th.zeros(n_envs, device=device)
        logits_and_values = self._policy_forward()  # parameters are fixed while acting
        as_tensor = _obs_to_tensor(device)
        spec = self.policy.action_spec
        sample, to_env, joint = spec.sample, spec.to_env, spec.sum_dimensions
        one_dimension = spec.n_dims == 1  # no per-dimension bookkeeping on the hot path
        use_baseline, add = self.use_baseline, rollout_buffer.add
        log_prob_dims = None
        for n_steps in range(1, capacity + 1):
            step = n_steps - 1
            g_step = (
                rollout_buffer.draw_noise(self._noise_gen, step) if whole_episode else noise_g[step]
            )
            with th.no_grad():
                obs_tensor = as_tensor(self._last_obs)
                logits, state_values = logits_and_values(obs_tensor)
                if one_dimension:  # (the buffer takes the log-prob as the dimension's)
                    actions, log_probs = sample(logits, g_step)
                else:
                    actions, log_prob_dims = sample(logits, g_step, per_dimension=True)
                    log_probs = joint(log_prob_dims)
            # SB3's names, types and shapes, for callbacks that read self.locals.
            values = (state_values if use_baseline else no_values).unsqueeze(-1)
            actions = actions.cpu().numpy()
            clipped_actions = to_env(actions)
            new_obs, rewards, dones, infos = env.step(clipped_actions)
            if grouped:
                running = np.array([not info.get(GROUP_WAITING, False) for info in infos])
                self.num_timesteps += int(running.sum())
            else:
                self.num_timesteps += n_envs
            callback.update_locals(locals())
            if not callback.on_step():
                return False
            self._update_info_buffer(infos, dones)
            if use_baseline:
                rewards = self._bootstrap_truncations(rewards, dones, infos)
            # (the buffer keeps the tensors and writes them once per rollout; the values as
            # (n_envs,), like the log-probs: one stack for both)
            add(
                self._last_obs,
                actions,
                rewards,
                self._last_episode_starts,
                state_values if use_baseline else no_values,
                log_probs,
                log_prob_dims,
                running,
            )
            self._last_obs, self._last_episode_starts = new_obs, dones
            if whole_episode:
                finished |= dones
                if finished.all():
                    break
            elif n_steps >= n_rollout_steps:
                break
        with th.no_grad():
            last_values = logits_and_values(as_tensor(new_obs))[1] if use_baseline else no_values
        rollout_buffer.compute_returns_and_advantage(last_values=last_values, dones=dones)
        self.finish_rollout(rollout_buffer)
        callback.update_locals(locals())
        callback.on_rollout_end()
        return True

    def _policy_forward(self) -> Callable[[th.Tensor], tuple[th.Tensor, th.Tensor]]:
        """The policy's :meth:`~relax_rl.policies.GumbelPolicy.forward_function` for acting,
        built once and reused while the policy and the parameters its optimizer steps are the
        same objects (the optimizer updates them in place; a new policy, module or optimizer
        rebuilds it). Not for the update: ``th.func.functional_call`` (the gradient
        diagnostics) swaps parameters under the modules, which a kept function would miss."""
        key = (id(self.policy), *map(id, self._policy_parameters()))
        cached = getattr(self, "_forward_cache", None)
        if cached is None or cached[0] != key:
            cached = self._forward_cache = (key, self.policy.forward_function())
        return cached[1]

    def _bootstrap_truncations(
        self, rewards: np.ndarray, dones: np.ndarray, infos: list[dict[str, Any]]
    ) -> np.ndarray:
        """At a time-limit truncation add ``gamma * V(terminal obs)`` to the reward (SB3's rule),
        in one batched forward pass; returns the rewards (a copy where one changed)."""
        if not dones.any():  # most steps: no episode ended
            return rewards
        idx = [
            i
            for i, done in enumerate(dones)
            if done
            and infos[i].get("TimeLimit.truncated", False)
            and infos[i].get("terminal_observation") is not None
        ]
        if not idx:
            return rewards
        terminal = np.stack([infos[i]["terminal_observation"] for i in idx])
        with th.no_grad():
            values = self._policy_forward()(obs_as_tensor(terminal, self.device))[1]
        rewards = rewards.astype(np.float32)  # a copy: what the callbacks saw stays as it was
        rewards[idx] += self.gamma * values.cpu().numpy()
        return rewards

    def finish_rollout(self, buffer: GumbelRolloutBuffer) -> None:
        """Called once the rollout's returns are in ``buffer``, before the callbacks'
        ``on_rollout_end`` and ``train()``: where an algorithm whose advantages need the whole
        rollout (a group baseline) sets them. Nothing by default."""

    def independent_units(self, data: GumbelRolloutSamples) -> tuple[th.Tensor, int]:
        """Each row's independent unit and their number: parts of the batch that are
        independent given the policy (the envs; the gradient-variance diagnostics take one
        estimate per unit)."""
        return data.env_index, self.n_envs

    # ---------------------------------------------------------------- train
    @abstractmethod
    def policy_surrogate(
        self,
        data: GumbelRolloutSamples,
        logits: th.Tensor,
        log_prob: th.Tensor,
        advantages: th.Tensor,
    ) -> tuple[th.Tensor, th.Tensor | None]:
        """Per-sample surrogate to *minimise*, whose gradient w.r.t. the actor is minus the
        policy-gradient estimate, and its per-sample gradients w.r.t. the logits if the agent
        has them at hand (else None). With its ``train``, what each algorithm defines."""

    def losses(self, data: GumbelRolloutSamples) -> Losses:
        """The losses of a batch; ``actor_objective`` has minus the policy-gradient estimate as
        its gradient w.r.t. the actor."""
        # (built anew: th.func.functional_call, as the gradient diagnostics use, swaps the
        # parameters under it, which a cached forward function would not see)
        logits, values = self.policy.logits_and_values(data.observations)
        # (with ent_coef 0 the entropy is only logged: no graph)
        log_prob, entropy = self.policy.action_spec.log_prob_and_entropy(
            logits, data.actions, entropy_grad=self.ent_coef != 0
        )
        entropy = entropy.mean()
        advantages = self.batch_advantages(data)
        surrogate, logit_grad = self.policy_surrogate(data, logits, log_prob, advantages)
        value_loss = (
            self.value_loss(values, data)
            if self.use_baseline
            else th.zeros((), device=values.device)
        )
        return Losses(surrogate, logits, value_loss, entropy, advantages, logit_grad, log_prob)

    def batch_advantages(self, data: GumbelRolloutSamples) -> th.Tensor:
        """The batch's advantages as the update uses them (standardised with
        ``normalize_advantage``)."""
        advantages = data.advantages
        if self.normalize_advantage and advantages.numel() > 1:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        return advantages

    def value_loss(self, values: th.Tensor, data: GumbelRolloutSamples) -> th.Tensor:
        """The critic's loss: the mean squared error to the returns (an algorithm may clip it)."""
        return F.mse_loss(values, data.returns)

    def _record_update(self, losses: Losses, grad_norm: float, **extra: th.Tensor) -> None:
        """Log what every update has and an algorithm's ``extra`` scalars (``train/<name>``),
        read from the device in one go (:meth:`_log_update` logs values already read)."""
        scalars = {
            "policy_loss": losses.pg_loss,
            "value_loss": losses.value_loss,
            "entropy": losses.entropy,
            **extra,
        }
        with th.no_grad():  # one read from the device for all of them
            values = th.stack(list(scalars.values())).tolist()
        self._log_update(grad_norm, **dict(zip(scalars, values, strict=True)))

    def _log_update(self, grad_norm: float, **values: float) -> None:
        """Log an update's ``values`` (``train/<name>``; every update has ``policy_loss``,
        ``value_loss`` and ``entropy``), its gradient norm and the clipping statistics."""
        record = self.logger.record
        record("train/n_updates", self.n_updates, exclude="tensorboard")
        for name, value in values.items():
            record(f"train/{name}", value)
        record("train/grad_norm", grad_norm)
        self._record_grad_clipping()

    def _check_finite(self, **values: th.Tensor) -> None:
        """Raise :class:`TrainingDivergedError` naming the first of ``values`` (scalars) that is
        NaN or infinite (one check, one sync, when all are finite)."""
        with th.no_grad():
            if bool(th.isfinite(th.stack(list(values.values()))).all()):
                return
        for name, value in values.items():
            if not th.isfinite(value).all():
                raise self._diverged(name, value.item())

    def _diverged(self, name: str, value: float) -> TrainingDivergedError:
        return TrainingDivergedError(
            f"{name} is {value} at update {self.n_updates + 1} "
            f"(env step {self.num_timesteps}); parameters left as before this update"
        )

    def _policy_parameters(self) -> list[th.nn.Parameter]:
        """What the policy's optimizer steps (a flat list; cheaper than ``parameters()``)."""
        return [p for group in self.policy.optimizer.param_groups for p in group["params"]]

    def _zero_policy_grads(self) -> None:
        for p in self._policy_parameters():
            p.grad = None

    def _grad_groups(self) -> list[list[th.Tensor]]:
        """The policy's gradients by clip group: all of them (``grad_clip="joint"``), or the
        actor's then the critic's (``"separate"``); the first group holds the actor's."""
        grads = [p.grad for p in self._policy_parameters() if p.grad is not None]
        if self.grad_clip == "joint":
            return [grads]
        actor = {id(p) for p in self.policy.actor_parameters()}
        params = [p for p in self._policy_parameters() if p.grad is not None]
        return [
            [p.grad for p in params if (id(p) in actor) == is_actor] for is_actor in (True, False)
        ]

    def _clip_scales(self, groups: list[list[th.Tensor]], norms: list[float]) -> list[float]:
        """Each group's ``clip_grad_norm_`` factor, ``max_grad_norm / (norm + 1e-6)`` where that
        is below 1 (else 1: its rule leaves the gradient as it is), noted for
        :meth:`_record_grad_clipping`."""
        scales = [1.0] * len(groups)  # the first group holds the actor's parameters
        limit = self.max_grad_norm
        if limit:
            for i, (grads, group_norm) in enumerate(zip(groups, norms, strict=True)):
                if grads and group_norm + 1e-6 > limit:
                    scales[i] = limit / (group_norm + 1e-6)
        self._grad_clipped.append((min(scales) < 1.0, scales[0]))
        return scales

    def _scale_grads(self, groups: list[list[th.Tensor]], norms: list[float]) -> None:
        """Clip each group of gradients in place by its :meth:`_clip_scales` factor."""
        for grads, scale in zip(groups, self._clip_scales(groups, norms), strict=True):
            if scale != 1.0:
                th._foreach_mul_(grads, scale)

    def _clip_and_check(self) -> float:
        """Clip the policy's gradient to ``max_grad_norm`` (``clip_grad_norm_``'s rule; with
        ``grad_clip="separate"`` the actor's and the critic's parameters each by their own
        norm) and return the whole gradient's norm before clipping; a NaN/inf norm raises."""
        groups = self._grad_groups()
        norms = [float(total_grad_norm(grads)) for grads in groups]
        norm = math.sqrt(sum(n * n for n in norms))
        if not math.isfinite(norm):
            raise self._diverged("grad_norm", norm)
        self._scale_grads(groups, norms)
        return norm

    def _clip_check_step(
        self, step: bool = True, **scalars: th.Tensor
    ) -> tuple[dict[str, float], float]:
        """The end of an update, once its backward pass has left the policy's gradients in
        ``.grad``, with ONE read from the device: :meth:`_check_finite`, :meth:`_clip_and_check`
        and the optimizer step in one.

        ``scalars`` (0-dim tensors on the policy's device: the losses, other norms; graphs
        allowed) and the gradient norm of each clip group are read in one go. Then, in order:
        a NaN/inf among ``scalars`` (the first, in the order given) or in the gradient norm
        (``grad_norm``) raises :class:`TrainingDivergedError` before anything is changed but
        the gradients (parameters, optimizer state and clipping statistics as they were); the
        gradient is clipped as :meth:`_clip_and_check` does; with ``step`` (the default) the
        policy's optimizer steps (without it, the caller steps it, after any other check).

        :return: ``scalars`` as Python floats (the same names, in order; for logging) and the
            whole gradient's norm before clipping (:meth:`_clip_and_check`'s).
        """
        groups = self._grad_groups()
        norms = [total_grad_norm(grads) for grads in groups if grads]
        with th.no_grad():  # the one read
            read = th.stack([*scalars.values(), *norms]).tolist() if scalars or norms else []
        values = dict(zip(scalars, read, strict=False))
        for name, value in values.items():
            if not math.isfinite(value):
                raise self._diverged(name, value)
        group_norms = iter(read[len(values) :])
        norms_read = [next(group_norms) if grads else 0.0 for grads in groups]
        norm = math.sqrt(sum(n * n for n in norms_read))
        if not math.isfinite(norm):
            raise self._diverged("grad_norm", norm)
        optimizer = self.policy.optimizer
        if step and len(groups) == 1 and isinstance(optimizer, FlatRMSprop):
            # one group (joint): the optimizer applies the factor to its flat copy of the
            # gradient (one op instead of one per parameter; .grad may keep the unclipped one)
            optimizer.step_unprofiled(grad_scale=self._clip_scales(groups, norms_read)[0])
        else:
            self._scale_grads(groups, norms_read)
            if step:
                self._step_policy_optimizer()
        return values, norm

    def _step_policy_optimizer(self) -> None:
        """``self.policy.optimizer.step()``, by :meth:`FlatRMSprop.step_unprofiled
        <relax_rl.optim.FlatRMSprop.step_unprofiled>` where the optimizer is one (the same
        step without torch's per-call wrapper when no hook is registered)."""
        optimizer = self.policy.optimizer
        if isinstance(optimizer, FlatRMSprop):
            optimizer.step_unprofiled()
        else:
            optimizer.step()

    def _record_grad_clipping(self) -> None:
        """Log, over the optimizer steps since the last call, the share whose gradient was
        clipped (``train/grad_clip_fraction``), the share where the actor's was
        (``train/actor_grad_clip_fraction``: every clipped step with ``joint``) and the mean
        factor the clip applied to the actor's gradient (``train/actor_grad_scale``); averaged
        with the other updates until the logger writes a row."""
        if self._grad_clipped:
            n = len(self._grad_clipped)
            self.logger.record_mean(
                "train/grad_clip_fraction", sum(c for c, _ in self._grad_clipped) / n
            )
            actor = [scale for _, scale in self._grad_clipped]
            self.logger.record_mean(
                "train/actor_grad_clip_fraction", sum(s < 1.0 for s in actor) / n
            )
            self.logger.record_mean("train/actor_grad_scale", sum(actor) / n)
        self._grad_clipped = []

    def learn(  # type: ignore[override]
        self: SelfAlgo,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 100,
        tb_log_name: str | None = None,
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfAlgo:
        """SB3's ``learn``; a row of logs every ``log_interval`` updates (SB3 A2C's 100), the
        episode statistics and losses of that update, the measurements in between (gradient
        variance) averaged."""
        return super().learn(
            total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name or type(self).__name__,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )

    def _setup_learn(self, *args: Any, **kwargs: Any) -> tuple[int, BaseCallback]:
        """SB3's, except that a run with no logger of its own and no TensorBoard folder logs
        to stdout (verbose) or nowhere: SB3 would make an empty ``SB3-<date>`` folder in the
        temp directory on every ``learn()``."""
        if self._custom_logger or self.tensorboard_log is not None:
            return super()._setup_learn(*args, **kwargs)
        formats = [HumanOutputFormat(sys.stdout)] if self.verbose >= 1 else []
        self.set_logger(Logger(None, formats))
        try:
            return super()._setup_learn(*args, **kwargs)
        finally:
            self._custom_logger = False  # a later learn() decides again


__all__ = ["GumbelOnPolicyAlgorithm", "Losses", "TrainingDivergedError", "total_grad_norm"]
