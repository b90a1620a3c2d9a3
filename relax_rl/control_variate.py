"""RELAX's estimator for the RL agents, in one place (Grathwohl et al. 2018, Sec. 3.3, 6.3).

For a sample ``a = H(z)``, ``z ~ p(z | s)`` rebuilt from the stored noise, and
``z~ ~ p(z | a, s)``, RELAX's estimate of the gradient of ``E[A]`` (Eq. 10, with the loss
``f = -A``) is, per sample and in logit space,

``d surrogate / d logits = -A dlog pi(a) + kappa h``,
``h = w c(z~) dlog pi(a) + d[w c(z~) - w' c(z)] / d logits``

with ``c = c_hat / kappa`` the learned control variate (:class:`ControlVariate`) and ``w``,
``w'`` importance weights (1 on-policy; PPO's ratio off-policy). Unbiased for any ``c``: the
two ``c`` terms have the same mean. :func:`relax_logit_gradient` computes it; RELAX, RELAX-PPO
and the variance decomposition all call it.

What lives here:

- :class:`ControlVariateConfig`: the control variate's form and how phi learns, with named
  presets (``paper``, ``default``, ``factorised``), validated in one place.
- :class:`ControlVariate`: ``c_hat = kappa * scale * (MLP term + linear term + preference
  term)``, each term a small module, evaluated at ``z`` and ``z~`` jointly or per action
  dimension in one batched pass (what depends on the state only, once).
- :class:`LearnedKappa` and :class:`OptimalKappa`: how ``kappa`` is set, each with its update.
- :class:`ControlVariateMixin`: what RELAX and RELAX-PPO share (construction, save/load,
  replay of kept batches).
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import types
import typing
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch as th
import torch.nn.functional as F
from torch import nn

from relax_rl.actions import ActionSpec
from relax_rl.buffers import GumbelRolloutSamples
from relax_rl.policies import ACTIVATIONS
from relax_rl.tuning import Choice, LogUniform

KAPPA_MODES = ("optimal", "learned")
OBJECTIVES = ("per_sample", "batch")
TARGETS = ("advantage", "return")
LINEAR_FITS = ("variance", "regression")
REPLAY_PASSES = ("each", "joint")
#: the config fields that make the control variate's form (what every agent's c_hat takes)
FORM_FIELDS = (
    "net_arch",
    "activation",
    "zero_init",
    "linear_term",
    "logit_term",
    "centred",
    "per_dimension",
)


# ---------------------------------------------------------------------------- configuration
#: many factorised actions (MultiBinaryMatch): centred linear and preference terms per
#: dimension, the MLP term at the whole relaxed action, the return as target, a learned kappa
#: (BENCHMARKS 8b-8c, 13: this MLP term solves in fewer env steps than one per dimension, at
#: 1.2x the speed; [32, 32] in as many env steps as [64, 64])
_FACTORISED: dict[str, Any] = {
    "net_arch": (32, 32),
    "linear_term": True,
    "logit_term": True,
    "centred": True,
    "per_dimension": True,
    "mlp_per_dimension": False,
    "zero_init": True,
    "kappa": "learned",
    "learning_rate": 0.003,
    "scale_decay": 0.99,
    "target": "return",
}


@dataclass(frozen=True)
class ControlVariateConfig:
    """The control variate's form and how phi learns. The agents' ``cv_*`` arguments are its
    fields (``None`` takes the preset's value); :attr:`PRESETS` names the recipes that were
    measured. Research switches no shipped config uses (``kappa_init``, ``linear_fit``,
    ``linear_step``, ``linear_decay``, ``replay_pass``) are reachable through ``cv_options``
    only: kept because BENCHMARKS sections 8d and 8b measured them, not part of the
    signature."""

    #: the MLP term's hidden sizes and activation (the paper's: [10, 10], relu)
    net_arch: tuple[int, ...] = (64, 64)
    activation: str = "relu"
    #: phi's learning rate (None: the policy's)
    learning_rate: float | None = None
    #: start the MLP's output at 0 (c_hat = 0: the agent starts as its baseline agent)
    zero_init: bool = False
    #: ``(W s + w0) . r``: a term linear in the relaxed action, state-dependent coefficients
    linear_term: bool = False
    #: ``sum_k u(p_k) r_k``: a coefficient per value from the policy's preference for it
    logit_term: bool = False
    #: the linear and preference terms act on ``r - E_pi[H]`` (mean 0 given the state)
    centred: bool = False
    #: one control variate per action dimension (the others as sampled)
    per_dimension: bool = False
    #: per dimension, the MLP term too; False: the MLP term at the whole relaxed action (the
    #: joint RELAX correction, once), the linear and preference terms per dimension
    mlp_per_dimension: bool = True
    #: ``optimal`` (cross-fitted variance-minimising kappa) or ``learned`` (the paper's)
    kappa: str = "optimal"
    kappa_init: float = 1.0
    #: phi's objective: per-sample logit gradients, or the paper's batch gradient norm
    objective: str = "per_sample"
    #: phi's extra steps on the last ``replay`` batches after each update
    replay: int = 0
    #: ``joint``: one step on all kept batches at once (fewer samples to solve and a larger
    #: reduction than ``each``, one step per batch: BENCHMARKS 13)
    replay_pass: str = "joint"
    #: what the learned part models: the ``advantage``, or the ``return`` (c_hat - V(s))
    target: str = "advantage"
    #: c_hat times a running RMS of earlier advantages (None: the paper's form)
    scale_decay: float | None = None
    #: the linear term's coefficients by the variance objective or by ``regression``
    linear_fit: str = "variance"
    linear_step: float = 0.5
    linear_decay: float = 0.99

    #: named recipes: the paper's discrete agent, the default, MultiBinaryMatch's
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "default": {},
        "paper": {
            "net_arch": (10, 10),
            "kappa": "learned",
            "objective": "batch",
        },
        # MultiBinaryMatch's (BENCHMARKS 13): the fewest seconds to solve
        "factorised": _FACTORISED,
        # ... with phi's replay of the last 8 batches: the fewest env steps to solve (0.43x
        # A2C's at d = 32 against 0.51x), at 2.5 times the seconds
        "factorised-replay": {**_FACTORISED, "replay": 8},
    }

    @classmethod
    def resolve(
        cls,
        preset: str,
        options: dict[str, Any] | None = None,
        base: dict[str, Any] | None = None,
        only: tuple[str, ...] | None = None,
        **fields: Any,
    ) -> ControlVariateConfig:
        """The config from, lowest first: the class defaults, an agent's own ``base``, the
        ``preset``, ``options`` and the non-``None`` ``fields``. With ``only`` (the fields an
        agent uses), a preset's other fields are left out and other options refused."""
        if preset not in cls.PRESETS:
            raise ValueError(f"unknown cv_preset {preset!r}; valid: {', '.join(cls.PRESETS)}")
        if options is not None and not isinstance(options, dict):
            raise ValueError(
                f"cv_options must map config fields to values, e.g. {{kappa_init: 0.5}}, "
                f"got {options!r}"
            )
        known = only if only is not None else tuple(f.name for f in dataclasses.fields(cls))
        for name in options or {}:
            if name not in known:
                valid = ", ".join(sorted(known))
                raise ValueError(f"unknown cv_options key {name!r}; valid: {valid}")
        preset_values = {k: v for k, v in cls.PRESETS[preset].items() if k in known}
        values = {**(base or {}), **preset_values, **(options or {})}
        values.update({k: v for k, v in fields.items() if v is not None})
        if "net_arch" in values:
            values["net_arch"] = tuple(values["net_arch"])
        return cls(**values)

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value, hint = getattr(self, f.name), hints[f.name]
            union = typing.get_origin(hint) in (typing.Union, types.UnionType)
            allowed = tuple(typing.get_origin(t) or t for t in typing.get_args(hint) or (hint,))
            if not union:
                allowed = (typing.get_origin(hint) or hint,)
            if float in allowed:
                allowed = (*allowed, int)
            if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
                expected = " or ".join(
                    t.__name__ for t in allowed if t is not int or float not in allowed
                )
                raise ValueError(
                    f"control variate field {f.name}={value!r} has the wrong type: "
                    f"expected {expected}"
                )
        if not all(isinstance(n, int) and n > 0 for n in self.net_arch):
            raise ValueError(f"cv_net_arch needs positive layer sizes, got {list(self.net_arch)}")
        for name, value, valid in (
            ("cv_activation", self.activation, tuple(ACTIVATIONS)),
            ("kappa_mode", self.kappa, KAPPA_MODES),
            ("variance_objective", self.objective, OBJECTIVES),
            ("cv_target", self.target, TARGETS),
            ("cv_options.linear_fit", self.linear_fit, LINEAR_FITS),
            ("cv_options.replay_pass", self.replay_pass, REPLAY_PASSES),
        ):
            if value not in valid:
                raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(valid)}")
        if self.replay < 0:
            raise ValueError(f"cv_replay must be >= 0 (batches), got {self.replay}")
        if not 0.0 < self.linear_decay <= 1.0:
            raise ValueError(f"cv_options.linear_decay must be in (0, 1], got {self.linear_decay}")
        if not 0.0 < self.linear_step < 2.0:
            raise ValueError(f"cv_options.linear_step must be in (0, 2), got {self.linear_step}")
        if self.objective == "batch":
            for name, used in (
                ("cv_per_dimension", self.per_dimension),
                ("cv_logit_term", self.logit_term),
                ("cv_centred", self.centred),
                ("cv_replay", self.replay),
                ("cv_target='return'", self.target == "return"),
            ):
                if used:
                    raise ValueError(
                        f"{name} works on per-sample gradients; use "
                        "variance_objective='per_sample' or leave it out"
                    )
            if self.kappa == "optimal":
                raise ValueError(
                    "kappa_mode='optimal' works on per-sample gradients; "
                    "use variance_objective='per_sample' or kappa_mode='learned'"
                )
        if self.linear_fit == "regression" and not (self.linear_term and self.centred):
            raise ValueError(
                "cv_options.linear_fit='regression' fits the centred linear term: set "
                "cv_linear_term=True and cv_centred=True, or leave linear_fit at 'variance'"
            )
        if self.kappa == "optimal" and self.zero_init:
            # the correlation objective has no gradient at c_hat = 0: phi would never move
            raise ValueError(
                "cv_zero_init starts c_hat at 0, where kappa_mode='optimal' gives phi no "
                "gradient; use kappa_mode='learned' or cv_zero_init=False"
            )

    def check_agent(self, use_baseline: bool, normalize_advantage: bool) -> None:
        """The rules that involve the agent's own settings."""
        if self.target == "return":
            for bad, needed in (
                (not use_baseline, "use_baseline=True"),
                (normalize_advantage, "normalize_advantage=False"),
            ):
                if bad:
                    raise ValueError(
                        f"cv_target='return' moves the critic's value into c_hat: set {needed} "
                        "or use cv_target='advantage'"
                    )

    def check_actions(self, spec: ActionSpec) -> None:
        for name, wanted in (("cv_logit_term", self.logit_term), ("cv_centred", self.centred)):
            if wanted and spec.continuous:
                raise ValueError(
                    f"{name} needs discrete actions (Discrete, MultiDiscrete, MultiBinary), "
                    f"got {spec.space}"
                )


