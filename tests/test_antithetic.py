"""The multi-sample and antithetic Bernoulli estimators (REINFORCE-LOO, ARM, DisARM, ARMS,
Double-CV):
unbiased against the exactly enumerated gradient of a loss that is not a sum over dimensions,
and the relations between them the papers state."""

import itertools

import pytest
import torch as th
from conftest import assert_unbiased

from relax_rl.estimators.antithetic import (
    F_EVALS,
    antithetic_pair,
    arm,
    arms,
    arms_samples,
    bernoulli_from_uniform,
    dirichlet_copula_cdf,
    dirichlet_copula_uniforms,
    disarm,
    double_cv,
    reinforce_loo,
)
from relax_rl.estimators.distributions import bernoulli_log_prob, uniform_noise

THETA = th.tensor([0.4, -1.1, 2.0, -0.3])  # one logit far from 0, one near
W = th.tensor([1.0, -2.0, 0.5, 1.5])
DRAWS = 20_000


def f(b):
    """Not a sum over the dimensions: a square and a product."""
    return (b @ W - 0.7) ** 2 + 0.5 * b[..., 0] * b[..., 2] * (1 - b[..., 3])


def exact_gradient():
    theta = THETA.clone().requires_grad_()
    p = th.sigmoid(theta)
    total = 0.0
    for bits in itertools.product([0.0, 1.0], repeat=len(THETA)):
        b = th.tensor(bits)
        total = total + (p**b * (1 - p) ** (1 - b)).prod() * f(b)
    (grad,) = th.autograd.grad(total, theta)
    return grad


def f_and_gradient(bs, fn=f):
    """``fn`` at each sample and its gradient in ``b`` (``b`` taken as real-valued)."""
    bs = bs.detach().requires_grad_()
    values = fn(bs)
    (grad,) = th.autograd.grad(values.sum(), bs)
    return values.detach(), grad


def estimates(name, k, gen, alpha=-0.8):
    """``DRAWS`` independent estimates (one per row) of ``name``'s gradient at THETA."""
    logits = THETA.expand(DRAWS, -1).clone().requires_grad_()
    if name == "double-cv":  # alpha away from 0 (REINFORCE-LOO) and from its optimum
        bs = bernoulli_from_uniform(logits, uniform_noise((k, DRAWS, len(THETA)), gen))
        surrogate = double_cv(*f_and_gradient(bs), bs, logits, th.tensor(alpha))
    elif name == "reinforce-loo":
        us = uniform_noise((k, DRAWS, len(THETA)), gen)
        bs = bernoulli_from_uniform(logits, us)
        surrogate = reinforce_loo(f(bs), bernoulli_log_prob(logits.expand_as(bs), bs).sum(-1))
    elif name in ("arm", "disarm"):
        u = uniform_noise((DRAWS, len(THETA)), gen)
        b, b_tilde = antithetic_pair(logits, u)
        if name == "arm":
            surrogate = arm(f(b), f(b_tilde), u, logits)
        else:
            surrogate = disarm(f(b), f(b_tilde), b, b_tilde, logits)
    else:
        bs = arms_samples(logits, dirichlet_copula_uniforms(k, (DRAWS, len(THETA)), gen))
        surrogate = arms(f(bs), bs, logits)
    (grad,) = th.autograd.grad(surrogate.sum(), logits)
    return grad


CASES = [("reinforce-loo", 2), ("reinforce-loo", 4), ("arm", 2), ("disarm", 2), ("arms", 2),
         ("arms", 3), ("arms", 5), ("double-cv", 2), ("double-cv", 4)]  # fmt: skip


@pytest.mark.parametrize(("name", "k"), CASES, ids=[f"{n}-k{k}" for n, k in CASES])
def test_unbiased_against_the_enumerated_gradient(name, k):
    gen = th.Generator().manual_seed(1)
    assert_unbiased(estimates(name, k, gen), exact_gradient())
    assert F_EVALS[name](k) == (2 if name in ("arm", "disarm") else k)


def test_double_cv_refuses_one_sample():
    with pytest.raises(ValueError, match="k >= 2"):
        double_cv(
            th.zeros(1, 3), th.zeros(1, 3, 4), th.zeros(1, 3, 4), th.zeros(3, 4), th.tensor(0.0)
        )


def test_double_cv_is_reinforce_loo_at_alpha_zero_and_exact_on_a_linear_f_at_minus_one():
    """alpha = 0 leaves REINFORCE-LOO, estimate for estimate; for ``f`` linear in ``b`` the
    control variate at alpha = -1 is ``f`` itself up to a constant, and every estimate is the
    exact gradient ``W p (1 - p)``."""
    gen = th.Generator().manual_seed(5)
    logits = THETA.expand(500, -1).clone().requires_grad_()
    bs = bernoulli_from_uniform(logits, uniform_noise((3, 500, len(THETA)), gen))
    values, grads = f_and_gradient(bs)
    (g_cv,) = th.autograd.grad(double_cv(values, grads, bs, logits, th.tensor(0.0)).sum(), logits)
    log_q = bernoulli_log_prob(logits.expand_as(bs), bs).sum(-1)
    (g_loo,) = th.autograd.grad(reinforce_loo(values, log_q).sum(), logits)
    th.testing.assert_close(g_cv, g_loo)

    def linear(b):
        return b @ W + 0.3

    values, grads = f_and_gradient(bs, linear)
    (g,) = th.autograd.grad(double_cv(values, grads, bs, logits, th.tensor(-1.0)).sum(), logits)
    p = th.sigmoid(THETA)
    th.testing.assert_close(g, (W * p * (1 - p)).expand_as(g))
    assert g_loo.var(0).min() > 1e-3  # REINFORCE-LOO's are not exact there


