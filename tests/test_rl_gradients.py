"""The agents' policy gradients against exact gradients on small envs, read from the real
update path: the gradient ``train()`` hands to the optimizer (``conftest.run_updates``), with the
policy held fixed (learning rate 0) while everything else (V, phi, kappa, scales) runs as usual.

Bandit: the seed's toy as a one-step env. Chain: 3 cells, 3 steps, 8 action sequences. With
gamma = 1, episodes that end exactly at the rollout end, and ``pg_loss`` the batch mean over
``n_envs * horizon`` steps, ``E[grad pg_loss] = -grad J / horizon``.
"""

import itertools
import math

import numpy as np
import pytest
import torch as th
from conftest import assert_unbiased, run_updates

from relax_rl.agents import A2C, PPO, REINFORCE, RELAX, RELAXPPO
from relax_rl.envs import CHAIN_ENV_ID, TOY_ENV_ID, ChainEnv, make_env

TINY = {"net_arch": [8], "activation_fn": th.nn.Tanh}
TARGET = 0.2  # a bandit with a resolvable gradient (t = 0.499 hides it in noise by design)
HORIZON = {TOY_ENV_ID: 1, CHAIN_ENV_ID: 3}


def _agent(cls, env_id, n_envs, seed=0, **kwargs):
    """An agent whose policy does not move (lr 0), without clipping or entropy bonus, so that
    each update's gradient is one draw of its batch estimator at a fixed policy. Without a
    baseline, whole episodes of one env; with one, rollouts of exactly one episode per env."""
    env_kwargs = {"target": TARGET} if env_id == TOY_ENV_ID else None
    if issubclass(cls, PPO):  # its first epoch: one step on the whole rollout, ratio 1
        n_steps = HORIZON[env_id]
        kwargs = dict(n_epochs=1, batch_size=n_envs * n_steps, normalize_advantage=False, **kwargs)
    else:
        kwargs.setdefault("use_baseline", cls is not REINFORCE)
        n_steps = HORIZON[env_id] if kwargs["use_baseline"] else 0
    model = cls(
        "MlpPolicy",
        make_env(env_id, n_envs, seed, env_kwargs=env_kwargs),
        n_steps=n_steps,
        gamma=1.0,
        gae_lambda=1.0,
        ent_coef=0.0,
        max_grad_norm=None,
        learning_rate=0.0,
        seed=seed,
        policy_kwargs=TINY,
        **kwargs,
    )
    if env_id == TOY_ENV_ID:  # a policy away from uniform, so that the gradient is large
        with th.no_grad():
            model.policy.action_net.bias.copy_(th.tensor([0.8, -0.8]))
    return model


def _flat(grads):
    return th.cat([g.reshape(-1) for g in grads])


def exact_gradient(model, env_id) -> th.Tensor:
    """``grad pg_loss`` in expectation: ``-grad J / horizon``."""
    actor = model.policy.actor_parameters()
    if env_id == TOY_ENV_ID:
        logits, _ = model.policy.logits_and_values(th.ones(1, 1))
        rewards = -((th.tensor([0.0, 1.0]) - TARGET) ** 2)
        return -_flat(th.autograd.grad((th.softmax(logits, -1)[0] * rewards).sum(), actor))
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
    return -_flat(th.autograd.grad(total, actor)) / env.horizon


# (agent, n_envs, updates): one env learns from one episode per update, so it needs more
# updates; many envs few (the same samples, less per-update overhead).
AGENTS = [(REINFORCE, 1, 3000), (A2C, 64, 160), (RELAX, 64, 160), (PPO, 64, 160)]


@pytest.mark.parametrize("env_id", [TOY_ENV_ID, CHAIN_ENV_ID])
@pytest.mark.parametrize(
    ("cls", "n_envs", "updates"), AGENTS, ids=lambda x: getattr(x, "__name__", None)
)
def test_update_gradient_unbiased(cls, n_envs, updates, env_id):
    model = _agent(cls, env_id, n_envs)
    grads, _ = run_updates(model, updates)
    assert_unbiased(grads, exact_gradient(model, env_id))


RELAX_VARIANTS = {
    "optimal, cross-fitted": dict(n_envs=64),
    "optimal, one env": dict(n_envs=1, use_baseline=False),
    "optimal, too few envs to cross-fit": dict(n_envs=4),  # the running moments
    "optimal, scale decay 0.9": dict(n_envs=64, cv_scale_decay=0.9),
    "learned, batch": dict(n_envs=64, kappa_mode="learned", variance_objective="batch"),
    "learned, per-sample, scale decay 0": dict(
        n_envs=64, kappa_mode="learned", variance_objective="per_sample", cv_scale_decay=0.0
    ),
    "paper": dict(n_envs=1, use_baseline=False, kappa_mode="learned", variance_objective="batch"),
}