# ---------------------------------------------------------------------------- the terms
#: the hidden activations as functions (no module call per layer)
_FUNCTIONS: dict[str, Callable[[th.Tensor], th.Tensor]] = {
    "relu": th.relu,
    "tanh": th.tanh,
    "elu": F.elu,
    "leaky_relu": F.leaky_relu,
}


class Points(NamedTuple):
    """Where a control variate is evaluated: for sample ``s`` (``z``, ``z~``), row ``n`` and
    variant ``v`` the point ``anchor_n + mask_v (relaxed_sn - anchor_n)``. Jointly, one
    variant, ``anchor = 0`` and every column relaxed; per dimension, one variant per action
    dimension, ``anchor`` the sampled action (one-hot / bits) and variant ``d`` relaxing
    dimension ``d``'s columns. The samples share the rows' states and anchors, so what
    depends on them only is computed once."""

    relaxed: th.Tensor  # (S, N, K)
    anchor: th.Tensor | None  # (N, K), None: 0 (joint)
    columns: th.Tensor | None  # (K,): each column's variant, None: all 0 (joint)
    n_variants: int


class MLPTerm(nn.Module):
    """``MLP([s, r])`` (the paper's ``c``), its first layer split so that the state's part is
    computed once for every sample and variant."""

    def __init__(
        self, obs_dim: int, width: int, net_arch: tuple[int, ...], activation: str, zero: bool
    ) -> None:
        super().__init__()
        sizes = [obs_dim + width, *net_arch, 1]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
        if zero:
            nn.init.zeros_(self.layers[-1].weight)
            nn.init.zeros_(self.layers[-1].bias)
        self.obs_dim = obs_dim
        self.activation = _FUNCTIONS[activation]

    def forward(self, points: Points, obs: th.Tensor) -> th.Tensor:
        """Values ``(S, N, V)``."""
        first, relaxed = self.layers[0], points.relaxed
        if points.columns is None:  # joint: one variant, every column relaxed, (S, N, H)
            x = F.linear(
                th.cat([obs.expand(len(relaxed), -1, -1), relaxed], -1), first.weight, first.bias
            )
        else:  # the state's and sampled action's product once, each variant adds its part
            assert points.anchor is not None
            w_obs, w_act = first.weight[:, : self.obs_dim], first.weight[:, self.obs_dim :]
            base = F.linear(obs, w_obs, first.bias)  # (N, H)
            at_sample = (base + points.anchor @ w_act.T).unsqueeze(-2)  # (N, 1, H)
            delta = (points.relaxed - points.anchor).unsqueeze(-1) * w_act.T  # (S, N, K, H)
            shape = (*delta.shape[:2], points.n_variants, base.shape[-1])
            x = at_sample.expand(shape).index_add(2, points.columns, delta)  # (S, N, V, H)
        for layer in self.layers[1:]:
            x = F.linear(self.activation(x), layer.weight, layer.bias)
        return x if points.columns is None else x.squeeze(-1)  # (S, N, 1) or (S, N, V)


