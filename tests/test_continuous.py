"""Box actions: the Gaussian policy acting from stored noise, every agent's gradient through
``train()`` against the exact gradient of a Gaussian bandit, LAX's reparameterised term at the
taken action (never a resampled one), and the SB3 habits (callbacks, save/load, eval, compare,
plot) on a Box env."""

import math

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from conftest import (
    agent_kwargs,
    assert_unbiased,
    compare_eval_plot,
    held_bandit_agent,
    run_updates,
)
from gymnasium import spaces

from relax_rl.actions import ActionSpec
from relax_rl.agents import A2C, ALGOS, PPO, REINFORCE, RELAX, RELAXPPO
from relax_rl.control_variate import relax_logit_gradient
from relax_rl.envs import GAUSSIAN_BANDIT_ENV_ID, make_env
from relax_rl.estimators import uniform_noise
from relax_rl.groups import GroupVecEnv

D = 2
TARGET = 0.5


def test_gaussian_spec_samples_scores_and_clips():
    space = spaces.Box(-1.0, 2.0, (3,), np.float32)
    spec = ActionSpec(space)
    assert (spec.n_logits, spec.n_noise, spec.relaxed_dim) == (6, 3, 3)
    logits = th.randn(5, 6, requires_grad=True)
    eps = spec.perturb(uniform_noise((5, 3), th.Generator().manual_seed(0)))
    a, log_prob = spec.sample(logits, eps)
    mean, log_std = logits[:, :3], logits[:, 3:]
    th.testing.assert_close(a, mean + log_std.exp() * eps)
    normal = th.distributions.Normal(mean, log_std.exp())
    th.testing.assert_close(log_prob, normal.log_prob(a.detach()).sum(-1))
    (auto,) = th.autograd.grad(spec.log_prob(logits, a.detach()).sum(), logits)
    th.testing.assert_close(spec.score(logits.detach(), a.detach()), auto)
    _, entropy = spec.log_prob_and_entropy(logits, a.detach())
    th.testing.assert_close(entropy, normal.entropy().sum(-1))
    wide = np.array([[5.0, -5.0, 0.5]], dtype=np.float32)
    assert spec.to_env(wide).tolist() == [[2.0, -1.0, 0.5]]
    # the standard normal from uniforms
    z = spec.perturb(uniform_noise((200_000, 1), th.Generator().manual_seed(1)))
    assert abs(float(z.mean())) < 0.01 and abs(float(z.std()) - 1) < 0.01


@pytest.mark.parametrize(
    "space",
    [spaces.Box(-np.inf, np.inf, (2,)), spaces.Box(-1, 1, (2, 2))],
    ids=["infinite bounds", "2-D"],
)
def test_bad_boxes_are_refused_in_one_line(space):
    with pytest.raises(ValueError) as err:
        ActionSpec(space)
    assert "\n" not in str(err.value)
    assert "finite bounds" in str(err.value) or "Box of shape (2, 2)" in str(err.value)


def _bandit_agent(cls, n_envs, seed=0, **kwargs):
    """An agent whose policy does not move (lr 0), away from the target (mean 0, std 0.7)."""
    if issubclass(cls, PPO):
        kwargs = dict(n_epochs=1, batch_size=n_envs, normalize_advantage=False, **kwargs)
    else:
        kwargs["use_baseline"] = kwargs.pop("use_baseline", cls is not REINFORCE)
    env = make_env(GAUSSIAN_BANDIT_ENV_ID, n_envs, seed, env_kwargs={"d": D, "target": TARGET})
    if cls is REINFORCE and n_envs > 1:
        env = GroupVecEnv(env, n_envs, seed)  # whole episodes: one of each env per update
    model = held_bandit_agent(
        cls, env, seed, n_steps=1 if kwargs.get("use_baseline", True) else 0, **kwargs
    )
    with th.no_grad():
        model.policy.log_std.fill_(math.log(0.7))
    return model


