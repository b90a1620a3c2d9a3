"""Control variates ``c_phi`` for the Bernoulli/categorical estimators.

Both modules here carry a leading *replica* dimension ``R`` in every parameter, so that ``R``
independent problems (the toy's seeds) train in one tensor: replica ``r`` only ever sees inputs
``z[..., r]``, and elementwise optimizers such as Adam then behave exactly as ``R`` separate runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from relax_rl.estimators.distributions import DiscreteFamily


def _generators(seeds: list[int] | None, n: int) -> list[torch.Generator | None]:
    if seeds is None:
        return [None] * n
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


class RebarControlVariate(nn.Module):
    """REBAR's control variate ``c(z) = eta * f(sigma_lambda(z))`` (Tucker et al. 2017).

    :param f: the loss, evaluated on relaxed inputs.
    :param family: the distribution family whose relaxation ``sigma_lambda`` to use.
    :param replicas: number of independent problems (one ``eta`` and ``lambda`` each).
    :param eta: initial scale; :param temperature: initial ``lambda`` (both learned).
    """

    def __init__(
        self,
        f: Callable[[Tensor], Tensor],
        family: DiscreteFamily,
        replicas: int = 1,
        eta: float = 1.0,
        temperature: float = 0.5,
    ) -> None:
        super().__init__()
        self.f = f
        self.family = family
        self.eta = nn.Parameter(torch.full((replicas,), float(eta)))
        self.log_temperature = nn.Parameter(torch.full((replicas,), math.log(temperature)))

    def forward(self, z: Tensor) -> Tensor:
        return self.eta * self.f(self.family.relax(z, self.log_temperature.exp()))


class RelaxToyControlVariate(nn.Module):
    """RELAX's learned relaxation for one Bernoulli latent per replica (Grathwohl et al. 2018,
    Sec. 6.1): ``c(z) = baseline + scale * MLP(2 sigma(z / lambda) - 1)``.

    One hidden layer of ``hidden`` tanh units, as in the paper; ``scale`` starts at 0, so the
    estimator starts as REINFORCE. Why a separate ``baseline``: for one Bernoulli the constant
    ``c* = (1 - theta) f(1) + theta f(0)`` already gives a zero-variance estimator, so the
    constant part of ``c`` is what matters most. In the paper's form (``paper=True``:
    ``c = scale * (w . h + bias)``) that constant is a product of two parameters, which Adam
    moves slowly from ``scale = 0`` and jitters afterwards; as a parameter of its own, Adam
    sets it within a few hundred steps and holds it steady.

    :param replicas: independent problems, each with its own weights; input ``z`` has shape
        ``(..., replicas)``.
    :param seeds: optional per-replica seeds for the initial weights (replica ``r`` then does not
        depend on how many replicas run beside it).
    """

    def __init__(
        self,
        replicas: int = 1,
        hidden: int = 10,
        temperature: float = 0.5,
        seeds: list[int] | None = None,
        paper: bool = False,
    ) -> None:
        super().__init__()
        self.paper = paper
        w1, b1, w2 = [], [], []
        bound2 = 1.0 / math.sqrt(hidden)
        for gen in _generators(seeds, replicas):
            # PyTorch's default Linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)); fan_in = 1 here.
            w1.append(torch.rand(hidden, generator=gen) * 2 - 1)
            b1.append(torch.rand(hidden, generator=gen) * 2 - 1)
            w2.append((torch.rand(hidden, generator=gen) * 2 - 1) * bound2)
        self.w1 = nn.Parameter(torch.stack(w1))
        self.b1 = nn.Parameter(torch.stack(b1))
        self.w2 = nn.Parameter(torch.stack(w2))
        self.baseline = nn.Parameter(torch.zeros(replicas))
        self.scale = nn.Parameter(torch.zeros(replicas))
        self.log_temperature = nn.Parameter(torch.full((replicas,), math.log(temperature)))

    def forward(self, z: Tensor) -> Tensor:
        x = 2.0 * torch.sigmoid(z / self.log_temperature.exp()) - 1.0
        h = torch.tanh(x.unsqueeze(-1) * self.w1 + self.b1)
        out = (h * self.w2).sum(-1)
        if self.paper:
            return self.scale * (out + self.baseline)
        return self.baseline + self.scale * out
