"""Every agent, SB3-style: learning smoke tests with tiny nets, SB3 callbacks as is,
reproducibility, save/load, bad spaces, NaN and Ctrl-C handling."""

import copy
import json

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from conftest import GROUP_AGENTS, agent_kwargs
from stable_baselines3.common.callbacks import (
    BaseCallback,
    CallbackList,
    CheckpointCallback,
    EvalCallback,
    StopTrainingOnRewardThreshold,
)

from relax_rl.agents import ALGOS
from relax_rl.buffers import GumbelRolloutBuffer, compute_gae
from relax_rl.envs import make_env
from relax_rl.on_policy import TrainingDivergedError
from relax_rl.training import RunSpec, train

TINY = {"net_arch": [16], "activation_fn": th.nn.Tanh}
ALL = sorted(ALGOS)


def _model(name, n_envs=None, seed=0, **kwargs):
    # REINFORCE without a baseline learns from whole episodes of one env; the group agents
    # from one episode per env of two groups of two; the others from 8-step rollouts of 4 envs.
    whole = name == "reinforce" and not kwargs.get("use_baseline")
    n_envs = n_envs if n_envs is not None else (1 if whole else 4)
    if name not in GROUP_AGENTS:
        kwargs.setdefault("n_steps", 0 if whole else 8)
    kwargs.setdefault("policy_kwargs", TINY)
    return ALGOS[name](
        "MlpPolicy",
        make_env("CartPole-v1", n_envs, seed),
        seed=seed,
        **agent_kwargs(name, **kwargs),
    )


def _params(model):
    return th.cat([p.detach().reshape(-1) for p in model.policy.parameters()])


# REINFORCE learns from whole episodes; A2C-style agents from 8-step rollouts of 4 envs.
SMOKE = {
    "reinforce": dict(n_envs=1, n_steps=0, learning_rate=1e-2),
    "a2c": dict(learning_rate=3e-3),
    "relax": dict(learning_rate=3e-3),
    "ppo": dict(learning_rate=1e-3, n_steps=32, batch_size=64, n_epochs=4),
    "relax-ppo": dict(learning_rate=1e-3, n_steps=32, batch_size=64, n_epochs=4),
    "rloo": dict(learning_rate=3e-3),
    "grpo": dict(learning_rate=1e-3, batch_size=64, n_epochs=4),
}
#: agents that can learn from one whole episode of one env per update (PPO's rollouts are
#: n_steps long; the group agents' one episode per env of their groups)
WHOLE_EPISODE = [name for name in ALL if "ppo" not in name and name not in GROUP_AGENTS]


@pytest.mark.parametrize("name", ALL)
def test_learns_something_on_cartpole(name):
    model = _model(name, **SMOKE[name])
    model.learn(8_000)
    assert model.num_timesteps >= 8_000
    returns = [e["r"] for e in model.ep_info_buffer]
    assert np.mean(returns[-20:]) > 40, returns[-20:]  # a random policy averages ~22
    obs = model.env.reset()
    action, _ = model.predict(obs, deterministic=True)
    assert action.shape == (model.n_envs,) and model.action_space.contains(int(action[0]))


@pytest.mark.parametrize("name", WHOLE_EPISODE)
def test_whole_episode_mode(name):
    model = _model(name, n_envs=1, n_steps=0)
    model.learn(600)
    assert model.rollout_buffer.buffer_size == 500  # CartPole-v1's time limit
    # each rollout ended with its episode
    assert model.rollout_buffer.episode_starts[0, 0] == 1.0


@pytest.mark.parametrize("name", ALL)
def test_sb3_callbacks_work_as_is(name, tmp_path):
    model = _model(name)
    eval_env = make_env("CartPole-v1", 1, 100)
    stop = StopTrainingOnRewardThreshold(reward_threshold=1e9)
    callbacks = CallbackList(
        [
            EvalCallback(
                eval_env,
                eval_freq=250,
                n_eval_episodes=2,
                callback_on_new_best=stop,
                best_model_save_path=str(tmp_path / "best"),
                verbose=0,
            ),
            CheckpointCallback(save_freq=250, save_path=str(tmp_path / "ckpt")),
        ]
    )
    model.learn(2_000, callback=callbacks)
    assert list((tmp_path / "ckpt").glob("*.zip"))
    assert (tmp_path / "best" / "best_model.zip").exists()
    # A threshold that is met at once stops training early.
    model2 = _model(name)
    stop_now = StopTrainingOnRewardThreshold(reward_threshold=-1.0)
    model2.learn(
        5_000,
        callback=EvalCallback(
            make_env("CartPole-v1", 1, 7),
            eval_freq=100,
            n_eval_episodes=1,
            callback_on_new_best=stop_now,
        ),
    )
    assert model2.num_timesteps < 5_000


