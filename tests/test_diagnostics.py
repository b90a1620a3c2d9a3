"""Gradient-variance diagnostics: same keys for every agent, paired baseline for RELAX."""

import csv
import math

import pytest
import torch as th
from conftest import GROUP_AGENTS, agent_kwargs, run_updates
from stable_baselines3.common.logger import configure

from relax_rl.agents import ALGOS
from relax_rl.diagnostics import (
    GradientVarianceCallback,
    gradient_variance,
    log10_total_variance,
)
from relax_rl.envs import make_env

TINY = {"net_arch": [16], "activation_fn": th.nn.Tanh}


@pytest.mark.parametrize("name", sorted(ALGOS))
def test_grad_variance_logged_for_every_agent(name, tmp_path):
    # (a group agent's independent units are its groups: 4 groups of 2)
    model = ALGOS[name](
        "MlpPolicy",
        make_env("CartPole-v1", 8 if name in GROUP_AGENTS else 4, 0),
        seed=0,
        policy_kwargs=TINY,
        **agent_kwargs(name, n_steps=8, **({} if "ppo" in name else {"use_baseline": True})),
    )
    model.set_logger(configure(str(tmp_path), ["csv"]))
    model.learn(1_500, callback=GradientVarianceCallback(2), log_interval=5)
    with open(tmp_path / "progress.csv") as fh:
        rows = list(csv.DictReader(fh))
    logged = [r for r in rows if r.get("grad/log10_var")]
    assert logged, "grad/log10_var never logged"
    assert all(float(r["grad/norm"]) > 0 for r in logged)
    if ALGOS[name].paired_baseline:
        assert all(r.get("grad/log10_var_baseline") for r in logged)


def test_one_env_is_not_measured():
    """A single rollout's steps are neither independent nor alike: no figure from chunks."""
    model = ALGOS["reinforce"](
        "MlpPolicy", make_env("CartPole-v1", 1, 0), seed=0, policy_kwargs=TINY
    )
    _, records = run_updates(model, 3, GradientVarianceCallback(1))
    assert not any(k.startswith("grad/") for r in records for k in r)


def test_log10_total_variance_is_log_of_the_summed_variance():
    rows = th.tensor([[1.0, 5.0, 0.0], [3.0, 5.0, 0.0], [2.0, 5.0, 0.0]])
    # var of column 0 is 1; the constant columns (dead units) add nothing, not -30 each
    assert log10_total_variance(rows) == pytest.approx(0.0)
    assert log10_total_variance(rows, batch=10) == pytest.approx(-1.0)
    assert log10_total_variance(th.zeros(3, 2)) is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": "a2c"},
        {"name": "relax"},
        {"name": "relax", "cv_scale_decay": 0.5},
        {"name": "relax", "kappa_mode": "learned", "cv_options": {"kappa_init": 1.0}},
        {"name": "relax", "kappa_mode": "learned", "variance_objective": "batch"},
    ],
    ids=str,
)
def test_diagnostics_measure_the_estimator_of_their_update(kwargs):
    """The logged batch gradient is the very gradient its update applies (same kappa, scale and
    phi), so the variance logged beside it is that estimator's."""
    kwargs = dict(kwargs)
    name = kwargs.pop("name")
    model = ALGOS[name](
        "MlpPolicy",
        make_env("CartPole-v1", 4, 0),
        seed=0,
        n_steps=8,
        ent_coef=0.0,
        max_grad_norm=None,
        policy_kwargs=TINY,
        **kwargs,
    )
    grads, records = run_updates(model, 6, GradientVarianceCallback(1))
    for g, rec in zip(grads, records, strict=True):
        assert rec["grad/norm"] == pytest.approx(float(g.norm()), rel=1e-4)


def test_relax_variance_matches_a2c_when_kappa_is_zero():
    """With kappa = 0 RELAX is A2C: the paired measurement must report no reduction."""
    model = ALGOS["relax"](
        "MlpPolicy",
        make_env("CartPole-v1", 8, 0),
        seed=0,
        n_steps=16,
        policy_kwargs=TINY,
        kappa_mode="learned",
        cv_options={"kappa_init": 0.0},
    )
    _, callback = model._setup_learn(10**6, None)
    model.collect_rollouts(model.env, callback, model.rollout_buffer, model.n_steps)
    out = gradient_variance(model, model.rollout_buffer.get_all())
    assert out["grad/log10_var_reduction"] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("name", ["a2c", "relax"])
def test_grad_variance_equals_per_env_gradients_one_by_one(name):
    """The batched backward pass gives the same per-env gradients as one backward per env."""
    model = ALGOS[name](
        "MlpPolicy", make_env("CartPole-v1", 4, 1), seed=1, n_steps=8, policy_kwargs=TINY
    )
    model.learn(400)
    data = model.rollout_buffer.get_all()
    out = gradient_variance(model, data)
    actor = model.policy.actor_parameters()
    rows = []
    for env in range(4):
        objective = model.losses(data).per_sample_objective[data.env_index == env].mean()
        rows.append(th.cat([g.reshape(-1) for g in th.autograd.grad(objective, actor)]))
    g = th.stack(rows).double()
    expected = math.log10(float(g.var(0).sum() / 4))
    assert out["grad/log10_var"] == pytest.approx(float(expected), abs=1e-4)
    assert out["grad/norm"] == pytest.approx(float(g.mean(0).norm()), rel=1e-4)


def test_diagnostics_do_not_fire_parameter_hooks():
    """wandb.watch (SB3's WandbCallback) hooks the real parameters: the measurement must not
    show up there as if it were a training gradient."""
    model = ALGOS["relax"](
        "MlpPolicy", make_env("CartPole-v1", 4, 0), seed=0, n_steps=8, policy_kwargs=TINY
    )
    model.learn(64)
    fired = []
    for p in model.policy.parameters():
        p.register_hook(lambda g: fired.append(g.shape))
    out = gradient_variance(model, model.rollout_buffer.get_all())
    assert "grad/log10_var" in out and not fired
    model.train()
    assert fired  # the update itself does reach the hooks