def _exact_gradient(model):
    """``grad pg_loss`` in expectation, ``-grad J`` with ``J = -|mean - t|^2 - |std|^2``."""
    logits, _ = model.policy.logits_and_values(th.ones(1, 1))
    mean, log_std = logits[0, :D], logits[0, D:]
    j = -((mean - TARGET) ** 2).sum() - (2 * log_std).exp().sum()
    actor = model.policy.actor_parameters()
    return -th.cat([g.reshape(-1) for g in th.autograd.grad(j, actor)])


@pytest.mark.parametrize(
    ("cls", "n_envs", "updates", "kwargs"),
    [
        # REINFORCE: 64 one-step episodes per update, the estimator of one env's 64 updates in
        # one update call (the one-env path is checked on Toy and Chain in test_rl_gradients)
        (REINFORCE, 64, 50, {}),
        (A2C, 64, 160, {}),
        (RELAX, 64, 160, {"cv_learning_rate": 3e-3}),
        (RELAX, 64, 160, {"cv_learning_rate": 3e-3, "kappa_mode": "learned"}),
        (PPO, 64, 160, {}),
        (RELAXPPO, 64, 160, {"cv_learning_rate": 3e-3}),
    ],
    ids=["reinforce", "a2c", "lax", "lax-learned-kappa", "ppo", "lax-ppo"],
)
def test_update_gradient_unbiased_on_a_gaussian_bandit(cls, n_envs, updates, kwargs):
    model = _bandit_agent(cls, n_envs, seed=2, **kwargs)
    if cls in (RELAX, RELAXPPO):  # the control variate trained first (the policy does not move)
        run_updates(model, 60)
    grads, _ = run_updates(model, updates)
    assert_unbiased(grads, _exact_gradient(model))


def test_lax_reparameterises_the_taken_action():
    """LAX's ``dc_hat(mean + std * eps)`` is at the stored ``eps``: ``z`` rebuilt from the
    buffer is the action the env was given (before clipping), and the update's correction
    equals the LAX formula written out at that action. Evaluating ``c_hat`` at a freshly
    resampled action (the paper's continuous bug) would fail both."""
    model = _bandit_agent(RELAX, 8, kappa_mode="learned", cv_learning_rate=3e-3)
    run_updates(model, 20)
    data = model.rollout_buffer.get_all()
    logits, _ = model.policy.logits_and_values(data.observations)
    spec = model.policy.action_spec
    z, z_tilde = spec.rebuild(logits, data.actions, data.noise_g, data.noise_v)
    th.testing.assert_close(z, data.actions)
    assert th.equal(z_tilde, data.actions)
    cv = model.control_variate
    obs = model.policy.actor_features(data.observations).detach()
    h = relax_logit_gradient(cv, logits, data.actions, data.noise_g, data.noise_v, obs).h
    # LAX by hand: -c(a) ... in the minimised surrogate's sign: c(a) dlog pi - dc(a(theta))
    leaf = logits.detach().requires_grad_()
    mean, log_std = leaf[:, :D], leaf[:, D:]
    a_theta = mean + log_std.exp() * data.noise_g
    c_a = cv.shape(a_theta, obs)
    (dc,) = th.autograd.grad(c_a.sum(), leaf)
    expected = c_a.detach().unsqueeze(-1) * spec.score(leaf.detach(), data.actions) - dc
    th.testing.assert_close(h.detach(), expected)
    resampled = th.randn_like(data.noise_g)
    z_wrong, _ = spec.rebuild(logits, data.actions, resampled, data.noise_v)
    assert not th.allclose(z_wrong, data.actions)