def test_double_cv_keeps_alphas_graph_for_its_variance_objective():
    """The estimate is differentiable in alpha, and descending its second moment moves alpha
    towards -1 on a nearly linear ``f`` (what the VAE's trainer does with it)."""
    gen = th.Generator().manual_seed(6)
    logits = THETA.expand(2000, -1).clone().requires_grad_()
    bs = bernoulli_from_uniform(logits, uniform_noise((2, 2000, len(THETA)), gen))
    values, grads = f_and_gradient(bs, lambda b: b @ W + 0.1 * (b[..., 0] * b[..., 1]))
    alpha = th.tensor(0.0, requires_grad=True)
    (g,) = th.autograd.grad(
        double_cv(values, grads, bs, logits, alpha).sum(), logits, create_graph=True
    )
    (d_alpha,) = th.autograd.grad(g.pow(2).mean(), alpha)
    assert d_alpha > 0  # so gradient descent lowers alpha from 0 towards -1


def test_leave_one_out_on_coupled_samples_needs_the_arms_factor():
    """On the copula's negatively correlated samples the plain leave-one-out estimate is
    biased (what the ARMS factor corrects): the check above would see it."""
    gen = th.Generator().manual_seed(1)
    logits = THETA.expand(DRAWS, -1).clone().requires_grad_()
    bs = bernoulli_from_uniform(logits, dirichlet_copula_uniforms(3, (DRAWS, len(THETA)), gen))
    surrogate = reinforce_loo(f(bs), bernoulli_log_prob(logits.expand_as(bs), bs).sum(-1))
    (grad,) = th.autograd.grad(surrogate.sum(), logits)
    with pytest.raises(AssertionError):
        assert_unbiased(grad, exact_gradient())


def test_arms_with_two_samples_is_disarm():
    """k = 2: the copula is the antithetic pair and the factor is sigmoid(|logits|), so ARMS
    and DisARM agree estimate for estimate (Dimitriev & Zhou 2021, Sec. 3), DisARM's uniform
    taken as 1 - u where ARMS flips it (p >= 1/2; the same pair's distribution)."""
    gen = th.Generator().manual_seed(2)
    us = dirichlet_copula_uniforms(2, (500, len(THETA)), gen)
    th.testing.assert_close(us[1], 1 - us[0])
    logits = THETA.expand(500, -1).clone().requires_grad_()
    bs = arms_samples(logits, us)
    (g_arms,) = th.autograd.grad(arms(f(bs), bs, logits).sum(), logits)
    b, b_tilde = antithetic_pair(logits, th.where(th.sigmoid(THETA) < 0.5, us[0], 1 - us[0]))
    (g_disarm,) = th.autograd.grad(disarm(f(b), f(b_tilde), b, b_tilde, logits).sum(), logits)
    th.testing.assert_close(g_arms, g_disarm)


def test_disarm_has_less_variance_than_arm_on_the_same_pairs():
    """DisARM is ARM's estimate averaged over the uniforms that give the same pair: less
    variance in every dimension, here on the very same pairs."""
    gen = th.Generator().manual_seed(3)
    logits = THETA.expand(DRAWS, -1).clone().requires_grad_()
    u = uniform_noise((DRAWS, len(THETA)), gen)
    b, b_tilde = antithetic_pair(logits, u)
    (g_arm,) = th.autograd.grad(arm(f(b), f(b_tilde), u, logits).sum(), logits)
    (g_dis,) = th.autograd.grad(disarm(f(b), f(b_tilde), b, b_tilde, logits).sum(), logits)
    assert (g_dis.var(0) < g_arm.var(0)).all(), (g_dis.var(0), g_arm.var(0))


@pytest.mark.parametrize("k", [2, 3, 6])
def test_the_copula_has_uniform_marginals_and_its_bivariate_cdf(k):
    gen = th.Generator().manual_seed(4)
    us = dirichlet_copula_uniforms(k, (200_000,), gen)
    for q in (0.1, 0.5, 0.8):
        assert (us[0] <= q).float().mean().item() == pytest.approx(q, abs=0.005)
        joint = ((us[0] <= q) & (us[1] <= q)).float().mean().item()
        expected = dirichlet_copula_cdf(th.tensor(q), th.tensor(q), k).item()
        assert joint == pytest.approx(expected, abs=0.005)
    assert th.corrcoef(us[:2])[0, 1] < 0  # negatively correlated


def test_arms_refuses_one_sample():
    with pytest.raises(ValueError, match="k >= 2"):
        dirichlet_copula_uniforms(1, (3,))
