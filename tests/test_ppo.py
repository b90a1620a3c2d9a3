"""PPO on the shared base against SB3's PPO, and RELAX-PPO's update: what it starts as, which
phi corrects a rollout, what the clip does to the correction. (Unbiasedness of the first epoch:
tests/test_rl_gradients.py and tests/test_factorised.py, with the other agents.)"""

import math

import numpy as np
import pytest
import stable_baselines3 as sb3
import torch as th
from conftest import compare_eval_plot, run_updates
from stable_baselines3.common.logger import configure

from relax_rl.agents import PPO, RELAXPPO
from relax_rl.agents.ppo import clipped_objective
from relax_rl.control_variate import relax_logit_gradient
from relax_rl.envs import MATCH_ENV_ID, make_env

TINY = {"net_arch": [16], "activation_fn": th.nn.Tanh}


def _params(policy):
    return th.cat([p.detach().reshape(-1) for p in policy.parameters()])


@pytest.mark.parametrize(
    ("env_id", "clip_range_vf", "policy_kwargs"),
    [
        ("CartPole-v1", None, {}),
        ("CartPole-v1", 0.1, {}),
        # Box actions: our stored-noise Gaussian against SB3's DiagGaussian, with rl-zoo3's
        # MuJoCo policy settings (log_std_init, no orthogonal init)
        ("Pendulum-v1", None, {"log_std_init": -2.0, "ortho_init": False}),
    ],
)
def test_one_update_equals_sb3_ppo(env_id, clip_range_vf, policy_kwargs):
    """The same rollout, weights and minibatch order through our ``train()`` and SB3 PPO's:
    the same parameters after 3 epochs of 4 minibatches (clipping, advantage normalisation
    per minibatch, value clipping, gradient clipping, the entropy bonus and Adam all in
    play)."""
    kw = dict(
        n_steps=16,
        batch_size=32,
        n_epochs=3,
        learning_rate=3e-3,
        clip_range=0.1,
        clip_range_vf=clip_range_vf,
        gae_lambda=0.9,
        ent_coef=0.01,
        seed=0,
        policy_kwargs={**TINY, **policy_kwargs},
    )
    ours = PPO("MlpPolicy", make_env(env_id, 8, 0), **kw)
    theirs = sb3.PPO("MlpPolicy", make_env(env_id, 8, 0), device="cpu", **kw)
    theirs.policy.optimizer = th.optim.Adam(theirs.policy.parameters(), lr=3e-3, eps=1e-5)
    _, callback = ours._setup_learn(128, None)
    ours.collect_rollouts(ours.env, callback, ours.rollout_buffer, ours.n_steps)
    theirs.policy.load_state_dict(ours.policy.state_dict())
    src, dst = ours.rollout_buffer, theirs.rollout_buffer
    for name in ("observations", "rewards", "returns", "episode_starts", "values", "log_probs"):
        getattr(dst, name)[:] = getattr(src, name)
    dst.advantages[:] = src.advantages
    dst.actions[:] = src.actions.reshape(dst.actions.shape)
    dst.full, dst.pos, dst.generator_ready = True, dst.buffer_size, False
    # what the collect loop stored is what SB3's policy says of the stored actions
    obs = th.as_tensor(dst.observations.reshape(-1, *dst.obs_shape))
    actions = th.as_tensor(dst.actions.reshape(-1, dst.action_dim))
    if env_id == "CartPole-v1":
        actions = actions.long().flatten()  # (SB3's train() does the same)
    values, log_prob, _ = theirs.policy.evaluate_actions(obs, actions)
    th.testing.assert_close(log_prob, th.as_tensor(src.log_probs).reshape(-1))
    th.testing.assert_close(values.flatten(), th.as_tensor(src.values).reshape(-1))
    for model in (ours, theirs):
        model.set_logger(configure(None, []))
        model._current_progress_remaining = 0.9
        np.random.seed(5)  # the minibatch order: numpy's global generator in SB3, ours
        ours.minibatch_rng = np.random.RandomState(5)  # its own
        model.train()
    th.testing.assert_close(_params(ours.policy), _params(theirs.policy), rtol=1e-4, atol=1e-5)
    initial = PPO("MlpPolicy", make_env(env_id, 8, 0), **kw).policy
    assert (_params(ours.policy) - _params(initial)).abs().max() > 1e-2  # it did move