class LinearTerm(nn.Module):
    """``(W s + w0) . r``: state-dependent coefficients on the relaxed action, exact for a
    reward that sums over dimensions weighed by the state; starts at 0. With
    ``linear_fit='regression'`` the coefficients are set by :meth:`fit` (not by phi's
    optimizer)."""

    #: samples per affine-projection step of :meth:`fit` (a solve of this size)
    CHUNK = 64

    def __init__(self, obs_dim: int, width: int, regression: bool) -> None:
        super().__init__()
        self.coefficients = nn.Linear(obs_dim, width)
        nn.init.zeros_(self.coefficients.weight)
        nn.init.zeros_(self.coefficients.bias)
        self.regression = regression
        if regression:
            # the fit's preconditioner: each state feature's running mean square
            self.register_buffer("square", th.zeros(obs_dim + 1))
            self.register_buffer("batches", th.zeros((), dtype=th.long))
            self.coefficients.requires_grad_(False)

    def forward(self, obs: th.Tensor, preferences: th.Tensor | None) -> th.Tensor:
        return F.linear(obs, self.coefficients.weight, self.coefficients.bias)

    @th.no_grad()
    def fit(
        self,
        x: th.Tensor,
        w: th.Tensor,
        residual: th.Tensor,
        step: float,
        decay: float,
    ) -> None:
        """Move the coefficients towards the return at the taken actions for LATER batches:
        an affine-projection step (block normalised least mean squares) on the features
        ``(H_k - m_k) x_f`` (``w`` the centred taken action ``(N, K)``, ``x`` the centred
        state, ``residual`` ``A - c(H(z))`` per unit of kappa and scale): the smallest change
        in the metric ``P^-1`` (``P`` the inverse running mean square of each state feature)
        that explains the fraction ``step`` (in (0, 2): stable whatever the correlations) of
        every sample's residual."""
        x = th.cat([x, x.new_ones(x.shape[0], 1)], dim=-1)  # (N, F)
        square = (x * x).mean(0)
        if int(self.batches) == 0:
            self.square.copy_(square)
        else:
            self.square.lerp_(square, 1 - decay)
        self.batches += 1
        precondition = (1.0 / (self.square + 1e-8)).expand(w.shape[1], -1)  # (K, F)
        delta = th.zeros_like(precondition)
        error = residual.reshape(-1)
        for rows in th.arange(len(error), device=error.device).split(self.CHUNK):
            features = w[rows].unsqueeze(-1) * x[rows].unsqueeze(1)  # (n, K, F)
            moved = features * precondition
            left = error[rows] - (features * delta).sum((1, 2))  # after earlier chunks
            gram = features.flatten(1) @ moved.flatten(1).T
            ridge = 1e-4 * gram.diagonal().mean() + 1e-12
            gram = gram + ridge * th.eye(len(rows), device=gram.device)
            delta += th.einsum("n,nkf->kf", th.linalg.solve(gram, step * left), moved)
        self.coefficients.weight.add_(delta[:, :-1])
        self.coefficients.bias.add_(delta[:, -1])


