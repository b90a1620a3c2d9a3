"""Factorised discrete actions (MultiDiscrete, MultiBinary): the action distribution, every
agent's unbiasedness through ``train()`` on bandits with exact gradients, and the SB3 habits
(callbacks, save/load, eval, compare, plot) on the new spaces."""

import itertools
import json
import math

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from conftest import (
    agent_kwargs,
    assert_unbiased,
    held_bandit_agent,
    run_updates,
    spread_action_bias,
)
from gymnasium import spaces
from gymnasium.envs.classic_control import CartPoleEnv
from stable_baselines3.common.callbacks import BaseCallback

from relax_rl.actions import ActionSpec
from relax_rl.agents import A2C, ALGOS, PPO, REINFORCE, RELAX, RELAXPPO
from relax_rl.cli import main
from relax_rl.control_variate import (
    ControlVariate,
    ControlVariateConfig,
    LinearTerm,
    Points,
    relax_logit_gradient,
)
from relax_rl.envs import MATCH_ENV_ID, MultiBinaryMatchEnv, ParallelCartPoleEnv, make_env
from relax_rl.estimators import uniform_noise
from relax_rl.groups import GroupVecEnv


def _cv(obs_dim, spec, net_arch, activation="relu", **form):
    """A control variate of the given form (a learned kappa: any form is allowed)."""
    config = ControlVariateConfig(
        net_arch=tuple(net_arch), activation=activation, kappa="learned", **form
    )
    return ControlVariate(obs_dim, spec, config)


SPACES = {
    "Discrete(4)": spaces.Discrete(4),
    "MultiDiscrete([3,3,5,2])": spaces.MultiDiscrete([3, 3, 5, 2]),
    "MultiBinary(5)": spaces.MultiBinary(5),
}


def _enumerate(space):
    if isinstance(space, spaces.Discrete):
        return th.arange(space.n)
    sizes = [2] * space.n if isinstance(space, spaces.MultiBinary) else list(space.nvec)
    return th.tensor(list(itertools.product(*[range(n) for n in sizes])))


# ------------------------------------------------------------------------------------------
# the action distribution
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(SPACES))
def test_sampling_log_probs_and_entropy_are_one_distribution(name):
    space, gen = SPACES[name], th.Generator().manual_seed(0)
    spec = ActionSpec(space)
    logits = th.randn(1, spec.n_logits, generator=gen)
    every = _enumerate(space)
    probs = spec.log_prob(logits.expand(len(every), -1), every).exp()
    assert math.isclose(float(probs.sum()), 1.0, rel_tol=1e-5)  # a distribution over actions
    n = 40_000
    actions, log_probs = spec.sample(
        logits.expand(n, -1), spec.perturb(uniform_noise((n, spec.n_logits), gen))
    )
    assert all(space.contains(a) for a in actions[:50].numpy())
    th.testing.assert_close(log_probs, spec.log_prob(logits.expand(n, -1), actions))
    # the sampled frequencies are the probabilities (each action's, within 4.5 SE)
    index = {tuple(np.atleast_1d(a.numpy())): i for i, a in enumerate(every)}
    counts = np.bincount(
        [index[tuple(np.atleast_1d(a))] for a in actions.numpy()], minlength=len(every)
    )
    p = probs.detach().numpy()
    assert np.all(np.abs(counts / n - p) <= 4.5 * np.sqrt(p * (1 - p) / n) + 1e-4)
    _, entropy = spec.log_prob_and_entropy(logits, every[:1])
    exact = -(probs * probs.log()).sum()
    assert math.isclose(float(entropy), float(exact), rel_tol=1e-4)


@pytest.mark.parametrize("name", list(SPACES))
def test_score_z_and_z_tilde(name):
    """The closed-form score is autograd's; z (rebuilt from the stored perturbation) and z~
    (from v) both map to the taken action, and each dimension's z~ is that dimension's exact
    conditional sample (the estimators' family, no second sampler)."""
    space, gen = SPACES[name], th.Generator().manual_seed(1)
    spec = ActionSpec(space)
    n = 256
    logits = th.randn(n, spec.n_logits, generator=gen, requires_grad=True)
    g = spec.perturb(uniform_noise((n, spec.n_logits), gen))
    v = uniform_noise((n, spec.n_logits), gen)
    actions, _ = spec.sample(logits.detach(), g)
    (autograd,) = th.autograd.grad(spec.log_prob(logits, actions).sum(), logits)
    th.testing.assert_close(spec.score(logits.detach(), actions), autograd)
    z, z_tilde = spec.rebuild(logits, actions, g, v)
    assert th.equal(spec.mode(z), actions) and th.equal(spec.mode(z_tilde), actions)
    assert z_tilde.requires_grad and spec.relax(z, 0.5).shape == (n, spec.n_logits)
    if isinstance(space, spaces.MultiDiscrete):  # dimension 2 (5 classes) on its own
        cols, dim = slice(6, 11), 2
        one = ActionSpec(spaces.Discrete(5))
        _, z_one = one.rebuild(logits[:, cols], actions[:, dim], g[:, cols], v[:, cols])
        th.testing.assert_close(z_tilde[:, cols], z_one)


