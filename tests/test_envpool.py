"""``vec_env: envpool``: SB3's VecEnv semantics over envpool, the same episode statistics as
gymnasium's own envs, and agents train on it (skipped where envpool is not installed)."""

import numpy as np
import pytest

from relax_rl.agents import A2C
from relax_rl.envs import make_env

pytest.importorskip("envpool")


def _episodes(vec_env: str, steps: int = 3000) -> tuple[list[float], list[dict]]:
    env = make_env("CartPole-v1", 8, 0, vec_env=vec_env)
    env.reset()
    rng = np.random.default_rng(0)
    lengths, finished = [], []
    for _ in range(steps):
        _, _, dones, infos = env.step(rng.integers(0, 2, 8))
        for done, info in zip(dones, infos, strict=True):
            if done:
                lengths.append(info["episode"]["l"])
                finished.append(info)
    env.close()
    return lengths, finished


def test_envpool_episodes_match_gymnasium_cartpole():
    """A random policy's episode lengths agree within 4 standard errors, and every finished
    episode carries SB3's terminal observation and truncation flag."""
    ours, finished = _episodes("envpool")
    ref, _ = _episodes("dummy")
    se = np.sqrt(np.var(ours) / len(ours) + np.var(ref) / len(ref))
    assert abs(np.mean(ours) - np.mean(ref)) < 4 * se, (np.mean(ours), np.mean(ref))
    assert len(ours) > 500
    assert all(info["terminal_observation"].shape == (4,) for info in finished)
    assert not any(info["TimeLimit.truncated"] for info in finished)  # random play falls first


def test_envpool_time_limit_is_a_truncation():
    env = make_env("Pendulum-v1", 2, 0, vec_env="envpool")  # every episode ends at 200 steps
    env.reset()
    for _ in range(200):
        obs, _, dones, infos = env.step(np.zeros((2, 1), dtype=np.float32))
    assert dones.all() and all(i["TimeLimit.truncated"] for i in infos), infos
    assert all(i["episode"]["l"] == 200 for i in infos)
    assert not np.allclose(obs, np.stack([i["terminal_observation"] for i in infos]))


def test_agent_trains_on_envpool():
    model = A2C("MlpPolicy", make_env("CartPole-v1", 8, 0, vec_env="envpool"), seed=0)
    model.learn(20_000)
    assert np.mean([e["r"] for e in model.ep_info_buffer]) > 40  # random play: ~22


def test_envpool_refuses_what_it_cannot_run():
    with pytest.raises(ValueError, match="vec_env envpool has no 'relax_rl/Chain-v0'"):
        make_env("relax_rl/Chain-v0", 2, 0, vec_env="envpool")
    with pytest.raises(ValueError, match="takes no env_kwargs"):
        make_env("CartPole-v1", 2, 0, vec_env="envpool", env_kwargs={"x": 1})