class PreferenceTerm(nn.Module):
    """``sum_k u(p_k) r_k``: one small MLP ``u`` from the policy's (detached) preference for
    each value (a bit's logit, a value's log-probability) to its coefficient, shared by every
    column; starts at 0. For an entropy-regularised policy the advantage is ``alpha log pi``
    up to a state term: ``u`` learns that from every dimension at once."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Linear(16, 1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, obs: th.Tensor, preferences: th.Tensor | None) -> th.Tensor:
        assert preferences is not None
        return self.net(preferences.unsqueeze(-1)).squeeze(-1)


# ---------------------------------------------------------------------------- kappa
class LearnedKappa(nn.Module):
    """The paper's: ``kappa`` is part of phi and descends the variance objective
    ``mean_i ||g_i + kappa h_i||^2`` (Eq. 11, per sample in logit space)."""

    def __init__(self, init: float) -> None:
        super().__init__()
        self.value = nn.Parameter(th.tensor(float(init)))

    def coefficient(self, g: th.Tensor, score: th.Tensor, h: th.Tensor, **_: Any) -> th.Tensor:
        return self.value.detach()

    def objective(self, g: th.Tensor, h: th.Tensor, kappa: th.Tensor) -> th.Tensor:
        return (g + self.value * h).pow(2).sum(-1).mean()

    def observe(self, g: th.Tensor, h: th.Tensor, kappa: th.Tensor) -> None:
        """Nothing to keep: phi's optimizer moves ``kappa``."""


class OptimalKappa(nn.Module):
    """``kappa = -E[g . h] / E[h . h]``, the coefficient that minimises the variance of
    ``g + kappa h`` (``h`` has mean 0, so the uncentred moments are the covariance and the
    variance), cross-fitted on the current batch one env left out at a time
    (:func:`cross_fitted_kappa`: each env's samples get the other envs', independent of them,
    so the estimator stays unbiased while kappa follows the current policy). Below
    :attr:`MIN_CROSS_FIT_ENVS` envs the other envs' ratio is too noisy (``bench/kappa_fold.py``,
    RELAX's docstring) and kappa comes from running moments of earlier batches. phi (the
    MLP, tau) maximises the squared correlation of ``h`` with ``g`` (the variance left at the
    best kappa is ``gg - gh^2 / hh``)."""

    #: the fewest envs in a batch whose kappa is cross-fitted
    MIN_CROSS_FIT_ENVS = 8
    #: per-batch decay of the running moments (below MIN_CROSS_FIT_ENVS envs)
    DECAY = 0.95

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("value", th.zeros(()))  # the last update's mean kappa (logged)
        self.register_buffer("mean_gh", th.zeros(()))
        self.register_buffer("mean_hh", th.zeros(()))

    def coefficient(
        self,
        g: th.Tensor,
        score: th.Tensor,
        h: th.Tensor,
        env_index: th.Tensor,
        advantages: th.Tensor | None = None,
    ) -> th.Tensor:
        """Per-sample kappa ``(N,)``, constant in theta and phi. With ``advantages`` (the
        raw ones, ``normalize_advantage``) the moments take them standardised by the fold
        that supplies them."""
        groups = env_index.cpu().numpy()
        if np.unique(groups).size < self.MIN_CROSS_FIT_ENVS:
            hh = self.mean_hh.clamp_min(np.finfo(np.float32).tiny)
            kappa = th.where(self.mean_hh > 0, -self.mean_gh / hh, 0.0)
            return kappa.to(g.device).expand(g.shape[0])
        h64 = h.cpu().numpy().astype(np.float64)
        if advantages is not None:  # g.h per unit advantage, standardised fold by fold
            gh = -(score.cpu().numpy().astype(np.float64) * h64).sum(1)
            a = advantages.cpu().numpy()
        else:
            gh, a = (g.cpu().numpy().astype(np.float64) * h64).sum(1), None
        kappa = cross_fitted_kappa(gh, np.square(h64).sum(1), groups, groups, a)
        return th.from_numpy(kappa.astype(np.float32)).to(g.device)

    def objective(self, g: th.Tensor, h: th.Tensor, kappa: th.Tensor) -> th.Tensor:
        g_flat, h_flat = g.reshape(-1), h.reshape(-1)
        gh, hh = th.dot(g_flat, h_flat), th.dot(h_flat, h_flat)
        gg = th.dot(g_flat, g_flat).detach()  # g is constant in phi
        return -gh * gh / (hh * gg).clamp_min(1e-12)

    @th.no_grad()
    def observe(self, g: th.Tensor, h: th.Tensor, kappa: th.Tensor) -> None:
        """After an update: fold its moments into the running ones (for LATER batches of few
        envs, such as the variance decomposition builds) and keep its mean kappa."""
        d, n = self.DECAY, g.shape[0]
        self.mean_gh.mul_(d).add_((1 - d) * (g * h).sum() / n)
        self.mean_hh.mul_(d).add_((1 - d) * h.pow(2).sum() / n)
        self.value.copy_(kappa.mean())