@pytest.mark.parametrize("name", ["MultiDiscrete([3,3,5,2])", "MultiBinary(5)"])
@pytest.mark.parametrize("terms", ["mlp", "linear+logit", "linear+logit+centred"])
def test_per_dimension_control_variate_is_c_hat_with_one_dimension_relaxed(name, terms):
    """``per_dimension``'s c_d, computed with the first layer shared across dimensions, is
    c_hat evaluated at the sampled action with only dimension d's columns relaxed."""
    spec, gen = ActionSpec(SPACES[name]), th.Generator().manual_seed(2)
    th.manual_seed(2)
    extra = terms != "mlp"
    cv = _cv(
        3,
        spec,
        [7, 6],
        "tanh",
        linear_term=extra,
        logit_term=extra,
        per_dimension=True,
        centred="centred" in terms,
    )
    with th.no_grad():  # the extra terms start at 0: make them count
        for p in cv.parameters():
            p.add_(0.3 * th.randn(p.shape, generator=gen))
    cv.observe(th.randn(8, 3, generator=gen) + 1.0)  # (a no-op unless centred)
    n = 4
    logits = th.randn(n, spec.n_logits, generator=gen)
    g = spec.perturb(uniform_noise((n, spec.n_logits), gen))
    v = uniform_noise((n, spec.n_logits), gen)
    actions, _ = spec.sample(logits, g)
    z, z_tilde = spec.rebuild(logits, actions, g, v)
    obs, prefs = th.randn(n, 3, generator=gen), spec.preferences(logits)
    both = th.cat([z, z_tilde])
    # z's and z~'s relaxations, (2, n, K), sharing each row's state
    relaxed = spec.relax(both, cv.log_tau.exp()).unflatten(0, (2, n))
    hard = spec.hard(actions)
    prefs = prefs if extra else None
    fast = cv.evaluate(cv.points(relaxed, actions), obs, prefs)
    for d in range(spec.n_dims):
        point = th.where(spec.column_dims == d, relaxed, hard)
        slow = cv.evaluate(Points(point, None, None, 1), obs, prefs).squeeze(-1)
        th.testing.assert_close(fast[..., d], slow)


@pytest.mark.parametrize("name", ["MultiDiscrete([3,3,5,2])", "MultiBinary(5)"])
def test_mlp_at_the_whole_action_is_the_joint_correction_plus_the_per_dimension_one(name):
    """``mlp_per_dimension=False``: the MLP term at the whole relaxed action in every c_d, the
    linear and logit terms per dimension. Its correction is the joint RELAX correction of the
    MLP term (its reparameterised terms counted once, not once per dimension) plus the
    per-dimension correction of the others: RELAX is linear in c, so still unbiased."""
    spec, gen = ActionSpec(SPACES[name]), th.Generator().manual_seed(4)
    th.manual_seed(4)
    form = dict(linear_term=True, logit_term=True, centred=True, per_dimension=True)
    mixed = _cv(3, spec, [7], **form, mlp_per_dimension=False)
    with th.no_grad():
        for p in mixed.parameters():
            p.add_(0.3 * th.randn(p.shape, generator=gen))
    mixed.observe(th.randn(8, 3, generator=gen))
    mlp_only, others = _cv(3, spec, [7]), _cv(3, spec, [7], **form)
    mlp_only.load_state_dict(mixed.state_dict(), strict=False)
    others.load_state_dict(mixed.state_dict())
    with th.no_grad():  # the others without the MLP term
        others.mlp.layers[-1].weight.zero_()
        others.mlp.layers[-1].bias.zero_()
    n = 6
    logits = th.randn(n, spec.n_logits, generator=gen)
    g = spec.perturb(uniform_noise((n, spec.n_logits), gen))
    v = uniform_noise((n, spec.n_logits), gen)
    actions, _ = spec.sample(logits, g)
    pieces = (logits, actions, g, v, th.randn(n, 3, generator=gen))
    h = relax_logit_gradient(mixed, *pieces, create_graph=False).h
    parts = [relax_logit_gradient(cv, *pieces, create_graph=False).h for cv in (mlp_only, others)]
    assert h.abs().max() > 0.1
    th.testing.assert_close(h, parts[0] + parts[1])


def test_per_dimension_removes_the_other_dimensions_noise():
    """With ``c_hat`` the reward itself (linear in the bits) and ``f = c_hat(b)``, each bit's
    per-dimension RELAX logit gradient depends on that bit's noise only: redrawing the other
    bits' noise (and so their values) leaves it unchanged. The joint form keeps part of it."""
    d, n, gen = 6, 512, th.Generator().manual_seed(3)
    spec = ActionSpec(spaces.MultiBinary(d))
    weights = th.linspace(-1.0, 1.0, d)
    grads = {}
    for per_dimension in (True, False):
        cv = _cv(1, spec, [], linear_term=True, zero_init=True, per_dimension=per_dimension)
        with th.no_grad():
            cv.linear.coefficients.bias.copy_(weights)
        logits = th.full((n, d), 0.3)
        u = uniform_noise((n, d), gen)
        v = uniform_noise((n, d), gen)
        out = []
        for redraw in (False, True):
            uu, vv = u.clone(), v.clone()
            if redraw:  # every dimension but 0 gets fresh noise
                uu[:, 1:] = uniform_noise((n, d - 1), gen)
                vv[:, 1:] = uniform_noise((n, d - 1), gen)
            g = spec.perturb(uu)
            actions, _ = spec.sample(logits, g)
            corr = relax_logit_gradient(cv, logits, actions, g, vv, th.zeros(n, 1))
            f = (actions.float() * weights).sum(-1)  # the reward, c_hat's own function
            out.append(f.unsqueeze(-1) * corr.score - corr.h)  # RELAX's logit gradient
        grads[per_dimension] = out
    same, redrawn = grads[True]
    th.testing.assert_close(same[:, 0], redrawn[:, 0])
    joint, joint_redrawn = grads[False]
    assert (joint[:, 0] - joint_redrawn[:, 0]).abs().max() > 1e-3


