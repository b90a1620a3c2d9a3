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
    per_sample: list[th.Tensor], groups: list[th.Tensor], params: list[th.nn.Parameter]
) -> list[th.Tensor]:
    """For each per-sample surrogate, ``(G, P)``: the gradient of each group's mean w.r.t.
    ``params``. All ``len(per_sample) * G`` gradients come from one batched backward pass
    (``is_grads_batched``: vmap over the rows of an identity as output gradients)."""
    weights = th.stack([g.to(per_sample[0].dtype) / g.sum() for g in groups])  # (G, N)
    means = th.cat([weights @ s for s in per_sample])
    grads = th.autograd.grad(
        means,
        params,
        grad_outputs=th.eye(means.numel(), dtype=means.dtype),
        retain_graph=True,
        allow_unused=True,
        is_grads_batched=True,
    )
    rows = th.cat(
        [
            th.zeros(means.numel(), p.numel()) if g is None else g.reshape(means.numel(), -1)
            for p, g in zip(params, grads, strict=True)
        ],
        dim=1,
    )
    return list(rows.split(len(groups)))


def _log10_var_of_batch_estimate(rows: th.Tensor) -> float:
    """Mean over parameters of log10 of the variance of the batch-mean estimate."""
    rows = rows.double()
    # (written out: Tensor.var over dim 0 of a short, wide matrix is ~30x slower on CPU)
    var = (rows - rows.mean(0)).pow(2).sum(0) / ((rows.shape[0] - 1) * rows.shape[0])
    return float(th.log10(var.clamp_min(1e-30)).mean())


class _LossesOf(th.nn.Module):
    """``model.losses`` as a module whose ``policy`` parameters ``functional_call`` can swap."""

    def __init__(self, model: GumbelOnPolicyAlgorithm) -> None:
        super().__init__()
        self.policy = model.policy
        self.model = [model]  # a list: not registered as a submodule

    def forward(self, data: GumbelRolloutSamples):
        return self.model[0].losses(data)


def gradient_variance(
    model: GumbelOnPolicyAlgorithm, data: GumbelRolloutSamples
) -> dict[str, float]:
    """``grad/log10_var``, ``grad/norm`` and, for agents with a control variate,
    ``grad/log10_var_baseline`` (the plain advantage estimator on the same batch).

    The gradients are taken w.r.t. detached copies of the actor's parameters, swapped in with
    ``torch.func.functional_call``: hooks on the real parameters (e.g. ``wandb.watch`` from
    SB3's ``WandbCallback``) see only the training update's gradients.
    """
    groups = [g for g in _groups(data, model.n_envs) if bool(g.any())]
    if len(groups) < 2:
        return {}
    policy = model.policy
    actor_ids = {id(p) for p in policy.actor_parameters()}
    copies = {
        name: p.detach().requires_grad_()
        for name, p in policy.named_parameters()
        if id(p) in actor_ids
    }
    actor = list(copies.values())
    losses = th.func.functional_call(
        _LossesOf(model), {f"policy.{k}": v for k, v in copies.items()}, (data,), strict=False
    )
    per_sample = [losses.surrogate]
    if model.control_variate is not None:
        log_p = th.log_softmax(losses.logits, -1)
        log_prob = log_p.gather(-1, data.actions.unsqueeze(-1)).squeeze(-1)
        per_sample.append(reinforce(-losses.advantages, log_prob))
    rows, *base = _group_gradients(per_sample, groups, actor)
    out = {
        "grad/log10_var": _log10_var_of_batch_estimate(rows),
        "grad/norm": float(rows.mean(0).norm()),
    }
    if base:
        out["grad/log10_var_baseline"] = _log10_var_of_batch_estimate(base[0])
        out["grad/log10_var_reduction"] = out["grad/log10_var_baseline"] - out["grad/log10_var"]
    return {k: v for k, v in out.items() if math.isfinite(v)}
