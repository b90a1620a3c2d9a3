"""The agents' batch policy-gradient estimates against exact gradients on small envs.

Bandit: the seed's toy as a one-step env. Chain: 3 cells, 3 steps, 8 action sequences. With
gamma = 1, episodes that end exactly at the rollout end, and ``pg_loss`` the batch mean over
``n_envs * horizon`` steps, ``E[grad pg_loss] = -grad J / horizon``.
"""

import itertools
import math

import numpy as np
import pytest
import torch as th

from agents import A2C, REINFORCE, RELAX
from envs import CHAIN_ENV_ID, TOY_ENV_ID, ChainEnv, make_env

TINY = {"net_arch": [8], "activation_fn": th.nn.Tanh}


TARGET = 0.2  # a bandit with a resolvable gradient (t = 0.499 hides it in noise by design)


def _agent(cls, env_id, n_envs, horizon, seed=0, **kwargs):
    env_kwargs = {"target": TARGET} if env_id == TOY_ENV_ID else None
    env = make_env(env_id, n_envs, seed, env_kwargs=env_kwargs)
    kwargs.setdefault("use_baseline", False)
    return cls(
        "MlpPolicy",
        env,
        n_steps=horizon,
        gamma=1.0,
        gae_lambda=1.0,
        seed=seed,
        policy_kwargs=TINY,
        **kwargs,
    )


def _flat(grads):
    return th.cat([g.reshape(-1) for g in grads])


def batch_gradients(model, k: int) -> th.Tensor:
    """``k`` independent batch estimates of ``grad pg_loss`` at fixed policy, ``(k, P)``."""
    _, callback = model._setup_learn(10**9, None)
    actor = model.policy.actor_parameters()
    out = []
    for _ in range(k):
        model.collect_rollouts(model.env, callback, model.rollout_buffer, model.n_steps)
        pg_loss = model.losses(model.rollout_buffer.get_all()).pg_loss
        out.append(_flat(th.autograd.grad(pg_loss, actor)).detach())
    return th.stack(out)


def exact_bandit_gradient(model, target: float) -> th.Tensor:
    obs = th.ones(1, 1)
    logits, _ = model.policy.logits_and_values(obs)
    probs = th.softmax(logits, -1)[0]
    rewards = -((th.tensor([0.0, 1.0]) - target) ** 2)
    actor = model.policy.actor_parameters()
    return _flat(th.autograd.grad((probs * rewards).sum(), actor))


def exact_chain_gradient(model) -> th.Tensor:
    env = ChainEnv()
    total = th.zeros(())
    for actions in itertools.product([0, 1], repeat=env.horizon):
        pos, log_p, ret = 0, th.zeros(()), 0.0
        for t, a in enumerate(actions):
            obs = th.as_tensor(env.observe(pos, t)).unsqueeze(0)
            logits, _ = model.policy.logits_and_values(obs)
            log_p = log_p + th.log_softmax(logits, -1)[0, a]
            pos, r = env.transition(pos, a)
            ret += r
        total = total + log_p.exp() * ret
    return _flat(th.autograd.grad(total, model.policy.actor_parameters()))


def _assert_unbiased(estimates: th.Tensor, expected: th.Tensor) -> None:
    se = estimates.std(0) / math.sqrt(estimates.shape[0])
    z = (estimates.mean(0) - expected) / se.clamp_min(1e-12)
    resolved = expected.abs() > 4 * se
    assert z.abs().max() < 4.5, z  # ~40 coordinates: 4.5 keeps family-wise error tiny
    assert resolved.any(), "the test cannot tell the gradient from zero"


@pytest.mark.parametrize("cls", [REINFORCE, A2C, RELAX])
def test_bandit_batch_gradient_unbiased(cls):
    model = _agent(cls, TOY_ENV_ID, n_envs=16, horizon=1, use_baseline=cls is A2C)
    with th.no_grad():  # a policy away from uniform, so that the gradient is large
        model.policy.action_net.bias.copy_(th.tensor([0.8, -0.8]))
    est = batch_gradients(model, 600)
    _assert_unbiased(est, -exact_bandit_gradient(model, TARGET))


@pytest.mark.parametrize("cls", [REINFORCE, A2C, RELAX])
def test_chain_batch_gradient_unbiased(cls):
    model = _agent(cls, CHAIN_ENV_ID, n_envs=16, horizon=3, use_baseline=cls is A2C)
    est = batch_gradients(model, 600)
    _assert_unbiased(est, -exact_chain_gradient(model) / 3)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(kappa_mode="learned", variance_objective="batch"),
        dict(kappa_mode="learned", variance_objective="per_sample", cv_scale_decay=0.9),
        dict(kappa_mode="optimal", use_baseline=True),
    ],
)
def test_relax_variants_unbiased_with_trained_control_variate(kwargs):
    """Every RELAX variant stays unbiased after phi (and kappa) have trained: the policy is held
    fixed (lr 0) while the control variate learns for 200 updates."""
    model = _agent(
        RELAX,
        CHAIN_ENV_ID,
        n_envs=16,
        horizon=3,
        learning_rate=0.0,
        cv_learning_rate=3e-3,
        seed=3,
        **kwargs,
    )
    model.learn(3 * 16 * 200)
    assert abs(model.control_variate.kappa.item()) > 0  # the control variate is in use
    _assert_unbiased(batch_gradients(model, 600), -exact_chain_gradient(model) / 3)


def test_relax_after_training_phi_has_lower_variance_than_reinforce():
    """Train only phi (policy lr 0) on the chain, then compare batch-gradient variance with
    REINFORCE's at the very same policy (summed over actor coordinates)."""
    relax = _agent(
        RELAX, CHAIN_ENV_ID, n_envs=16, horizon=3, learning_rate=0.0, cv_learning_rate=3e-3, seed=1
    )
    before = batch_gradients(relax, 300).var(0).sum().item()
    relax.learn(3 * 16 * 600)  # 600 updates of phi; the policy does not move (lr 0)
    after = batch_gradients(relax, 300).var(0).sum().item()
    reinforce = _agent(REINFORCE, CHAIN_ENV_ID, n_envs=16, horizon=3, seed=2)
    reinforce.policy.load_state_dict(relax.policy.state_dict())
    baseline = batch_gradients(reinforce, 300).var(0).sum().item()
    assert after < before
    assert after < 0.7 * baseline, (after, baseline)
    # Unbiased still, with the trained c_phi.
    _assert_unbiased(batch_gradients(relax, 600), -exact_chain_gradient(relax) / 3)


def test_stored_noise_rebuilds_the_taken_actions():
    model = _agent(RELAX, "CartPole-v1", n_envs=4, horizon=16)
    _, callback = model._setup_learn(10**6, None)
    model.collect_rollouts(model.env, callback, model.rollout_buffer, model.n_steps)
    data = model.rollout_buffer.get_all()
    logits, _ = model.policy.logits_and_values(data.observations)
    z = th.log_softmax(logits, -1) - th.log(-th.log(data.noise_u))
    assert th.equal(z.argmax(-1), data.actions)
    assert np.isclose(
        th.log_softmax(logits, -1).gather(-1, data.actions[:, None]).squeeze(-1).detach(),
        data.log_probs,
        atol=1e-5,
    ).all()
