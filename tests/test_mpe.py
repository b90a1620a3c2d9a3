"""relax_rl/SimpleSpread-v0: MPE's cooperative simple_spread as one gymnasium env (joint
MultiDiscrete action, concatenated observations, one shared reward)."""

import copy
import json
import sys

import gymnasium as gym
import numpy as np
import pytest
import yaml
from gymnasium import spaces

from relax_rl.agents import ALGOS
from relax_rl.cli import main
from relax_rl.envs import SIMPLE_SPREAD_ENV_ID, make_env

simple_spread_v3 = pytest.importorskip("mpe2.simple_spread_v3", reason="the mpe extra")


@pytest.mark.parametrize("n_agents", [1, 3, 10])
def test_spaces_are_the_agents_joined(n_agents):
    env = gym.make(SIMPLE_SPREAD_ENV_ID, n_agents=n_agents)
    per_agent = 4 + 2 * n_agents + 4 * (n_agents - 1)  # own vel/pos, landmarks, others, comms
    assert env.observation_space.shape == (n_agents * per_agent,)
    assert env.action_space == spaces.MultiDiscrete([5] * n_agents)
    obs, _ = env.reset(seed=0)
    assert obs.shape == env.observation_space.shape and obs.dtype == np.float32


@pytest.mark.parametrize("reward", ["sum", "mean"])
def test_steps_as_mpe_with_the_agents_rewards_shared(reward):
    """Same seed and moves as PettingZoo's own parallel env: the same observations (joined
    in agent order) and the agents' rewards summed or averaged; truncated at max_cycles."""
    ours = gym.make(SIMPLE_SPREAD_ENV_ID, n_agents=3, max_cycles=6, reward=reward)
    theirs = simple_spread_v3.parallel_env(N=3, max_cycles=6, continuous_actions=False)
    obs, _ = ours.reset(seed=7)
    their_obs, _ = theirs.reset(seed=7)
    agents = theirs.possible_agents
    np.testing.assert_array_equal(obs, np.concatenate([their_obs[a] for a in agents]))
    moves = np.random.default_rng(0).integers(0, 5, (6, 3))
    for t, move in enumerate(moves):
        obs, r, terminated, truncated, _ = ours.step(move)
        joint = dict(zip(agents, move.tolist(), strict=True))
        their_obs, their_r, _, their_trunc, _ = theirs.step(joint)
        np.testing.assert_allclose(obs, np.concatenate([their_obs[a] for a in agents]))
        rewards = [their_r[a] for a in agents]
        assert r == pytest.approx(np.sum(rewards) if reward == "sum" else np.mean(rewards))
        assert not terminated and truncated == (t == 5) == all(their_trunc.values())


def test_seeded_resets_repeat_and_differ_across_seeds():
    env = gym.make(SIMPLE_SPREAD_ENV_ID)
    first = env.reset(seed=1)[0]
    np.testing.assert_array_equal(env.reset(seed=1)[0], first)
    assert not np.array_equal(env.reset(seed=2)[0], first)
    assert not np.array_equal(env.reset()[0], first)  # (unseeded: the generator goes on)


def test_a_deep_copy_steps_as_the_original():
    """The variance decomposition restarts copies of the env (MPE's own envs deep-copy as a
    fresh, un-reset world: EzPickle)."""
    from relax_rl.decomposition import check_copyable

    env = gym.make(SIMPLE_SPREAD_ENV_ID, n_agents=4)
    env.reset(seed=3)
    env.step(np.zeros(4, dtype=int))
    clone = copy.deepcopy(env)
    for move in np.random.default_rng(1).integers(0, 5, (30, 4)):
        a, b = env.step(move), clone.step(move)
        np.testing.assert_array_equal(a[0], b[0])
        assert a[1:4] == b[1:4]
        if a[2] or a[3]:
            break
    check_copyable(SIMPLE_SPREAD_ENV_ID, {"n_agents": 4})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_agents": 0}, "n_agents must be a positive integer, got 0"),
        ({"n_agents": 2.5}, "n_agents must be a positive integer, got 2.5"),
        ({"max_cycles": 0}, "max_cycles must be a positive integer, got 0"),
        ({"local_ratio": 1.5}, r"local_ratio must be in \[0, 1\], got 1.5"),
        ({"reward": "max"}, "unknown reward 'max'; valid: sum, mean"),
        ({"n_agents": "abc"}, "n_agents must be a positive integer, got 'abc'"),
        ({"n_agents": None}, "n_agents must be a positive integer, got None"),
        ({"local_ratio": "abc"}, r"local_ratio must be in \[0, 1\], got 'abc'"),
    ],
)
def test_bad_options_are_one_line(kwargs, message):
    with pytest.raises(ValueError, match=message) as err:
        gym.make(SIMPLE_SPREAD_ENV_ID, **kwargs)
    assert "\n" not in str(err.value)