@pytest.mark.parametrize("name", ALL)
def test_same_seed_same_numbers(name):
    a, b = _model(name, seed=3), _model(name, seed=3)
    a.learn(800)
    b.learn(800)
    assert th.equal(_params(a), _params(b))
    c = _model(name, seed=4)
    c.learn(800)
    assert not th.equal(_params(a), _params(c))


def test_learn_leaves_no_folder_in_the_temp_directory(tmp_path, monkeypatch, capsys):
    """SB3 makes an empty SB3-<date> folder in the temp directory on every learn() without a
    logger or TensorBoard folder (thousands over a test run); ours logs to stdout or nowhere."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    _model("a2c").learn(64)
    _model("a2c", verbose=1).learn(64, log_interval=1)
    assert list(tmp_path.glob("SB3-*")) == []
    assert "total_timesteps" in capsys.readouterr().out  # verbose still logs to stdout


@pytest.mark.parametrize("name", ALL)
def test_save_load_continue_equals_straight(name, tmp_path):
    straight = _model(name, seed=5)
    straight.learn(640)
    straight.learn(640, reset_num_timesteps=False)

    first = _model(name, seed=5)
    first.learn(640)
    first.save(tmp_path / "m")
    loaded = ALGOS[name].load(tmp_path / "m", env=first.env, force_reset=False)
    loaded.learn(640, reset_num_timesteps=False)
    assert th.allclose(_params(straight), _params(loaded))
    if hasattr(straight, "control_variate"):
        for p, q in zip(
            straight.control_variate.parameters(), loaded.control_variate.parameters(), strict=True
        ):
            assert th.allclose(p, q)
        assert loaded.cv_optimizer.state_dict()["state"]


class _TupleActions(gym.Env):
    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Tuple((gym.spaces.Discrete(2), gym.spaces.Discrete(3)))


@pytest.mark.parametrize("name", ALL)
def test_unsupported_action_space_is_refused(name):
    match = "takes Discrete, MultiDiscrete, MultiBinary or Box actions"
    with pytest.raises(ValueError, match=match) as err:
        ALGOS[name]("MlpPolicy", _TupleActions())
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", WHOLE_EPISODE)  # (PPO always learns V)
def test_returns_without_baseline_need_whole_episodes(name):
    """A cut rollout without V(s) would bootstrap with 0: refused in one line, before any work."""
    with pytest.raises(ValueError, match=r"use_baseline=False needs .*n_steps=5") as err:
        _model(name, n_envs=2, n_steps=5, use_baseline=False)
    assert "\n" not in str(err.value)


def _state(model):
    """Everything an update may change: parameters, optimizer states, statistics."""
    parts = [model.policy.state_dict(), model.policy.optimizer.state_dict()]
    if hasattr(model, "control_variate"):
        parts += [model.control_variate.state_dict(), model.cv_optimizer.state_dict()]
    return copy.deepcopy(parts)


def _same(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, th.Tensor):
        return th.equal(a, b)
    return a == b


@pytest.mark.parametrize(
    "kwargs",
    [{"name": "a2c"}, {"name": "relax"}, {"name": "relax", "kappa_mode": "learned"}],
    ids=str,
)
def test_divergence_leaves_the_model_as_before_the_update(kwargs):
    """A NaN gradient found at the norm check: the policy, phi, both optimizers and kappa's
    statistics are exactly as before that update (as TrainingDivergedError says)."""
    kwargs = dict(kwargs)
    model = _model(kwargs.pop("name"), **kwargs)
    model.learn(320)
    before = _state(model)
    bias = model.policy.action_net.bias
    handle = bias.register_hook(lambda g: g * float("nan"))
    with pytest.raises(TrainingDivergedError, match="grad_norm is nan"):
        model.learn(32, reset_num_timesteps=False)
    handle.remove()
    assert _same(_state(model), before)


def test_gae_matches_sb3_rollout_buffer():
    from stable_baselines3.common.buffers import RolloutBuffer

    rng = np.random.default_rng(0)
    steps, n_envs = 7, 3
    space = gym.spaces.Box(-1, 1, (2,))
    sb3 = RolloutBuffer(
        steps, space, gym.spaces.Discrete(2), gamma=0.9, gae_lambda=0.8, n_envs=n_envs
    )
    rewards = rng.normal(size=(steps, n_envs)).astype(np.float32)
    starts = (rng.random((steps, n_envs)) < 0.3).astype(np.float32)
    values = rng.normal(size=(steps, n_envs)).astype(np.float32)
    for t in range(steps):
        sb3.add(
            np.zeros((n_envs, 2)),
            np.zeros((n_envs, 1)),
            rewards[t],
            starts[t],
            th.as_tensor(values[t]),
            th.zeros(n_envs),
        )
    last_values, dones = th.as_tensor(rng.normal(size=n_envs)), np.array([1, 0, 1])
    sb3.compute_returns_and_advantage(last_values, dones)
    adv, ret = compute_gae(
        rewards,
        values,
        starts,
        last_values.float().numpy(),
        dones.astype(np.float32),
        0.9,
        0.8,
    )
    assert np.allclose(adv, sb3.advantages, atol=1e-5)
    assert np.allclose(ret, sb3.returns, atol=1e-5)
    ours = GumbelRolloutBuffer(
        steps, space, gym.spaces.Discrete(2), gamma=0.9, gae_lambda=0.8, n_envs=n_envs
    )
    assert ours.noise_u.shape == (steps, n_envs, 2)


def _spec(tmp_path, name, total_steps=2_000, **run):
    base = {
        "n_envs": 2,
        "total_steps": total_steps,
        "threshold": 475.0,
        "stop_when_solved": False,
        "checkpoint_freq": 500,
        "eval_episodes": 2,
        "vec_env": "dummy",
    }
    return RunSpec(
        name,
        ALGOS[name],
        "CartPole-v1",
        0,
        tmp_path / "run",
        {**base, **run},
        {"n_steps": 8, "policy_kwargs": TINY},
        lambda n, s: make_env("CartPole-v1", n, s),
        progress=False,
    )


def test_nan_stops_training_and_keeps_checkpoint_and_summary(tmp_path, monkeypatch):
    spec = _spec(tmp_path, "relax")
    spec.settings["grad_var_freq"] = 0  # so that only the update calls the surrogate
    cls = spec.algo_cls
    original = cls.policy_surrogate
    calls = {"n": 0}

    def poisoned(self, *args):
        calls["n"] += 1
        surrogate, logit_grad = original(self, *args)
        if calls["n"] <= 80:
            return surrogate, logit_grad
        return surrogate * float("nan"), None if logit_grad is None else logit_grad * float("nan")

    monkeypatch.setattr(cls, "policy_surrogate", poisoned)
    with pytest.raises(TrainingDivergedError, match="pg_loss is nan at update 81"):
        train(spec)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "diverged" and "update 81" in summary["error"]
    assert list((tmp_path / "run" / "checkpoints").glob("*.zip"))
    model = cls.load(tmp_path / "run" / "model.zip")
    assert all(th.isfinite(p).all() for p in model.policy.parameters())


def test_ctrl_c_saves_checkpoint_and_summary(tmp_path):
    from stable_baselines3.common.callbacks import BaseCallback

    class Interrupt(BaseCallback):
        def _on_step(self):
            if self.num_timesteps >= 600:
                raise KeyboardInterrupt
            return True

    spec = _spec(tmp_path, "a2c")
    spec.extra_callbacks.append(Interrupt())
    with pytest.raises(KeyboardInterrupt):
        train(spec)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["total_env_steps"] >= 600
    assert (tmp_path / "run" / "model.zip").exists()
    assert list((tmp_path / "run" / "checkpoints").glob("model_interrupted_*"))


def test_run_folder_contents(tmp_path):
    spec = _spec(tmp_path, "reinforce", total_steps=1_500, n_envs=1)
    spec.agent_kwargs["n_steps"] = 0
    summary = train(spec)
    run = tmp_path / "run"
    for f in ("config.yaml", "progress.csv", "model.zip", "summary.json"):
        assert (run / f).exists(), f
    for key in (
        "algo",
        "env_id",
        "seed",
        "total_env_steps",
        "episodes",
        "wall_s",
        "env_steps_per_s",
        "threshold",
        "solved_at_env_steps",
        "solved_at_episodes",
        "final_mean_return_100",
    ):
        assert key in summary
    assert summary["status"] == "completed" and summary["total_env_steps"] >= 1_500
    assert summary["episodes"] > 10
    assert summary["eval_episodes"] == 2 and summary["eval_mean_return"] > 0


def test_cross_fitted_kappa_is_the_other_halfs_shrunk_ratio():
    """Each sample gets the OTHER half's kappa = -sum gh / sum hh, shrunk by its jackknife
    standard error; a half with one sample or no h gives 0."""
    from relax_rl.control_variate import cross_fitted_kappa as _cross_fitted_kappa

    def shrunk(gh, hh):  # one half, written out
        m = len(gh)
        if m < 2 or hh.sum() <= 0:
            return 0.0
        ratio = -gh.sum() / hh.sum()
        loo = np.array([-(gh.sum() - gh[i]) / (hh.sum() - hh[i]) for i in range(m)])
        se2 = (m - 1) / m * ((loo - loo.mean()) ** 2).sum()
        return ratio * max(0.0, 1 - se2 / ratio**2)

    rng = np.random.default_rng(0)
    for n_envs, steps in [(8, 5), (3, 5), (2, 1), (5, 40)]:
        half = np.tile(np.arange(n_envs) % 2, steps)
        hh = rng.random(half.size)
        gh = -0.8 * hh + 0.3 * rng.normal(size=half.size)
        if n_envs == 3:
            hh[half == 1] = 0.0  # a half where h is 0 everywhere
        kappa = _cross_fitted_kappa(gh, hh, half)
        for k in (0, 1):
            other = half == 1 - k
            assert np.allclose(kappa[half == k], shrunk(gh[other], hh[other]), atol=1e-12)
    # one sample carries the whole ratio (about 1): shrunk about tenfold towards 0
    half = np.tile([0, 1], 20)
    hh, gh = np.full(40, 1e-6), np.zeros(40)
    hh[0], gh[0] = 1.0, -1.0
    assert 0 < _cross_fitted_kappa(gh, hh, half)[1] < 0.15


@pytest.mark.parametrize("name", ALL)
def test_policy_mode_switches_only_where_a_layer_cares(name):
    """Collect in eval mode, train in training mode, for a policy with dropout; a policy made of
    mode-free layers skips the switch (it walks every submodule, twice per update)."""
    from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

    class Dropped(BaseFeaturesExtractor):
        def __init__(self, observation_space):
            super().__init__(observation_space, features_dim=4)
            self.dropout = th.nn.Dropout(0.1)

        def forward(self, obs):
            return self.dropout(obs.float().flatten(1))

    model = _model(name)
    assert model.policy._mode_free
    model = _model(name, policy_kwargs={**TINY, "features_extractor_class": Dropped})
    _, callback = model._setup_learn(100, None)
    model.collect_rollouts(model.env, callback, model.rollout_buffer, model.n_steps)
    dropout = model.policy.features_extractor.dropout
    assert not dropout.training
    model.train()
    assert dropout.training


@pytest.mark.parametrize("name", ["sb3-a2c", *ALL])
def test_callback_locals_as_sb3s(name):
    """A callback written for SB3's collect loop reads the same names, types and shapes."""
    from stable_baselines3 import A2C as SB3A2C

    seen = {}

    class Reader(BaseCallback):
        def _on_step(self):
            loc = self.locals
            n = self.training_env.num_envs
            counts = np.bincount(loc["actions"].astype(np.int64), minlength=2)
            assert counts.sum() == n
            assert isinstance(loc["clipped_actions"], np.ndarray)
            assert isinstance(loc["obs_tensor"], th.Tensor) and loc["obs_tensor"].shape == (n, 4)
            assert loc["values"].shape == (n, 1) and loc["log_probs"].shape == (n,)
            for key in ("new_obs", "rewards", "dones", "infos", "n_steps", "rollout_buffer"):
                assert key in loc, key
            seen["steps"] = seen.get("steps", 0) + 1
            return True

    if name == "sb3-a2c":
        model = SB3A2C("MlpPolicy", make_env("CartPole-v1", 4, 0), n_steps=8)
    else:
        model = _model(name)
    model.learn(64, callback=Reader())
    assert seen["steps"] > 0


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_an_interrupt_waits_for_the_checkpoint_being_written(sig):
    """Ctrl-C or SIGTERM while a checkpoint is written: the file is finished first (an
    interrupt inside zipfile would leave it half-written and surface as zipfile's ValueError,
    a 'failed' run), then the interrupt is raised; the handlers are restored."""
    import os
    import signal

    from relax_rl.errors import Terminated, interrupts_deferred, sigterm_as_interrupt

    written = []
    # Python's own Ctrl-C handler, whatever this process inherited (a shell's background job
    # starts with SIGINT ignored, and then so does the block, rightly)
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    with sigterm_as_interrupt():
        with pytest.raises(Terminated if sig == "SIGTERM" else KeyboardInterrupt):
            with interrupts_deferred():
                os.kill(os.getpid(), getattr(signal, sig))
                for _ in range(1000):  # the handler runs between bytecodes: give it many
                    written.append(1)
            pytest.fail("the interrupt was lost")
        assert len(written) == 1000
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    signal.signal(signal.SIGINT, inherited)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


