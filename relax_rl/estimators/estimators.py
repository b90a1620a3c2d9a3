"""Gradient estimators as surrogate losses.

Each function returns a per-sample *surrogate* whose autograd gradient with respect to the
distribution parameters ``theta`` (the logits, and whatever produced them) is the estimator's
gradient estimate of ``d/dtheta E[f(b)]``. Sum or average it over the batch, then call
``backward()`` (or :func:`relax_rl.estimators.variance.estimate_with_variance_loss` to also
train the control variate).

Rules every caller must follow:
- ``f_b`` is the black-box loss of the discrete sample; it is treated as a constant in
  ``theta`` (detached here). Gradients of ``f`` w.r.t. its own parameters (a decoder, say)
  are the caller's business.
- Control variates and baselines may depend on their own parameters ``phi`` (keep that graph:
  the variance objective needs it) but must not depend on ``theta`` except through the ``z``,
  ``z~`` or sample they are given.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from relax_rl.estimators.distributions import DiscreteFamily

ControlVariate = Callable[[Tensor], Tensor]


def reinforce(f_b: Tensor, log_prob: Tensor, baseline: Tensor | float | None = None) -> Tensor:
    """REINFORCE / score function (Williams 1992): ``g = (f(b) - baseline) dlog p(b)/dtheta``.

    :param f_b: loss of each sample, shape ``(N,)``.
    :param log_prob: ``log p(b)`` of each sample, differentiable in theta, shape ``(N,)``.
    :param baseline: optional baseline, constant in theta (e.g. a learned NVIL network of phi).
    """
    multiplier = f_b.detach() if baseline is None else f_b.detach() - baseline
    return multiplier * log_prob


def concrete(
    f: Callable[[Tensor], Tensor], z: Tensor, temperature: Tensor | float, family: DiscreteFamily
) -> Tensor:
    """Concrete / Gumbel-softmax (Maddison et al. 2017; Jang et al. 2017): ``f(sigma_lambda(z))``.

    Reparameterised through the relaxed sample; biased for any temperature > 0.
    """
    return f(family.relax(z, temperature))


def straight_through(
    f: Callable[[Tensor], Tensor],
    z: Tensor,
    b: Tensor,
    temperature: Tensor | float,
    family: DiscreteFamily,
) -> Tensor:
    """Straight-through Gumbel-softmax: ``f`` evaluated at the hard ``b``, gradient of the relaxed
    sample (Jang et al. 2017, Sec. 2.2). Biased."""
    soft = family.relax(z, temperature)
    return f(family.hard(b, soft) + soft - soft.detach())


def lax(f_b: Tensor, log_prob: Tensor, sample: Tensor, control_variate: ControlVariate) -> Tensor:
    """LAX (Grathwohl et al. 2018, Eq. 5) for a reparameterisable sample ``b = T(theta, eps)``:
    ``g = [f(b) - c(b)] dlog p(b)/dtheta + dc(b)/dtheta``.

    :param log_prob: the score's log density ``log p(b | theta)`` evaluated at the *detached*
        sample (``b`` held fixed), while ``sample`` keeps its reparameterisation path.
    """
    return (f_b.detach() - control_variate(sample.detach())) * log_prob + control_variate(sample)


def relax(
    f_b: Tensor,
    log_prob: Tensor,
    z: Tensor,
    z_tilde: Tensor,
    control_variate: ControlVariate,
) -> Tensor:
    """RELAX (Grathwohl et al. 2018, Eq. 8):
    ``g = [f(b) - c(z~)] dlog p(b)/dtheta + dc(z)/dtheta - dc(z~)/dtheta``.

    The score-function multiplier uses ``c(z~.detach())``: constant in theta, yet still a function
    of phi, as the variance objective requires. Unbiased for any control variate ``c``.
    """
    return relax_from_values(
        f_b,
        log_prob,
        control_variate(z),
        control_variate(z_tilde),
        control_variate(z_tilde.detach()),
    )


def relax_from_values(
    f_b: Tensor, log_prob: Tensor, c_z: Tensor, c_z_tilde: Tensor, c_z_tilde_const: Tensor
) -> Tensor:
    """:func:`relax` from the control variate's values: at ``z`` and ``z~`` (differentiable in
    theta through them) and at the detached ``z~`` (constant in theta), for a caller that
    evaluates ``c`` at the three points in one batch."""
    return (f_b.detach() - c_z_tilde_const) * log_prob + c_z - c_z_tilde


def rebar(
    f_b: Tensor,
    log_prob: Tensor,
    z: Tensor,
    z_tilde: Tensor,
    f: Callable[[Tensor], Tensor],
    eta: Tensor,
    log_temperature: Tensor,
    family: DiscreteFamily,
) -> Tensor:
    """REBAR (Tucker et al. 2017): RELAX with ``c(z) = eta * f(sigma_lambda(z))``.

    ``eta`` and ``log_temperature`` are the free parameters tuned on the variance objective.
    """
    temperature = log_temperature.exp()
    return relax(f_b, log_prob, z, z_tilde, lambda x: eta * f(family.relax(x, temperature)))


#: :func:`group_advantages`' baselines and scales
GROUP_BASELINES = ("loo", "mean")
GROUP_SCALES = ("none", "group", "batch")


def group_advantages(
    returns: Tensor,
    baseline: str = "loo",
    scale: str = "none",
    eps: float = 1e-4,
    valid: Tensor | None = None,
) -> Tensor:
    """Advantages from a group baseline: ``returns`` ``(..., k)`` holds the returns of the
    ``k >= 2`` members of each group (samples from the same state) on its last dimension.

    - ``baseline="loo"``: ``A_i = R_i - (1 / (k - 1)) sum_{j != i} R_j`` (RLOO: Kool et al.
      2019, Eq. 8; Ahmadian et al. 2024, Eq. 9), independent of sample ``i``: unbiased.
    - ``baseline="mean"``: ``A_i = R_i - mean_j R_j = ((k - 1) / k) * A_i^loo`` (GRPO: Shao et al.
      2024, Eq. 3's numerator): the RLOO estimate scaled by ``(k - 1) / k``.
    - ``scale="none"``: as is (Dr. GRPO: Liu et al. 2025); ``"group"``: divided by the group's
      standard deviation + ``eps`` (GRPO's; the factor depends on the sample itself and weighs
      groups by 1/std: biased towards groups with little spread, easy or hard ones);
      ``"batch"``: by the standard deviation of all the returns (``valid`` ones) + ``eps`` (one
      factor per batch: the direction of the unscaled estimate).

    Groups whose returns are all equal get advantage exactly 0 (never a NaN, whatever ``eps``).

    :param valid: which entries are real samples (for ``scale="batch"``'s statistics; default
        all).
    """
    if baseline not in GROUP_BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}; valid: {', '.join(GROUP_BASELINES)}")
    if scale not in GROUP_SCALES:
        raise ValueError(f"unknown scale {scale!r}; valid: {', '.join(GROUP_SCALES)}")
    k = returns.shape[-1]
    if k < 2:
        raise ValueError(f"a group baseline needs groups of >= 2 samples, got {k}")
    mean = returns.mean(-1, keepdim=True)
    centred = returns - mean
    if baseline == "loo":
        centred = centred * (k / (k - 1))  # R_i - (k mean - R_i) / (k - 1)
    equal = (returns == returns[..., :1]).all(-1, keepdim=True)
    if scale == "group":
        centred = centred / (returns.std(-1, keepdim=True) + eps)
    elif scale == "batch":
        pool = returns if valid is None else returns[valid]
        spread = pool.std() if pool.numel() > 1 else pool.new_zeros(())
        centred = centred / (spread + eps)
    return torch.where(equal, torch.zeros_like(centred), centred)
