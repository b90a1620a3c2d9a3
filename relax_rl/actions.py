"""Action spaces as factorised discrete distributions with stored noise.

A ``Discrete(n)`` action is one categorical over ``n`` logits, ``MultiDiscrete(nvec)`` one
categorical per dimension (``sum(nvec)`` logits, SB3's layout), ``MultiBinary(d)`` one
Bernoulli per bit (``d`` logits). The policy's head emits the flat logits ``(N, K)`` and every
operation below works on them: acting from stored noise, log-probabilities and entropies summed
over dimensions, the closed-form score, and RELAX's ``z``, ``z~`` and relaxation, all through the
estimators' families (:data:`~relax_rl.estimators.CATEGORICAL`,
:data:`~relax_rl.estimators.BERNOULLI`), so that there is one implementation of each sampler.

The noise is one uniform per logit for the sample (``u``, kept as ``G(u)``: Gumbel noise for
categoricals, logistic for bits) and one per logit for the conditional sample (``v``).
Dimensions of a ``MultiDiscrete`` with the same number of classes are processed together (one
tensor of shape ``(N, count, n)`` per run of equal sizes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch as th
from gymnasium import spaces

from relax_rl.estimators import (
    BERNOULLI,
    CATEGORICAL,
    GAUSSIAN,
    DiscreteFamily,
    GaussianFamily,
    conditional_gumbel_max,
    gumbel_max,
)

SUPPORTED = "Discrete, MultiDiscrete, MultiBinary or Box"


@dataclass(frozen=True)
class _Group:
    """``count`` consecutive action dimensions of ``n`` classes each (``n = 1``: bits), on
    logit columns ``start:stop`` and action columns ``first:first + count``."""

    start: int
    stop: int
    first: int
    count: int
    n: int


class ActionSpec:
    """The factorised discrete distribution of an action space.

    A ``Box(low, high, (D,))`` action is a diagonal Gaussian (:data:`GAUSSIAN`) over ``2 D``
    "logits", ``[mean, log_std]``, acting ``a = mean + std * eps`` from one stored
    standard-normal ``eps`` per dimension; the env gets ``a`` clipped to the bounds
    (:meth:`to_env`, SB3's rule) while log-probabilities are of the unclipped ``a``.

    :param space: a ``Discrete``, ``MultiDiscrete`` (one-dimensional ``nvec``),
        ``MultiBinary`` (one-dimensional) or ``Box`` (one-dimensional, finite bounds) space;
        anything else raises ``ValueError`` naming what is supported.
    """

    def __init__(self, space: spaces.Space) -> None:
        self.space = space
        self.family: DiscreteFamily | GaussianFamily
        groups: list[_Group] = []
        self.action_dtype: np.dtype = np.dtype(np.int64)
        if isinstance(space, spaces.Discrete):
            if int(space.start) != 0:
                raise ValueError(f"Discrete actions must start at 0, got start={space.start}")
            self.family, self.n_logits, self.action_shape = CATEGORICAL, int(space.n), ()
            groups.append(_Group(0, int(space.n), 0, 1, int(space.n)))
        elif isinstance(space, spaces.MultiDiscrete) and len(space.nvec.shape) == 1:
            if np.any(space.start != 0):
                raise ValueError(f"MultiDiscrete actions must start at 0, got {space}")
            nvec = [int(n) for n in space.nvec]
            if min(nvec) < 2:
                raise ValueError(f"every dimension of {space} needs at least 2 choices")
            self.family, self.n_logits, self.action_shape = CATEGORICAL, sum(nvec), (len(nvec),)
            start = first = 0
            while first < len(nvec):  # runs of equal sizes share one tensor
                count = 1
                while first + count < len(nvec) and nvec[first + count] == nvec[first]:
                    count += 1
                stop = start + count * nvec[first]
                groups.append(_Group(start, stop, first, count, nvec[first]))
                start, first = stop, first + count
        elif isinstance(space, spaces.MultiBinary) and len(space.shape) == 1:
            d = int(space.shape[0])
            self.family, self.n_logits, self.action_shape = BERNOULLI, d, (d,)
            groups.append(_Group(0, d, 0, d, 1))
        elif isinstance(space, spaces.Box) and len(space.shape) == 1:
            if not (np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))):
                raise ValueError(
                    f"Box actions need finite bounds (actions are clipped to them), got {space}"
                )
            d = int(space.shape[0])
            self.family, self.n_logits, self.action_shape = GAUSSIAN, 2 * d, (d,)
            self.action_dtype = np.dtype(np.float32)
            groups.append(_Group(0, 2 * d, 0, d, 0))
        else:
            shape = getattr(space, "shape", None)
            what = f"{type(space).__name__} of shape {shape}" if shape else type(space).__name__
            raise ValueError(
                f"unsupported action space {what}: this agent takes {SUPPORTED} actions "
                "(one-dimensional for the multi-dimensional ones)"
            )
        self.groups = tuple(groups)
        self.discrete = isinstance(space, spaces.Discrete)
        self.continuous = self.family is GAUSSIAN
        self._single = len(self.groups) == 1
        #: uniforms stored per step for the sample (and as many for a conditional sample)
        self.n_noise = self.n_logits // 2 if self.continuous else self.n_logits
        #: the width of the relaxed action a control variate sees
        self.relaxed_dim = self.n_noise
        #: the number of action dimensions (1 for ``Discrete``)
        self.n_dims = sum(g.count for g in self.groups)
        #: the action dimension of each column of the relaxed action, ``(relaxed_dim,)``
        self.column_dims = th.cat(
            [
                th.arange(g.first, g.first + g.count).repeat_interleave(max(g.n, 1))
                for g in self.groups
            ]
        )

    def __repr__(self) -> str:
        return f"ActionSpec({self.space})"

    # ---------------------------------------------------------------- layout
    def _views(self, x: th.Tensor) -> list[th.Tensor]:
        """Per group, the columns of ``x`` (``(N, K)``) as ``(N, n)`` (Discrete),
        ``(N, count, n)`` (categoricals) or ``(N, d)`` (bits)."""
        if self.discrete or self.family is not CATEGORICAL:
            return [x]
        return [x[:, g.start : g.stop].unflatten(-1, (g.count, g.n)) for g in self.groups]

    def _action_views(self, actions: th.Tensor) -> list[th.Tensor]:
        if self._single:
            return [actions]
        return [actions[:, g.first : g.first + g.count] for g in self.groups]

    def _flat(self, parts: list[th.Tensor]) -> th.Tensor:
        """Inverse of :meth:`_views`: ``(N, K)``."""
        if self.discrete or self.family is not CATEGORICAL:
            return parts[0]
        flat = [p.flatten(1) for p in parts]
        return flat[0] if self._single else th.cat(flat, dim=-1)

    def _join_actions(self, parts: list[th.Tensor]) -> th.Tensor:
        return parts[0] if self._single else th.cat(parts, dim=-1)

    @staticmethod
    def _sum_dims(x: th.Tensor) -> th.Tensor:
        """Per sample: a Discrete's ``(N,)`` as is, a group's ``(N, count)`` summed."""
        return x if x.dim() == 1 else x.sum(-1)

    # ---------------------------------------------------------------- acting and log-probs
    def perturb(self, u: th.Tensor) -> th.Tensor:
        """``G(u)`` per logit (elementwise: Gumbel or logistic noise)."""
        return self.family.perturb(u)

    def sample(
        self, logits: th.Tensor, g: th.Tensor, per_dimension: bool = False
    ) -> tuple[th.Tensor, th.Tensor]:
        """The action ``b = H(z)`` from the perturbation ``g`` (``(N, K)``), and its log-prob
        summed over dimensions (``(N, D)``, one per dimension, with ``per_dimension``: the
        terms :meth:`log_prob_per_dimension` gives). Actions are integer ``(N,)`` for
        ``Discrete``, ``(N, D)`` otherwise."""
        if self.discrete:  # the common case, without the per-group bookkeeping
            log_p = th.log_softmax(logits, dim=-1)
            _, b = gumbel_max(log_p, g)
            lp = log_p.gather(-1, b.unsqueeze(-1))
            return b, lp if per_dimension else lp.squeeze(-1)
        if self.continuous:
            a, _ = self.family.sample_perturbed(logits, g)
            lp = self.family.log_prob(logits, a)
            return a, lp if per_dimension else lp.sum(-1)
        actions, parts = [], []
        for lg, gg in zip(self._views(logits), self._views(g), strict=True):
            if self.family is BERNOULLI:
                _, b = self.family.sample_perturbed(lg, gg)
                lp = self.family.log_prob(lg, b)
                b = b.long()
            else:
                log_p = th.log_softmax(lg, dim=-1)
                _, b = gumbel_max(log_p, gg)
                lp = log_p.gather(-1, b.unsqueeze(-1)).squeeze(-1)
            actions.append(b)
            parts.append(lp.unsqueeze(-1) if lp.dim() == 1 else lp)
        dims = parts[0] if self._single else th.cat(parts, dim=-1)
        return self._join_actions(actions), dims if per_dimension else self.sum_dimensions(dims)

    def sum_dimensions(self, per_dimension: th.Tensor) -> th.Tensor:
        """``(N, D)`` per-dimension log-probs summed to ``(N,)`` in :meth:`log_prob`'s order
        (group by group: the very same float)."""
        if self._single:
            return per_dimension.sum(-1)
        total = None
        for g in self.groups:
            part = per_dimension[:, g.first : g.first + g.count].sum(-1)
            total = part if total is None else total + part
        assert total is not None
        return total

    def log_prob(self, logits: th.Tensor, actions: th.Tensor) -> th.Tensor:
        """``log pi(a)`` per sample, summed over the action's dimensions."""
        total = None
        for lg, b in zip(self._views(logits), self._action_views(actions), strict=True):
            if self.family is BERNOULLI:
                b = b.to(lg.dtype)
            lp = self._sum_dims(self.family.log_prob(lg, b))
            total = lp if total is None else total + lp
        assert total is not None
        return total

    def log_prob_per_dimension(self, logits: th.Tensor, actions: th.Tensor) -> th.Tensor:
        """``log pi(a_d)`` of each action dimension, ``(N, D)`` (``D = 1`` for ``Discrete``):
        the terms :meth:`log_prob` sums."""
        parts = []
        for lg, b in zip(self._views(logits), self._action_views(actions), strict=True):
            if self.family is BERNOULLI:
                b = b.to(lg.dtype)
            lp = self.family.log_prob(lg, b)
            parts.append(lp.unsqueeze(-1) if lp.dim() == 1 else lp)
        return parts[0] if self._single else th.cat(parts, dim=-1)

    def log_prob_and_entropy(
        self, logits: th.Tensor, actions: th.Tensor, entropy_grad: bool = True
    ) -> tuple[th.Tensor, th.Tensor]:
        """``log pi(a)`` and the policy's entropy per sample (both summed over dimensions);
        the entropy without a graph unless ``entropy_grad``."""
        if self.discrete:  # one log_softmax for both (the update's hot path)
            log_p = th.log_softmax(logits, dim=-1)
            log_prob = log_p.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
            with th.set_grad_enabled(th.is_grad_enabled() and entropy_grad):
                return log_prob, -(log_p.exp() * log_p).sum(-1)
        log_prob = self.log_prob(logits, actions)
        with th.set_grad_enabled(th.is_grad_enabled() and entropy_grad):
            entropy = None
            for lg in self._views(logits):
                h = self._sum_dims(self.family.entropy(lg))
                entropy = h if entropy is None else entropy + h
        assert entropy is not None
        return log_prob, entropy

    def mode(self, logits: th.Tensor) -> th.Tensor:
        """The greedy action (each dimension's most likely value; a Gaussian's mean)."""
        if self.continuous:
            return self.family.mode(logits)
        return self._join_actions([self.family.mode(lg).long() for lg in self._views(logits)])

    # ---------------------------------------------------------------- RELAX's pieces
    def score(self, logits: th.Tensor, actions: th.Tensor) -> th.Tensor:
        """``d log pi(a) / d logits`` (``(N, K)``), in closed form (no graph)."""
        if self.discrete:
            return self.family.score(logits, actions)
        return self._flat(
            [
                self.family.score(lg, b)
                for lg, b in zip(self._views(logits), self._action_views(actions), strict=True)
            ]
        )

    def rebuild(
        self, logits: th.Tensor, actions: th.Tensor, g: th.Tensor, v: th.Tensor
    ) -> tuple[th.Tensor, th.Tensor]:
        """RELAX's ``z`` (from the stored perturbation ``g``: the sample the action was taken
        from, at the current logits) and ``z~ ~ p(z | a)`` (from the stored ``v``), both
        ``(N, K)`` and differentiable in the logits. For a Gaussian (LAX), ``z = mean + std *
        eps`` at the stored ``eps`` (the taken action, rebuilt: never a resampled one) and
        ``z~`` is the taken action itself, a constant (``(N, D)`` each)."""
        if self.continuous:
            return self.family.sample_perturbed(logits, g)[0], actions.to(logits.dtype)
        if self.discrete:
            log_p = th.log_softmax(logits, dim=-1)  # one node for z and z~
            return log_p + g, conditional_gumbel_max(log_p, actions, v)
        zs, z_tildes = [], []
        for lg, b, gg, vv in zip(
            self._views(logits),
            self._action_views(actions),
            self._views(g),
            self._views(v),
            strict=True,
        ):
            if self.family is BERNOULLI:
                zs.append(lg + gg)
                z_tildes.append(self.family.conditional(lg, b.to(lg.dtype), vv))
            else:
                log_p = th.log_softmax(lg, dim=-1)  # one node for z and z~
                zs.append(log_p + gg)
                z_tildes.append(conditional_gumbel_max(log_p, b, vv))
        return self._flat(zs), self._flat(z_tildes)

    def preferences(self, logits: th.Tensor) -> th.Tensor:
        """The policy's preference for each relaxed column's value, ``(N, relaxed_dim)``: a
        bit's logit, a categorical value's log-probability. Not for continuous actions."""
        if self.continuous:
            raise ValueError("a continuous action has no per-value preference")
        if self.family is BERNOULLI:
            return logits
        return self._flat([th.log_softmax(lg, dim=-1) for lg in self._views(logits)])

    def mean_hard(self, preferences: th.Tensor) -> th.Tensor:
        """The policy's mean of :meth:`hard`, ``(N, relaxed_dim)``, from its
        :meth:`preferences`: each bit's probability, each categorical's probabilities."""
        if self.family is BERNOULLI:
            return th.sigmoid(preferences)
        return preferences.exp()

    def relax(self, z: th.Tensor, temperature: th.Tensor | float) -> th.Tensor:
        """The continuous relaxation of ``H`` at ``temperature``, ``(N, K)``: each dimension's
        softmax (categoricals) or sigmoid (bits); a continuous action as it is."""
        if self.discrete or self.family is not CATEGORICAL:
            return self.family.relax(z, temperature)
        return self._flat([self.family.relax(zz, temperature) for zz in self._views(z)])

    def hard(self, actions: th.Tensor) -> th.Tensor:
        """The taken action in the relaxed action's layout, ``(N, relaxed_dim)``: each
        categorical dimension one-hot, each bit as is (the relaxation's zero-temperature
        limit). Not for continuous actions."""
        if self.continuous:
            raise ValueError("a continuous action has no one-hot form")
        parts = []
        for g, b in zip(self.groups, self._action_views(actions), strict=True):
            if self.family is BERNOULLI:
                parts.append(b.float())
            else:
                parts.append(th.nn.functional.one_hot(b.long(), g.n).float().flatten(1))
        return parts[0] if self._single else th.cat(parts, dim=-1)

    # ---------------------------------------------------------------- the env
    def to_env(self, actions: np.ndarray) -> np.ndarray:
        """What the env is given: a ``Box`` action clipped to its bounds (SB3's rule: the
        buffer keeps the unclipped sample, whose log-probability the update uses)."""
        if self.continuous:
            return np.clip(actions, self.space.low, self.space.high)  # type: ignore[attr-defined]
        return actions
