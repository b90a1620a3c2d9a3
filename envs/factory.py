"""Building environments: vectorised, seeded, monitored, with one-line errors for bad ids."""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import os
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.envs.registration import load_env_creator
from gymnasium.error import DependencyNotInstalled, Error
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import (
    DummyVecEnv,
    SubprocVecEnv,
    VecEnv,
    VecMonitor,
    VecNormalize,
)

from relax_rl.envs.envpool_vec import EnvpoolVecEnv
from relax_rl.envs.wrappers import DiscretizeAction, check_bins, check_discretizable
from relax_rl.seeding import IndependentSeeds, env_seeds

VEC_ENVS = ("dummy", "subproc", "envpool")
#: VecNormalize's options a run's ``normalize_kwargs`` may set (``gamma`` is the agent's).
NORMALIZE_OPTIONS: dict[str, type] = {
    "norm_obs": bool,
    "norm_reward": bool,
    "clip_obs": float,
    "clip_reward": float,
    "epsilon": float,
}
EXTRAS = {
    "Box2D": "box2d",
    "box2d": "box2d",
    "mujoco": "mujoco",
    "MuJoCo": "mujoco",
    "mpe2": "mpe",
}


def _import_user_module(module: str) -> None:
    """Import ``module``, from the current folder too (as ``python -m relax_rl`` finds it; the
    console script's path does not hold the current folder)."""
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        here = os.getcwd()
        if exc.name != module.split(".")[0] or here in sys.path or "" in sys.path:
            raise
        sys.path.insert(0, here)
        importlib.import_module(module)


def check_env_id(env_id: str) -> gym.envs.registration.EnvSpec:
    """The spec of ``env_id``, or ``ValueError`` naming close matches. ``module:EnvId``
    (gymnasium's form for a user's own env) imports ``module`` first, which registers it."""
    module, sep, name = env_id.rpartition(":")
    if sep:
        try:
            _import_user_module(module)
        except Exception as exc:  # (a user's module can fail any way: SyntaxError, ...)
            raise ValueError(
                f"env id {env_id!r}: cannot import module {module!r} ({exc})"
            ) from None
        env_id = name
    try:
        return gym.spec(env_id)
    except Error:
        namespace = env_id.split("/")[0] if "/" in env_id else None
        known = {spec.namespace for spec in gym.registry.values()}
        if namespace is not None and namespace not in known:
            which = "ale-py, for ALE" if namespace == "ALE" else "the package that registers it"
            raise ValueError(
                f"unknown env id {env_id!r}: no env of namespace {namespace!r} is registered "
                f"(install {which})"
            ) from None
        close = difflib.get_close_matches(env_id, list(gym.registry.keys()), n=3, cutoff=0.7)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see gymnasium's registry"
        raise ValueError(f"unknown env id {env_id!r}{hint}") from None


def reward_threshold(env_id: str) -> float | None:
    """The env's ``reward_threshold`` (CartPole-v1: 475, Acrobot-v1: -100, LunarLander-v3: 200)."""
    return check_env_id(env_id).reward_threshold


def _renders(env_id: str) -> bool:
    """Whether the env declares ``rgb_array`` among its render modes (from its class: no env
    is built)."""
    spec = check_env_id(env_id)
    try:
        creator = (
            spec.entry_point if callable(spec.entry_point) else load_env_creator(spec.entry_point)
        )
    except (ImportError, AttributeError, ValueError, DependencyNotInstalled):
        return True  # (as SB3 would: let gym.make decide, and make_env name a missing extra)
    return "rgb_array" in ((getattr(creator, "metadata", None) or {}).get("render_modes") or [])


def env_options(env_id: str) -> list[str] | None:
    """The keyword options of the env's constructor (``env_kwargs``), from its signature;
    None where it cannot be read."""
    spec = check_env_id(env_id)
    try:
        creator = (
            spec.entry_point if callable(spec.entry_point) else load_env_creator(spec.entry_point)
        )
        params = inspect.signature(creator).parameters.values()
    except (ImportError, AttributeError, ValueError, TypeError, DependencyNotInstalled):
        return None
    return [
        p.name
        for p in params
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "render_mode"
    ]


