"""The variance objective that trains control variates (Grathwohl et al. 2018, Eq. 11).

For an unbiased estimator ``g_phi``, ``d Var(g)/dphi = E[d (g^2)/dphi]``: the mean term does not
depend on phi. So: get ``g`` with ``create_graph=True``, then minimise ``sum(g**2)`` w.r.t. phi
only, on phi's own optimizer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


def estimate_with_variance_loss(
    surrogate: Tensor, params: Sequence[Tensor]
) -> tuple[list[Tensor], Tensor]:
    """Gradient estimate ``g`` of ``surrogate`` w.r.t. ``params`` and the variance loss ``sum g^2``.

    :param surrogate: a scalar whose gradient w.r.t. ``params`` is the estimate.
    :param params: the distribution parameters theta.
    :return: ``(grads, loss)``; ``grads`` keep their graph to phi, ``loss.backward(inputs=phi)``
        trains the control variate.
    """
    grads = torch.autograd.grad(surrogate, list(params), create_graph=True, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]
    loss = sum((g**2).sum() for g in grads)
    return grads, loss  # type: ignore[return-value]


def log10_total_variance(rows: Tensor, batch: int = 1) -> float | None:
    """The project's one variance figure: log10 of ``sum_p Var(g_p)``, the variance summed over
    parameters (the trace of the covariance, ``E||g - E g||^2``), of the mean of ``batch``
    independent estimates, from ``rows`` ``(K, P)``: K >= 2 independent draws of one estimate.
    Coordinates that never vary (dead units) add nothing. None if K < 2 or the sum is 0."""
    if rows.shape[0] < 2:
        return None
    rows = rows.double()
    # (written out: Tensor.var over dim 0 of a short, wide matrix is ~30x slower on CPU)
    total = float((rows - rows.mean(0)).pow(2).sum() / ((rows.shape[0] - 1) * batch))
    return math.log10(total) if total > 0 else None