@pytest.mark.parametrize(
    ("cls", "kwargs", "needle"),
    [
        (
            RELAX,
            {"cv_per_dimension": True, "variance_objective": "batch", "kappa_mode": "learned"},
            "cv_per_dimension works on per-sample",
        ),
        (
            RELAX,
            {"cv_logit_term": True, "variance_objective": "batch", "kappa_mode": "learned"},
            "cv_logit_term works on per-sample",
        ),
        (RELAXPPO, {"ratio": "per_dimension"}, "set cv_per_dimension=True"),
        (RELAX, {"cv_replay": -1}, "cv_replay must be >= 0"),
        (RELAX, {"cv_target": "q"}, "unknown cv_target 'q'; valid: advantage, return"),
        (RELAX, {"cv_zero_init": True}, "use kappa_mode='learned' or cv_zero_init=False"),
        (
            RELAX,
            {"cv_options": {"linear_fit": "ls"}},
            "unknown cv_options.linear_fit 'ls'; valid: variance, regr",
        ),
        (
            RELAX,
            {"cv_linear_term": True, "cv_options": {"linear_fit": "regression"}},
            "set cv_linear_term=True and cv_centred=True, or leave linear_fit at 'variance'",
        ),
        (
            RELAX,
            {"cv_options": {"linear_step": 2.0}},
            r"cv_options.linear_step must be in \(0, 2\), got 2.0",
        ),
        (
            RELAX,
            {"cv_options": {"linear_decay": 0.0}},
            r"cv_options.linear_decay must be in \(0, 1\], got 0.0",
        ),
        (RELAX, {"cv_options": {"decay": 1}}, "unknown cv_options key 'decay'"),
        (RELAX, {"cv_options": 3}, "cv_options must map config fields to values"),
        (
            RELAX,
            {"cv_options": {"linear_step": "a"}},
            "linear_step='a' has the wrong type: expected float",
        ),
        (RELAX, {"cv_preset": "fast"}, "unknown cv_preset 'fast'; valid: default, paper, fact"),
        (
            RELAX,
            {"cv_target": "return", "normalize_advantage": True},
            "set normalize_advantage=False or use cv_target='advantage'",
        ),
    ],
)
def test_per_dimension_settings_are_refused_in_one_line(cls, kwargs, needle):
    with pytest.raises(ValueError, match=needle) as err:
        cls("MlpPolicy", make_env(MATCH_ENV_ID, 2, 0, env_kwargs={"d": 4}), **kwargs)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("replay_pass", ["joint", "each"])
def test_cv_replay_steps_phi_on_recent_batches_and_survives_save_load(tmp_path, replay_pass):
    """``cv_replay = 3``: phi takes one step per update plus, ``joint``, one on all the kept
    batches at once, or ``each``, one per kept batch (1, 2, 3, 3, ...); the policy one per
    update; the kept batches are saved with the model, and a loaded model goes on with them."""
    each = replay_pass == "each"
    model = RELAX(
        "MlpPolicy",
        make_env(MATCH_ENV_ID, 4, 0, env_kwargs={"d": 4}),
        n_steps=2,
        cv_replay=3,
        kappa_mode="learned",
        cv_per_dimension=True,
        cv_options={"replay_pass": replay_pass},
        seed=0,
        policy_kwargs={"net_arch": [8]},
    )
    run_updates(model, 5)
    steps = lambda opt: int(next(iter(opt.state.values()))["step"])  # noqa: E731
    assert steps(model.policy.optimizer) == 5
    assert steps(model.cv_optimizer) == 5 + ((1 + 2 + 3 + 3 + 3) if each else 5)
    model.save(tmp_path / "m.zip")
    loaded = RELAX.load(tmp_path / "m.zip", env=make_env(MATCH_ENV_ID, 4, 1, env_kwargs={"d": 4}))
    assert len(loaded._replay) == 3 and loaded.cv_config.replay == 3
    for kept, back in zip(model._replay, loaded._replay, strict=True):
        assert type(back) is type(kept)
        for a, b in zip(kept, back, strict=True):
            assert a.dtype == b.dtype and th.equal(a, b)
    run_updates(loaded, 2)
    assert steps(loaded.cv_optimizer) == (17 + 2 + (3 + 3) if each else 10 + 2 + 2)


def test_shipped_multibinary_relax_save_load_continue_equals_straight(tmp_path):
    """The shipped MultiBinaryMatch RELAX config (configs/relax.yaml: the return target,
    centred terms) with replay (``factorised-replay``), smaller: a run saved, loaded and
    continued ends with the very parameters of a straight run (phi's kept batches are part of
    the saved state)."""
    from relax_rl.config import validate, zoo_settings

    _, kwargs = validate(zoo_settings("relax", MATCH_ENV_ID), RELAX)
    assert kwargs["cv_preset"] == "factorised"
    kwargs["cv_preset"] = "factorised-replay"  # its kept batches are part of the saved state
    kwargs.update(n_steps=2, seed=5, policy_kwargs={"net_arch": [8]}, cv_net_arch=[8])

    def model():
        return RELAX("MlpPolicy", make_env(MATCH_ENV_ID, 4, 5, env_kwargs={"d": 6}), **kwargs)

    straight = model()
    straight.learn(80)  # 10 updates: more batches than it keeps
    straight.learn(32, reset_num_timesteps=False)
    first = model()
    first.learn(80)
    first.save(tmp_path / "m")
    loaded = RELAX.load(tmp_path / "m", env=first.env, force_reset=False)
    loaded.learn(32, reset_num_timesteps=False)
    for module in ("policy", "control_variate"):
        for (name, p), q in zip(
            getattr(straight, module).state_dict().items(),
            getattr(loaded, module).state_dict().values(),
            strict=True,
        ):
            assert th.equal(p, q), (module, name, (p - q).abs().max())


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"cv_logit_term": True}, "cv_logit_term needs discrete actions"),
        ({"cv_linear_term": True, "cv_centred": True}, "cv_centred needs discrete actions"),
    ],
)
def test_logit_term_and_centring_are_refused_for_box_actions(kwargs, needle):
    with pytest.raises(ValueError, match=needle) as err:
        RELAX("MlpPolicy", make_env("Pendulum-v1", 2, 0), **kwargs)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("per_dimension", [False, True])
