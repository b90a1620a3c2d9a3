"""The policy optimizer: torch's RMSprop, stepping every parameter of the policy at once on the CPU.

On the CPU, torch's multi-tensor (``foreach``) ops are loops over the tensors, so an RMSprop step
on a small MLP costs ~6 ops per parameter tensor (12 tensors for SB3's actor-critic: ~170 us)
whatever their size. :class:`FlatRMSprop` keeps its state in one flat buffer per kind (the
per-parameter state entries are views of it, so ``state_dict`` and ``load_state_dict`` are
torch's) and does the step as six ops on flat copies of the gradients and the parameters, then
copies the parameters back (~35-45 us). The arithmetic is torch's, element by element, so the
numbers are the very same (an A2C run of 100k CartPole steps ends with the same bits). Anything
outside the fast path's conditions (a closure, a GPU, momentum, ``centered``, weight decay, a
tensor learning rate, missing gradients, several groups or dtypes) takes torch's own step on
the same state.

The parameters stay where they are: making them views of the flat buffer (as
``nn.RNN.flatten_parameters`` does) would save the two copies (~15 us) but moves the weights'
alignment, and the matrix products then differ in the last bits now and then (the same A2C run
parted from torch's after ~50k steps).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch as th
import torch.optim.optimizer as _optimizer_module

#: torch's registries of the step hooks of every optimizer (``register_optimizer_step_*_hook``)
_GLOBAL_HOOKS = tuple(
    getattr(_optimizer_module, name, None)
    for name in ("_global_optimizer_pre_hooks", "_global_optimizer_post_hooks")
)


def _unhooked(step: Callable[..., Any]) -> Callable[..., Any]:
    """``step`` without the hook-running wrapper that :class:`torch.optim.Optimizer` puts on a
    class's ``step`` (our ``step`` has it already: the hooks must not run twice)."""
    return step.__wrapped__ if getattr(step, "hooked", False) else step  # type: ignore[attr-defined]


class _Layout:
    """The flat buffers of one parameter group and what they were built for."""

    def __init__(self, optimizer: FlatRMSprop, params: list[th.Tensor]) -> None:
        self.params = list(params)
        self.state = optimizer.state
        sizes = [p.numel() for p in params]
        total = sum(sizes)
        like = params[0]
        self.param = th.empty(total, dtype=like.dtype, device=like.device)
        self.grad = th.empty_like(self.param)
        self.square_avg = th.zeros_like(self.param)
        self.steps = th.zeros(len(params), dtype=th.float32)
        self.param_views: list[th.Tensor] = []
        self.grad_views: list[th.Tensor] = []
        start = 0
        for i, (p, n) in enumerate(zip(params, sizes, strict=True)):
            view = self.square_avg[start : start + n].view_as(p)
            state = optimizer.state[p]
            if state:  # torch's state (a loaded one, or from a step of its own): kept
                view.copy_(state["square_avg"])
                self.steps[i] = state["step"]
            state["step"], state["square_avg"] = self.steps[i], view  # (torch's key order)
            self.param_views.append(self.param[start : start + n].view_as(p))
            self.grad_views.append(self.grad[start : start + n].view_as(p))
            start += n

    def matches(self, optimizer: FlatRMSprop, params: list[th.Tensor]) -> bool:
        """Whether the buffers still hold this group's state: the same parameters and the same
        state (``load_state_dict`` replaces it; torch's own step updates the views in place)."""
        return (
            optimizer.state is self.state
            and len(params) == len(self.params)
            and all(map(operator.is_, params, self.params))
        )


class FlatRMSprop(th.optim.RMSprop):
    """:class:`torch.optim.RMSprop` (the same arguments, numbers, state and save format) whose
    step on CPU parameters works on one flat buffer per group (module docstring)."""

    _layout: _Layout | None = None

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._layout = None

    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        if closure is None and self._flat_step():
            return None
        return _unhooked(th.optim.RMSprop.step)(self, closure)

    def _flat_step(self, grad_scale: float = 1.0) -> bool:
        """The step on flat buffers, where its conditions hold (else False: nothing done),
        on the gradients times ``grad_scale`` (applied to the flat copy: ``.grad`` is left
        as it is)."""
        if len(self.param_groups) != 1:
            return False
        group = self.param_groups[0]
        lr = group["lr"]
        if (
            group["momentum"]
            or group["centered"]
            or group["weight_decay"]
            or group["maximize"]
            or group["differentiable"]
            or group["capturable"]
            or isinstance(lr, th.Tensor)
        ):
            return False
        params = group["params"]
        grads = [p.grad for p in params]
        if not params or any(
            g is None or g.is_sparse or g.dtype != params[0].dtype for g in grads
        ):  # (autograd keeps a gradient's shape its parameter's)
            return False
        layout = self._layout
        if layout is None or not layout.matches(self, params):
            first = params[0]
            if first.device.type != "cpu" or first.is_complex():
                return False
            if any(p.device != first.device or p.dtype != first.dtype for p in params):
                return False
            layout = self._layout = _Layout(self, params)
        alpha, eps = group["alpha"], group["eps"]
        with th.no_grad():
            # (the parameters are copied in every step: whatever changed them since, a load or
            # a write through .data, is seen)
            th._foreach_copy_(layout.param_views, params)
            th._foreach_copy_(layout.grad_views, grads)
            grad = layout.grad
            if grad_scale != 1.0:  # (what _foreach_mul_(grads, grad_scale) gives, element-wise)
                grad.mul_(grad_scale)
            # torch's _multi_tensor_rmsprop, op for op, on the flat buffers
            layout.steps.add_(1.0)
            square_avg = layout.square_avg
            square_avg.mul_(alpha)
            square_avg.addcmul_(grad, grad, value=1 - alpha)
            avg = square_avg.sqrt()
            avg.add_(eps)
            layout.param.addcdiv_(grad, avg, value=-lr)
            th._foreach_copy_(params, layout.param_views)
        return True

    def step_unprofiled(self, grad_scale: float = 1.0) -> None:
        """:meth:`step` on the gradients times ``grad_scale`` (a clip factor), without the
        wrapper torch puts around every optimizer's ``step`` (a profiler range and the hook
        loops: ~15 us on the CPU).

        Where no step hook is registered and the flat path applies, the factor is applied to
        the flat copy of the gradients (one op; ``.grad`` keeps the unscaled values); else
        ``.grad`` is scaled in place and :meth:`step` runs, hooks and all (they see the scaled
        gradients)."""
        if (
            self._optimizer_step_pre_hooks
            or self._optimizer_step_post_hooks
            or None in _GLOBAL_HOOKS  # (a torch that keeps them elsewhere: the safe way)
            or any(_GLOBAL_HOOKS)
            or not self._flat_step(grad_scale)
        ):
            if grad_scale != 1.0:
                grads = [p.grad for g in self.param_groups for p in g["params"]]
                th._foreach_mul_([g for g in grads if g is not None], grad_scale)
            self.step()


__all__ = ["FlatRMSprop"]