def cross_fitted_kappa(
    gh: np.ndarray,
    hh: np.ndarray,
    groups: np.ndarray,
    clusters: np.ndarray | None = None,
    advantages: np.ndarray | None = None,
) -> np.ndarray:
    """Each sample's ``kappa``: ``-sum gh / sum hh`` over the samples of all OTHER groups
    (leave one group out; groups must be independent, as envs are), shrunk towards 0 by its
    own noise, ``kappa * max(0, 1 - se^2 / kappa^2)`` (positive-part James-Stein), ``se`` the
    jackknife's over the ``clusters`` of those samples (by default each sample its own; the
    agent's are its envs, whose steps are correlated). The jackknife sees what a delta-method
    error misses: a ratio carried by one rare sample. Where ``h`` does not help, shrinking
    cuts the ``(kappa - kappa*)^2 E[h.h]`` an estimated kappa adds, so RELAX falls back to
    its baseline. Samples supplied by fewer than 2 clusters or without ``h`` give 0.

    With ``advantages`` (``normalize_advantage``), ``gh`` is each sample's ``g.h`` per unit
    of its advantage, and the moments standardise the advantages by the mean and std of the
    samples that supply them (the batch's would carry each sample's own advantage into its
    kappa). float64 numpy, closed form from per-cluster sums: a statistic of a few hundred
    numbers, where torch's per-call overhead would cost more than the arithmetic."""
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
    fold = sums.sum(0) - in_group.astype(np.float64) @ sums  # the other groups' sums, (G, 6)
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


