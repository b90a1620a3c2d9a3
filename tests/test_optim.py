"""FlatRMSprop: torch's RMSprop's numbers, state and save format, whatever path a step takes."""

import copy

import pytest
import torch as th
from torch import nn

from relax_rl.optim import FlatRMSprop

SETTINGS = {"lr": 7e-4, "alpha": 0.99, "eps": 1e-5, "foreach": True}


def _net(seed: int = 0) -> nn.Module:
    th.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3))


def _grads(net: nn.Module, step: int) -> None:
    g = th.Generator().manual_seed(1000 + step)
    for p in net.parameters():
        p.grad = th.randn(p.shape, generator=g) * 10.0 ** (step % 3 - 1)


def _same(a: nn.Module, b: nn.Module, opt_a: th.optim.Optimizer, opt_b: th.optim.Optimizer):
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert th.equal(p, q)
    sa, sb = opt_a.state_dict(), opt_b.state_dict()
    drop = lambda groups: [{k: v for k, v in g.items() if k != "foreach"} for g in groups]  # noqa: E731
    assert drop(sa["param_groups"]) == drop(sb["param_groups"])
    assert sa["state"].keys() == sb["state"].keys()
    for k in sa["state"]:
        assert list(sa["state"][k]) == list(sb["state"][k])  # (key order too)
        for key in sa["state"][k]:
            assert th.equal(sa["state"][k][key], sb["state"][k][key]), key


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("unprofiled", [True, False])
def test_the_numbers_are_torchs(foreach, unprofiled):
    ref, flat = _net(), _net()
    opt_ref = th.optim.RMSprop(ref.parameters(), **{**SETTINGS, "foreach": foreach})
    opt = FlatRMSprop(flat.parameters(), **SETTINGS)
    for step in range(12):
        if step == 5:  # a learning-rate schedule writes the group's lr
            for o in (opt_ref, opt):
                o.param_groups[0]["lr"] = 3e-3
        _grads(ref, step)
        _grads(flat, step)
        scale = 0.37 if step % 2 else 1.0  # a clip factor: the gradients times it
        if scale != 1.0:
            th._foreach_mul_([p.grad for p in ref.parameters()], scale)
        opt_ref.step()
        if unprofiled:
            opt.step_unprofiled(grad_scale=scale)
        else:
            th._foreach_mul_([p.grad for p in flat.parameters()], scale)
            opt.step()
    assert opt._layout is not None  # (the flat path ran)
    _same(ref, flat, opt_ref, opt)


def test_a_hook_sees_the_scaled_gradients():
    """With a step hook, ``step_unprofiled`` scales ``.grad`` itself and runs ``step``."""
    net = _net()
    opt = FlatRMSprop(net.parameters(), **SETTINGS)
    _grads(net, 0)
    expected = [p.grad * 0.5 for p in net.parameters()]
    seen = []
    opt.register_step_pre_hook(lambda *_: seen.append([p.grad.clone() for p in net.parameters()]))
    opt.step_unprofiled(grad_scale=0.5)
    assert len(seen) == 1 and all(th.equal(a, b) for a, b in zip(seen[0], expected, strict=True))


@pytest.mark.parametrize(
    "change",
    [
        dict(momentum=0.9),
        dict(centered=True),
        dict(weight_decay=0.1),
        "closure",
        "missing grad",
        "param groups",
    ],
    ids=str,
)
def test_other_settings_take_torchs_step(change):
    ref, flat = _net(), _net()
    kw = change if isinstance(change, dict) else {}
    if change == "param groups":
        opt_ref = th.optim.RMSprop(
            [{"params": ref[0].parameters()}, {"params": ref[2].parameters(), "lr": 1e-2}],
            **SETTINGS,
        )
        opt = FlatRMSprop(
            [{"params": flat[0].parameters()}, {"params": flat[2].parameters(), "lr": 1e-2}],
            **SETTINGS,
        )
    else:
        opt_ref = th.optim.RMSprop(ref.parameters(), **{**SETTINGS, **kw})
        opt = FlatRMSprop(flat.parameters(), **{**SETTINGS, **kw})
    for step in range(6):
        _grads(ref, step)
        _grads(flat, step)
        if change == "missing grad":
            ref[2].bias.grad = flat[2].bias.grad = None
        if change == "closure":
            opt_ref.step(lambda: 0.0)
            assert opt.step(lambda: 0.0) == 0.0
        else:
            opt_ref.step()
            opt.step_unprofiled()
    _same(ref, flat, opt_ref, opt)


def test_save_load_and_outside_writes_are_seen():
    """A loaded state, a torch step in between (a closure) and parameters written or replaced
    from outside (``copy_``, ``.data``) all carry into the flat path's next step."""
    ref, flat = _net(), _net()
    opt_ref = th.optim.RMSprop(ref.parameters(), **SETTINGS)
    opt = FlatRMSprop(flat.parameters(), **SETTINGS)
    for step in range(3):
        for net, o in ((ref, opt_ref), (flat, opt)):
            _grads(net, step)
            o.step()
    saved = copy.deepcopy(opt.state_dict())
    # a fresh optimizer loads it (as SB3's load does), and so does torch's
    flat2 = copy.deepcopy(flat)
    opt2 = FlatRMSprop(flat2.parameters(), **SETTINGS)
    opt2.load_state_dict(saved)
    opt.load_state_dict(copy.deepcopy(saved))  # and the same one reloads its own
    for step in range(3, 6):
        for net, o in ((ref, opt_ref), (flat, opt), (flat2, opt2)):
            _grads(net, step)
            o.step(lambda: 0.0) if step == 4 else o.step()
        with th.no_grad():
            for net in (ref, flat, flat2):
                net[0].weight.mul_(0.5)
                net[2].bias.data.add_(1.0)
                net[2].weight.data = net[2].weight.data.clone()  # replaced, as .to() does
    _same(ref, flat, opt_ref, opt)
    _same(ref, flat2, opt_ref, opt2)
    # torch's RMSprop takes our state dict, and we take its
    ref2 = copy.deepcopy(ref)
    opt_ref2 = th.optim.RMSprop(ref2.parameters(), **SETTINGS)
    opt_ref2.load_state_dict(copy.deepcopy(opt.state_dict()))
    _same(ref, ref2, opt_ref, opt_ref2)


def test_step_hooks_run_once_per_step():
    net = _net()
    opt = FlatRMSprop(net.parameters(), **SETTINGS)
    calls = []
    pre = opt.register_step_pre_hook(lambda *_: calls.append("pre"))
    post = opt.register_step_post_hook(lambda *_: calls.append("post"))
    for step in range(2):
        _grads(net, step)
        opt.step_unprofiled() if step else opt.step()
    assert calls == ["pre", "post", "pre", "post"]
    pre.remove()
    post.remove()
    _grads(net, 2)
    opt.step_unprofiled()
    assert calls == ["pre", "post", "pre", "post"]