def test_value_state_term_moves_only_the_score_term(per_dimension):
    """``correction(value=V)``: ``c = shape - V(s)`` changes ``h`` by ``-V dlog pi`` only
    (``V`` is constant in the logits), per dimension as jointly."""
    spec, gen = ActionSpec(spaces.MultiDiscrete([3, 2])), th.Generator().manual_seed(6)
    th.manual_seed(6)
    cv = _cv(2, spec, [5], per_dimension=per_dimension)
    n = 6
    logits = th.randn(n, spec.n_logits, generator=gen)
    g = spec.perturb(uniform_noise((n, spec.n_logits), gen))
    v = uniform_noise((n, spec.n_logits), gen)
    actions, _ = spec.sample(logits, g)
    obs, value = th.randn(n, 2, generator=gen), th.randn(n, generator=gen)
    plain = relax_logit_gradient(cv, logits, actions, g, v, obs, create_graph=False)
    shifted = relax_logit_gradient(cv, logits, actions, g, v, obs, create_graph=False, value=value)
    th.testing.assert_close(shifted.h, plain.h - value.unsqueeze(-1) * plain.score)
    column = value.unsqueeze(-1) if per_dimension else value
    th.testing.assert_close(shifted.c_tilde, plain.c_tilde - column)


def test_centred_terms_have_mean_zero_and_centre_by_earlier_batches_only(tmp_path):
    """``cv_centred``: the linear and logit terms of ``c_hat`` average to 0 over the policy's
    actions at a state (the hard action minus its mean), and the linear term's state input is
    centred by the states of the batches *before* the one being corrected: after one update
    the running mean is that update's batch's, and it survives save/load."""
    spec, gen = ActionSpec(spaces.MultiDiscrete([3, 2, 4])), th.Generator().manual_seed(5)
    cv = _cv(2, spec, [4], linear_term=True, logit_term=True, zero_init=True, centred=True)
    with th.no_grad():
        for p in [*cv.linear.parameters(), *cv.preference.parameters()]:
            p.copy_(th.randn(p.shape, generator=gen))
    logits = th.randn(1, spec.n_logits, generator=gen)
    prefs, obs = spec.preferences(logits), th.randn(1, 2, generator=gen)
    actions = th.cartesian_prod(th.arange(3), th.arange(2), th.arange(4))
    pi = spec.log_prob(logits.expand(len(actions), -1), actions).exp()
    c = cv.at_actions(actions, obs.expand(len(actions), -1), prefs.expand(len(actions), -1))
    th.testing.assert_close((pi * c).sum(), th.tensor(0.0), atol=1e-5, rtol=0)

    for cls in (RELAX, RELAXPPO):
        model = cls(
            "MlpPolicy",
            make_env(MATCH_ENV_ID, 4, 0, env_kwargs={"d": 4}),
            n_steps=2,
            cv_linear_term=True,
            cv_per_dimension=True,
            cv_centred=True,
            seed=0,
            policy_kwargs={"net_arch": [8]},
        )
        mean = model.control_variate.obs_mean
        assert mean.abs().sum() == 0  # the first batch is corrected uncentred
        batches, train = [], model.train

        def recording_train(train=train, model=model, batches=batches) -> None:
            batches.append(model.rollout_buffer.get_all().observations.float().mean(0))
            train()

        model.train = recording_train
        run_updates(model, 1)
        th.testing.assert_close(mean, batches[0])
        del model.train  # (the recording closure holds the env, which SB3 does not save)
        model.save(tmp_path / "m.zip")
        loaded = cls.load(tmp_path / "m.zip", env=make_env(MATCH_ENV_ID, 4, 1, env_kwargs={"d": 4}))
        th.testing.assert_close(loaded.control_variate.obs_mean, batches[0])


@pytest.mark.parametrize(
    "space",
    [
        spaces.Box(-1, 1, (2, 2)),
        spaces.Dict({"a": spaces.Discrete(2)}),
        spaces.Tuple([spaces.Discrete(2), spaces.Discrete(3)]),
        spaces.MultiDiscrete([[2, 3], [2, 2]]),
        spaces.MultiBinary((2, 3)),
    ],
    ids=lambda s: type(s).__name__,
)
def test_unsupported_spaces_are_refused_in_one_line(space):
    with pytest.raises(ValueError, match="Discrete, MultiDiscrete, MultiBinary or Box") as err:
        ActionSpec(space)
    assert "\n" not in str(err.value)


class _SpaceEnv(gym.Env):
    observation_space = spaces.Box(-1, 1, (2,))

    def __init__(self, action_space):
        self.action_space = action_space

    def reset(self, *, seed=None, options=None):
        return np.zeros(2, np.float32), {}

    def step(self, action):
        return np.zeros(2, np.float32), 0.0, True, False, {}


@pytest.mark.parametrize("name", sorted(ALGOS))
def test_agents_refuse_unsupported_action_spaces(name):
    env = _SpaceEnv(spaces.Tuple([spaces.Discrete(2), spaces.Discrete(3)]))
    with pytest.raises(ValueError, match="Discrete, MultiDiscrete, MultiBinary or Box") as err:
        ALGOS[name]("MlpPolicy", env)
    assert "\n" not in str(err.value) and ALGOS[name].__name__ in str(err.value)


# ------------------------------------------------------------------------------------------
# unbiasedness through train() on bandits whose exact gradient is a finite sum
# ------------------------------------------------------------------------------------------
class ContextualMultiDiscreteBandit(gym.Env):
    """Two one-hot contexts, MultiDiscrete([3, 2]) actions, a fixed N(0, 1) reward per
    (context, action): not a sum over the dimensions."""

    observation_space = spaces.Box(0.0, 1.0, (2,), np.float32)
    action_space = spaces.MultiDiscrete([3, 2])
    rewards = np.random.default_rng(7).standard_normal((2, 3, 2))

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.context = int(self.np_random.integers(2))
        return np.eye(2, dtype=np.float32)[self.context], {}

    def step(self, action):
        reward = float(self.rewards[self.context, int(action[0]), int(action[1])])
        return np.eye(2, dtype=np.float32)[self.context], reward, True, False, {}


MD_ID = "relax_rl_test/MultiDiscreteBandit-v0"
if MD_ID not in gym.registry:
    gym.register(MD_ID, entry_point=ContextualMultiDiscreteBandit)
MATCH_D = 3


