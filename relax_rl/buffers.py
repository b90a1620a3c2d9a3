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


class GumbelRolloutBuffer(RolloutBuffer):
    """Rollout buffer for factorised discrete actions sampled from stored noise.

    :param buffer_size: capacity in steps per env (``n_steps``, or the longest episode).
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
    ) -> None:
        self.action_spec = ActionSpec(action_space)
        self.n_noise = self.action_spec.n_noise
        super().__init__(
            buffer_size, observation_space, action_space, device, gae_lambda, gamma, n_envs
        )

    def reset(self) -> None:
        shape = (self.buffer_size, self.n_envs)
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
        self.noise_u = th.zeros((*shape, self.n_noise), device=self.device)
        self.noise_v = th.zeros((*shape, self.n_noise), device=self.device)
        self.noise_g = th.zeros((*shape, self.n_noise), device=self.device)
        self.pos, self.full, self.generator_ready = 0, False, False
        self._samples: GumbelRolloutSamples | None = None

    def draw_noise(self, generator: th.Generator, step: int | None = None) -> None:
        """Draw and store the noise (``u`` and ``v``) of ``step``, or of every step, from the
        CPU ``generator`` (so that runs repeat on any device), in one stream order either way:
        step by step, ``u`` then ``v``, envs, logits."""
        steps = self.buffer_size if step is None else 1
        noise = uniform_noise((steps, 2, self.n_envs, self.n_noise), generator).to(self.device)
        at = slice(None) if step is None else slice(step, step + 1)
        self.noise_u[at], self.noise_v[at] = noise[:, 0], noise[:, 1]
        self.noise_g[at] = self.action_spec.perturb(noise[:, 0])  # acting needs it; RELAX's z too

    def add(  # type: ignore[override]
        self,
        obs: np.ndarray,
        action: np.ndarray,
        reward: np.ndarray,
        episode_start: np.ndarray,
        value: th.Tensor,
        log_prob: th.Tensor,
        log_prob_dims: th.Tensor | None = None,
    ) -> None:
        """Write one vectorised step (all arguments have a leading ``n_envs`` dimension); the
        step's noise is drawn by :meth:`draw_noise`. ``log_prob_dims``: the log-prob of each
        action dimension ``(n_envs, D)`` (with one dimension, ``log_prob`` is enough)."""
        p = self.pos
        self.observations[p] = obs.reshape(self.n_envs, *self.obs_shape)
        self.actions[p] = action
        self.rewards[p] = reward
        self.episode_starts[p] = episode_start
        self.values[p] = value.cpu().numpy().reshape(self.n_envs)
        self.log_probs[p] = log_prob.cpu().numpy()
        if log_prob_dims is None:
            if self.action_spec.n_dims != 1:
                raise ValueError(
                    f"a step of a {self.action_spec.n_dims}-dimensional action needs "
                    "log_prob_dims, the log-prob of each dimension"
                )
            log_prob_dims = log_prob.reshape(self.n_envs, 1)
        self.log_prob_dims[p] = log_prob_dims.cpu().numpy()
        self.pos += 1
        self.full = self.pos == self.buffer_size
        self._samples = None

    def compute_returns_and_advantage(  # type: ignore[override]
        self, last_values: th.Tensor, dones: np.ndarray
    ) -> None:
        """Advantages and returns of the filled part, by :func:`compute_gae`."""
        n = self.pos
        adv, ret = compute_gae(
            self.rewards[:n],
            self.values[:n],
            self.episode_starts[:n],
            last_values.detach().reshape(self.n_envs).float().cpu().numpy(),
            np.asarray(dones, dtype=np.float32).reshape(self.n_envs),
            self.gamma,
            self.gae_lambda,
        )
        self.advantages[:n], self.returns[:n] = adv, ret
        self._samples = None

    def get_all(self) -> GumbelRolloutSamples:
        """The filled part as one batch of tensors on the device (A2C-style algorithms train
        on all of it at once); built once per rollout."""
        if self._samples is None:
            n, dev = self.pos, self.device
            rows = n * self.n_envs

            def flat(x: np.ndarray) -> th.Tensor:
                return th.from_numpy(x[:n].reshape(rows, *x.shape[2:])).to(dev)

            self._samples = GumbelRolloutSamples(
                flat(self.observations),
                flat(self.actions),
                flat(self.values),
                flat(self.log_probs),
                flat(self.advantages),
                flat(self.returns),
                self.noise_u[:n].reshape(rows, -1),
                self.noise_v[:n].reshape(rows, -1),
                th.arange(self.n_envs, device=dev).repeat(n),
                self.noise_g[:n].reshape(rows, -1),
                flat(self.log_prob_dims),
            )
        return self._samples

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
        # SB3's order: a permutation of the env-major rows (its buffer flattens env by env),
        # mapped to ours (time-major), so that a seed gives SB3's very minibatches.
        env, step = np.divmod(rng.permutation(rows), self.pos)
        order = th.from_numpy(step * self.n_envs + env).to(self.device)
        for start in range(0, rows, batch_size):
            idx = order[start : start + batch_size]
            yield GumbelRolloutSamples(*(field[idx] for field in data))
