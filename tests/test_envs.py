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