@pytest.mark.parametrize("name", ["a2c", "relax", "ppo"])
def test_separate_grad_clip_leaves_the_actor_step_to_the_actor(name):
    """``max_grad_norm`` with ``grad_clip="joint"`` (SB3's) scales the actor's gradient by
    the norm of actor and critic together; ``separate`` clips each by its own norm. On the
    same first batch (same seed), against the unclipped gradient; the share of clipped steps
    is logged."""
    from conftest import run_updates

    kw = dict(n_steps=8, learning_rate=0.0, policy_kwargs=TINY)
    if "ppo" in name:
        kw.update(n_epochs=1, batch_size=32)

    def first_grads(**clip):
        model = _model(name, **kw, **clip)
        actor = model.policy.actor_parameters()
        critic = [p for p in model.policy.parameters() if all(p is not q for q in actor)]
        seen = {}

        def grab(*_):
            if not seen:  # the first update's gradient, as the optimizer gets it
                for key, params in (("actor", actor), ("critic", critic)):
                    grads = [p.grad.reshape(-1) for p in params if p.grad is not None]
                    seen[key] = th.cat(grads).clone()

        handle = model.policy.optimizer.register_step_pre_hook(grab)
        _, records = run_updates(model, 2)
        handle.remove()
        logged = [r for r in records if "train/grad_clip_fraction" in r]
        fractions = [
            (r["train/grad_clip_fraction"], r["train/actor_grad_clip_fraction"]) for r in logged
        ]
        return seen["actor"], seen["critic"], fractions

    free_actor, free_critic, _ = first_grads(max_grad_norm=None)
    total = float(th.cat([free_actor, free_critic]).norm())
    limit = 0.5 * min(total, float(free_critic.norm()))  # both the whole and the critic clip
    joint_actor, _, joint_fraction = first_grads(max_grad_norm=limit)
    separate_actor, separate_critic, separate_fraction = first_grads(
        max_grad_norm=limit, grad_clip="separate"
    )
    th.testing.assert_close(joint_actor, free_actor * limit / (total + 1e-6))
    actor_scale = min(1.0, limit / (float(free_actor.norm()) + 1e-6))
    th.testing.assert_close(separate_actor, free_actor * actor_scale)
    th.testing.assert_close(separate_critic.norm(), th.tensor(limit), rtol=1e-4, atol=1e-6)
    assert joint_fraction and all(f == (1.0, 1.0) for f in joint_fraction)
    # the critic is clipped, the actor only where its own norm is over the limit
    actor_clipped = float(actor_scale < 1.0)
    assert separate_fraction and separate_fraction[0] == (1.0, actor_clipped)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        (dict(grad_clip="actor"), "unknown grad_clip 'actor'; valid: joint, separate"),
        (dict(max_grad_norm=0.0), "max_grad_norm must be > 0 or None"),
    ],
)
@pytest.mark.parametrize("name", ALL)
def test_bad_grad_clip_settings_are_refused_in_one_line(name, kwargs, needle):
    with pytest.raises(ValueError, match=needle) as err:
        _model(name, **kwargs)
    assert "\n" not in str(err.value)
