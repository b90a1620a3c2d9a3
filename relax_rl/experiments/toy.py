"""The seed's toy problem (Grathwohl et al. 2018, Sec. 6.1; Tucker et al. 2017, Sec. 6.1).

Minimise ``E_{b ~ Bern(theta)}[(b - t)^2]`` over ``theta = sigmoid(l)``, ``l`` starting at 0,
one sample a step, Adam for ``l`` and for the estimator's own parameters ``phi``. The optimum
is ``theta = 0`` for ``t < 0.5``, but at ``t = 0.499`` the exact gradient
``dL/dl = theta (1 - theta) (1 - 2t)`` is tiny next to the estimators' noise.

All seeds run in one tensor (a leading replica dimension); each seed's noise and initial weights
come from its own generator, so seed ``s`` gives the same numbers whatever ``--seeds`` is, and
every estimator sees the same noise (common random numbers).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from relax_rl.estimators import (
    BERNOULLI,
    RebarControlVariate,
    RelaxToyControlVariate,
    bernoulli_conditional,
    bernoulli_log_prob,
    bernoulli_sample,
    concrete,
    estimate_with_variance_loss,
    log10_total_variance,
    rebar,
    reinforce,
    relax,
)

ESTIMATORS: tuple[str, ...] = ("exact", "reinforce", "concrete", "rebar", "relax")
RELAX_CV_FORMS: tuple[str, ...] = ("baseline", "paper")
THETA_SOLVED = 0.1
OUTPUT_FILES: tuple[str, ...] = ("results.json", "figure1.png", "figure2.png")


@dataclass
class ToyConfig:
    """Settings of one toy experiment (defaults: the paper's); ``relax-rl toy``'s flags are
    generated from these fields."""

    estimators: tuple[str, ...] = field(
        default=ESTIMATORS, metadata={"help": "estimators to run", "choices": ESTIMATORS}
    )
    target: float = field(default=0.499, metadata={"help": "t in [0, 1]"})
    steps: int = field(default=10_000, metadata={"help": "optimisation steps", "min": 1})
    seeds: int = field(
        default=5, metadata={"help": "seeds 0..N-1, run as one tensor", "min": 1, "metavar": "N"}
    )
    lr: float = field(default=0.01, metadata={"help": "Adam learning rate for l (and phi)"})
    phi_lr: float | None = field(
        default=None, metadata={"help": "Adam learning rate for phi (none: --lr, the paper's)"}
    )
    hidden: int = field(
        default=10, metadata={"help": "hidden units of the control variates' MLP", "min": 1}
    )
    concrete_temperature: float = field(
        default=0.5, metadata={"help": "temperature of the Concrete estimator's relaxation"}
    )
    var_samples: int = field(
        default=1000, metadata={"help": "samples per variance measurement", "min": 1}
    )
    record_points: int = field(
        default=200, metadata={"help": "points of each recorded curve", "min": 1}
    )
    relax_cv: str = field(
        default="baseline",
        metadata={
            "help": "RELAX's c_phi: baseline (c = b0 + s * MLP(z)) or paper (c = s * (MLP(z) + "
            "b0), the official code's form)",
            "choices": RELAX_CV_FORMS,
        },
    )

    def validate(self) -> None:
        """Raise ``ValueError`` with a one-line message on the first bad setting."""
        unknown = [e for e in self.estimators if e not in ESTIMATORS]
        if self.relax_cv not in RELAX_CV_FORMS:
            raise ValueError(
                f"unknown --relax-cv {self.relax_cv!r}; valid: {', '.join(RELAX_CV_FORMS)}"
            )
        if unknown:
            raise ValueError(f"unknown estimator {unknown[0]!r}; valid: {', '.join(ESTIMATORS)}")
        if not self.estimators:
            raise ValueError(f"no estimator given; valid: {', '.join(ESTIMATORS)}")
        if not (math.isfinite(self.target) and 0.0 <= self.target <= 1.0):
            raise ValueError(f"target t={self.target} is outside [0, 1]")
        checks = {
            "steps": self.steps,
            "seeds": self.seeds,
            "var-samples": self.var_samples,
            "record-points": self.record_points,
            "hidden": self.hidden,
        }
        for name, value in checks.items():
            if value <= 0:
                raise ValueError(f"--{name} must be a positive integer, got {value}")
        for name, value in {"lr": self.lr, "phi-lr": self.phi_lr}.items():
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"--{name} must be a positive number, got {value}")


def toy_loss(b: Tensor, target: float) -> Tensor:
    """``f(b) = (b - t)^2``; also evaluated on relaxed ``b`` in ``(0, 1)`` by REBAR/Concrete."""
    return (b - target) ** 2


def expected_loss(theta: Tensor, target: float) -> Tensor:
    """``E[f(b)] = theta (1 - t)^2 + (1 - theta) t^2``: the exact objective."""
    return theta * (1 - target) ** 2 + (1 - theta) * target**2


class ToyEstimator:
    """One estimator on ``R`` replicas: the logits, their optimizer, and ``phi`` if any."""

    def __init__(self, name: str, cfg: ToyConfig, seeds: list[int]) -> None:
        self.name = name
        self.cfg = cfg
        replicas = len(seeds)
        self.logits = nn.Parameter(torch.zeros(replicas))
        self.opt = torch.optim.Adam([self.logits], lr=cfg.lr)
        self.f: Callable[[Tensor], Tensor] = lambda b: toy_loss(b, cfg.target)
        self.control_variate: nn.Module | None = None
        if name == "rebar":
            self.control_variate = RebarControlVariate(self.f, BERNOULLI, replicas)
        elif name == "relax":
            self.control_variate = RelaxToyControlVariate(
                replicas, cfg.hidden, seeds=seeds, paper=cfg.relax_cv == "paper"
            )
        self.phi_opt = (
            torch.optim.Adam(self.control_variate.parameters(), lr=cfg.phi_lr or cfg.lr)
            if self.control_variate is not None
            else None
        )

    def surrogate(self, logits: Tensor, u: Tensor, v: Tensor) -> Tensor:
        """Per-sample surrogate; ``logits`` broadcast against noise of shape ``(..., R)``."""
        if self.name == "exact":
            return expected_loss(torch.sigmoid(logits), self.cfg.target).expand_as(u)
        z, b = bernoulli_sample(logits, u)
        if self.name == "concrete":
            return concrete(self.f, z, self.cfg.concrete_temperature, BERNOULLI)
        f_b = self.f(b)
        log_prob = bernoulli_log_prob(logits, b)
        if self.name == "reinforce":
            return reinforce(f_b, log_prob)
        z_tilde = bernoulli_conditional(logits, b, v)
        cv = self.control_variate
        assert cv is not None
        if self.name == "rebar":
            return rebar(f_b, log_prob, z, z_tilde, self.f, cv.eta, cv.log_temperature, BERNOULLI)
        return relax(f_b, log_prob, z, z_tilde, cv)

    def step(self, u: Tensor, v: Tensor) -> None:
        """One optimisation step of ``l`` (and of ``phi`` on the variance objective)."""
        surrogate = self.surrogate(self.logits, u, v).sum()
        self.opt.zero_grad(set_to_none=True)
        if self.phi_opt is None:
            surrogate.backward()
        else:
            (grad,), var_loss = estimate_with_variance_loss(surrogate, [self.logits])
            self.phi_opt.zero_grad(set_to_none=True)
            var_loss.backward(inputs=list(self.control_variate.parameters()))
            self.logits.grad = grad.detach()
            self.phi_opt.step()
        self.opt.step()

    def sample_gradients(self, u: Tensor, v: Tensor) -> Tensor:
        """Single-sample gradient estimates at the current parameters, shape ``(M, R)``."""
        logits = self.logits.detach().expand_as(u).clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(self.surrogate(logits, u, v).sum(), [logits])
        return grad

    def relaxation_curve(self, z: Tensor) -> Tensor | None:
        """``c_phi(z)`` on a grid ``z`` (shape ``(G,)``), per replica: ``(G, R)``."""
        if self.control_variate is None:
            return None
        with torch.no_grad():
            return self.control_variate(z.unsqueeze(-1).expand(-1, self.logits.numel()))


def _noise(seeds: list[int], steps: int) -> tuple[Tensor, Tensor]:
    """``(steps, R)`` uniform noise for ``u`` and ``v``, one generator per seed and stream, so
    that the first ``n`` steps of a seed are the same whatever ``steps`` is."""
    eps = torch.finfo(torch.float32).eps

    def stream(seed: int, which: int) -> Tensor:
        gen = torch.Generator().manual_seed(1_000_003 * seed + 17 + which)
        return torch.rand(steps, generator=gen)

    u = torch.stack([stream(s, 0) for s in seeds], 1)
    v = torch.stack([stream(s, 500_001) for s in seeds], 1)
    return u.clamp(eps, 1 - eps), v.clamp(eps, 1 - eps)


def _log10_var(grads: Tensor) -> list[float | None]:
    """Per replica (column), the project's variance figure of the single-sample estimate."""
    return [log10_total_variance(grads[:, r : r + 1]) for r in range(grads.shape[1])]


@dataclass
class _MeasureNoise:
    """Fixed noise for the variance measurements, shared by every estimator."""

    u: Tensor
    v: Tensor
    z_grid: Tensor


def _run_estimator(
    name: str,
    cfg: ToyConfig,
    seeds: list[int],
    noise: tuple[Tensor, Tensor],
    measure: _MeasureNoise,
    record_every: int,
    bar: tqdm,
) -> tuple[list[dict], dict]:
    """Train one estimator on all seeds; return its per-seed runs and its curves."""
    est = ToyEstimator(name, cfg, seeds)
    first_below: list[int | None] = [None] * len(seeds)
    curve: dict[str, list] = {"theta": [], "loss": [], "log10_var": []}
    start = time.perf_counter()

    def record() -> None:
        theta = torch.sigmoid(est.logits.detach())
        curve["theta"].append(theta.tolist())
        curve["loss"].append(expected_loss(theta, cfg.target).tolist())
        curve["log10_var"].append(_log10_var(est.sample_gradients(measure.u, measure.v)))

    record()
    u_all, v_all = noise
    for step in range(1, cfg.steps + 1):
        est.step(u_all[step - 1], v_all[step - 1])
        theta = torch.sigmoid(est.logits.detach())
        for s in (theta < THETA_SOLVED).nonzero().flatten().tolist():
            if first_below[s] is None:
                first_below[s] = step
        if step % record_every == 0 or step == cfg.steps:
            record()
            bar.set_postfix(est=name, theta=f"{theta.mean().item():.3f}", refresh=False)
        bar.update(1)
    wall = time.perf_counter() - start
    relaxation = est.relaxation_curve(measure.z_grid)
    curve["relaxation"] = None if relaxation is None else relaxation.T.tolist()
    runs = [
        {
            "estimator": name,
            "seed": s,
            "final_theta": curve["theta"][-1][i],
            "first_step_theta_below_0_1": first_below[i],
            "final_loss": curve["loss"][-1][i],
            "final_log10_var": curve["log10_var"][-1][i],
            "wall_s": wall / len(seeds),
        }
        for i, s in enumerate(seeds)
    ]
    return runs, curve


def run_toy(cfg: ToyConfig, progress: bool = True) -> dict:
    """Run every estimator of ``cfg`` over all seeds; return the results dictionary."""
    cfg.validate()
    seeds = list(range(cfg.seeds))
    noise = _noise(seeds, cfg.steps)
    record_every = max(1, cfg.steps // cfg.record_points)
    record_steps = list(range(0, cfg.steps + 1, record_every))
    if record_steps[-1] != cfg.steps:
        record_steps.append(cfg.steps)
    gen = torch.Generator().manual_seed(12345)
    measure = _MeasureNoise(
        u=torch.rand(cfg.var_samples, cfg.seeds, generator=gen).clamp(1e-7, 1 - 1e-7),
        v=torch.rand(cfg.var_samples, cfg.seeds, generator=gen).clamp(1e-7, 1 - 1e-7),
        z_grid=torch.linspace(-8, 8, 161),
    )
    runs: list[dict] = []
    curves: dict = {"step": record_steps, "estimators": {}, "relaxation_z": measure.z_grid.tolist()}
    total = cfg.steps * len(cfg.estimators)
    with tqdm(total=total, desc="toy", disable=not progress, unit="step", mininterval=0.5) as bar:
        for name in cfg.estimators:
            est_runs, curve = _run_estimator(name, cfg, seeds, noise, measure, record_every, bar)
            runs += est_runs
            curves["estimators"][name] = curve
    config = asdict(cfg)
    config["estimators"] = list(cfg.estimators)
    config["phi_lr"] = cfg.phi_lr or cfg.lr
    config["record_every"] = record_every
    return {"config": config, "runs": runs, "curves": curves, "summary": summarize(runs, cfg)}


def summarize(runs: Sequence[dict], cfg: ToyConfig) -> dict:
    """Per-estimator aggregates over seeds."""
    out = {}
    for name in cfg.estimators:
        rs = [r for r in runs if r["estimator"] == name]
        hits = [r["first_step_theta_below_0_1"] for r in rs]
        lv = [r["final_log10_var"] for r in rs if r["final_log10_var"] is not None]
        out[name] = {
            "seeds_below_0_1": sum(h is not None for h in hits),
            "seeds": len(rs),
            "median_first_step_below_0_1": _median([h for h in hits if h is not None]),
            "median_final_theta": _median([r["final_theta"] for r in rs]),
            "median_final_log10_var": _median(lv),
        }
    return out


def _median(xs: Sequence[float]) -> float | None:
    return float(np.median(xs)) if len(xs) else None


def format_table(results: dict) -> str:
    """The terminal table: one row per estimator."""
    cfg = results["config"]
    head = (
        f"{'estimator':<10} {'theta<0.1':>9} {'first step (median, min-max)':>30} "
        f"{'final theta (median)':>21} {'final log10 var (median)':>25}"
    )
    lines = [f"toy: t={cfg['target']}, {cfg['steps']} steps, {cfg['seeds']} seeds", head]
    for name in cfg["estimators"]:
        rs = [r for r in results["runs"] if r["estimator"] == name]
        hits = [r["first_step_theta_below_0_1"] for r in rs if r["first_step_theta_below_0_1"]]
        first = f"{int(np.median(hits))} ({min(hits)}-{max(hits)})" if hits else "never"
        s = results["summary"][name]
        lv = s["median_final_log10_var"]
        lines.append(
            f"{name:<10} {s['seeds_below_0_1']:>4}/{s['seeds']:<4} {first:>30} "
            f"{s['median_final_theta']:>21.4f} {'-inf' if lv is None else f'{lv:.2f}':>25}"
        )
    return "\n".join(lines)


def save_results(results: dict, out: Path) -> None:
    """Write ``results.json``, ``figure1.png`` and ``figure2.png`` into ``out``."""
    from relax_rl.plotting import plot_toy_figure1, plot_toy_figure2

    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    plot_toy_figure1(results, out / "figure1.png")
    plot_toy_figure2(results, out / "figure2.png")