@pytest.mark.parametrize("env_id", [TOY_ENV_ID, CHAIN_ENV_ID])
@pytest.mark.parametrize("variant", list(RELAX_VARIANTS))
def test_relax_variants_unbiased_with_trained_control_variate(variant, env_id):
    """Every RELAX option stays unbiased while phi, kappa and the scale train: updates of the
    control variate alone first (policy lr 0), then the next updates' gradients (about 10k
    samples whatever the number of envs)."""
    kwargs = dict(RELAX_VARIANTS[variant])
    n_envs = kwargs.pop("n_envs")
    model = _agent(RELAX, env_id, n_envs, seed=3, cv_learning_rate=3e-3, **kwargs)
    warmup, updates = {1: (200, 3000), 4: (200, 600)}.get(n_envs, (60, 160))
    run_updates(model, warmup)
    grads, records = run_updates(model, updates)
    kappas = [r["train/kappa"] for r in records if "train/kappa" in r]
    assert sum(k != 0 for k in kappas) > len(kappas) // 4  # the control variate is in use
    assert_unbiased(grads, exact_gradient(model, env_id))


def test_relax_correction_has_mean_zero_with_normalized_advantages():
    """With ``normalize_advantage`` the target is A2C's own estimate (the advantages
    standardised by the batch's mean and std): RELAX's correction, paired with A2C on the very
    same batches (same seed, lr 0), has mean 0 while phi trains. Each env's optimal kappa
    comes from the other envs' samples, standardised by their own statistics; standardised by
    the whole batch's, which hold the env's own advantages, it was biased (z about 10 here)."""
    relax = _agent(RELAX, TOY_ENV_ID, 8, seed=3, cv_learning_rate=3e-3, normalize_advantage=True)
    a2c = _agent(A2C, TOY_ENV_ID, 8, seed=3, normalize_advantage=True)
    a2c.policy.load_state_dict(relax.policy.state_dict())
    assert relax.n_envs >= relax.control_variate.kappa_rule.MIN_CROSS_FIT_ENVS  # cross-fitted
    g_relax, r_relax = run_updates(relax, 800)
    g_a2c, r_a2c = run_updates(a2c, 800)
    losses = [[r.get("train/value_loss") for r in records] for records in (r_relax, r_a2c)]
    assert losses[0] == losses[1]  # the very same batches
    kappas = [r["train/kappa"] for r in r_relax[200:] if "train/kappa" in r]
    assert sum(k != 0 for k in kappas) > len(kappas) // 4  # the control variate is in use
    correction = (g_relax - g_a2c)[200:]  # after 200 updates of phi alone
    se = correction.std(0) / math.sqrt(correction.shape[0])
    assert (se > 1e-6).any()
    z = correction.mean(0) / se.clamp_min(1e-12)
    assert z.abs().max() < 4.5, z


@pytest.mark.parametrize("env_id", [TOY_ENV_ID, CHAIN_ENV_ID])
def test_relax_ppo_first_epoch_unbiased_with_trained_control_variate(env_id):
    """RELAX-PPO's first epoch (ratio 1) is on-policy RELAX: unbiased while phi trains (200
    updates of phi alone first, so that the correction is far from 0)."""
    model = _agent(RELAXPPO, env_id, 16, seed=3, cv_learning_rate=3e-3)
    run_updates(model, 200)
    grads, records = run_updates(model, 600)
    assert abs(records[-1]["train/kappa"]) > 0.05 and records[-1]["train/cv_loss"] > 0
    assert_unbiased(grads, exact_gradient(model, env_id))


def test_scale_from_the_current_batch_would_be_detected():
    """The check above has the power to see the bias of a c_hat scaled by the current batch's
    advantages (the review's bug): on two pulls of the bandit it lies far outside 4.5 SE."""
    model = _agent(
        RELAX,
        TOY_ENV_ID,
        2,
        kappa_mode="learned",
        variance_objective="per_sample",
        cv_scale_decay=0.0,
        cv_learning_rate=3e-3,
    )
    original = model.losses

    def current_batch_scale(data):
        model.control_variate.scale.copy_(data.advantages.pow(2).mean().sqrt())
        return original(data)

    model.losses = current_batch_scale
    run_updates(model, 200)
    grads, _ = run_updates(model, 600)
    with pytest.raises(AssertionError):
        assert_unbiased(grads, exact_gradient(model, TOY_ENV_ID))