def test_clipped_objective_and_its_mask():
    adv = th.tensor([1.0, 1.0, -1.0, -1.0, 1.0, -1.0])
    ratio = th.tensor([1.3, 0.7, 0.7, 1.3, 1.1, 0.95], requires_grad=True)
    surrogate, unclipped = clipped_objective(adv, ratio, 0.2)
    (grad,) = th.autograd.grad(surrogate.sum(), ratio)
    # held by the clip: A > 0 with r > 1.2 and A < 0 with r < 0.8; the others keep r A
    assert unclipped.tolist() == [0.0, 1.0, 0.0, 1.0, 1.0, 1.0]
    assert th.equal(grad != 0, unclipped.bool())


def _relax_ppo(n_epochs=1, batch_size=32, **kwargs):
    return RELAXPPO(
        "MlpPolicy",
        make_env(MATCH_ENV_ID, 8, 3, env_kwargs={"d": 6}),
        n_steps=4,
        batch_size=batch_size,
        n_epochs=n_epochs,
        seed=3,
        policy_kwargs={"net_arch": [8]},
        **kwargs,
    )


def test_relax_ppo_starts_as_ppo():
    """``cv_zero_init`` (its default): c_hat is 0, so the first update is PPO's, step by step."""
    relax = _relax_ppo(n_epochs=3, batch_size=16, learning_rate=1e-2)
    ppo = PPO(
        "MlpPolicy",
        make_env(MATCH_ENV_ID, 8, 3, env_kwargs={"d": 6}),
        n_steps=4,
        batch_size=16,
        n_epochs=3,
        learning_rate=1e-2,
        seed=3,
        policy_kwargs={"net_arch": [8]},
    )
    ppo.policy.load_state_dict(relax.policy.state_dict())
    g_relax, _ = run_updates(relax, 1)
    g_ppo, _ = run_updates(ppo, 1)  # (the same seed: the same minibatch order)
    assert g_relax.shape[0] == 6  # 3 epochs of 2 minibatches
    th.testing.assert_close(g_relax, g_ppo)


def test_a_rollout_is_corrected_by_phi_from_before_it():
    """phi steps on every minibatch, but the correction of a rollout uses phi as it was before
    the rollout: with the policy held (lr 0, ratio 1), each epoch's gradient on the one
    minibatch is the same, while phi moves; were the live phi used, they would differ."""
    model = _relax_ppo(n_epochs=4, learning_rate=0.0, cv_learning_rate=3e-2, cv_zero_init=False)
    run_updates(model, 3)
    before = [p.detach().clone() for p in model.control_variate.parameters()]
    grads, _ = run_updates(model, 1)
    assert grads.shape[0] == 4
    for g in grads[1:]:
        th.testing.assert_close(g, grads[0])
    moved = [
        not th.equal(a, b) for a, b in zip(before, model.control_variate.parameters(), strict=True)
    ]
    assert any(moved) and model.logger.name_to_value["train/cv_loss"] > 0
    # the next rollout's correction uses the phi this one trained
    next_grads, _ = run_updates(model, 1)
    assert not th.allclose(next_grads[0], grads[0])


def test_cv_n_epochs_limits_phi_to_the_first_epochs():
    model = _relax_ppo(n_epochs=3, learning_rate=0.0, cv_learning_rate=1e-2, cv_n_epochs=0)
    before = _params(model.control_variate)
    run_updates(model, 2)
    assert th.equal(_params(model.control_variate), before)
    model = _relax_ppo(n_epochs=3, learning_rate=0.0, cv_learning_rate=1e-2, cv_n_epochs=1)
    run_updates(model, 2)
    assert not th.equal(_params(model.control_variate), before)


