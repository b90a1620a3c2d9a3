"""``discretize``: a Box action space as MultiDiscrete bins (Tang & Agrawal 2020), from the
wrapper up through every command that builds the run's env again."""

import json

import gymnasium as gym
import numpy as np
import pytest
import yaml
from conftest import GROUP_AGENTS, agent_kwargs
from gymnasium import spaces

from relax_rl.agents import ALGOS
from relax_rl.cli import main
from relax_rl.envs import make_env
from relax_rl.envs.wrappers import DiscretizeAction


class _Box(gym.Env):
    """Records the Box action it is given; reward = its first entry."""

    def __init__(self, low, high):
        low, high = np.asarray(low, np.float32), np.asarray(high, np.float32)
        self.action_space = spaces.Box(low, high, dtype=np.float32)
        self.observation_space = spaces.Box(-1, 1, (1,), dtype=np.float32)
        self.seen = None

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.seen = action
        return np.zeros(1, np.float32), float(np.ravel(action)[0]), True, False, {}


def test_bins_are_evenly_spaced_over_the_bounds_both_included():
    env = DiscretizeAction(_Box([-1.0, 0.0], [1.0, 2.0]), 5)
    assert env.action_space == spaces.MultiDiscrete([5, 5])
    np.testing.assert_allclose(env.bin_values, [[-1, -0.5, 0, 0.5, 1], [0, 0.5, 1, 1.5, 2]])
    env.reset(seed=0)
    for index, value in (([0, 4], [-1.0, 2.0]), ([2, 1], [0.0, 0.5]), ([4, 0], [1.0, 0.0])):
        env.step(np.array(index))
        np.testing.assert_allclose(env.unwrapped.seen, value)
        assert env.unwrapped.seen.dtype == np.float32


def test_a_box_of_several_axes_is_flattened_and_restored():
    low, high = -np.ones((2, 3)), np.arange(1.0, 7.0).reshape(2, 3)
    env = DiscretizeAction(_Box(low, high), 3)
    assert env.action_space == spaces.MultiDiscrete([3] * 6)
    env.reset(seed=0)
    env.step(np.full(6, 2))  # the top bin: the upper bounds
    assert env.unwrapped.seen.shape == (2, 3)
    np.testing.assert_allclose(env.unwrapped.seen, high)
    with pytest.raises(ValueError, match=r"expected \(6,\)"):
        env.step(np.zeros(5, dtype=int))
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        env.step(np.full(6, 3))


@pytest.mark.parametrize(
    ("env", "bins", "message"),
    [
        ("Pendulum-v1", 1, "integer number of bins >= 2, got 1"),
        ("Pendulum-v1", 2.5, "integer number of bins >= 2, got 2.5"),
        ("Pendulum-v1", True, "integer number of bins >= 2, got True"),
        ("CartPole-v1", 11, "needs Box actions; CartPole-v1 has Discrete(2)"),
        ("unbounded", 11, "needs finite action bounds"),
    ],
)
def test_bad_discretize_is_one_line(env, bins, message):
    env = _Box([-np.inf], [np.inf]) if env == "unbounded" else gym.make(env)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        DiscretizeAction(env, bins)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("vec_env", ["dummy", "subproc"])
def test_make_env_discretises_outside_the_monitor(vec_env):
    """The VecEnv acts in bins; the Monitor's episode returns are the env's own; the envs of a
    SubprocVecEnv are the same as a DummyVecEnv's."""
    env = make_env("Pendulum-v1", 2, 0, vec_env=vec_env, discretize=3)
    assert env.action_space == spaces.MultiDiscrete([3])
    obs = [env.reset()]
    total = np.zeros(2)
    for _ in range(200):  # Pendulum's episodes: 200 steps
        o, r, _, infos = env.step(np.array([[2], [0]]))
        obs.append(o)
        total += r
    np.testing.assert_allclose([i["episode"]["r"] for i in infos], total, rtol=1e-5)
    env.close()
    if vec_env == "subproc":
        dummy = make_env("Pendulum-v1", 2, 0, discretize=3)
        np.testing.assert_array_equal(dummy.reset(), obs[0])
        dummy.close()


def test_envpool_and_a_discrete_env_are_refused():
    with pytest.raises(ValueError, match="envpool takes no discretize"):
        make_env("CartPole-v1", 2, 0, vec_env="envpool", discretize=3)
    with pytest.raises(ValueError, match="needs Box actions"):
        make_env("CartPole-v1", 2, 0, discretize=3)


