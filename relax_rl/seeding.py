"""Env seeds that never overlap between runs: numpy's ``SeedSequence`` in place of SB3's
``seed + i`` (issue 31: with SB3's rule, runs with seeds 0, 1 and 2 over 16 envs share 14 of their
16 env streams, and intervals over such seeds are overconfident)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper
from stable_baselines3.common.vec_env.base_vec_env import VecEnvObs, VecEnvStepReturn

#: the stream of a run's evaluation env: ``(seed, *EVAL_STREAM)`` (none of its training envs')
EVAL_STREAM = (1,)
#: the stream of a run's periodic evaluations during training (``eval_freq``)
PERIODIC_EVAL_STREAM = (2,)
#: the stream of the episodes a run records as videos (``capture_video``)
VIDEO_STREAM = (3,)


def env_seeds(seed: int | Sequence[int], n_envs: int) -> list[int]:
    """The seeds of a run's ``n_envs`` envs: spawned from numpy's ``SeedSequence`` of ``seed``,
    so that runs of different seeds share no env's random numbers, as SB3's ``seed, seed + 1,
    ...`` would (with 16 envs, the runs of seeds 0 and 1 would share 15 env streams).

    :param seed: the run's seed, or ``(seed, *stream)``: other streams of the same seed (a
        continued run's, an evaluation's; :data:`EVAL_STREAM`).
    """
    entropy = [int(seed)] if isinstance(seed, int) else [int(x) for x in seed]
    root = np.random.SeedSequence(entropy)
    return [int(child.generate_state(1, np.uint64)[0] >> 1) for child in root.spawn(n_envs)]


class IndependentSeeds(VecEnvWrapper):
    """Seeds the envs of a VecEnv by :func:`env_seeds`: SB3 (the agent's ``set_random_seed``,
    ``make_vec_env``) seeds env ``i`` of seed ``s`` with ``s + i``, which this replaces.

    :param stream: which env streams of a seed this VecEnv's are (:func:`env_seeds`): kept when
        the agent seeds it with its seed alone.
    """

    def __init__(self, venv: VecEnv, stream: tuple[int, ...] = ()) -> None:
        super().__init__(venv)
        self.stream = tuple(stream)

    def seed(self, seed: int | None = None) -> list[int | None]:
        if seed is None:
            return self.venv.seed(None)
        seeds = env_seeds((seed, *self.stream), self.num_envs)
        # SB3's VecEnvs apply the seeds in `_seeds` at their next reset (as their seed() does).
        self.venv._seeds = list(seeds)  # type: ignore[attr-defined]
        return list(seeds)

    def reset(self) -> VecEnvObs:
        return self.venv.reset()

    def step_wait(self) -> VecEnvStepReturn:
        return self.venv.step_wait()


def resume_stream(env_steps: int) -> tuple[int, ...]:
    """The env stream of a run continued at ``env_steps``: other episodes than its first
    session's (and than its evaluation's)."""
    return (0, int(env_steps))