def test_clip_holds_ppo_term_but_not_the_correction():
    """Where the clip holds a sample, PPO's gradient is 0 but RELAX-PPO's correction is not
    (its mean is 0 only over every action: masked, it is biased; tests/test_off_policy.py
    measures that bias): there the logit gradient is the correction alone, r-weighted."""
    model = _relax_ppo(learning_rate=0.0, cv_zero_init=False)
    run_updates(model, 2)
    data = model.rollout_buffer.get_all()
    held = data._replace(log_probs=data.log_probs - 1.0)  # r = e > 1 + eps everywhere
    losses = model.losses(held)
    rows = (losses.advantages > 0).nonzero().squeeze(-1)
    assert len(rows) > 0
    cv = model.control_variate
    obs = model.policy.actor_features(held.observations)
    ratio = th.full((len(obs),), math.e)
    pieces = (losses.logits, held.actions, held.noise_g, held.noise_v, obs)
    h = relax_logit_gradient(cv, *pieces, tilde_weight=ratio).h.detach()
    correction = cv.kappa.detach() * h
    assert correction[rows].abs().max() > 1e-4
    th.testing.assert_close(losses.logit_grad[rows], correction[rows])


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        (dict(n_steps=0), "n_steps must be >= 1"),
        (dict(batch_size=1), "batch_size must be >= 2"),
        (dict(n_epochs=0), "n_epochs must be >= 1"),
        (dict(clip_range=0.0), "clip_range must be > 0"),
        (dict(clip_range_vf=-1.0), "clip_range_vf must be > 0"),
        (dict(target_kl=0.0), "target_kl must be > 0"),
    ],
)
def test_bad_settings_are_refused_in_one_line(kwargs, needle):
    with pytest.raises(ValueError, match=needle) as err:
        PPO("MlpPolicy", make_env("CartPole-v1", 2, 0), **kwargs)
    assert "\n" not in str(err.value)


def test_target_kl_stops_the_epochs():
    model = PPO(
        "MlpPolicy",
        make_env("CartPole-v1", 4, 0),
        n_steps=32,
        batch_size=32,
        n_epochs=50,
        learning_rate=3e-2,
        target_kl=1e-4,
        seed=0,
        policy_kwargs=TINY,
    )
    grads, _ = run_updates(model, 2)
    assert model.logger.name_to_value["train/n_epochs"] < 50
    assert len(grads) < 2 * 50 * 4


def _match_ppo(ratio, env_id=MATCH_ENV_ID, **kwargs):
    return PPO(
        "MlpPolicy",
        make_env(env_id, 8, 3, env_kwargs={"d": 6} if env_id == MATCH_ENV_ID else None),
        n_steps=4,
        batch_size=16,
        n_epochs=3,
        learning_rate=3e-2,
        ratio=ratio,
        seed=3,
        policy_kwargs={"net_arch": [8]},
        **kwargs,
    )


@pytest.mark.parametrize("env_id", [MATCH_ENV_ID, "CartPole-v1"])
def test_per_dimension_ratio(env_id):
    """One clipped term per bit: the same first step as the joint ratio (r = 1), then other
    steps once the policy has moved; on a Discrete action (one dimension) the same update."""
    grads = {}
    for ratio in ("joint", "per_dimension"):
        grads[ratio], _ = run_updates(_match_ppo(ratio, env_id), 1)
    th.testing.assert_close(grads["joint"][0], grads["per_dimension"][0])
    model = _match_ppo("per_dimension", env_id)
    run_updates(model, 1)
    assert 0 <= model.logger.name_to_value["train/clip_fraction_per_dimension"] <= 1
    if env_id == MATCH_ENV_ID:
        assert not th.allclose(grads["joint"][1:], grads["per_dimension"][1:])
    else:
        th.testing.assert_close(grads["joint"], grads["per_dimension"])


def test_unknown_ratio_is_refused():
    with pytest.raises(ValueError, match="unknown ratio 'bits'; valid: joint, per_dimension"):
        _match_ppo("bits")


def test_cli_compare_eval_plot_variance_with_ppo(tmp_path, capsys):
    settings = ["--env", "CartPole-v1", "--total-steps", "1024", "--checkpoint-freq", "512"]
    settings += ["--set", "n_steps=32", "--set", "batch_size=64"]
    compare_eval_plot(tmp_path, capsys, "ppo", "relax-ppo", settings)