def _contexts_and_rewards(env_id):
    """Every context's observation (equally likely) and the reward of every action there."""
    if env_id == MD_ID:
        every = _enumerate(ContextualMultiDiscreteBandit.action_space)
        rewards = th.tensor(ContextualMultiDiscreteBandit.rewards, dtype=th.float32)
        table = th.stack([rewards[c, every[:, 0], every[:, 1]] for c in range(2)])
        return th.eye(2), every, table
    targets = _enumerate(spaces.MultiBinary(MATCH_D)).float()
    table = (targets[:, None, :] == targets[None, :, :]).float().mean(-1)  # [target, action]
    return targets, targets.long(), table


def _exact_gradient(model, env_id):
    """``grad pg_loss`` in expectation, ``-grad J`` (one-step episodes)."""
    obs, every, table = _contexts_and_rewards(env_id)
    actor = model.policy.actor_parameters()
    spec = model.policy.action_spec
    j = th.zeros(())
    for c in range(len(obs)):
        logits, _ = model.policy.logits_and_values(obs[c : c + 1])
        probs = spec.log_prob(logits.expand(len(every), -1), every).exp()
        j = j + (probs * table[c]).sum() / len(obs)
    return -th.cat([g.reshape(-1) for g in th.autograd.grad(j, actor)])


def _bandit_agent(cls, env_id, n_envs, seed=0, **kwargs):
    env_kwargs = {"d": MATCH_D} if env_id == MATCH_ENV_ID else None
    if issubclass(cls, PPO):  # its first epoch: one step on the whole rollout, ratio 1
        kwargs = dict(n_epochs=1, batch_size=n_envs, normalize_advantage=False, **kwargs)
    else:
        kwargs["use_baseline"] = kwargs.pop("use_baseline", cls is not REINFORCE)
    env = make_env(env_id, n_envs, seed, env_kwargs=env_kwargs)
    if cls is REINFORCE and n_envs > 1:
        env = GroupVecEnv(env, n_envs, seed)  # whole episodes: one of each env per update
    model = held_bandit_agent(
        cls, env, seed, n_steps=1 if kwargs.get("use_baseline", True) else 0, **kwargs
    )
    spread_action_bias(model)
    return model


RETURN_TARGET = {
    "cv_learning_rate": 3e-3,
    "kappa_mode": "learned",
    "cv_per_dimension": True,
    "cv_linear_term": True,
    "cv_target": "return",
}


@pytest.mark.parametrize("env_id", [MATCH_ENV_ID, MD_ID], ids=["MultiBinary", "MultiDiscrete"])
@pytest.mark.parametrize(
    ("cls", "n_envs", "updates", "kwargs"),
    [
        # REINFORCE: 64 one-step episodes per update, the estimator of one env's 64 updates in
        # one update call (the one-env path is checked on Toy and Chain in test_rl_gradients)
        (REINFORCE, 64, 50, {}),
        (A2C, 64, 160, {}),
        (RELAX, 64, 160, {"cv_learning_rate": 3e-3}),
        (RELAX, 64, 160, {"cv_learning_rate": 3e-3, "cv_linear_term": True}),
        (RELAX, 64, 160, {"cv_learning_rate": 3e-3, "kappa_mode": "learned"}),
        (PPO, 64, 160, {}),
        (
            RELAX,
            64,
            160,
            {
                "cv_learning_rate": 3e-3,
                "cv_per_dimension": True,
                "cv_logit_term": True,
                "cv_centred": True,
                "cv_replay": 4,
            },
        ),
        (RELAX, 64, 160, RETURN_TARGET),
        (
            RELAX,
            64,
            160,
            {**RETURN_TARGET, "cv_logit_term": True, "cv_mlp_per_dimension": False},
        ),
        (
            RELAX,
            64,
            160,
            {**RETURN_TARGET, "cv_centred": True, "cv_options": {"linear_fit": "regression"}},
        ),
        (RELAXPPO, 64, 160, {"cv_learning_rate": 3e-3, "cv_linear_term": True}),
        (
            RELAXPPO,
            64,
            160,
            {
                "cv_learning_rate": 3e-3,
                "cv_per_dimension": True,
                "cv_logit_term": True,
                "cv_centred": True,
                "ratio": "per_dimension",
            },
        ),
    ],
    ids=[
        "reinforce",
        "a2c",
        "relax",
        "relax-linear-term",
        "relax-learned-kappa",
        "ppo",
        "relax-per-dimension",
        "relax-return-target",
        "relax-mlp-at-the-whole-action",
        "relax-linear-regression",
        "relax-ppo",
        "relax-ppo-per-dimension",
    ],
)
def test_update_gradient_unbiased(env_id, cls, n_envs, updates, kwargs):
    model = _bandit_agent(cls, env_id, n_envs, seed=2, **kwargs)
    if cls in (RELAX, RELAXPPO):  # the control variate trained first (the policy does not move)
        run_updates(model, 60)
    grads, records = run_updates(model, updates)
    if cls is RELAX and kwargs.get("kappa_mode") != "learned":
        kappas = [r["train/kappa"] for r in records if "train/kappa" in r]
        assert sum(k != 0 for k in kappas) > len(kappas) // 4  # the control variate is in use
    assert_unbiased(grads, _exact_gradient(model, env_id))


