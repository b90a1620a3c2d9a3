import gymnasium as gym
import pytest

from relax_rl.envs import TOY_ENV_ID


@pytest.mark.parametrize("target", [0.499, 0.45])
def test_toy_bandit_rewards_and_one_step_episodes(target):
    env = gym.make(TOY_ENV_ID, target=target)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    for action in (0, 1):
        env.reset()
        _, reward, terminated, truncated, _ = env.step(action)
        assert reward == pytest.approx(-((action - target) ** 2))
        assert terminated and not truncated
    with pytest.raises(ValueError, match="not in"):
        env.unwrapped.step(2)


def test_toy_bandit_rejects_bad_target():
    with pytest.raises(ValueError, match="outside"):
        gym.make(TOY_ENV_ID, target=1.5)


def test_an_env_whose_extra_is_missing_is_refused_in_one_line():
    """An env id whose module needs an extra that is not installed (LunarLander-v3 without
    box2d) ends in one line naming the extra to install, not in a traceback."""
    from relax_rl.envs import make_env

    env_id = "relax_rl_test/NeedsBox2D-v0"
    if env_id not in gym.registry:
        gym.register(env_id, entry_point="_needs_box2d_env:Env")
    with pytest.raises(ValueError, match=r"pip install 'relax-rl\[box2d\]'") as err:
        make_env(env_id, 1, 0)
    assert "\n" not in str(err.value)


def test_the_projects_envs_run_in_subprocesses():
    """A SubprocVecEnv's workers have not imported relax_rl.envs (whose import registers the
    project's ids): make_env names the module for them."""
    import numpy as np

    from relax_rl.envs import MATCH_ENV_ID, make_env

    env = make_env(MATCH_ENV_ID, 2, 0, vec_env="subproc", env_kwargs={"d": 4})
    try:
        assert env.reset().shape == (2, 4)
        _, rewards, dones, _ = env.step(np.zeros((2, 4), dtype=np.int8))
        assert dones.all() and rewards.shape == (2,)
    finally:
        env.close()
