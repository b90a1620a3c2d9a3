"""Gradient-variance diagnostics, the same for every agent.

The variance of the policy-gradient estimator is what RELAX minimises; here it is estimated
from the batch itself: each env's part of the rollout gives its own estimate of the actor's
gradient (the envs are independent given the policy), and the spread between envs estimates
the variance of the batch estimate. For an agent with a control variate the plain advantage
estimator ``A_t dlog pi`` is measured on the SAME batch, so that the reduction is paired rather
than read off two noisy runs.

One convention everywhere (here, the toy and the VAE): :func:`log10_total_variance`, log10 of
the variance summed over parameters (the trace of the estimate's covariance, i.e.
``E||g - E g||^2``). With fewer than :data:`MIN_GROUPS` envs nothing is measured: a single
rollout's steps are neither independent nor alike, so chunks of it would not give a variance
comparable with independent envs'.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch as th
from stable_baselines3.common.callbacks import BaseCallback

from relax_rl.buffers import GumbelRolloutSamples
from relax_rl.estimators import log10_total_variance, reinforce

if TYPE_CHECKING:
    from relax_rl.on_policy import GumbelOnPolicyAlgorithm

MIN_GROUPS = 4


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
        grad_outputs=th.eye(means.numel(), dtype=means.dtype, device=means.device),
        retain_graph=True,
        allow_unused=True,
        is_grads_batched=True,
    )
    rows = th.cat(
        [
            th.zeros(means.numel(), p.numel(), device=means.device)
            if g is None
            else g.reshape(means.numel(), -1)
            for p, g in zip(params, grads, strict=True)
        ],
        dim=1,
    )
    return list(rows.split(len(groups)))


class _BatchLosses(th.nn.Module):
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
    """``grad/log10_var`` (:func:`log10_total_variance` of the batch estimate), ``grad/norm``
    (the batch estimate's norm) and, for agents with a control variate,
    ``grad/log10_var_baseline`` (the plain advantage estimator on the same batch) and
    ``grad/log10_var_reduction`` (baseline minus agent: > 0 when the control variate helps).
    Empty with fewer than :data:`MIN_GROUPS` independent units (envs; groups of envs for a
    group baseline, whose members share a start state and their baseline).

    Call it where the update's estimator is fixed (phi, kappa and scales as the update will use
    them): it evaluates ``model.losses``, the very surrogate of the update.

    The gradients are taken w.r.t. detached copies of the actor's parameters, swapped in with
    ``torch.func.functional_call``: hooks on the real parameters (e.g. ``wandb.watch`` from
    SB3's ``WandbCallback``) see only the training update's gradients.
    """
    units, n_units = model.independent_units(data)
    if n_units < MIN_GROUPS:
        return {}
    groups = [units == u for u in range(n_units)]
    if any(not bool(g.any()) for g in groups):
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
        _BatchLosses(model), {f"policy.{k}": v for k, v in copies.items()}, (data,), strict=False
    )
    per_sample = [losses.per_sample_objective]
    if model.paired_baseline:
        per_sample.append(reinforce(-losses.advantages, losses.log_prob))
    rows, *base = _group_gradients(per_sample, groups, actor)
    n = len(groups)
    out = {"grad/log10_var": log10_total_variance(rows, n), "grad/norm": float(rows.mean(0).norm())}
    if base:
        out["grad/log10_var_baseline"] = log10_total_variance(base[0], n)
        if out["grad/log10_var"] is not None and out["grad/log10_var_baseline"] is not None:
            out["grad/log10_var_reduction"] = out["grad/log10_var_baseline"] - out["grad/log10_var"]
    return {k: v for k, v in out.items() if v is not None and math.isfinite(v)}


class GradientVarianceCallback(BaseCallback):
    """Logs :func:`gradient_variance` every ``freq`` updates (SB3 callback protocol).

    It measures at the end of each rollout, just before ``train()`` uses it: by then every
    agent's estimator for that update is fixed (RELAX's kappa comes from the batch itself, its
    scale and phi from earlier batches), so the figure is of the very estimator of the update.

    :param freq: measure before every ``freq``-th update (0 or less: never).
    """

    def __init__(self, freq: int = 50) -> None:
        super().__init__()
        self.freq = freq

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        model = self.model
        if self.freq > 0 and model.n_updates % self.freq == 0:
            for key, value in gradient_variance(model, model.rollout_buffer.get_all()).items():
                self.logger.record_mean(key, value)  # averaged over a row's log_interval