@pytest.mark.parametrize(
    "fit",
    [{}, {"cv_centred": True, "cv_options": {"linear_fit": "regression"}}],
    ids=["variance", "regression"],
)
def test_zero_init_control_variate_starts_relax_as_a2c(fit):
    """``cv_zero_init`` (with the linear term, which starts at 0 anyway): c_hat is 0 at every
    input, so RELAX's first update is A2C's, gradient for gradient, on the same batch. With
    the linear term's regression too: its fit on a batch comes after that batch's update."""
    kw = dict(n_steps=1, seed=3, policy_kwargs={"net_arch": [8]})
    relax = RELAX(
        "MlpPolicy",
        make_env(MATCH_ENV_ID, 16, 3, env_kwargs={"d": 8}),
        kappa_mode="learned",
        cv_linear_term=True,
        cv_zero_init=True,
        **fit,
        **kw,
    )
    z = th.randn(5, 8)
    obs = th.randn(5, 8)
    assert th.equal(relax.control_variate(z, obs, th.randn(5, 8)), th.zeros(5))
    a2c = A2C("MlpPolicy", make_env(MATCH_ENV_ID, 16, 3, env_kwargs={"d": 8}), **kw)
    a2c.policy.load_state_dict(relax.policy.state_dict())
    g_relax, _ = run_updates(relax, 1)
    g_a2c, _ = run_updates(a2c, 1)
    th.testing.assert_close(g_relax, g_a2c)
    assert g_relax.abs().sum() > 0
    if fit:  # the batch was folded into the fit, after its update
        assert relax.control_variate.linear.coefficients.weight.abs().sum() > 0


@pytest.mark.parametrize("chunk", [64, 8], ids=["one-block", "four-blocks"])
def test_linear_regression_recovers_a_return_linear_in_the_action(chunk, monkeypatch):
    """``fit_linear`` on batches whose advantage is exactly linear in the centred action with
    state-dependent coefficients, ``A = sum_k a_k(s) (H_k - m_k)``: the linear term converges
    to ``a``, and the residual falls to a small fraction of the advantages' variance (a
    per-column regression against the full advantage would keep the other columns' noise).
    The same with each 32-sample batch stepped in blocks of 8."""
    monkeypatch.setattr(LinearTerm, "CHUNK", chunk)
    spec, gen = ActionSpec(spaces.MultiBinary(6)), th.Generator().manual_seed(8)
    obs_dim, n = 3, 32
    cv = _cv(
        obs_dim, spec, [4], linear_term=True, zero_init=True, centred=True, linear_fit="regression"
    )
    assert not cv.linear.coefficients.weight.requires_grad  # not phi's optimizer's
    true_w, true_b = th.randn(6, obs_dim, generator=gen), th.randn(6, generator=gen)

    def batch():
        obs = th.randn(n, obs_dim, generator=gen)
        logits = th.randn(n, 6, generator=gen)
        actions = (th.rand(n, 6, generator=gen) < th.sigmoid(logits)).float()
        advantages = ((obs @ true_w.T + true_b) * (actions - th.sigmoid(logits))).sum(-1)
        return obs, actions, logits, advantages

    def residual(obs, actions, logits, advantages):
        return advantages - cv.at_actions(actions, obs, spec.preferences(logits))

    with th.no_grad():
        first = residual(*batch()).pow(2).mean()
    for _ in range(300):
        obs, actions, logits, advantages = batch()
        with th.no_grad():
            e = residual(obs, actions, logits, advantages)
        cv.fit_linear(obs, actions, spec.preferences(logits), e, step=0.5, decay=0.99)
    th.testing.assert_close(cv.linear.coefficients.weight, true_w, atol=0.05, rtol=0)
    th.testing.assert_close(cv.linear.coefficients.bias, true_b, atol=0.05, rtol=0)
    with th.no_grad():
        assert residual(*batch()).pow(2).mean() < 1e-3 * first


def _fixed_policy_relax(d: int, **kwargs) -> RELAX:
    """RELAX on MultiBinaryMatch(d) whose policy does not move (lr 0): only phi trains."""
    return RELAX(
        "MlpPolicy",
        make_env(MATCH_ENV_ID, 16, 4, env_kwargs={"d": d}),
        n_steps=1,
        learning_rate=0.0,
        cv_learning_rate=3e-3,
        cv_linear_term=True,
        max_grad_norm=None,
        seed=4,
        policy_kwargs={"net_arch": [8]},
        **kwargs,
    )


def test_relax_removes_most_of_the_action_noise_on_many_bits():
    """With many bits, a control variate over the whole relaxed action has most of the
    variance to remove: after training phi alone, RELAX's update gradient has a small fraction
    of A2C's variance at the very same policy and critic (both at their initial values: V is
    about 0, so part of what the control variate removes here a learned V would)."""
    kw = {"env_kwargs": {"d": 16}}
    relax = _fixed_policy_relax(16)
    run_updates(relax, 400)
    after, _ = run_updates(relax, 200)
    a2c = A2C(
        "MlpPolicy",
        make_env(MATCH_ENV_ID, 16, 5, **kw),
        n_steps=1,
        learning_rate=0.0,
        max_grad_norm=None,
        seed=5,
        policy_kwargs={"net_arch": [8]},
    )
    a2c.policy.load_state_dict(relax.policy.state_dict())
    baseline, _ = run_updates(a2c, 200)
    assert after.var(0).sum() < 0.3 * baseline.var(0).sum()


# ------------------------------------------------------------------------------------------
# the agents on the new spaces, SB3-style
# ------------------------------------------------------------------------------------------
def _match_model(name, d=8, seed=0, **kwargs):
    whole = name == "reinforce"
    return ALGOS[name](
        "MlpPolicy",
        make_env(MATCH_ENV_ID, 1 if whole else 4, seed, env_kwargs={"d": d}),
        seed=seed,
        policy_kwargs={"net_arch": [16]},
        **agent_kwargs(name, n_steps=0 if whole else 8, **kwargs),
    )


@pytest.mark.parametrize("name", sorted(ALGOS))
def test_agents_learn_multibinary_match(name):
    # REINFORCE learns from one episode an update: without its baseline (rewards in [0, 1])
    # it ends at 0.56-0.76 after 6,000 (seeds 0-7), with it at 0.92-0.97 after 2,000 (seeds
    # 0-5) and 0.99+ after 6,000.
    extra = {"use_baseline": True} if name == "reinforce" else {}
    model = _match_model(name, learning_rate=1e-2, **extra)
    model.learn(2_000 if name == "reinforce" else 6_000)
    rewards = [e["r"] for e in model.ep_info_buffer]
    assert np.mean(rewards[-50:]) > 0.7, np.mean(rewards[-50:])  # random: 0.5
    obs = model.env.reset()
    action, _ = model.predict(obs, deterministic=True)
    assert action.shape == (model.n_envs, 8) and model.action_space.contains(action[0])