# ---------------------------------------------------------------------------- c_hat
class ControlVariate(nn.Module):
    """RELAX's discrete control variate (Sec. 6.3, App. E), ``c_hat(z, s) = kappa * c`` with

    ``c = scale * (MLP([s, r]) + (W s' + w0) . r' + sum_k u(p_k) r'_k)``

    ``r = relax(z / tau)`` the relaxed action (each categorical's softmax, each bit's
    sigmoid), ``tau`` learned from 1, the linear and preference terms optional, ``r' = r -
    E_pi[H]`` and ``s' = s -`` the running mean state of earlier batches with ``centred``,
    ``scale`` a running RMS of earlier advantages with ``scale_decay``. For a Box action
    (LAX) ``r = z`` and only the MLP term applies.

    ``per_dimension``: dimension ``d``'s score term gets ``c_d``, ``c`` at the *sampled* action
    with only dimension ``d``'s columns relaxed, so the other dimensions' noise does not
    reach it (Wu et al. 2018's factorised baseline with RELAX's reparameterised term; the
    other dimensions are independent of ``d``'s noise: unbiased). All ``D`` are evaluated in
    one batched pass (:class:`Points`).
    """

    def __init__(self, obs_dim: int, spec: ActionSpec, config: ControlVariateConfig) -> None:
        super().__init__()
        config.check_actions(spec)
        self.spec, self.config = spec, config
        width = spec.relaxed_dim
        self.mlp = MLPTerm(obs_dim, width, config.net_arch, config.activation, config.zero_init)
        linear = LinearTerm(obs_dim, width, config.linear_fit == "regression")
        self.linear = linear if config.linear_term else None
        self.preference = PreferenceTerm() if config.logit_term else None
        self.centred = config.centred and (config.linear_term or config.logit_term)
        self.per_dimension = config.per_dimension and not spec.continuous and spec.n_dims > 1
        self.kappa_rule: LearnedKappa | OptimalKappa = (
            OptimalKappa() if config.kappa == "optimal" else LearnedKappa(config.kappa_init)
        )
        self.log_tau = nn.Parameter(th.zeros(()))
        # c's running scale (scale_decay; 1: the paper's form)
        self.register_buffer("scale", th.ones(()))
        # the linear term's state input is centred by the states of earlier batches
        self.register_buffer("obs_mean", th.zeros(obs_dim))
        self.register_buffer("obs_batches", th.zeros((), dtype=th.long))
        # each relaxed column's action dimension (a buffer: it follows the module's device)
        self.register_buffer("columns", spec.column_dims.clone(), persistent=False)

    @property
    def kappa(self) -> th.Tensor:
        return self.kappa_rule.value

    @property
    def linear_regression(self) -> bool:
        """Whether the linear term is fit by regression (not by phi's optimizer)."""
        return self.linear is not None and self.linear.regression

    @property
    def needs_preferences(self) -> bool:
        return self.preference is not None or self.centred

    def _linear_coefficients(
        self, obs: th.Tensor, preferences: th.Tensor | None
    ) -> tuple[th.Tensor, th.Tensor] | None:
        """The terms linear in ``r``: each column's coefficient ``(N, K)`` and the offset
        ``coef . E_pi[H]`` subtracted with them when centred (else 0)."""
        coef = None
        if self.linear is not None:
            coef = self.linear(obs - self.obs_mean if self.centred else obs, preferences)
        if self.preference is not None:
            own = self.preference(obs, preferences)
            coef = own if coef is None else coef + own
        if coef is None:
            return None
        if not self.centred:
            return coef, coef.new_zeros(())
        assert preferences is not None
        return coef, (coef * self.spec.mean_hard(preferences)).sum(-1)

    def evaluate(
        self, points: Points, obs: th.Tensor, preferences: th.Tensor | None = None
    ) -> th.Tensor:
        """``c`` at ``points``, ``(S, N, V)``, with its graph to phi and the points."""
        return self.evaluate_parts(points, obs, preferences)[0]

    def evaluate_parts(
        self, points: Points, obs: th.Tensor, preferences: th.Tensor | None = None
    ) -> tuple[th.Tensor, th.Tensor | None]:
        """:meth:`evaluate`, and the part every variant shares, ``(S, N)``: the MLP term at
        the whole relaxed action where it is not per dimension (``mlp_per_dimension=False``),
        else ``None``."""
        shared = None
        if points.columns is not None and not self.config.mlp_per_dimension:
            shared = self.mlp(Points(points.relaxed, None, None, 1), obs)  # (S, N, 1)
            value = shared.expand(-1, -1, points.n_variants)
        else:
            value = self.mlp(points, obs)
        linear = self._linear_coefficients(obs, preferences)  # (per state: once)
        if linear is not None:
            coef, offset = linear
            if points.columns is None:
                value = value + ((coef * points.relaxed).sum(-1) - offset).unsqueeze(-1)
            else:
                assert points.anchor is not None
                at_sample = ((coef * points.anchor).sum(-1) - offset).unsqueeze(-1)  # (N, 1)
                delta = coef * (points.relaxed - points.anchor)  # (S, N, K)
                value = (value + at_sample).index_add(2, points.columns, delta)
        if self.config.scale_decay is not None:
            value = self.scale * value
            shared = None if shared is None else self.scale * shared
        return value, None if shared is None else shared.squeeze(-1)

    def points(self, relaxed: th.Tensor, actions: th.Tensor | None = None) -> Points:
        """``relaxed`` ``(S, N, K)`` jointly, or per dimension around the taken ``actions``."""
        if not self.per_dimension:
            return Points(relaxed, None, None, 1)
        assert actions is not None
        return Points(relaxed, self.spec.hard(actions), self.columns, self.spec.n_dims)

    def shape(
        self, z: th.Tensor, obs: th.Tensor, preferences: th.Tensor | None = None
    ) -> th.Tensor:
        """``c`` (``c_hat / kappa``) at the whole relaxed action, per sample ``(N,)``."""
        relaxed = self.spec.relax(z, self.log_tau.exp()).unsqueeze(0)
        return self.evaluate(Points(relaxed, None, None, 1), obs, preferences).reshape(-1)

    def at_actions(
        self, actions: th.Tensor, obs: th.Tensor, preferences: th.Tensor | None
    ) -> th.Tensor:
        """``c`` at the hard taken actions ``(N,)`` (discrete)."""
        hard = self.spec.hard(actions).unsqueeze(0)
        return self.evaluate(Points(hard, None, None, 1), obs, preferences).reshape(-1)

    forward = shape

    @th.no_grad()
    def fit_linear(
        self,
        obs: th.Tensor,
        actions: th.Tensor,
        preferences: th.Tensor,
        residual: th.Tensor,
        step: float,
        decay: float,
    ) -> None:
        """``linear_fit='regression'``: after an update, one fitting step of the linear term
        towards the return at the taken actions, for LATER batches (:meth:`LinearTerm.fit`),
        on the centred state and action. ``residual``: ``A - c(H(z))`` per unit of kappa."""
        assert self.linear is not None and self.linear.regression
        centred_action = self.spec.hard(actions) - self.spec.mean_hard(preferences)
        scale = self.scale if self.config.scale_decay is not None else 1.0
        x = obs.reshape(-1, self.obs_mean.shape[0]) - self.obs_mean
        self.linear.fit(x, centred_action, residual / scale, step, decay)

    @th.no_grad()
    def observe(self, obs: th.Tensor, decay: float = 0.99) -> None:
        """After an update, fold its states into the running mean that centres the linear
        term's input for LATER batches (the current batch's would make ``c`` depend on the
        samples it corrects). A no-op unless centred."""
        if not self.centred:
            return
        batch_mean = obs.reshape(-1, self.obs_mean.shape[0]).mean(0)
        if int(self.obs_batches) == 0:
            self.obs_mean.copy_(batch_mean)
        else:
            self.obs_mean.lerp_(batch_mean, 1 - decay)
        self.obs_batches += 1


class RelaxGradient(NamedTuple):
    """:func:`relax_logit_gradient`'s pieces, per unit of ``kappa``."""

    #: ``(N, K)``: the correction's logit gradient
    h: th.Tensor
    #: ``(N, K)``: ``dlog pi(a)/d logits`` (constant)
    score: th.Tensor
    #: ``(N,)``: ``c(z)`` and ``c(z~)`` (``(N, D)``: each dimension's, per dimension)
    c_z: th.Tensor
    c_tilde: th.Tensor