def test_bad_actions_are_refused():
    env = gym.make(SIMPLE_SPREAD_ENV_ID).unwrapped
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"expected \(3,\)"):
        env.step(np.zeros(2, dtype=int))
    with pytest.raises(ValueError, match=r"in \[0, 4\]"):
        env.step(np.array([0, 5, 1]))


def test_without_mpe2_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpe2", None)  # (import mpe2 raises ImportError)
    with pytest.raises(ValueError, match=r"pip install 'relax-rl\[mpe\]'") as err:
        make_env(SIMPLE_SPREAD_ENV_ID, 1, 0)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", sorted(ALGOS))
def test_every_agent_trains_on_it(name):
    """Every agent on the joint action (group agents: members of a group reset from one seed
    start from the same landmarks and agents)."""
    from conftest import GROUP_AGENTS, agent_kwargs

    env = make_env(SIMPLE_SPREAD_ENV_ID, 1 if name == "reinforce" else 4, 0,
                   env_kwargs={"n_agents": 2, "max_cycles": 5})  # fmt: skip
    steps = {"n_steps": 0} if name == "reinforce" else {"n_steps": 5}
    model = ALGOS[name]("MlpPolicy", env, seed=0, policy_kwargs={"net_arch": [8]},
                        **agent_kwargs(name, **steps))  # fmt: skip
    model.learn(200)
    assert model.num_timesteps >= 200 and len(model.ep_info_buffer) > 0
    if name in GROUP_AGENTS:
        assert model.group_size == 2


# (REINFORCE has no entry: the comparison is of A2C, PPO, the group baselines and RELAX's)
@pytest.mark.parametrize("algo", [a for a in sorted(ALGOS) if a != "reinforce"])
@pytest.mark.parametrize("entry", [SIMPLE_SPREAD_ENV_ID, "simple-spread-10"])
def test_the_shipped_configs_validate(algo, entry, capsys):
    flag = ["--env", entry] if entry.startswith("relax_rl/") else ["--preset", entry]
    assert main(["params", "--algo", algo, *flag]) == 0
    printed = capsys.readouterr().out
    if entry == "simple-spread-10":
        assert "'n_agents': 10" in printed


def test_cli_trains_evaluates_and_records_the_joint_action(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--algo", "relax-ppo", "--env", SIMPLE_SPREAD_ENV_ID, "--total-steps",
            "256", "--set", "n_steps=32", "--set", "batch_size=64", "--set", "n_epochs=1",
            "--set", "policy_kwargs.net_arch=[8]", "--set", "env_kwargs.max_cycles=8",
            "--eval-episodes", "2", "--no-progress", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["action_space"] == "MultiDiscrete([5 5 5])"
    assert yaml.safe_load((out / "config.yaml").read_text())["normalize"] is True  # (configs/)
    capsys.readouterr()
    assert main(["eval", str(out), "--episodes", "2"]) == 0
    assert f"mean return {summary['eval_mean_return']:.2f}" in capsys.readouterr().out


def test_an_unknown_option_names_the_valid_ones(tmp_path, capsys):
    """From train and compare alike: one line, exit 2, no folder."""
    for command in (["train", "--algo", "ppo"], ["compare", "--algos", "ppo", "--seeds", "0"]):
        args = [*command, "--env", SIMPLE_SPREAD_ENV_ID, "--set", "env_kwargs.foo=1"]
        assert main([*args, "--out", str(tmp_path / "run")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        expected = "takes no option 'foo' (env_kwargs); its options: n_agents, max_cycles, "
        assert len(err) == 1 and expected + "local_ratio, reward" in err[0], err
        assert not (tmp_path / "run").exists()


def test_variance_of_a_normalised_group_run(tmp_path, capsys):
    """The shipped configs normalise SimpleSpread; a group agent's checkpoint loads over its
    envs in groups, under the saved statistics."""
    out = tmp_path / "run"
    args = ["train", "--algo", "rloo", "--env", SIMPLE_SPREAD_ENV_ID, "--total-steps", "400",
            "--set", "policy_kwargs.net_arch=[8]", "--set", "env_kwargs.max_cycles=5",
            "--eval-episodes", "3", "--no-progress", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["normalize"] is True
    assert main(["variance", str(out), "--at", "1", "--states", "3", "--repeats", "2"]) == 0
    assert json.loads((out / "variance.json").read_text())["points"][0]["estimators"]
    summary = json.loads((out / "summary.json").read_text())
    capsys.readouterr()
    assert main(["eval", str(out)]) == 0  # (train's own 3 episodes, replayed)
    assert f"{summary['eval_mean_return']:.2f} +- " in capsys.readouterr().out