@pytest.mark.parametrize("name", sorted(ALGOS))
def test_callbacks_read_sb3_shapes_and_save_load_continues(name, tmp_path):
    seen = {}

    class Reader(BaseCallback):
        def _on_step(self):
            loc, n = self.locals, self.training_env.num_envs
            assert isinstance(loc["actions"], np.ndarray) and loc["actions"].shape == (n, 8)
            assert loc["log_probs"].shape == (n,) and loc["values"].shape == (n, 1)
            seen["steps"] = seen.get("steps", 0) + 1
            return True

    straight = _match_model(name, seed=5)
    straight.learn(320, callback=Reader())
    straight.learn(320, reset_num_timesteps=False)
    first = _match_model(name, seed=5)
    first.learn(320)
    first.save(tmp_path / "m")
    loaded = ALGOS[name].load(tmp_path / "m", env=first.env, force_reset=False)
    loaded.learn(320, reset_num_timesteps=False)
    for p, q in zip(straight.policy.parameters(), loaded.policy.parameters(), strict=True):
        assert th.allclose(p, q)
    assert seen["steps"] > 0


def test_cli_train_eval_compare_plot_on_multibinary(tmp_path, capsys):
    common = ["--env", MATCH_ENV_ID, "--set", "env_kwargs.d=6", "--total-steps", "600"]
    common += ["--set", "policy_kwargs.net_arch=[8]"]
    out = tmp_path / "run"
    assert main(["train", "--algo", "relax", *common, "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["threshold"] == 0.95 and summary["episodes"] == summary["total_env_steps"]
    capsys.readouterr()
    assert main(["eval", str(out), "--episodes", "3"]) == 0
    assert "mean return" in capsys.readouterr().out
    grid = tmp_path / "grid"
    args = ["compare", "--algos", "a2c", "relax", *common, "--seeds", "0", "--out", str(grid)]
    assert main([*args, "--n-envs", "4", "--checkpoint-freq", "300", "--variance", "0.5,1"]) == 0
    assert (grid / "returns.png").exists() and (grid / "variance.png").exists()
    report = (grid / "report.md").read_text()
    assert "Where the gradient's variance comes from" in report
    assert "| relax | A2C (same samples) | 1 |" in report and "| a2c | A2C | 0.5 |" in report
    assert main(["plot", str(grid), "--out", str(tmp_path / "plots")]) == 0
    assert "variance comes from" in (tmp_path / "plots" / "report.md").read_text()
    # an env whose state cannot be copied is refused before any run
    bad_fraction = ["compare", "--algos", "a2c", *common[:4], "--variance", "0.5,2"]
    assert main([*bad_fraction, "--out", str(tmp_path / "g3")]) == 2
    assert "--variance '0.5,2'" in capsys.readouterr().err
    bad = ["compare", "--algos", "a2c", "--env", UNCOPYABLE_ID, "--variance"]
    assert main([*bad, "--out", str(tmp_path / "g2")]) == 2
    assert not (tmp_path / "g2").exists()


# ------------------------------------------------------------------------------------------
# the factorised tasks
# ------------------------------------------------------------------------------------------
def test_parallel_cartpole_is_cartpole_per_pole():
    env = ParallelCartPoleEnv(d=3)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    refs = []
    for i in range(3):
        r = CartPoleEnv()
        r.reset()
        r.state = env.state[i].copy()
        refs.append(r)
    for _ in range(8):  # before any pole can fall
        action = rng.integers(0, 2, 3)
        obs, reward, *_ = env.step(action)
        for i, r in enumerate(refs):
            expected, *_ = r.step(int(action[i]))
            np.testing.assert_allclose(obs[4 * i : 4 * i + 4], expected, atol=1e-6)
        assert reward == 1.0
    # a pole that falls pays for that step (as CartPole-v1 does), then stays down, frozen
    env.state[1, 2] = 0.5
    _, reward, terminated, _, info = env.step(np.zeros(3, np.int64))
    assert reward == 1.0 and not terminated and info["poles_up"] == 2
    frozen = env.state[1].copy()
    _, reward, *_ = env.step(np.ones(3, np.int64))
    assert math.isclose(reward, 2 / 3)
    np.testing.assert_array_equal(env.state[1], frozen)
    state = env.get_state()
    a = env.step(np.ones(3, np.int64))[0]
    env.set_state(state)
    np.testing.assert_array_equal(env.step(np.ones(3, np.int64))[0], a)


def test_one_pole_is_cartpole_v1_and_a_random_policy_is_far_from_the_threshold():
    """d = 1 returns what CartPole-v1 returns for the same actions; with 4 poles a random
    policy earns about CartPole's ~22, far below 475, and an episode lasts at most 500 steps."""
    for seed in range(3):
        env = gym.make("relax_rl/ParallelCartPole-v0", d=1)
        env.reset(seed=seed)
        ref = gym.make("CartPole-v1")
        ref.reset(seed=seed)
        ref.unwrapped.state = env.unwrapped.state[0].copy()
        rng = np.random.default_rng(seed)
        ours = theirs = 0.0
        done_ours = done_theirs = False
        while not (done_ours and done_theirs):
            a = int(rng.integers(2))
            if not done_ours:
                _, r, term, trunc, _ = env.step(np.array([a]))
                ours, done_ours = ours + r, term or trunc
            if not done_theirs:
                _, r, term, trunc, _ = ref.step(a)
                theirs, done_theirs = theirs + r, term or trunc
        assert ours == theirs
    env = gym.make("relax_rl/ParallelCartPole-v0", d=4)
    returns = []
    for seed in range(10):
        env.reset(seed=seed)
        total, steps, done = 0.0, 0, False
        while not done:
            _, r, term, trunc, _ = env.step(env.action_space.sample())
            total, steps, done = total + r, steps + 1, term or trunc
        returns.append(total)
        assert steps <= 500
    assert np.mean(returns) < 100
    assert gym.spec("relax_rl/ParallelCartPole-v0").reward_threshold == 475.0


def test_multibinary_match_rewards():
    env = MultiBinaryMatchEnv(d=4)
    target, _ = env.reset(seed=0)
    assert env.step(target.astype(np.int64))[1] == 1.0
    env.set_state({"target": target})
    assert env.step(1 - target.astype(np.int64))[1] == 0.0
    noisy = MultiBinaryMatchEnv(d=4, sigma=0.1)
    noisy.reset(seed=0)
    rewards = [noisy.step(np.zeros(4, np.int64))[1] for _ in range(200)]
    assert 0.05 < np.std(rewards) < 0.15
    with pytest.raises(ValueError, match="d must be a positive integer"):
        MultiBinaryMatchEnv(d=0)


# ------------------------------------------------------------------------------------------
# the variance decomposition
# ------------------------------------------------------------------------------------------
def test_decomposition_adds_up_to_the_directly_measured_variance():
    """On the Chain env with a fixed policy, Sigma_s + Sigma_a + Sigma_tau (nested design)
    equals Var(g) measured from independent (state, action, continuation) samples, within the
    noise of both estimates."""
    from relax_rl.decomposition import decompose, direct_variance
    from relax_rl.envs import CHAIN_ENV_ID

    model = A2C(
        "MlpPolicy",
        make_env(CHAIN_ENV_ID, 4, 0),
        n_steps=3,
        gamma=1.0,
        seed=0,
        policy_kwargs={"net_arch": [8]},
    )
    totals = [
        decompose(model, CHAIN_ENV_ID, n_states=48, n_actions=4, n_continuations=4, seed=s)[0]
        for s in range(6)
    ]
    for t in totals:  # every term is there: states, 2 actions, a random continuation
        assert min(t.state, t.action, t.trajectory) > 0
    summed = np.array([t.total for t in totals])
    direct = np.array([direct_variance(model, CHAIN_ENV_ID, 600, seed=100 + s) for s in range(3)])
    se = math.sqrt(summed.var(ddof=1) / len(summed) + direct.var(ddof=1) / len(direct))
    assert abs(summed.mean() - direct.mean()) < 4 * se + 0.02 * direct.mean(), (summed, direct)


@pytest.mark.parametrize(
    "kwargs", [{}, {"cv_target": "return", "kappa_mode": "learned"}], ids=["advantage", "return"]
)
def test_decomposition_sees_what_relax_removes_and_where(kwargs):
    """On a one-step bandit the continuation adds nothing (Sigma_tau = 0 without reward noise,
    > 0 with it), and RELAX's trained control variate shrinks the action term, not the
    state term, of the very same samples' plain estimator (with ``cv_target=return`` too,
    whose c_hat takes V(s) from the samples the decomposition builds)."""
    from relax_rl.decomposition import decompose

    relax = _fixed_policy_relax(12, **kwargs)
    run_updates(relax, 300)
    ours, plain = decompose(relax, MATCH_ENV_ID, {"d": 12}, 24, 6, 2, seed=1)
    assert ours.estimator == "RELAX" and plain.estimator == "A2C (same samples)"
    assert abs(ours.trajectory) < 1e-9 and abs(plain.trajectory) < 1e-9
    assert ours.action < 0.5 * plain.action
    assert ours.log10_vs_paired_interval[1] < 0 and plain.log10_vs_paired is None
    noisy = decompose(relax, MATCH_ENV_ID, {"d": 12, "sigma": 0.5}, 12, 4, 4, seed=1)[1]
    assert noisy.trajectory > 0


def test_variance_command_writes_json_and_figure(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--algo", "relax", "--env", MATCH_ENV_ID, "--set", "env_kwargs.d=6"]
    args += ["--total-steps", "800", "--checkpoint-freq", "200", "--n-envs", "4"]
    args += ["--set", "policy_kwargs.net_arch=[8]", "--out", str(run), "--no-progress"]
    assert main(args) == 0
    capsys.readouterr()
    code = main(["variance", str(run), "--states", "6", "--repeats", "3", "--at", "0.5,1"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "A2C (same samples)" in printed and "action" in printed
    result = json.loads((run / "variance.json").read_text())
    assert [p["env_steps"] for p in result["points"]] == [400, 800]
    assert result["points"][-1]["checkpoint"] == "model.zip"
    assert (run / "variance.png").exists()


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--at", "1.5"], "every fraction must be in [0, 1]"),
        (["--at", ""], "expected fractions such as"),
        (["--states", "1"], "--states: invalid value 1"),
        (["{nothing}"], "is not a run folder"),
    ],
)
def test_variance_command_refuses_in_one_line(tmp_path, capsys, args, needle):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("algo: a2c\nenv_id: CartPole-v1\n")
    argv = [a.replace("{nothing}", str(tmp_path / "nothing")) for a in args]
    if "{nothing}" not in args:
        argv = [str(run), *argv]
    code = main(["variance", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and needle in err[0], err


class Uncopyable(gym.Env):
    """An env whose state cannot be copied (as Box2D's and MuJoCo's)."""

    observation_space = spaces.Box(-1, 1, (2,))
    action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        return np.zeros(2, np.float32), {}

    def step(self, action):
        return np.zeros(2, np.float32), 0.0, True, False, {}

    def __deepcopy__(self, memo):
        raise TypeError("a C++ world")


UNCOPYABLE_ID = "relax_rl_test/Uncopyable-v0"
if UNCOPYABLE_ID not in gym.registry:
    gym.register(UNCOPYABLE_ID, entry_point=Uncopyable)


def test_variance_refuses_an_env_it_cannot_copy():
    from relax_rl.decomposition import check_copyable

    with pytest.raises(ValueError, match="its state cannot be copied") as err:
        check_copyable(UNCOPYABLE_ID)
    assert "\n" not in str(err.value)