def test_relax_after_training_phi_has_lower_variance_than_a2c():
    """Train only phi (policy lr 0) on the chain, then compare the variance of the update's
    gradient with A2C's at the very same policy and critic (summed over actor coordinates)."""
    relax = _agent(RELAX, CHAIN_ENV_ID, 16, seed=1, cv_learning_rate=3e-3)
    run_updates(relax, 600)
    after, _ = run_updates(relax, 300)
    a2c = _agent(A2C, CHAIN_ENV_ID, 16, seed=2)
    a2c.policy.load_state_dict(relax.policy.state_dict())
    baseline, _ = run_updates(a2c, 300)
    assert after.var(0).sum() < 0.8 * baseline.var(0).sum(), (
        after.var(0).sum(),
        baseline.var(0).sum(),
    )
    assert_unbiased(after, exact_gradient(relax, CHAIN_ENV_ID))


def test_stored_noise_rebuilds_the_taken_actions():
    model = RELAX("MlpPolicy", make_env("CartPole-v1", 4, 0), n_steps=16, policy_kwargs=TINY)
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


@pytest.mark.parametrize("kappa_mode", ["optimal", "learned"])
def test_relax_logit_gradients_are_the_papers_estimator(kappa_mode):
    """The update's per-sample logit gradients (score terms in closed form, c evaluated at z and
    z~ only) equal autograd's derivative of the paper's surrogate (Eq. 8, `relax` with
    c(z~.detach()) in the score multiplier), and so does the surrogate's value."""
    from relax_rl.estimators import categorical_conditional, categorical_sample, reinforce, relax

    model = RELAX(
        "MlpPolicy",
        make_env("CartPole-v1", 4, 0),
        seed=0,
        n_steps=8,
        kappa_mode=kappa_mode,
        policy_kwargs=TINY,
    )
    model.learn(640)  # phi and kappa away from their initial values
    data = model.rollout_buffer.get_all()
    losses = model.losses(data)
    kappa = model._kappa_terms[2].detach()
    logits = model.policy.logits_and_values(data.observations)[0].detach().requires_grad_()
    log_prob = th.log_softmax(logits, -1).gather(-1, data.actions[:, None]).squeeze(-1)
    z, _ = categorical_sample(logits, data.noise_u)
    z_tilde = categorical_conditional(logits, data.actions, data.noise_v)
    obs = data.observations

    def c(x):
        return -model.control_variate.shape(x, obs)

    f_b = -data.advantages
    score = reinforce(f_b, log_prob)
    surrogate = score + kappa * (relax(f_b, log_prob, z, z_tilde, c) - score)
    (expected,) = th.autograd.grad(surrogate.sum(), logits)
    assert th.allclose(losses.logit_grad, expected, rtol=1e-5, atol=1e-5), (
        (losses.logit_grad - expected).abs().max()
    )
    assert th.allclose(losses.surrogate, surrogate.detach(), rtol=1e-5, atol=1e-5)
    assert float(kappa.abs().max()) > 1e-3  # the correction term is really in there


def test_relax_trains_phi_as_with_the_papers_surrogate():
    """phi's objective (optimal kappa) from the update's fast path has the gradient it has when
    g and h are taken by autograd from the paper's surrogate (c at z, z~ and the detached z~)."""
    from relax_rl.estimators import categorical_conditional, categorical_sample, reinforce, relax

    model = RELAX("MlpPolicy", make_env("CartPole-v1", 4, 0), seed=0, n_steps=8, policy_kwargs=TINY)
    model.learn(640)
    data = model.rollout_buffer.get_all()
    cv = model.control_variate
    phi = [p for p in cv.parameters() if p.requires_grad]
    fast, _ = model.variance_loss(model.losses(data))
    fast_grads = th.autograd.grad(fast, phi)

    logits, _ = model.policy.logits_and_values(data.observations)
    log_prob = th.log_softmax(logits, -1).gather(-1, data.actions[:, None]).squeeze(-1)
    z, _ = categorical_sample(logits, data.noise_u)
    z_tilde = categorical_conditional(logits, data.actions, data.noise_v)
    f_b = -data.advantages
    score = reinforce(f_b, log_prob)
    correction = relax(f_b, log_prob, z, z_tilde, lambda x: -cv.shape(x, data.observations))
    (g,) = th.autograd.grad(score.sum(), logits, retain_graph=True)
    (h,) = th.autograd.grad((correction - score).sum(), logits, create_graph=True)
    reference = -(g * h).sum().pow(2) / (h.pow(2).sum() * g.pow(2).sum())
    for got, want in zip(fast_grads, th.autograd.grad(reference, phi), strict=True):
        assert th.allclose(got, want, rtol=1e-3, atol=1e-7), (got - want).abs().max()
