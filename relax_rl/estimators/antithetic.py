"""Multi-sample and antithetic estimators for factorised Bernoulli variables.

The estimators that lead the binary-latent benchmarks since 2019, as surrogates in the style of
:mod:`relax_rl.estimators.estimators`: each returns a per-example surrogate whose gradient with
respect to the Bernoulli ``logits`` (and whatever produced them) is the estimate of
``d/dlogits E[f(b)]``, ``b_d ~ Bernoulli(sigmoid(logits_d))`` independently over the last
dimension. The black-box values ``f`` are constants here (detached); the caller evaluates ``f``
at the samples these helpers draw, and counts those evaluations (:data:`F_EVALS`).

- :func:`reinforce_loo`: ``k`` independent samples, each one's baseline the mean of the others
  (Kool et al. 2019; Mnih & Rezende 2016's leave-one-out).
- :func:`arm`: Augment-REINFORCE-Merge (Yin & Zhou 2019, Eq. 5): an antithetic pair of
  samples from one uniform, ``(f(b~) - f(b)) (u - 1/2)``.
- :func:`disarm`: DisARM (Dong, Mnih & Tucker 2020, Eq. 6): ARM's pair with the uniform
  integrated out given the pair, ``1/2 (f(b) - f(b~)) (-1)^b~ 1[b != b~] sigmoid(|logits|)``;
  zero wherever the pair agrees.
- :func:`arms`: ARMS (Dimitriev & Zhou 2021): ``k`` samples whose uniforms are negatively
  correlated (a Dirichlet copula, :func:`dirichlet_copula_uniforms`, flipped where ``p >= 1/2``:
  :func:`arms_samples`); the leave-one-out estimate on them is scaled, per dimension, by
  ``p(1-p) / (p - P11)`` (``P11`` the chance that two samples are both 1, from the copula's
  bivariate CDF ``C``), which makes it unbiased again. ``k = 2`` is an antithetic pair.
- :func:`double_cv`: Double control variates (Titsias & Shi 2022): REINFORCE-LOO on ``k``
  independent samples, each ``f(b_i)`` given a linear control variate built from the *other*
  samples' gradients ``grad_b f(b_j)`` (the leave-one-out baseline carries the others' control
  variates too), its expectation added back in closed form; one scale ``alpha``, learned.

Why the ARMS factor is exact: for one dimension ``d`` and a pair ``i != j``, the other
dimensions are independent of dimension ``d``'s coupled uniforms, so ``E[(f(b_i) - f(b_j))
(b_id - p)] = (F(1) - F(0)) E[(b_id - b_jd)(b_id - p)] = (F(1) - F(0)) (p - P11)``, with
``F(x) = E[f(b) | b_d = x]`` and ``P11 = P(b_id = b_jd = 1)`` (``C(p, p)`` for the copula's
uniforms as they are), while the gradient is ``(F(1) - F(0)) p (1 - p)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from relax_rl.estimators.estimators import group_advantages

#: function evaluations of ``f`` per example and step, by estimator (``k`` the samples)
F_EVALS = {
    "reinforce-loo": lambda k: k,
    "arm": lambda k: 2,
    "disarm": lambda k: 2,
    "arms": lambda k: k,
    "double-cv": lambda k: k,  # and k gradients grad_b f(b_i), one backward pass each
}


def bernoulli_from_uniform(logits: Tensor, u: Tensor) -> Tensor:
    """``b = 1[u < sigmoid(logits)]``: a Bernoulli sample from its uniform (float 0/1)."""
    return (u < torch.sigmoid(logits.detach())).to(logits.dtype)


def reinforce_loo(f_b: Tensor, log_prob: Tensor) -> Tensor:
    """REINFORCE with the leave-one-out baseline over ``k >= 2`` independent samples:
    ``g = 1/k sum_i (f(b_i) - 1/(k-1) sum_{j != i} f(b_j)) dlog q(b_i)``.

    :param f_b: ``f`` at each sample, ``(k, N)`` (samples first).
    :param log_prob: ``log q(b_i)`` of each sample, differentiable in the logits, ``(k, N)``.
    :return: the surrogate, ``(N,)``.
    """
    advantages = group_advantages(f_b.detach().movedim(0, -1), "loo").movedim(-1, 0)
    return (advantages * log_prob).mean(0)


def antithetic_pair(logits: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """ARM's and DisARM's pair from one uniform: ``b = 1[u < p]``, ``b~ = 1[1 - u < p]``;
    each is a Bernoulli(p) sample, and the two disagree as often as they can."""
    return bernoulli_from_uniform(logits, u), bernoulli_from_uniform(logits, 1.0 - u)


def arm(f_b: Tensor, f_b_tilde: Tensor, u: Tensor, logits: Tensor) -> Tensor:
    """ARM (Yin & Zhou 2019): ``g = (f(b~) - f(b)) (u - 1/2)`` per dimension, ``(b, b~)`` from
    :func:`antithetic_pair` with the same ``u``.

    :param f_b: ``f(b)``, ``(N,)``; ``f_b_tilde``: ``f(b~)``, ``(N,)``.
    :param u: the uniforms, ``(N, D)``; ``logits``: ``(N, D)``.
    """
    grad = (f_b_tilde - f_b).detach().unsqueeze(-1) * (u - 0.5)
    return (grad * logits).sum(-1)


def disarm(f_b: Tensor, f_b_tilde: Tensor, b: Tensor, b_tilde: Tensor, logits: Tensor) -> Tensor:
    """DisARM (Dong et al. 2020): ``g = 1/2 (f(b) - f(b~)) (-1)^b~ 1[b != b~] sigmoid(|logits|)``
    per dimension, ``(b, b~)`` from :func:`antithetic_pair`.

    :param f_b: ``f(b)``, ``(N,)``; ``f_b_tilde``: ``f(b~)``, ``(N,)``.
    :param b: ``(N, D)``; ``b_tilde``: ``(N, D)``; ``logits``: ``(N, D)``.
    """
    sign = 1.0 - 2.0 * b_tilde  # (-1)^b~
    weight = sign * (b != b_tilde).to(logits.dtype) * torch.sigmoid(logits.detach().abs())
    grad = 0.5 * (f_b - f_b_tilde).detach().unsqueeze(-1) * weight
    return (grad * logits).sum(-1)


def dirichlet_copula_uniforms(
    k: int, shape: tuple[int, ...], generator: torch.Generator | None = None
) -> Tensor:
    """``k`` uniforms per entry of ``shape``, each Uniform(0, 1), negatively correlated:
    ``u_i = (1 - w_i)^(k-1)`` with ``w ~ Dirichlet(1, ..., 1)`` over the ``k`` (ARMS's copula;
    ``k = 2`` gives ``u_2 = 1 - u_1``).

    :return: ``(k, *shape)``.
    """
    if k < 2:
        raise ValueError(f"ARMS needs k >= 2 samples, got {k}")
    e = -torch.log1p(-torch.rand((k, *shape), generator=generator, dtype=torch.float64))
    w = e / e.sum(0, keepdim=True)
    u = (1.0 - w).pow(k - 1)
    eps = torch.finfo(torch.float32).eps
    return u.clamp(eps, 1.0 - eps).float()


def dirichlet_copula_cdf(p: Tensor, q: Tensor, k: int) -> Tensor:
    """The bivariate CDF ``P(u_i <= p, u_j <= q)`` of two of :func:`dirichlet_copula_uniforms`'
    ``k``: ``max(p^(1/(k-1)) + q^(1/(k-1)) - 1, 0)^(k-1)``."""
    a, b = p.pow(1.0 / (k - 1)), q.pow(1.0 / (k - 1))
    return (a + b - 1.0).clamp_min(0.0).pow(k - 1)


def arms_samples(logits: Tensor, us: Tensor) -> Tensor:
    """ARMS's ``k`` samples from :func:`dirichlet_copula_uniforms`' ``us``: ``b_i = 1[u_i < p]``
    where ``p < 1/2``, ``1[1 - u_i < p]`` where ``p >= 1/2`` (the reference code's choice: the
    samples' ones are then as negatively coupled as their zeros are below 1/2).

    :param logits: ``(N, D)``; ``us``: ``(k, N, D)``.
    :return: ``(k, N, D)``.
    """
    low = torch.sigmoid(logits.detach()) < 0.5
    return bernoulli_from_uniform(logits, torch.where(low, us, 1.0 - us))


def arms(f_b: Tensor, bs: Tensor, logits: Tensor) -> Tensor:
    """ARMS (Dimitriev & Zhou 2021) on ``k`` samples from :func:`arms_samples`:
    ``g_d = p_d (1 - p_d) / (p_d - P11_d) * 1/(k-1) sum_i (f(b_i) - mean_j f(b_j))
    (b_id - p_d)``, ``P11`` the probability that two of the samples are both 1: ``C(p, p)``
    where ``p < 1/2``, ``2p - 1 + C(1-p, 1-p)`` where the uniforms are flipped (see the
    module's docstring for why the factor makes it unbiased).

    :param f_b: ``f`` at each sample, ``(k, N)``.
    :param bs: the samples, ``(k, N, D)``; ``logits``: ``(N, D)``.
    """
    k = f_b.shape[0]
    p = torch.sigmoid(logits.detach().double())
    both_one = torch.where(
        p < 0.5,
        dirichlet_copula_cdf(p, p, k),
        2.0 * p - 1.0 + dirichlet_copula_cdf(1 - p, 1 - p, k),
    )
    # p - P11 > 0 for 0 < p < 1; in float64 it stays so up to p within 1e-15 of 0 or 1
    factor = (p * (1.0 - p) / (p - both_one).clamp_min(1e-300)).to(logits.dtype)
    centred = (f_b - f_b.mean(0, keepdim=True)).detach().unsqueeze(-1)  # (k, N, 1)
    score = bs - p.to(logits.dtype)  # dlog q(b_i) / dlogits
    grad = factor * (centred * score).sum(0) / (k - 1)
    return (grad * logits).sum(-1)


def double_cv(f_b: Tensor, grad_f: Tensor, bs: Tensor, logits: Tensor, alpha: Tensor) -> Tensor:
    """Double control variates (Titsias & Shi 2022) on ``k >= 2`` independent samples.

    With ``p = sigmoid(logits)``, ``s_i = b_i - p`` (the score of sample ``i``), the others'
    mean gradient ``G_i = 1/(k-1) sum_{j != i} grad_b f(b_j)`` and the linear control variate
    ``h_i = alpha G_i . s_i``, each sample's signal is ``f~_i = f(b_i) + h_i`` and
    ``g = 1/k sum_i (f~_i - 1/(k-1) sum_{j != i} f~_j) s_i - alpha mean_i grad_b f(b_i) p (1-p)``.

    Unbiased for any ``alpha``: ``G_i`` does not depend on ``b_i``, so ``E[h_i s_i | others] =
    alpha G_i p (1-p)``, whose mean over ``i`` is the subtracted term; and every ``h_j`` in the
    baseline of sample ``i`` is ``(b_j - p)`` times what does not depend on ``b_j``, so it has
    mean zero given ``b_i``. ``alpha = 0`` is :func:`reinforce_loo`; for ``f`` linear in ``b``,
    ``alpha = -1`` returns the exact gradient. The surrogate's gradient keeps ``alpha``'s graph,
    so that ``alpha`` can descend the estimate's variance.

    :param f_b: ``f`` at each sample, ``(k, N)``.
    :param grad_f: ``grad_b f`` at each sample (``f`` taken as a function of real-valued ``b``),
        ``(k, N, D)``.
    :param bs: the samples, ``(k, N, D)``; ``logits``: ``(N, D)``.
    :param alpha: the control variates' scale (a scalar tensor).
    """
    k = f_b.shape[0]
    if k < 2:
        raise ValueError(f"Double-CV needs k >= 2 samples, got {k}")
    p = torch.sigmoid(logits.detach())
    score = bs.detach() - p
    grad_f = grad_f.detach()
    others = (grad_f.sum(0, keepdim=True) - grad_f) / (k - 1)
    signal = f_b.detach() + alpha * (others * score).sum(-1)  # (k, N)
    baseline = (signal.sum(0, keepdim=True) - signal) / (k - 1)
    grad = ((signal - baseline).unsqueeze(-1) * score).mean(0)
    grad = grad - alpha * grad_f.mean(0) * p * (1.0 - p)
    return (grad * logits).sum(-1)
