"""Benchmark of the gradient estimators: cost per estimate and variance, side by side.

For each estimator, on a batch of B independent Bernoulli variables (theta = 0.5, toy loss
f(b) = (b - 0.499)^2) and of B Categorical(K = 10) variables (uniform, f(x) = (a.x - 0.499)^2,
a = linspace(0, 1, K)), it prints:
- microseconds per gradient estimate of the whole batch (forward + backward to the logits);
- for estimators with parameters phi, microseconds per estimate *with* the variance objective
  (create_graph, sum g^2, backward into phi): what a training step costs;
- log10 of the per-variable variance of the single-sample estimate after training phi for
  ``--train-steps`` steps at the same theta (REBAR, RELAX; others have nothing to train).
Each figure is the median (min-max) of ``--repeats`` repeats, all measured in one run.

    python bench/estimators.py [--repeats 5] [--train-steps 300]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from relax_rl.estimators import (
    BERNOULLI,
    CATEGORICAL,
    RebarControlVariate,
    RelaxToyControlVariate,
    concrete,
    estimate_with_variance_loss,
    rebar,
    reinforce,
    relax,
    straight_through,
    uniform_noise,
)

ESTIMATORS = ("reinforce", "concrete", "straight_through", "rebar", "relax")
K = 10
TARGET = 0.499


class _CategoricalRelaxCV(nn.Module):
    """c(z) = MLP(softmax(z / tau)), one hidden layer of 10 tanh units."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.log_temperature = nn.Parameter(torch.zeros(()))
        self.net = nn.Sequential(nn.Linear(k, 10), nn.Tanh(), nn.Linear(10, 1))

    def forward(self, z: Tensor) -> Tensor:
        return self.net(torch.softmax(z / self.log_temperature.exp(), -1)).squeeze(-1)


class Setup:
    """One (estimator, family, batch) configuration: logits, loss and control variate."""

    def __init__(self, name: str, family: str, batch: int) -> None:
        self.name, self.batch = name, batch
        if family == "bernoulli":
            self.fam = BERNOULLI
            self.shape: tuple[int, ...] = (batch,)
            self.f: Callable[[Tensor], Tensor] = lambda x: (x - TARGET) ** 2
        else:
            self.fam = CATEGORICAL
            self.shape = (batch, K)
            a = torch.linspace(0, 1, K)
            self.f = lambda x: ((x * a).sum(-1) - TARGET) ** 2
        self.cv: nn.Module | None = None
        if name == "rebar":
            self.cv = RebarControlVariate(self.f, self.fam)
        elif name == "relax":
            self.cv = RelaxToyControlVariate() if family == "bernoulli" else _CategoricalRelaxCV(K)

    def surrogate(self, logits: Tensor, u: Tensor, v: Tensor) -> Tensor:
        z, b = self.fam.sample(logits, u)
        if self.name == "concrete":
            return concrete(self.f, z, 0.5, self.fam)
        if self.name == "straight_through":
            return straight_through(self.f, z, b, 0.5, self.fam)
        f_b = self.f(self.fam.hard(b, z))
        log_prob = self.fam.log_prob(logits, b)
        if self.name == "reinforce":
            return reinforce(f_b, log_prob)
        z_tilde = self.fam.conditional(logits, b, v)
        if self.name == "rebar":
            cv = self.cv
            return rebar(f_b, log_prob, z, z_tilde, self.f, cv.eta, cv.log_temperature, self.fam)
        if self.fam is BERNOULLI:  # one shared MLP applied to every variable
            return relax(f_b, log_prob, z, z_tilde, lambda x: self.cv(x.unsqueeze(-1)).squeeze(-1))
        return relax(f_b, log_prob, z, z_tilde, self.cv)

    def noise(self, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        return uniform_noise(self.shape, gen), uniform_noise(self.shape, gen)

    def estimate(self, gen: torch.Generator) -> Tensor:
        logits = torch.zeros(self.shape, requires_grad=True)
        (g,) = torch.autograd.grad(self.surrogate(logits, *self.noise(gen)).sum(), [logits])
        return g

    def train_step(self, gen: torch.Generator, opt: torch.optim.Optimizer) -> None:
        logits = torch.zeros(self.shape, requires_grad=True)
        surrogate = self.surrogate(logits, *self.noise(gen)).mean()
        _, loss = estimate_with_variance_loss(surrogate, [logits])
        opt.zero_grad(set_to_none=True)
        loss.backward(inputs=list(self.cv.parameters()))
        opt.step()


def _time_us(fn: Callable[[], object], min_seconds: float = 0.2) -> float:
    fn()  # warm-up
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < min_seconds or n < 5:
        fn()
        n += 1
    return 1e6 * elapsed / n


def measure(name: str, family: str, batch: int, repeat: int, train_steps: int) -> dict:
    torch.manual_seed(repeat)
    gen = torch.Generator().manual_seed(1000 + repeat)
    s = Setup(name, family, batch)
    out = {"est_us": _time_us(lambda: s.estimate(gen))}
    if s.cv is not None:
        opt = torch.optim.Adam(s.cv.parameters(), lr=0.01)
        out["train_us"] = _time_us(lambda: s.train_step(gen, opt))
        if batch > 1:
            for _ in range(train_steps):
                s.train_step(gen, opt)
    if batch > 1:
        g = torch.cat([s.estimate(gen) for _ in range(8)])  # 8 x batch single-sample estimates
        var = g.double().var(dim=0).mean().item()
        out["log10_var"] = math.log10(var) if var > 0 else float("-inf")
    return out


def _fmt(xs: list[float], digits: int = 0) -> str:
    if not xs:
        return "-"
    return f"{statistics.median(xs):.{digits}f} ({min(xs):.{digits}f} to {max(xs):.{digits}f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.threads} thread(s); median (min-max) of "
        f"{args.repeats} repeats; variance after {args.train_steps} phi steps at theta = 0.5"
    )
    head = (
        f"{'family':<12}{'estimator':<17}{'us/est B=1':>24}{'us/est B=1024':>26}"
        f"{'us/train step B=1024':>28}{'log10 var B=1024':>28}"
    )
    print(head)
    print("-" * len(head))
    for family in ("bernoulli", "categorical"):
        for name in ESTIMATORS:
            rows = {1: [], 1024: []}
            for batch in rows:
                for r in range(args.repeats):
                    rows[batch].append(measure(name, family, batch, r, args.train_steps))
            big = rows[1024]
            print(
                f"{family:<12}{name:<17}"
                f"{_fmt([m['est_us'] for m in rows[1]]):>24}"
                f"{_fmt([m['est_us'] for m in big]):>26}"
                f"{_fmt([m['train_us'] for m in big if 'train_us' in m]):>28}"
                f"{_fmt([m['log10_var'] for m in big], 2):>28}",
                flush=True,
            )


if __name__ == "__main__":
    main()