@pytest.mark.parametrize("name", sorted(ALGOS))
def test_agents_learn_the_gaussian_bandit(name):
    whole = name == "reinforce"
    env = make_env(GAUSSIAN_BANDIT_ENV_ID, 8, 0, env_kwargs={"d": D})
    model = ALGOS[name](
        "MlpPolicy",
        GroupVecEnv(env, 8, 0) if whole else env,  # REINFORCE: 8 whole episodes per update
        learning_rate=1e-2,
        seed=0,
        policy_kwargs={"net_arch": [16]},
        **agent_kwargs(
            name, n_steps=0 if whole else 16, **({"batch_size": 64} if "ppo" in name else {})
        ),
    )
    model.learn(6_000)
    mean = model.policy.logits_and_values(th.ones(1, 1))[0][0, :D]
    assert (mean - TARGET).abs().max() < 0.2, mean  # starts at 0.5 from the target


@pytest.mark.parametrize("name", sorted(ALGOS))
def test_box_callbacks_and_save_load_continue(name, tmp_path):
    def model(seed=5):
        return ALGOS[name](
            "MlpPolicy",
            make_env("Pendulum-v1", 4, seed),
            seed=seed,
            policy_kwargs={"net_arch": [8]},
            **agent_kwargs(
                name, n_steps=8, **({"batch_size": 16} if "ppo" in name else {"use_baseline": True})
            ),
        )

    straight = model()
    straight.learn(320)
    straight.learn(320, reset_num_timesteps=False)
    first = model()
    first.learn(320)
    first.save(tmp_path / "m")
    loaded = ALGOS[name].load(tmp_path / "m", env=first.env, force_reset=False)
    loaded.learn(320, reset_num_timesteps=False)
    for p, q in zip(straight.policy.parameters(), loaded.policy.parameters(), strict=True):
        assert th.allclose(p, q)


@pytest.mark.parametrize("normalize", [[], ["--normalize"]])
def test_cli_compare_eval_plot_variance_on_pendulum(tmp_path, capsys, normalize):
    settings = ["--env", "Pendulum-v1", "--total-steps", "800", "--checkpoint-freq", "400"]
    settings += normalize
    compare_eval_plot(tmp_path, capsys, "a2c", "relax", settings)


class DictActions(gym.Env):
    observation_space = spaces.Box(0.0, 1.0, (1,), np.float32)
    action_space = spaces.Dict({"a": spaces.Box(-1.0, 1.0, (1,))})


def test_dict_actions_refused_in_one_line():
    with pytest.raises(ValueError, match="unsupported action space Dict") as err:
        A2C("MlpPolicy", DictActions())
    assert "\n" not in str(err.value)


def test_mujoco_copies_step_as_the_original():
    """The variance decomposition restarts envs from copies: a MuJoCo env's deep copy alone
    steps elsewhere; with its state set again it steps exactly as the original."""
    pytest.importorskip("mujoco")
    from relax_rl.decomposition import check_copyable, copy_env

    env = gym.make("HalfCheetah-v5")
    env.reset(seed=0)
    env.action_space.seed(0)
    for _ in range(5):
        env.step(env.action_space.sample())
    clone = copy_env(env)
    for _ in range(20):
        action = env.action_space.sample()
        assert np.array_equal(env.step(action)[0], clone.step(action)[0])
    check_copyable("InvertedPendulum-v5")  # no error


class ForgetfulCopy(gym.Env):
    """Its deep copy is a fresh env: the copy does not continue from the original's state."""

    observation_space = spaces.Box(-np.inf, np.inf, (1,), np.float32)
    action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x = 0.0
        return np.array([self.x], np.float32), {}

    def step(self, action):
        self.x += 1.0
        return np.array([self.x], np.float32), 1.0, False, False, {}

    def __deepcopy__(self, memo):
        fresh = ForgetfulCopy()
        fresh.reset()
        return fresh


FORGETFUL_ID = "relax_rl_test/ForgetfulCopy-v0"
if FORGETFUL_ID not in gym.registry:
    gym.register(FORGETFUL_ID, entry_point=ForgetfulCopy)


def test_an_env_whose_copy_steps_elsewhere_is_refused():
    from relax_rl.decomposition import check_copyable

    with pytest.raises(ValueError, match="its copy steps elsewhere") as err:
        check_copyable(FORGETFUL_ID)
    assert "\n" not in str(err.value)
