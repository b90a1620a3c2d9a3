"""Discrete distributions sampled from stored noise, in the form RELAX needs.

Every sampler is a pure, differentiable function of the logits and of noise drawn beforehand
(``u`` for the sample, ``v`` for the conditional sample), so that an agent can store the noise
when it acts and rebuild ``z`` and ``z~`` from the *current* logits at training time
(Grathwohl et al. 2018, Sec. 3; Tucker et al. 2017, "REBAR", Appendix).

Conventions:
- ``z`` is the reparameterised continuous variable, ``b = H(z)`` the discrete sample.
- ``z~`` ("z_tilde") is a sample of ``p(z | b, theta)``, differentiable in the logits.
- Noise is uniform on the open interval (0, 1); :func:`uniform_noise` draws it away from 0 and 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor


def uniform_noise(
    shape: tuple[int, ...] | torch.Size,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Uniform noise on the open interval (0, 1), safe for ``log`` and ``logit``."""
    eps = torch.finfo(dtype).eps
    u = torch.rand(shape, generator=generator, device=device, dtype=dtype)
    return u.clamp(eps, 1.0 - eps)


# ------------------------------------------------------------------------------------------
# Bernoulli, theta = sigmoid(logits)
# ------------------------------------------------------------------------------------------
def bernoulli_sample(logits: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """``z = l + logit(u)`` and ``b = 1[z > 0]`` (so that ``P(b = 1) = sigmoid(l)``)."""
    z = logits + torch.logit(u)
    return z, (z > 0).to(logits.dtype)


def bernoulli_conditional(logits: Tensor, b: Tensor, v: Tensor) -> Tensor:
    """Exact sample of ``z ~ p(z | b, theta)`` from fresh uniform noise ``v``.

    With ``z = l + logit(u)`` and ``u`` restricted to the interval that produces ``b``:
    ``b = 1``: ``z~ = softplus(logit v + softplus(l))`` (always > 0);
    ``b = 0``: ``z~ = -softplus(-logit v + softplus(-l))`` (always < 0).
    Both branches are finite for any finite logits.
    """
    logit_v = torch.logit(v)
    pos = F.softplus(logit_v + F.softplus(logits))
    neg = -F.softplus(-logit_v + F.softplus(-logits))
    return torch.where(b > 0.5, pos, neg)


def bernoulli_log_prob(logits: Tensor, b: Tensor) -> Tensor:
    """Elementwise ``log Bern(b | sigmoid(l))`` (not summed over latent dimensions)."""
    return -F.binary_cross_entropy_with_logits(logits, b, reduction="none")


# ------------------------------------------------------------------------------------------
# Categorical over the last dimension, log p = log_softmax(logits)
# ------------------------------------------------------------------------------------------
def gumbel(u: Tensor) -> Tensor:
    """Standard Gumbel noise ``G = -log(-log u)`` from uniforms ``u``."""
    return -torch.log(-torch.log(u))


def gumbel_max(log_p: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
    """``z = log p + G`` and ``b = argmax z`` (an index): a sample of the categorical with
    normalised log-probabilities ``log_p``, from standard Gumbel noise ``g``."""
    z = log_p + g
    return z, z.argmax(dim=-1)


def categorical_sample(logits: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """Gumbel-max from uniforms: ``z = log p + G(u)``, ``b = argmax z`` (:func:`gumbel_max`)."""
    return gumbel_max(torch.log_softmax(logits, dim=-1), gumbel(u))


def categorical_conditional(logits: Tensor, b: Tensor, v: Tensor) -> Tensor:
    """Exact sample of ``z ~ p(z | argmax z = b, theta)`` from fresh uniform noise ``v``
    (:func:`conditional_gumbel_max` at ``log p = log_softmax(logits)``)."""
    return conditional_gumbel_max(torch.log_softmax(logits, dim=-1), b, v)


def conditional_gumbel_max(log_p: Tensor, b: Tensor, v: Tensor) -> Tensor:
    """``z~ ~ p(z | argmax z = b)`` for ``z = log p + G`` with normalised ``log_p``, from
    uniforms ``v``.

    With ``E = -log v`` (i.i.d. Exp(1)): ``z~_b = -log E_b`` (the max of Gumbels located at the
    normalised ``log p`` is a standard Gumbel) and, for ``i != b``,
    ``z~_i = -logaddexp(log E_i - log p_i, log E_b)`` (a Gumbel at ``log p_i`` truncated
    below ``z~_b``). ``argmax z~ = b`` by construction.
    """
    log_e = torch.log(-torch.log(v))
    index = b.long().unsqueeze(-1)
    log_e_b = log_e.gather(-1, index)
    others = -torch.logaddexp(log_e - log_p, log_e_b)
    return others.scatter(-1, index, -log_e_b)


def categorical_log_prob(logits: Tensor, b: Tensor) -> Tensor:
    """``log p(b)`` for integer actions ``b`` (shape of the logits without the last dim)."""
    return torch.log_softmax(logits, dim=-1).gather(-1, b.long().unsqueeze(-1)).squeeze(-1)


def categorical_score(logits: Tensor, b: Tensor) -> Tensor:
    """``d log p(b) / d logits = onehot(b) - softmax(logits)``, in closed form (no graph)."""
    return F.one_hot(b.long(), logits.shape[-1]).to(logits.dtype) - torch.softmax(logits, dim=-1)


# ------------------------------------------------------------------------------------------
# Gaussian (reparameterisable, for LAX)
# ------------------------------------------------------------------------------------------
def gaussian_sample(mean: Tensor, log_std: Tensor, eps: Tensor) -> Tensor:
    """``a = mu + sigma * eps`` with stored standard-normal ``eps``."""
    return mean + log_std.exp() * eps


def gaussian_log_prob(mean: Tensor, log_std: Tensor, a: Tensor) -> Tensor:
    """Elementwise Gaussian log density."""
    return (
        -0.5 * ((a - mean) / log_std.exp()) ** 2
        - log_std
        - 0.5 * torch.log(torch.tensor(2.0 * torch.pi, dtype=mean.dtype, device=mean.device))
    )


# ------------------------------------------------------------------------------------------
# Families: one object per distribution, so that estimators are written once
# ------------------------------------------------------------------------------------------
class DiscreteFamily(Protocol):
    """What an estimator needs of a discrete distribution with stored noise."""

    name: str

    def sample(self, logits: Tensor, u: Tensor) -> tuple[Tensor, Tensor]: ...

    def conditional(self, logits: Tensor, b: Tensor, v: Tensor) -> Tensor: ...

    def log_prob(self, logits: Tensor, b: Tensor) -> Tensor:
        """log p(b), one value per sample (summed over latent dimensions)."""
        ...

    def relax(self, z: Tensor, temperature: Tensor | float) -> Tensor:
        """The continuous relaxation of ``H`` at temperature ``lambda``."""
        ...

    def hard(self, b: Tensor, like: Tensor) -> Tensor:
        """``b`` in the same continuous representation as :meth:`relax` returns."""
        ...

    def perturb(self, u: Tensor) -> Tensor:
        """The noise ``G(u)`` that :meth:`sample_perturbed` adds (computed once when acting and
        kept: the acting step and RELAX's ``z`` both need it)."""
        ...

    def sample_perturbed(self, logits: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`sample` from the perturbation ``g = perturb(u)``."""
        ...

    def score(self, logits: Tensor, b: Tensor) -> Tensor:
        """``d log p(b) / d logits``, elementwise, in closed form (no graph)."""
        ...

    def entropy(self, logits: Tensor) -> Tensor:
        """The entropy of each variable (not summed over latent dimensions)."""
        ...

    def mode(self, logits: Tensor) -> Tensor:
        """The most likely ``b``."""
        ...


@dataclass(frozen=True)
class BernoulliFamily:
    """Independent Bernoulli latents; the latent dimensions are the trailing ``event_dims``."""

    event_dims: int = 0
    name: str = "bernoulli"

    def sample(self, logits: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        return bernoulli_sample(logits, u)

    def conditional(self, logits: Tensor, b: Tensor, v: Tensor) -> Tensor:
        return bernoulli_conditional(logits, b, v)

    def log_prob(self, logits: Tensor, b: Tensor) -> Tensor:
        lp = bernoulli_log_prob(logits, b)
        return lp.sum(dim=tuple(range(-self.event_dims, 0))) if self.event_dims else lp

    def relax(self, z: Tensor, temperature: Tensor | float) -> Tensor:
        return torch.sigmoid(z / temperature)

    def hard(self, b: Tensor, like: Tensor) -> Tensor:
        return b.to(like.dtype)

    def perturb(self, u: Tensor) -> Tensor:
        return torch.logit(u)  # standard logistic noise

    def sample_perturbed(self, logits: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
        z = logits + g
        return z, (z > 0).to(logits.dtype)

    def score(self, logits: Tensor, b: Tensor) -> Tensor:
        return b.to(logits.dtype) - torch.sigmoid(logits)

    def entropy(self, logits: Tensor) -> Tensor:
        # -p log p - (1 - p) log(1 - p), with log p = -softplus(-l), log(1 - p) = -softplus(l)
        p = torch.sigmoid(logits)
        return p * F.softplus(-logits) + (1 - p) * F.softplus(logits)

    def mode(self, logits: Tensor) -> Tensor:
        return (logits > 0).to(logits.dtype)


@dataclass(frozen=True)
class CategoricalFamily:
    """One categorical variable over the last dimension of the logits."""

    name: str = "categorical"

    def sample(self, logits: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        return categorical_sample(logits, u)

    def conditional(self, logits: Tensor, b: Tensor, v: Tensor) -> Tensor:
        return categorical_conditional(logits, b, v)

    def log_prob(self, logits: Tensor, b: Tensor) -> Tensor:
        return categorical_log_prob(logits, b)

    def relax(self, z: Tensor, temperature: Tensor | float) -> Tensor:
        return torch.softmax(z / temperature, dim=-1)

    def hard(self, b: Tensor, like: Tensor) -> Tensor:
        return F.one_hot(b.long(), like.shape[-1]).to(like.dtype)

    def perturb(self, u: Tensor) -> Tensor:
        return gumbel(u)

    def sample_perturbed(self, logits: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
        return gumbel_max(torch.log_softmax(logits, dim=-1), g)

    def score(self, logits: Tensor, b: Tensor) -> Tensor:
        return categorical_score(logits, b)

    def entropy(self, logits: Tensor) -> Tensor:
        log_p = torch.log_softmax(logits, dim=-1)
        return -(log_p.exp() * log_p).sum(-1)

    def mode(self, logits: Tensor) -> Tensor:
        return logits.argmax(dim=-1)


@dataclass(frozen=True)
class GaussianFamily:
    """A diagonal Gaussian whose "logits" are ``[mean, log_std]`` on the last dimension
    (``2 D`` columns for ``D`` action dimensions), acting ``a = mean + std * eps`` from stored
    standard-normal ``eps`` (LAX: the sample is its own reparameterisation, ``H`` is the
    identity, and ``z~ | a`` is ``a`` itself). Elementwise functions return ``D`` columns."""

    name: str = "gaussian"

    @staticmethod
    def split(logits: Tensor) -> tuple[Tensor, Tensor]:
        """``(mean, log_std)`` of the logits."""
        mean, log_std = logits.chunk(2, dim=-1)
        return mean, log_std

    def sample(self, logits: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        return self.sample_perturbed(logits, self.perturb(u))

    def conditional(self, logits: Tensor, b: Tensor, v: Tensor) -> Tensor:
        return b  # the sample determines z: no conditional noise

    def log_prob(self, logits: Tensor, b: Tensor) -> Tensor:
        return gaussian_log_prob(*self.split(logits), b)

    def relax(self, z: Tensor, temperature: Tensor | float) -> Tensor:
        return z  # a continuous action needs no relaxation

    def hard(self, b: Tensor, like: Tensor) -> Tensor:
        return b.to(like.dtype)

    def perturb(self, u: Tensor) -> Tensor:
        """Standard normal ``eps`` from uniforms (the inverse normal CDF)."""
        return math.sqrt(2.0) * torch.erfinv(2.0 * u - 1.0)

    def sample_perturbed(self, logits: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
        a = gaussian_sample(*self.split(logits), g)
        return a, a

    def score(self, logits: Tensor, b: Tensor) -> Tensor:
        """``d log N(b | mean, std) / d [mean, log_std]``:
        ``[(b - mean) / std^2, ((b - mean) / std)^2 - 1]``."""
        mean, log_std = self.split(logits)
        white = (b - mean) * torch.exp(-log_std)
        return torch.cat([white * torch.exp(-log_std), white.square() - 1.0], dim=-1)

    def entropy(self, logits: Tensor) -> Tensor:
        return self.split(logits)[1] + 0.5 * math.log(2.0 * math.pi * math.e)

    def mode(self, logits: Tensor) -> Tensor:
        return self.split(logits)[0]


BERNOULLI = BernoulliFamily()
CATEGORICAL = CategoricalFamily()
GAUSSIAN = GaussianFamily()