def _unknown_option(env_id: str, exc: TypeError) -> Exception:
    """A constructor's "unexpected keyword argument" as a one-line ``ValueError`` naming the
    env's options; any other ``TypeError`` as it is."""
    unknown = re.search(r"unexpected keyword argument '(\w+)'", str(exc))
    if unknown is None:
        return exc
    options = env_options(env_id)
    valid = f"; its options: {', '.join(options)}" if options else ""
    return ValueError(f"{env_id} takes no option {unknown[1]!r} (env_kwargs){valid}")


def build_env(
    env_id: str,
    env_kwargs: dict[str, Any] | None = None,
    discretize: int | None = None,
    **make_kwargs: Any,
) -> gym.Env:
    """One env as a run has it: ``gym.make(env_id, **env_kwargs)``, with its Box actions in
    ``discretize`` bins a dimension (:class:`~relax_rl.envs.wrappers.DiscretizeAction`)."""
    check_env_id(env_id)
    try:
        env = gym.make(env_id, **make_kwargs, **(env_kwargs or {}))
    except TypeError as exc:
        raise _unknown_option(env_id, exc) from None
    if discretize is not None:
        try:
            env = DiscretizeAction(env, discretize)
        except ValueError:
            env.close()
            raise
    return env


def check_discretize(
    env_id: str, discretize: int | None, env_kwargs: dict[str, Any] | None = None
) -> None:
    """Refuse, in one line and before any work, a ``discretize`` the env cannot take (not an
    integer >= 2; an env whose actions are not a bounded Box)."""
    if discretize is None:
        return
    bins = check_bins(discretize)
    env = build_env(env_id, env_kwargs)
    try:
        check_discretizable(env.action_space, bins, env_id)
    finally:
        env.close()


def check_env_api(
    env_id: str, env_kwargs: dict[str, Any] | None = None, discretize: int | None = None
) -> None:
    """Build one env as a run has it, reset it and step it once as the collect loop does, and
    refuse in one line (before any run folder) what every run would fail on: an env that
    raises there, the old gym API, observations of another shape than its space's."""
    env = build_env(env_id, env_kwargs, discretize)
    space = env.observation_space
    # (gymnasium's passive checker warns on what is refused below: the one line says it)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _reset_and_step(env_id, env, space)


def _reset_and_step(env_id: str, env: gym.Env, space: gym.Space) -> None:
    try:
        try:
            out = env.reset(seed=0)
        except Exception as exc:
            raise ValueError(f"{env_id}: reset() failed: {type(exc).__name__}: {exc}") from None
        if not (isinstance(out, tuple) and len(out) == 2):
            raise ValueError(
                f"{env_id}: reset() returned a {type(out).__name__}, not (observation, info) "
                "(gymnasium's API; the old gym API's reset returns the observation alone)"
            )
        _check_shape(env_id, "reset", out[0], space)

        def wrong_api(count: object) -> ValueError:
            return ValueError(
                f"{env_id}: step() returned {count} values, not (observation, reward, "
                "terminated, truncated, info) (gymnasium's API; the old gym API returns 4)"
            )

        try:
            result = env.step(env.action_space.sample())
        except Exception as exc:
            unpacked = re.search(r"expected 5, got (\d+)", str(exc))  # (gymnasium's wrappers)
            if unpacked:
                raise wrong_api(unpacked[1]) from None
            raise ValueError(f"{env_id}: step() failed: {type(exc).__name__}: {exc}") from None
        if not (isinstance(result, tuple) and len(result) == 5):
            raise wrong_api(len(result) if isinstance(result, tuple) else "not a tuple of")
        _check_shape(env_id, "step", result[0], space)
    finally:
        env.close()


def _check_shape(env_id: str, where: str, obs: Any, space: gym.Space) -> None:
    if isinstance(space, gym.spaces.Box) and np.shape(obs) != space.shape:
        raise ValueError(
            f"{env_id}: {where}() returned an observation of shape {np.shape(obs)}; its "
            f"observation_space is {space}"
        )


