"""The one rollout buffer and the one returns computation of every agent.

:class:`GumbelRolloutBuffer` is SB3's :class:`~stable_baselines3.common.buffers.RolloutBuffer`
with more fields: the sampling noise ``u`` and the conditional noise ``v`` drawn when acting
(one uniform per logit per step: per class of each categorical dimension, per bit of a
``MultiBinary``; per dimension of a ``Box``), and the perturbation ``G(u)`` the action was taken
with (Gumbel noise for categoricals, logistic for bits, the standard normal ``eps`` of a
Gaussian; :class:`~relax_rl.actions.ActionSpec`), so that RELAX and LAX can rebuild ``z`` and
``z~`` from the current logits at training time. The per-step fields are
numpy arrays, as in SB3 (in the per-step loop a numpy write costs a fraction of a torch one),
handed over once per rollout as torch tensors on the agent's device
(:meth:`~GumbelRolloutBuffer.get_all`); the noise is drawn by torch and kept as tensors. It may
be filled partially: a whole-episode rollout ends when its episode does.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import RolloutBuffer

from relax_rl.actions import ActionSpec
from relax_rl.estimators import uniform_noise


class GumbelRolloutSamples(NamedTuple):
    """A whole rollout, flattened time-major: row ``t * n_envs + e`` is step ``t`` of env ``e``."""

    observations: th.Tensor
    actions: th.Tensor
    values: th.Tensor
    log_probs: th.Tensor
    advantages: th.Tensor
    returns: th.Tensor
    noise_u: th.Tensor
    noise_v: th.Tensor
    env_index: th.Tensor
    #: G(u), the perturbation the action was sampled with: z = log p + G (categoricals, G
    #: Gumbel) or z = l + G (bits, G logistic)
    noise_g: th.Tensor
    #: ``log pi_old(a_d)`` of each action dimension, ``(N, D)`` (``log_probs`` is their sum):
    #: per-dimension ratios against the policy that acted, whatever moved since
    log_prob_dims: th.Tensor


def compute_gae(
    rewards: np.ndarray,
    values: np.ndarray,
    episode_starts: np.ndarray,
    last_values: np.ndarray,
    last_dones: np.ndarray,
    gamma: float,
    gae_lambda: float,
) -> tuple[np.ndarray, np.ndarray]:
    """GAE(lambda) advantages and lambda-returns (Schulman et al. 2016, Eq. 16), shape ``(T, E)``.

    ``gae_lambda = 1`` with ``values = 0`` is the Monte-Carlo return-to-go; at a cut the last
    value ``last_values`` bootstraps (time-limit truncations are bootstrapped by the collect loop,
    which adds ``gamma * V(terminal obs)`` to the last reward, as SB3 does).
    """
    # Everything but the recursion at once; next_* are step t+1's (the cut's for the last step).
    next_non_terminal = 1.0 - np.concatenate([episode_starts[1:], last_dones[None]])
    next_values = np.concatenate([values[1:], last_values[None]])
    deltas = rewards + gamma * next_values * next_non_terminal - values
    decay = gamma * gae_lambda * next_non_terminal
    advantages = np.empty_like(rewards)
    last_gae = np.zeros_like(last_values)
    for t in reversed(range(rewards.shape[0])):
        last_gae = deltas[t] + decay[t] * last_gae
        advantages[t] = last_gae
    return advantages, advantages + values


def _stacked(steps: tuple[th.Tensor, ...], n_envs: int) -> np.ndarray:
    """Per-step tensors of ``n_envs`` rows each as one float32 numpy array (one stack, one
    copy to the host)."""
    try:
        stacked = th.stack(steps)
    except RuntimeError:  # shapes that differ ((n,) and (n, 1)): each as (n, -1)
        stacked = th.stack([x.reshape(n_envs, -1) for x in steps])
    if stacked.dtype == th.float32 and stacked.is_cpu and not stacked.requires_grad:
        return stacked.numpy()
    return stacked.detach().float().cpu().numpy()


class GumbelRolloutBuffer(RolloutBuffer):
    """Rollout buffer for factorised discrete actions sampled from stored noise.

    :param buffer_size: capacity in steps per env (``n_steps``, or the longest episode).
    :param grow: allocate rows as steps come (whole-episode rollouts, whose length is not known
        in advance): the longest rollout so far, doubled on demand up to ``buffer_size``,
        instead of ``buffer_size`` rows (10,000 for an env without a time limit) every rollout.
    """

    def __init__(
        self,
        buffer_size: int,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        device: th.device | str = "cpu",
        gae_lambda: float = 1.0,
        gamma: float = 0.99,
        n_envs: int = 1,
        grow: bool = False,
    ) -> None:
        self.action_spec = ActionSpec(action_space)
        self.grow = grow
        self._rows = 1 if grow else buffer_size  # rows allocated by reset()
        self.n_noise = self.action_spec.n_noise
        self._multi_dim = self.action_spec.n_dims != 1
        super().__init__(
            buffer_size, observation_space, action_space, device, gae_lambda, gamma, n_envs
        )
        self._obs_row = (self.n_envs, *self.obs_shape)

    def reset(self) -> None:
        self._allocate(self._rows)
        self.pos, self.full, self.generator_ready = 0, False, False
        self._samples: GumbelRolloutSamples | None = None
        # the tensors of the steps added since the last flush: (value, log_prob, log_prob_dims)
        self._pending: list[tuple[th.Tensor, th.Tensor, th.Tensor | None]] = []
        # whether every row is a step of a running env (see ``add``'s ``running``)
        self._all_running = True

    def _allocate(self, rows: int) -> None:
        """Fresh fields of ``rows`` steps (zeros; the step's noise comes from ``draw_noise``)."""
        shape = (rows, self.n_envs)
        self.observations = np.zeros((*shape, *self.obs_shape), dtype=np.float32)
        self.actions = np.zeros(
            (*shape, *self.action_spec.action_shape), dtype=self.action_spec.action_dtype
        )
        self.rewards = np.zeros(shape, dtype=np.float32)
        self.returns = np.zeros(shape, dtype=np.float32)
        self.episode_starts = np.zeros(shape, dtype=np.float32)
        self.values = np.zeros(shape, dtype=np.float32)
        self.log_probs = np.zeros(shape, dtype=np.float32)
        self.log_prob_dims = np.zeros((*shape, self.action_spec.n_dims), dtype=np.float32)
        self.advantages = np.zeros(shape, dtype=np.float32)
        self.running = np.ones(shape, dtype=bool)
        self.noise_u = th.zeros((*shape, self.n_noise), device=self.device)
        self.noise_v = th.zeros((*shape, self.n_noise), device=self.device)
        self.noise_g = th.zeros((*shape, self.n_noise), device=self.device)

    #: the fields :meth:`_allocate` makes, each ``(rows, n_envs, ...)``
    _FIELDS = (
        "observations",
        "actions",
        "rewards",
        "returns",
        "episode_starts",
        "values",
        "log_probs",
        "log_prob_dims",
        "advantages",
        "running",
        "noise_u",
        "noise_v",
        "noise_g",
    )

    def _ensure_rows(self, rows: int) -> None:
        """Make room for ``rows`` steps (a growing buffer doubles, keeping what it holds)."""
        have = self.rewards.shape[0]
        if rows <= have:
            return
        if not self.grow or rows > self.buffer_size:
            raise ValueError(f"the buffer holds {self.buffer_size} steps per env, not {rows}")
        old = {name: getattr(self, name) for name in self._FIELDS}
        self._rows = min(self.buffer_size, max(rows, 2 * have))
        self._allocate(self._rows)
        for name, field in old.items():
            getattr(self, name)[:have] = field

    def draw_noise(self, generator: th.Generator, step: int | None = None) -> th.Tensor:
        """Draw and store the noise (``u`` and ``v``) of ``step``, or of every step, from the
        CPU ``generator`` (so that runs repeat on any device), in one stream order either way:
        step by step, ``u`` then ``v``, envs, logits. Returns the perturbation ``G(u)`` drawn
        (``(n_envs, n_noise)`` for a step, the whole field otherwise)."""
        steps = self.buffer_size if step is None else 1
        noise = uniform_noise((steps, 2, self.n_envs, self.n_noise), generator).to(self.device)
        u, v = noise.unbind(1)
        if step is None:  # the whole rollout's: the drawn tensor holds the fields (no copies)
            self.noise_u, self.noise_v = u, v
            self.noise_g = self.action_spec.perturb(u)  # acting needs it; RELAX's z too
            return self.noise_g
        self._ensure_rows(step + 1)
        at = slice(step, step + 1)
        self.noise_u[at], self.noise_v[at] = u, v
        self.noise_g[at] = g = self.action_spec.perturb(u)
        return g[0]

    def add(  # type: ignore[override]
        self,
        obs: np.ndarray,
        action: np.ndarray,
        reward: np.ndarray,
        episode_start: np.ndarray,
        value: th.Tensor,
        log_prob: th.Tensor,
        log_prob_dims: th.Tensor | None = None,
        running: np.ndarray | None = None,
    ) -> None:
        """Write one vectorised step (all arguments have a leading ``n_envs`` dimension); the
        step's noise is drawn by :meth:`draw_noise`. ``log_prob_dims``: the log-prob of each
        action dimension ``(n_envs, D)`` (with one dimension, ``log_prob`` is enough).
        ``running``: which envs were in an episode at this step (default all); the others'
        rows (an env of a group waiting for the rest of its group:
        :class:`~relax_rl.groups.GroupVecEnv`) are left out of the batches.

        The step's tensors (``value``, ``log_prob``, ``log_prob_dims``) are kept as they are
        and written to the numpy fields once per rollout (:meth:`_flush`: one stack and one
        device-to-host copy each instead of one per step); the numpy arguments are written at
        once."""
        if log_prob_dims is None and self._multi_dim:
            raise ValueError(
                f"a step of a {self.action_spec.n_dims}-dimensional action needs "
                "log_prob_dims, the log-prob of each dimension"
            )
        p = self.pos
        self._ensure_rows(p + 1)
        if running is not None and not running.all():
            self.running[p] = running
            self._all_running = False
        self.observations[p] = obs.reshape(self._obs_row)
        self.actions[p] = action
        self.rewards[p] = reward
        self.episode_starts[p] = episode_start
        self._pending.append((value, log_prob, log_prob_dims))
        self.pos = p + 1
        self.full = self.pos == self.buffer_size
        self._samples = None

    def _flush(self) -> None:
        """Write the steps' tensors that :meth:`add` kept to the numpy fields (``values``,
        ``log_probs``, ``log_prob_dims``), stacked per field: the very same numbers a per-step
        write would give."""
        pending = self._pending
        if not pending:
            return
        start, n_envs = self.pos - len(pending), self.n_envs
        end = self.pos
        values, log_probs, dims = zip(*pending, strict=True)
        with th.no_grad():  # values and log-probs in one stack, one copy
            both = _stacked(values + log_probs, n_envs).reshape(2, -1, n_envs)
            self.values[start:end], self.log_probs[start:end] = both
            if dims[0] is None:  # one dimension: the log-prob is the dimension's
                self.log_prob_dims[start:end] = self.log_probs[start:end, :, None]
            else:
                self.log_prob_dims[start:end] = _stacked(dims, n_envs).reshape(
                    -1, n_envs, self.action_spec.n_dims
                )
        self._pending = []

    def compute_returns_and_advantage(  # type: ignore[override]
        self, last_values: th.Tensor, dones: np.ndarray
    ) -> None:
        """Advantages and returns of the filled part, by :func:`compute_gae`."""
        self._flush()
        n = self.pos
        adv, ret = compute_gae(
            self.rewards[:n],
            self.values[:n],
            self.episode_starts[:n],
            _stacked((last_values,), self.n_envs).reshape(self.n_envs),
            np.asarray(dones, dtype=np.float32).reshape(self.n_envs),
            self.gamma,
            self.gae_lambda,
        )
        self.advantages[:n], self.returns[:n] = adv, ret
        self._samples = None

    def set_advantages(self, advantages: np.ndarray) -> None:
        """Replace the filled part's advantages (``(pos, n_envs)``; an algorithm whose baseline
        needs the whole rollout, such as a group's) before the rollout is handed out."""
        self.advantages[: self.pos] = advantages
        self._samples = None

    def get_all(self) -> GumbelRolloutSamples:
        """The filled part as one batch of tensors on the device (A2C-style algorithms train
        on all of it at once); built once per rollout."""
        if self._samples is None:
            self._flush()
            n, dev = self.pos, self.device
            rows = n * self.n_envs
            on_cpu = th.device(dev).type == "cpu"

            def flat(x: np.ndarray) -> th.Tensor:
                tensor = th.from_numpy(x[:n].reshape(rows, *x.shape[2:]))
                return tensor if on_cpu else tensor.to(dev)

            samples = GumbelRolloutSamples(
                flat(self.observations),
                flat(self.actions),
                flat(self.values),
                flat(self.log_probs),
                flat(self.advantages),
                flat(self.returns),
                self.noise_u[:n].reshape(rows, -1),
                self.noise_v[:n].reshape(rows, -1),
                self._env_index(n),
                self.noise_g[:n].reshape(rows, -1),
                flat(self.log_prob_dims),
            )
            if not self._all_running:  # only the steps of running envs, in the same order
                keep = th.from_numpy(np.flatnonzero(self.running[:n].reshape(rows))).to(dev)
                samples = GumbelRolloutSamples(*(field[keep] for field in samples))
            self._samples = samples
        return self._samples

    def _env_index(self, n: int) -> th.Tensor:
        """The env of each row of ``n`` steps, ``(n * n_envs,)``; for a full buffer made once
        and shared by the batches (read-only)."""
        if n != self.buffer_size:  # (a whole episode's length varies)
            return th.arange(self.n_envs, device=self.device).repeat(n)
        index = self.__dict__.get("_full_env_index")
        if index is None:
            index = self._full_env_index = th.arange(self.n_envs, device=self.device).repeat(n)
        return index

    def minibatches(
        self, batch_size: int, rng: np.random.RandomState
    ) -> Iterator[GumbelRolloutSamples]:
        """The filled part in a random order drawn from ``rng`` (SB3's ``get(batch_size)``
        draws the same permutation from numpy's global generator: the same minibatches for the
        same state), as minibatches of ``batch_size`` rows; the last one is smaller where
        ``batch_size`` does not divide the rollout."""
        data = self.get_all()
        rows = data.observations.shape[0]
        if batch_size >= rows:  # one minibatch: the whole rollout (its order does not matter)
            yield data
            return
        if self._all_running:
            # SB3's order: a permutation of the env-major rows (its buffer flattens env by
            # env), mapped to ours (time-major), so that a seed gives SB3's very minibatches.
            env, step = np.divmod(rng.permutation(rows), self.pos)
            order = th.from_numpy(step * self.n_envs + env).to(self.device)
        else:  # (rows of waiting envs left out: no layout of SB3's to follow)
            order = th.from_numpy(rng.permutation(rows)).to(self.device)
        for start in range(0, rows, batch_size):
            idx = order[start : start + batch_size]
            yield GumbelRolloutSamples(*(field[idx] for field in data))
