"""Gradient-variance diagnostics, the same for every agent.

The variance of the policy-gradient estimator is what RELAX minimises; here it is estimated
from the batch itself: the rollout is split into groups (one per env; with a single env, into
contiguous chunks of steps), each group gives its own estimate of the actor's gradient, and the
spread between groups estimates the per-parameter variance of the batch estimate. For an agent
with a control variate the plain advantage estimator ``A_t dlog pi`` is measured on the SAME
batch, so that the reduction is paired rather than read off two noisy runs.
"""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING

import torch as th

from relax_rl.buffers import GumbelRolloutSamples
from relax_rl.estimators import reinforce

if TYPE_CHECKING:
    from relax_rl.on_policy import GumbelOnPolicyAlgorithm

MIN_GROUPS = 4


def _groups(data: GumbelRolloutSamples, n_envs: int) -> list[th.Tensor]:
    if n_envs >= MIN_GROUPS:
        return [data.env_index == e for e in range(n_envs)]
    n = data.actions.shape[0]
    k = min(8, n)
    bounds = [round(i * n / k) for i in range(k + 1)]
    idx = th.arange(n)
    return [(idx >= lo) & (idx < hi) for lo, hi in itertools.pairwise(bounds)]


def _group_gradients(
    per_sample: th.Tensor, groups: list[th.Tensor], params: list[th.nn.Parameter]
) -> th.Tensor:
    """``(G, P)``: the gradient of each group's mean surrogate w.r.t. ``params``."""
    rows = []
    for mask in groups:
        grads = th.autograd.grad(
            per_sample[mask].mean(), params, retain_graph=True, allow_unused=True
        )
        rows.append(
            th.cat(
                [
                    (th.zeros_like(p) if g is None else g).reshape(-1)
                    for p, g in zip(params, grads, strict=True)
                ]
            )
        )
    return th.stack(rows)


def _log10_var_of_batch_estimate(rows: th.Tensor) -> float:
    """Mean over parameters of log10 of the variance of the batch-mean estimate."""
    var = rows.double().var(dim=0) / rows.shape[0]
    return float(th.log10(var.clamp_min(1e-30)).mean())


def gradient_variance(
    model: GumbelOnPolicyAlgorithm, data: GumbelRolloutSamples
) -> dict[str, float]:
    """``grad/log10_var``, ``grad/norm`` and, for agents with a control variate,
    ``grad/log10_var_baseline`` (the plain advantage estimator on the same batch)."""
    losses = model.losses(data)
    actor = model.policy.actor_parameters()
    groups = [g for g in _groups(data, model.n_envs) if bool(g.any())]
    if len(groups) < 2:
        return {}
    rows = _group_gradients(losses.surrogate, groups, actor)
    out = {
        "grad/log10_var": _log10_var_of_batch_estimate(rows),
        "grad/norm": float(rows.mean(0).norm()),
    }
    if model.control_variate is not None:
        log_p = th.log_softmax(losses.logits, -1)
        log_prob = log_p.gather(-1, data.actions.unsqueeze(-1)).squeeze(-1)
        plain = reinforce(-losses.advantages, log_prob)
        base_rows = _group_gradients(plain, groups, actor)
        out["grad/log10_var_baseline"] = _log10_var_of_batch_estimate(base_rows)
        out["grad/log10_var_reduction"] = out["grad/log10_var_baseline"] - out["grad/log10_var"]
    return {k: v for k, v in out.items() if math.isfinite(v)}