def make_env(
    env_id: str,
    n_envs: int = 1,
    seed: int | Sequence[int] | None = None,
    vec_env: str = "dummy",
    env_kwargs: dict[str, Any] | None = None,
    discretize: int | None = None,
) -> VecEnv:
    """``n_envs`` copies of ``env_id`` in a VecEnv with episode statistics for the logger and
    callbacks (SB3's ``Monitor``, or ``VecMonitor`` over envpool), each env seeded from ``seed``
    by :func:`~relax_rl.seeding.env_seeds`: no two seeds share an env's random numbers.

    :param seed: the run's seed, or ``(seed, *stream)`` for other env streams of that seed (a
        continued run's, an evaluation's): the agent's own ``seed`` call keeps the stream.
    :param vec_env: ``dummy`` (one process), ``subproc`` (a process per env) or ``envpool``
        (envpool's C++ pool; its own env ids only, no ``env_kwargs``).
    :param discretize: bins per dimension of the env's Box actions (``MultiDiscrete`` actions:
        :class:`~relax_rl.envs.wrappers.DiscretizeAction`, outside the Monitor, whose returns
        stay the env's own).
    """
    check_env_id(env_id)
    if n_envs < 1:
        raise ValueError(f"n_envs must be >= 1, got {n_envs}")
    if vec_env == "envpool":
        if env_kwargs or discretize is not None:
            which = "env_kwargs" if env_kwargs else "discretize"
            raise ValueError(f"vec_env envpool takes no {which}; use dummy or subproc")
        # envpool seeds its envs base, base + 1, ... once: a 31-bit base drawn from the seed
        # makes two runs' pools overlap with odds n_envs / 2**31.
        base = None if seed is None else env_seeds(seed, 1)[0] % 2**31
        return VecMonitor(EnvpoolVecEnv(env_id, n_envs, base))
    # (the agent seeds the env again with its seed alone: the wrapper keeps the stream)
    first, *stream = (seed,) if seed is None or isinstance(seed, int) else tuple(seed)
    vec_cls = {"dummy": DummyVecEnv, "subproc": SubprocVecEnv}.get(vec_env)
    if vec_cls is None:
        raise ValueError(f"unknown vec_env {vec_env!r}; valid: {', '.join(VEC_ENVS)}")
    wrapper: dict[str, Any] = {}
    if discretize is not None:
        wrapper = {"wrapper_class": DiscretizeAction, "wrapper_kwargs": {"bins": discretize}}
    # SB3's make_vec_env asks every env id for render_mode="rgb_array" (for video recorders);
    # an env that cannot render is built without it (else gymnasium warns on stderr).
    make: Any = env_id
    if vec_env == "subproc" and env_id.startswith("relax_rl/"):
        # a worker process has not imported relax_rl.envs: gymnasium's `module:EnvId` does
        make = env_id = f"relax_rl.envs:{env_id}"
    try:
        if vec_env == "subproc":  # (a worker's error would not come back as one line)
            check_discretize(env_id, discretize, env_kwargs)
        if not _renders(env_id):
            make, env_kwargs = functools.partial(gym.make, env_id, **(env_kwargs or {})), None
        venv = IndependentSeeds(
            make_vec_env(
                make, n_envs=n_envs, vec_env_cls=vec_cls, env_kwargs=env_kwargs, **wrapper
            ),
            stream,
        )
    except TypeError as exc:  # an option the env's constructor does not take
        raise _unknown_option(env_id, exc) from None
    except DependencyNotInstalled as exc:
        extra = next((v for k, v in EXTRAS.items() if k in str(exc)), None)
        how = f"pip install 'relax-rl[{extra}]'" if extra else "install its dependencies"
        raise ValueError(f"{env_id} needs extra packages ({how}): {exc}") from None
    if first is not None:
        venv.seed(first)
    return venv


def normalize_env(
    env: VecEnv,
    gamma: float = 0.99,
    options: dict[str, Any] | None = None,
    stats: Path | None = None,
    training: bool = True,
) -> VecNormalize:
    """``env`` in SB3's ``VecNormalize`` (rl-zoo3's ``normalize``): observations scaled by
    their running mean and std, rewards by the std of the discounted return (``gamma``, the
    agent's). Episode returns in ``info`` stay the env's own (the Monitor is inside).

    :param gamma: the agent's discount (unused with ``stats``: saved in them).
    :param options: VecNormalize's options (:data:`NORMALIZE_OPTIONS`).
    :param stats: start from the statistics saved there (a continued run, an evaluation, a
        decomposition) instead of from scratch.
    :param training: update the statistics as the env steps (False: frozen).
    """
    if stats is not None:
        if not stats.is_file():
            raise ValueError(f"the run normalises its env but {stats} is missing")
        venv = VecNormalize.load(str(stats), env)
    else:
        venv = VecNormalize(env, gamma=gamma, **(options or {}))
    venv.training = training
    return venv
