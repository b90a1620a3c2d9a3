"""Env seeds: runs of different seeds share no env stream (SB3's ``seed + i`` rule would give
the runs of seeds 0 and 1 over 16 envs 15 streams in common); one seed gives one set of
episodes, whatever builds the env and whoever seeds it next (the agent, a continued run)."""

import numpy as np
import pytest

from relax_rl.agents import ALGOS
from relax_rl.envs import MATCH_ENV_ID, make_env
from relax_rl.seeding import EVAL_STREAM, env_seeds, resume_stream

N_ENVS = 16


def _first_obs(seed, vec_env="dummy", agent_seed=None, n_envs=N_ENVS):
    """The first observations of a MultiBinaryMatch VecEnv (32 random target bits an env: two
    envs show the same row only if they share their random stream)."""
    env = make_env(MATCH_ENV_ID, n_envs, seed, vec_env=vec_env)
    try:
        if agent_seed is not None:  # the agent seeds its env again, with its own seed
            ALGOS["a2c"]("MlpPolicy", env, seed=agent_seed, policy_kwargs={"net_arch": [4]})
        return env.reset()
    finally:
        env.close()


def _shared_rows(a, b):
    return len({r.tobytes() for r in a} & {r.tobytes() for r in b})


def test_env_seeds_are_reproducible_and_disjoint_across_seeds_and_streams():
    assert env_seeds(3, N_ENVS) == env_seeds(3, N_ENVS)
    sets = [
        set(env_seeds(seed, N_ENVS))
        for seed in [*range(10), (0, *EVAL_STREAM), (0, *resume_stream(2_048))]
    ]
    assert all(len(s) == N_ENVS for s in sets)
    assert len(set().union(*sets)) == N_ENVS * len(sets)  # no seed shared anywhere
    assert env_seeds(3, 4) == env_seeds(3, N_ENVS)[:4]  # (more envs: the same first ones)


@pytest.mark.parametrize("agent", [False, True], ids=["env", "env+agent"])
def test_runs_of_neighbouring_seeds_share_no_env_stream(agent):
    obs = [_first_obs(seed, agent_seed=seed if agent else None) for seed in range(3)]
    assert all(_shared_rows(obs[i], obs[j]) == 0 for i in range(3) for j in range(i))
    np.testing.assert_array_equal(obs[0], _first_obs(0, agent_seed=0 if agent else None))


def test_the_agents_seeding_keeps_the_envs_stream_and_subproc_matches_dummy():
    """A continued run's env (stream of its env steps) keeps that stream when the loaded agent
    seeds it with the run's seed; a SubprocVecEnv plays the same episodes as a DummyVecEnv."""
    resumed = (0, *resume_stream(4_096))
    np.testing.assert_array_equal(_first_obs(resumed, agent_seed=0), _first_obs(resumed))
    assert _shared_rows(_first_obs(resumed), _first_obs(0)) == 0
    # (4 envs: a process each)
    subproc = _first_obs(5, vec_env="subproc", n_envs=4)
    np.testing.assert_array_equal(subproc, _first_obs(5, n_envs=4))