def _weigh(c: th.Tensor, weight: th.Tensor | None) -> th.Tensor:
    """``weight * c`` with a weight per sample ``(N,)`` or per dimension ``(N, D)``."""
    if weight is None:
        return c
    return (weight.unsqueeze(-1) if weight.dim() < c.dim() else weight) * c


def relax_logit_gradient(
    cv: ControlVariate,
    logits: th.Tensor,
    actions: th.Tensor,
    noise_g: th.Tensor,
    noise_v: th.Tensor,
    obs: th.Tensor,
    tilde_weight: th.Tensor | None = None,
    z_weight: th.Tensor | None = None,
    value: th.Tensor | None = None,
    create_graph: bool = True,
) -> RelaxGradient:
    """RELAX's per-sample correction in logit space, per unit of ``kappa`` (Grathwohl et al.
    2018, Eq. 10 with ``f = -A``; ``c = c_hat / kappa``, ``w`` = ``tilde_weight``, ``w'`` =
    ``z_weight``, both 1 by default):

    ``h_i = w_i c(z~_i) dlog pi(a_i)/dl_i + d[w_i c(z~_i) - w'_i c(z_i)]/dl_i``

    so that ``-A_i dlog pi/dl_i + kappa h_i`` is the logit gradient of RELAX's surrogate to
    minimise. ``z = log pi + G(u)`` is rebuilt from the stored noise at the current logits,
    ``z~ ~ p(z | a)`` from the stored ``v`` (both exact at any logits, so the estimate is
    unbiased at any parameters); the score term is in closed form; ``dc/dl`` by one autograd
    pass (its graph to phi kept for the variance objective). ``w`` weighs the terms that depend on
    the taken action (PPO's ratio), ``w'`` the ``c(z)`` term where it depends on the taken
    action through the other dimensions (per dimension under a joint ratio: ``r / r_d``).
    Per dimension, ``c`` is each logit's own dimension's ``c_d``, ``w`` may be ``(N, D)``.

    :param logits: the current logits ``(N, K)`` (detached inside: ``h`` is a constant in
        theta, to be sent back through the network by the caller).
    :param obs: the actor's features, constant in theta.
    :param value: ``(N,)``, a state term subtracted from ``c`` (``cv_target='return'``: the
        critic's value fixed before the batch, so ``c`` models the return; unbiased).
    :param create_graph: keep ``h``'s graph to phi (for phi's variance objective).
    """
    spec = cv.spec
    n = len(logits)
    logits = logits.detach().requires_grad_()
    with th.enable_grad():
        z, z_tilde = spec.rebuild(logits, actions, noise_g, noise_v)
        flat = spec.relax(th.cat([z, z_tilde]), cv.log_tau.exp())  # (2N, K)
        relaxed = flat.unflatten(0, (2, n))  # z's and z~'s, sharing each row's state
        prefs = None
        if cv.needs_preferences:  # a function of the state (detached from theta)
            prefs = spec.preferences(logits.detach())
        values, shared = cv.evaluate_parts(cv.points(relaxed, actions), obs, prefs)
        if not cv.per_dimension:
            values = values.squeeze(-1)
        if value is not None:  # constant in the logits: it moves the score term only
            state = value.detach()
            values = values - (state.unsqueeze(-1) if values.dim() == 3 else state)
        c_z, c_tilde = values.unbind(0)
        # per dimension, c_d depends on its own dimension's logits only: one gradient of the
        # sum gives each dimension its own reparameterised terms
        difference = (_weigh(c_tilde, tilde_weight) - _weigh(c_z, z_weight)).sum()
        if shared is not None:  # a part of every c_d at the whole action: its terms once
            if tilde_weight is not None or z_weight is not None:
                raise ValueError("mlp_per_dimension=False takes no importance weights")
            difference = difference - (spec.n_dims - 1) * (shared[1] - shared[0]).sum()
        (dc,) = th.autograd.grad(difference, logits, create_graph=create_graph)
    weighted = _weigh(c_tilde, tilde_weight)
    score = spec.score(logits.detach(), actions)
    # each logit's score term is scaled by its own dimension's c(z~)
    per_logit = weighted[:, cv.columns] if cv.per_dimension else weighted.unsqueeze(-1)
    h = th.addcmul(dc, per_logit, score)
    if not create_graph:
        h, c_z, c_tilde = h.detach(), c_z.detach(), c_tilde.detach()
    return RelaxGradient(h, score, c_z, c_tilde)


