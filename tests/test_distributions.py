"""Samplers with stored noise: Gumbel-max, exact conditionals z~ | b, numerical stability."""

import pytest
import torch

from relax_rl.estimators import (
    bernoulli_conditional,
    bernoulli_log_prob,
    bernoulli_sample,
    categorical_conditional,
    categorical_log_prob,
    categorical_sample,
    gaussian_log_prob,
    gaussian_sample,
    uniform_noise,
)

N = 400_000


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _assert_same_law(exact: torch.Tensor, rejected: torch.Tensor) -> None:
    """Per-coordinate mean within 5 standard errors, std within 6/sqrt(n) relative
    (truncated logistic and Gumbel tails are heavy: the std of a std is ~1.5/sqrt(n))."""
    se = (exact.var(0) / exact.shape[0] + rejected.var(0) / rejected.shape[0]).sqrt()
    assert ((exact.mean(0) - rejected.mean(0)).abs() < 5 * se).all(), (
        exact.mean(0),
        rejected.mean(0),
    )
    n = min(exact.shape[0], rejected.shape[0])
    torch.testing.assert_close(exact.std(0), rejected.std(0), rtol=6 / n**0.5, atol=0.0)


def test_bernoulli_sample_frequency_and_log_prob():
    logits = torch.tensor([-2.0, 0.0, 0.7, 3.0])
    u = uniform_noise((N, 4), _gen(0))
    _, b = bernoulli_sample(logits, u)
    torch.testing.assert_close(b.mean(0), torch.sigmoid(logits), atol=4e-3, rtol=0)
    ref = torch.distributions.Bernoulli(logits=logits).log_prob(b[:10])
    torch.testing.assert_close(bernoulli_log_prob(logits.expand(10, 4), b[:10]), ref)


@pytest.mark.parametrize("value", [0, 1])
def test_bernoulli_conditional_matches_rejection(value):
    logits = torch.tensor([-1.5, 0.0, 0.4, 2.0])
    z, b = bernoulli_sample(logits, uniform_noise((N, 4), _gen(1)))
    for j in range(4):
        rejected = z[b[:, j] == value, j]
        v = uniform_noise((rejected.shape[0],), _gen(2 + j))
        b_given = torch.full_like(v, float(value))
        exact = bernoulli_conditional(logits[j].expand_as(v), b_given, v)
        _assert_same_law(exact.unsqueeze(1), rejected.unsqueeze(1))


@pytest.mark.parametrize("k", [3, 10])
def test_categorical_sample_frequency_and_log_prob(k):
    logits = torch.randn(k, generator=_gen(k))
    _, b = categorical_sample(logits, uniform_noise((N, k), _gen(3)))
    freq = torch.bincount(b, minlength=k).float() / N
    torch.testing.assert_close(freq, torch.softmax(logits, -1), atol=4e-3, rtol=0)
    ref = torch.distributions.Categorical(logits=logits).log_prob(b[:10])
    torch.testing.assert_close(categorical_log_prob(logits.expand(10, k), b[:10]), ref)


@pytest.mark.parametrize("k", [3, 10])
def test_categorical_conditional_matches_rejection(k):
    logits = torch.randn(k, generator=_gen(10 + k)) * 1.5
    z, b = categorical_sample(logits, uniform_noise((N, k), _gen(4)))
    checked = 0
    for cls in range(k):
        rejected = z[b == cls]
        if rejected.shape[0] < 5_000:
            continue  # too rare for a tight comparison
        n = rejected.shape[0]
        v = uniform_noise((n, k), _gen(100 + cls))
        exact = categorical_conditional(logits.expand(n, k), torch.full((n,), cls), v)
        _assert_same_law(exact, rejected)
        checked += 1
    assert checked >= 2


def test_conditionals_respect_b_always():
    gen = _gen(5)
    logits = torch.randn(20_000, 6, generator=gen) * 8
    z, b = bernoulli_sample(logits, uniform_noise(logits.shape, gen))
    zt = bernoulli_conditional(logits, b, uniform_noise(logits.shape, gen))
    assert torch.equal((zt > 0).float(), b)
    # A b that the logits make unlikely still gets a valid z~.
    zt_flip = bernoulli_conditional(logits, 1 - b, uniform_noise(logits.shape, gen))
    assert torch.equal((zt_flip > 0).float(), 1 - b)

    logits = torch.randn(20_000, 7, generator=gen) * 8
    z, b = categorical_sample(logits, uniform_noise(logits.shape, gen))
    assert torch.equal(z.argmax(-1), b)
    any_b = torch.randint(0, 7, (20_000,), generator=gen)
    zt = categorical_conditional(logits, any_b, uniform_noise(logits.shape, gen))
    assert torch.equal(zt.argmax(-1), any_b)


@pytest.mark.parametrize("scale", [30.0, -30.0])
def test_extreme_logits_are_finite(scale):
    gen = _gen(6)
    logits = torch.full((1000, 3), scale, requires_grad=True)
    u, v = uniform_noise((1000, 3), gen), uniform_noise((1000, 3), gen)
    _z, b = bernoulli_sample(logits, u)
    for target in (b, 1 - b):  # the likely and the (astronomically) unlikely b
        zt = bernoulli_conditional(logits, target, v)
        lp = bernoulli_log_prob(logits, target)
        (g,) = torch.autograd.grad((zt + lp).sum(), logits)
        assert torch.isfinite(zt).all() and torch.isfinite(lp).all() and torch.isfinite(g).all()
        assert torch.equal((zt > 0).float(), target)

    cat_logits = torch.tensor([[scale, 0.0, -scale]]).repeat(1000, 1).requires_grad_(True)
    _z, b = categorical_sample(cat_logits, u)
    for target in (b, torch.full_like(b, 1), torch.full_like(b, 2)):
        zt = categorical_conditional(cat_logits, target, v)
        lp = categorical_log_prob(cat_logits, target)
        (g,) = torch.autograd.grad(zt.sum() + lp.sum(), cat_logits)
        assert torch.isfinite(zt).all() and torch.isfinite(lp).all() and torch.isfinite(g).all()
        assert torch.equal(zt.argmax(-1), target)


def test_gaussian_reparameterised_sample():
    mean, log_std = torch.tensor([0.5, -1.0]), torch.tensor([0.0, -0.7])
    eps = torch.randn(N, 2, generator=_gen(7))
    a = gaussian_sample(mean, log_std, eps)
    torch.testing.assert_close(a.mean(0), mean, atol=1e-2, rtol=0)
    torch.testing.assert_close(a.std(0), log_std.exp(), rtol=1e-2, atol=0)
    ref = torch.distributions.Normal(mean, log_std.exp()).log_prob(a[:5])
    torch.testing.assert_close(gaussian_log_prob(mean, log_std, a[:5]), ref)
