"""Agents on a CUDA device give the CPU's numbers (skipped where no CUDA device exists; run on
a GPU machine with ``pytest tests/test_device.py``). What CPU alone can check of device handling
(noise from the CPU generator, buffers on the agent's device) is covered by every other test."""

import pytest
import torch as th

from relax_rl.agents import ALGOS
from relax_rl.diagnostics import gradient_variance
from relax_rl.envs import make_env

TINY = {"net_arch": [16], "activation_fn": th.nn.Tanh}
DEVICE = "cuda"

needs_cuda = pytest.mark.skipif(not th.cuda.is_available(), reason="needs a CUDA device")

CASES = {
    "a2c": ("a2c", dict(n_envs=4, n_steps=8)),
    "relax": ("relax", dict(n_envs=4, n_steps=8)),
    "relax-learned-batch": (
        "relax",
        dict(n_envs=4, n_steps=8, kappa_mode="learned", variance_objective="batch"),
    ),
    "reinforce-whole-episodes": ("reinforce", dict(n_envs=1, n_steps=0)),
}


def _model(name, device, n_envs, **kwargs):
    return ALGOS[name](
        "MlpPolicy",
        make_env("CartPole-v1", n_envs, 0),
        seed=0,
        policy_kwargs=TINY,
        device=device,
        **kwargs,
    )


def _params(model):
    return th.cat([p.detach().cpu().reshape(-1) for p in model.policy.parameters()])


@needs_cuda
@pytest.mark.parametrize("case", list(CASES))
def test_device_run_matches_cpu(case, tmp_path):
    name, kwargs = CASES[case]
    cpu, dev = _model(name, "cpu", **kwargs), _model(name, DEVICE, **kwargs)
    for model in (cpu, dev):
        model.learn(400)
    assert dev.policy.device.type == th.device(DEVICE).type
    assert [e["r"] for e in cpu.ep_info_buffer] == [e["r"] for e in dev.ep_info_buffer]
    assert th.allclose(_params(cpu), _params(dev), atol=1e-4)
    data = dev.rollout_buffer.get_all()
    assert data.noise_u.device.type == th.device(DEVICE).type
    if kwargs["n_envs"] >= 4:
        out = gradient_variance(dev, data)
        assert out["grad/log10_var"] == pytest.approx(
            gradient_variance(cpu, cpu.rollout_buffer.get_all())["grad/log10_var"], abs=1e-3
        )
    action, _ = dev.predict(dev.env.reset(), deterministic=True)
    assert action.shape == (kwargs["n_envs"],)
    dev.save(tmp_path / "m")
    loaded = ALGOS[name].load(tmp_path / "m", env=dev.env, device=DEVICE)
    loaded.learn(100)
    assert all(th.isfinite(p).all() for p in loaded.policy.parameters())


@needs_cuda
def test_decomposition_runs_on_the_device():
    """The variance decomposition of an agent on the device (its rollouts' bootstrap values
    are read back to the host) gives the CPU's terms."""
    from relax_rl.decomposition import decompose
    from relax_rl.envs import CHAIN_ENV_ID

    terms = []
    for device in ("cpu", DEVICE):
        model = ALGOS["a2c"](
            "MlpPolicy",
            make_env(CHAIN_ENV_ID, 4, 0),
            n_steps=2,  # shorter than the chain: the window's end bootstraps with V
            seed=0,
            policy_kwargs=TINY,
            device=device,
        )
        terms.append(decompose(model, CHAIN_ENV_ID, n_states=8, n_actions=2, seed=0)[0])
    assert terms[1].total == pytest.approx(terms[0].total, rel=1e-3)


class _OnDevice(th.Tensor):
    """A CPU tensor that the host treats as an accelerator's: ``numpy()`` refuses as torch does
    for a CUDA tensor, ``cpu()`` gives the data."""

    def numpy(self, *args, **kwargs):
        raise TypeError("can't convert cuda:0 device type tensor to numpy")

    def cpu(self, *args, **kwargs):
        return self.as_subclass(th.Tensor)


def test_decomposition_reads_device_tensors_through_the_host():
    """Without a GPU: the policy's outputs stand in for device tensors, and the decomposition
    (whose rollouts bootstrap with V at the window's end) copies them to the host before numpy,
    with the CPU's numbers."""
    from relax_rl.decomposition import decompose
    from relax_rl.envs import CHAIN_ENV_ID

    terms = []
    for on_device in (False, True):
        model = ALGOS["a2c"](
            "MlpPolicy", make_env(CHAIN_ENV_ID, 4, 0), n_steps=2, seed=0, policy_kwargs=TINY
        )
        if on_device:
            plain = model.policy.logits_and_values
            model.policy.logits_and_values = lambda obs, plain=plain: tuple(
                t.as_subclass(_OnDevice) for t in plain(obs)
            )
        terms.append(decompose(model, CHAIN_ENV_ID, n_states=8, n_actions=2, seed=0)[0])
    assert terms[1] == terms[0]