@pytest.mark.parametrize("name", sorted(ALGOS))
def test_every_agent_trains_on_discretised_actions(name):
    """Every agent acts in the bins (a factorised categorical: Gumbel noise per dimension)."""
    n_envs = 2 if name in GROUP_AGENTS else 4
    env = make_env("Pendulum-v1", n_envs, 0, discretize=5)
    steps = {} if name in GROUP_AGENTS else {"n_steps": 8}
    if name == "reinforce":
        env, steps = make_env("Pendulum-v1", 1, 0, discretize=5), {"n_steps": 0}
    model = ALGOS[name]("MlpPolicy", env, seed=0, policy_kwargs={"net_arch": [8]},
                        **agent_kwargs(name, **steps))  # fmt: skip
    assert model.action_space == spaces.MultiDiscrete([5])
    model.learn(400)
    action, _ = model.predict(env.reset(), deterministic=True)
    assert action.shape == (n_envs if name != "reinforce" else 1, 1)
    assert ((action >= 0) & (action < 5)).all()


def _train_args(out, *extra):
    return ["train", "--algo", "ppo", "--env", "Pendulum-v1", "--total-steps", "256",
            "--set", "n_steps=64", "--set", "batch_size=32", "--set",
            "policy_kwargs.net_arch=[8]", "--checkpoint-freq", "128", "--eval-episodes", "2",
            "--out", str(out), *extra]  # fmt: skip


def test_the_run_folder_records_it_and_eval_variance_resume_rebuild_it(tmp_path, capsys):
    """discretize from a YAML config file: config.yaml and summary.json record it and the
    MultiDiscrete actions; eval replays train's evaluation; variance and --resume rebuild it."""
    config = tmp_path / "cfg.yaml"
    config.write_text("discretize: 7\n")
    out = tmp_path / "run"
    assert main([*_train_args(out, "--config", str(config)), "--no-progress"]) == 0
    stored = yaml.safe_load((out / "config.yaml").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert stored["discretize"] == 7
    assert stored["policy"]["action_space"] == summary["action_space"] == "MultiDiscrete([7])"
    capsys.readouterr()
    assert main(["eval", str(out), "--episodes", "2"]) == 0
    assert f"mean return {summary['eval_mean_return']:.2f}" in capsys.readouterr().out
    assert main(["variance", str(out), "--at", "1", "--states", "2", "--repeats", "2",
                 "--window", "16"]) == 0  # fmt: skip
    result = json.loads((out / "variance.json").read_text())
    assert result["discretize"] == 7 and result["window"] == 16
    assert result["points"][0]["estimators"]
    assert main(["train", "--resume", str(out), "--total-steps", "64", "--no-progress"]) == 0
    assert json.loads((out / "summary.json").read_text())["total_env_steps"] >= 320


def test_bad_discretize_stops_train_before_a_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    for extra, message in (
        (["--env", "CartPole-v1", "--set", "discretize=11"], "needs Box actions"),
        (["--discretize", "1"], "--discretize: invalid value 1: expected an integer >= 2"),
        (["--set", "discretize=1"], "discretize must be >= 2, got 1"),
        (["--set", "discretize=2.5"], "expected int, got float"),
    ):
        args = _train_args(out)
        if extra[0] == "--env":
            args[args.index("Pendulum-v1")] = extra[1]
            extra = extra[2:]
        assert main([*args, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
        assert not out.exists()


def test_compare_takes_a_preset(tmp_path):
    """compare --preset: each algo's entry of that name (here baselines' MuJoCo settings in 11
    bins) for every run."""
    out = tmp_path / "cmp"
    args = ["compare", "--algos", "ppo", "--env", "Pendulum-v1", "--preset", "mujoco-discrete",
            "--seeds", "0", "--total-steps", "128", "--set", "n_steps=64", "--set",
            "batch_size=64", "--eval-episodes", "1", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    stored = yaml.safe_load((out / "ppo-s0" / "config.yaml").read_text())
    assert stored["discretize"] == 11 and stored["normalize"] is True
    assert (out / "report.md").read_text().startswith("# Comparison on Pendulum-v1 (discretize=11)")
    assert stored["policy"]["action_space"] == "MultiDiscrete([11])"
    assert main([*args[:7], "nope", *args[8:]]) == 2


def test_the_shipped_mujoco_presets_differ_only_in_discretize():
    from relax_rl.config import zoo_settings

    gaussian, discrete = zoo_settings("ppo", "mujoco"), zoo_settings("ppo", "mujoco-discrete")
    assert discrete.pop("discretize") == 11 and discrete == gaussian