# ---------------------------------------------------------------------------- the agents' part
class ControlVariateMixin:
    """What RELAX and RELAX-PPO share: the config from the ``cv_*`` arguments, the control
    variate and phi's optimizer, saving them, and phi's replay steps on kept batches. An agent
    lists it before its base algorithm and calls :meth:`_init_control_variate` in ``__init__``
    and :meth:`_setup_control_variate` in ``_setup_model``."""

    #: ``relax-rl tune``: phi's learning rate and the linear term, for RELAX and RELAX-PPO
    search_space: ClassVar[dict[str, Any]] = {
        "cv_learning_rate": LogUniform(1e-4, 3e-2),
        "cv_linear_term": Choice((False, True)),
    }

    control_variate: ControlVariate
    cv_optimizer: th.optim.Optimizer
    cv_config: ControlVariateConfig
    #: the agent's own defaults, under any preset (RELAX-PPO: phi starts at 0, learned kappa)
    CV_DEFAULTS: ClassVar[dict[str, Any]] = {}
    #: the config fields the agent uses (None: all); the others stay at the class defaults
    CV_FIELDS: ClassVar[tuple[str, ...] | None] = None

    def _init_control_variate(
        self, preset: str, options: dict[str, Any] | None, **fields: Any
    ) -> None:
        """Resolve and check the config before any work (bad input: one line)."""
        self.cv_config = ControlVariateConfig.resolve(
            preset, options, base=self.CV_DEFAULTS, only=self.CV_FIELDS, **fields
        )
        self.cv_preset, self.cv_options = preset, dict(options or {})

    def _setup_control_variate(self) -> None:
        # (here, not in __init__: SB3's load sets the attributes after __init__, then calls
        # _setup_model)
        self._replay: deque[GumbelRolloutSamples] = deque(maxlen=max(self.cv_config.replay, 1))
        self.replay_state = th.zeros(0, dtype=th.uint8)  # the kept batches, only while saved
        policy = self.policy  # type: ignore[attr-defined]
        cv = ControlVariate(int(policy.features_dim), policy.action_spec, self.cv_config)
        self.control_variate = cv.to(self.device)  # type: ignore[attr-defined]
        lr = self.cv_config.learning_rate
        if lr is None:
            lr = self.lr_schedule(1)  # type: ignore[attr-defined]
        params = [p for p in cv.parameters() if p.requires_grad]
        self.cv_optimizer = th.optim.Adam(params, lr=lr, eps=1e-5, fused=True)

    def _cv_parameters(self) -> list[th.Tensor]:
        return [p for group in self.cv_optimizer.param_groups for p in group["params"]]

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        state_dicts, tensors = super()._get_torch_save_params()  # type: ignore[misc]
        return [*state_dicts, "control_variate", "cv_optimizer"], [*tensors, "replay_state"]

    def _excluded_save_params(self) -> list[str]:
        # (the kept batches travel as replay_state, a tensor: see save)
        return [*super()._excluded_save_params(), "_replay"]  # type: ignore[misc]

    def save(self, *args: Any, **kwargs: Any) -> None:
        """SB3's, with ``cv_replay``'s kept batches (phi's next steps use them, so that a
        loaded model goes on as the run would have): one ``uint8`` tensor, ``torch.save``'s
        bytes of the batches by field name, among the model's torch variables."""
        if self._replay:
            buffer = io.BytesIO()
            batches = [[x.detach().cpu().clone() for x in batch] for batch in self._replay]
            th.save({"fields": list(GumbelRolloutSamples._fields), "batches": batches}, buffer)
            self.replay_state = th.frombuffer(bytearray(buffer.getvalue()), dtype=th.uint8)
        try:
            super().save(*args, **kwargs)  # type: ignore[misc]
        finally:
            self.replay_state = th.zeros(0, dtype=th.uint8)

    @classmethod
    def load(cls, *args: Any, **kwargs: Any) -> Any:
        model = super().load(*args, **kwargs)  # type: ignore[misc]
        if model.replay_state.numel():  # (a model saved without kept batches has none)
            raw = io.BytesIO(model.replay_state.cpu().numpy().tobytes())
            saved = th.load(raw, map_location=model.device, weights_only=True)
            for batch in saved["batches"]:
                fields = dict(zip(saved["fields"], batch, strict=True))
                model._replay.append(GumbelRolloutSamples(**fields))
            model.replay_state = th.zeros(0, dtype=th.uint8)
        return model

    def _phi_terms(
        self, data: GumbelRolloutSamples, advantages: th.Tensor
    ) -> tuple[th.Tensor, th.Tensor]:
        """``g`` (the score term, ``f = -A``) and ``h`` with its graph to phi, at the current
        policy, for a batch phi did not correct (a kept one)."""
        policy = self.policy  # type: ignore[attr-defined]
        with th.no_grad():
            logits = policy.logits_and_values(data.observations)[0]
            obs = policy.actor_features(data.observations)
        pieces = (logits, data.actions, data.noise_g, data.noise_v, obs)
        state = data.values if self.cv_config.target == "return" else None
        h, score, _, _ = relax_logit_gradient(self.control_variate, *pieces, value=state)
        return -advantages.unsqueeze(-1) * score, h

    def _replay_phi(self) -> None:
        """``cv_replay``'s extra steps of phi on the kept batches (the current one included,
        once used), at the current policy with their stored advantages: phi learns from more
        samples per update and is still never fit on the batch it corrects (unbiased).
        ``each``: one step per batch; ``joint``: one step on all of them at once."""
        cv, params = self.control_variate, self._cv_parameters()
        batches = list(self._replay)
        advantages = [self.batch_advantages(b) for b in batches]  # type: ignore[attr-defined]
        if self.cv_config.replay_pass == "joint" and len(batches) > 1:
            batches = [GumbelRolloutSamples(*map(th.cat, zip(*batches, strict=True)))]
            advantages = [th.cat(advantages)]
        for data, adv in zip(batches, advantages, strict=True):
            g, h = self._phi_terms(data, adv)
            loss = cv.kappa_rule.objective(g, h, cv.kappa)
            for p in params:
                p.grad = None
            loss.backward(inputs=params)
            self._check_finite(cv_replay_loss=loss)  # type: ignore[attr-defined]
            self.cv_optimizer.step()
