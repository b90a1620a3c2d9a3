"""One training run: a run folder with its config, SB3 logger CSV, checkpoints, model and summary.

Nothing written is lost: ``summary.json`` is rewritten at every checkpoint and at the end, and
Ctrl-C or a diverged update (NaN) still leaves a valid checkpoint, ``model.zip`` and summary.
A run with ``normalize`` keeps its VecNormalize statistics beside every model it saves
(:func:`normalize_stats_path`).
"""

from __future__ import annotations

import copy
import functools
import importlib.metadata
import inspect
import json
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.logger import Logger, make_output_format
from stable_baselines3.common.vec_env import VecEnv

from relax_rl.callbacks import (
    BEST_MODEL,
    MONITOR_FILE,
    EpisodeLog,
    EpisodeTracker,
    PeriodicCallback,
    ReturnProgressBar,
    RunCheckpoint,
    RunEvaluation,
)
from relax_rl.config import RUN_KEYS, algo_parameters, to_yaml_safe
from relax_rl.diagnostics import GradientVarianceCallback
from relax_rl.envs.factory import normalize_env
from relax_rl.errors import (
    TrainingDivergedError,
    UsageError,
    interrupts_deferred,
    sigterm_as_interrupt,
)
from relax_rl.evaluation import evaluate, record_episode
from relax_rl.seeding import EVAL_STREAM, PERIODIC_EVAL_STREAM, VIDEO_STREAM, resume_stream
from relax_rl.tracking import TrackingConfig, WandbOutputFormat, finish, start_run


def normalize_stats_path(model_path: Path) -> Path:
    """Where the VecNormalize statistics of a saved model lie: ``vecnormalize.pkl`` beside
    ``model.zip``; ``model_vecnormalize_<x>.pkl`` beside ``checkpoints/model_<x>.zip`` (SB3's
    CheckpointCallback's name)."""
    stem = model_path.stem
    name = {"model": "vecnormalize", "best_model": "best_model_vecnormalize"}.get(
        stem, stem.replace("model_", "model_vecnormalize_", 1)
    )
    return model_path.with_name(name + ".pkl")


def agent_gamma(spec: RunSpec) -> float:
    """The discount the agent trains with (VecNormalize's return statistics use it too)."""
    return float(spec.agent_kwargs.get("gamma", algo_parameters(spec.algo_cls)["gamma"].default))


@dataclass
class ResumePoint:
    """The newest model a run folder holds, with the episode counts saved beside it."""

    model_path: Path
    env_steps: int
    episodes: dict[str, Any] | None

    @classmethod
    def latest(cls, run_dir: Path) -> ResumePoint:
        """``model.zip`` of a run that stopped (finished, interrupted, diverged, failed), else
        the newest of ``checkpoints/model_<steps>_steps.zip`` (a killed run's)."""
        try:
            summary = json.loads((run_dir / "summary.json").read_text())
        except (OSError, ValueError):
            summary = {}
        if summary.get("status", "running") != "running" and (run_dir / "model.zip").is_file():
            path = run_dir / "episodes.json"
            episodes = json.loads(path.read_text()) if path.is_file() else None
            return cls(run_dir / "model.zip", int(summary["total_env_steps"]), episodes)
        found = []
        for path in (run_dir / "checkpoints").glob("model_*_steps.zip"):
            steps = path.stem.removesuffix("_steps").rpartition("_")[2]
            if steps.isdigit():
                found.append((int(steps), path))
        if not found:
            raise ValueError(f"{run_dir} has no model.zip and no checkpoint to continue from")
        steps, path = max(found)
        state = path.with_name(path.stem.replace("model_", "model_episodes_", 1) + ".json")
        return cls(path, steps, json.loads(state.read_text()) if state.is_file() else None)


@dataclass
class RunSpec:
    """Everything one run needs; ``make_env(n_envs, seed)`` builds its training env (``seed``:
    an int or ``(seed, *stream)``, :func:`relax_rl.seeding.env_seeds`)."""

    algo: str
    algo_cls: type
    env_id: str
    seed: int
    out: Path
    settings: dict[str, Any]
    agent_kwargs: dict[str, Any]
    make_env: Callable[[int, int], VecEnv]
    progress: bool = True
    extra_callbacks: list[BaseCallback] = field(default_factory=list)
    verbose: int = 0
    tracking: TrackingConfig | None = None
    #: continue from this checkpoint of ``out`` (:meth:`resume`) instead of a new agent
    resume_from: ResumePoint | None = None
    #: called after each periodic evaluation (``eval_freq``; SB3's ``callback_after_eval``,
    #: ``self.parent`` the evaluation): returning False stops the run (a pruned tuning trial)
    after_evaluation: BaseCallback | None = None

    def __post_init__(self) -> None:
        # a spec built by hand may name only some run keys: the rest at their defaults
        self.settings = {**{k: default for k, (_, default) in RUN_KEYS.items()}, **self.settings}

    @classmethod
    def create(
        cls,
        algo: str,
        env_id: str,
        seed: int = 0,
        out: str | Path | None = None,
        settings: Mapping[str, Any] | None = None,
        callbacks: Sequence[BaseCallback] = (),
        tracking: TrackingConfig | None = None,
        preset: str | None = None,
        progress: bool = False,
        config_file: str | Path | None = None,
    ) -> RunSpec:
        """The spec ``relax-rl train`` builds: ``configs/<algo>.yaml``'s entry for the env
        (or ``preset``), then ``config_file``, then ``settings`` (run keys and agent
        arguments), validated; the env's reward threshold unless given; your SB3 ``callbacks``
        beside the run's own.

        :param out: the run folder (default ``runs/<algo>-<env>-s<seed>-<time>``).
        """
        from relax_rl.agents import ALGOS
        from relax_rl.config import resolve_settings, validate

        if algo not in ALGOS:
            raise ValueError(f"unknown algo {algo!r}; valid: {', '.join(ALGOS)}")
        chosen = resolve_settings(
            algo,
            env_id,
            preset=preset,
            config_file=None if config_file is None else Path(config_file),
            overrides=settings,
        )
        run, agent_kwargs = validate(chosen, ALGOS[algo])
        stamp = time.strftime("%Y%m%d-%H%M%S")
        folder = (
            Path(out)
            if out is not None
            else Path("runs") / (f"{algo}-{env_id.replace('/', '_')}-s{seed}-{stamp}")
        )
        return cls._from_settings(
            algo, env_id, seed, folder, run, agent_kwargs, callbacks, tracking, progress
        )

    @classmethod
    def resume(
        cls,
        run_dir: str | Path,
        more_steps: int | None = None,
        callbacks: Sequence[BaseCallback] = (),
        tracking: TrackingConfig | None = None,
        progress: bool = False,
    ) -> RunSpec:
        """Continue the run in ``run_dir`` from its newest model (``model.zip``, or the newest
        checkpoint of a run that was killed), SB3-style (``learn(n,
        reset_num_timesteps=False)``): its settings from its ``config.yaml``, the step count,
        optimiser states, acting-noise generator and episode counts from the checkpoint, the
        rows of ``progress.csv`` up to it kept.

        :param more_steps: env steps to train on top of the checkpoint's; default: what is left
            of the run's ``total_steps``.
        """
        from relax_rl.agents import ALGOS
        from relax_rl.config import validate

        run_dir = Path(run_dir)
        try:
            config = yaml.safe_load((run_dir / "config.yaml").read_text())
            algo, env_id, seed = config["algo"], config["env_id"], int(config["seed"])
        except (OSError, yaml.YAMLError, TypeError, KeyError, ValueError):
            raise ValueError(f"{run_dir} is not a run folder (no readable config.yaml)") from None
        if algo not in ALGOS:
            raise ValueError(f"{run_dir}/config.yaml names an unknown algo {algo!r}")
        point = ResumePoint.latest(run_dir)
        stored = {
            k: v
            for k, v in config.items()
            if k not in ("algo", "env_id", "seed", *DERIVED_CONFIG_KEYS)
        }
        run, agent_kwargs = validate(stored, ALGOS[algo])
        if more_steps is None:
            more_steps = run["total_steps"] - point.env_steps
            if more_steps <= 0:
                raise ValueError(
                    f"{run_dir} has trained its total_steps={run['total_steps']:,} already; "
                    "give --total-steps N to train N more"
                )
        elif more_steps <= 0:
            raise ValueError(f"the steps to train on must be positive, got {more_steps}")
        run["total_steps"] = point.env_steps + more_steps
        spec = cls._from_settings(
            algo, env_id, seed, run_dir, run, agent_kwargs, callbacks, tracking, progress
        )
        spec.resume_from = point
        return spec

    @classmethod
    def _from_settings(
        cls,
        algo: str,
        env_id: str,
        seed: int,
        folder: Path,
        run: dict[str, Any],
        agent_kwargs: dict[str, Any],
        callbacks: Sequence[BaseCallback],
        tracking: TrackingConfig | None,
        progress: bool,
    ) -> RunSpec:
        from relax_rl.agents import ALGOS
        from relax_rl.envs import make_env, reward_threshold
        from relax_rl.envs.factory import check_env_api

        if run["threshold"] is None:
            run["threshold"] = reward_threshold(env_id)
        try:
            # (one env, wrapped as the run's: a discretize it cannot take is refused too)
            check_env_api(env_id, run["env_kwargs"], run["discretize"])
        except (ValueError, TypeError) as exc:  # (TypeError: an env constructor's own)
            raise UsageError(str(exc)) from None
        return cls(
            algo,
            ALGOS[algo],
            env_id,
            seed,
            folder,
            run,
            agent_kwargs,
            functools.partial(
                make_env,
                env_id,
                vec_env=run["vec_env"],
                env_kwargs=run["env_kwargs"],
                discretize=run["discretize"],
            ),
            progress=progress,
            extra_callbacks=list(callbacks),
            tracking=tracking,
        )


class RunFolder:
    """The run folder of a training run in progress: its status and summary (see :func:`train`)."""

    def __init__(self, spec: RunSpec) -> None:
        self.spec = spec
        self.out = spec.out
        self.tracker = EpisodeTracker(
            spec.settings["threshold"], stop_when_solved=spec.settings["stop_when_solved"]
        )
        point = spec.resume_from
        if point is not None and point.episodes is not None:
            self.tracker.load_state_dict(point.episodes)
        self.start_steps = point.env_steps if point is not None else 0
        self.resumed_from = _earlier_resumes(spec.out) if point is not None else []
        if point is not None:
            self.resumed_from.append(
                {"env_steps": point.env_steps, "model": str(point.model_path.relative_to(spec.out))}
            )
        self.start = time.perf_counter()
        self.model: Any = None
        self.status = "running"
        self.error: str | None = None
        self.end: float | None = None
        self.evaluation: dict[str, Any] = {}
        self.periodic_evaluation: RunEvaluation | None = None

    def summary(self) -> dict[str, Any]:
        steps = int(self.model.num_timesteps) if self.model is not None else 0
        wall = (self.end or time.perf_counter()) - self.start
        return {
            "algo": self.spec.algo,
            "env_id": self.spec.env_id,
            "seed": self.spec.seed,
            "status": self.status,
            "error": self.error,
            "total_env_steps": steps,
            "episodes": self.tracker.episodes,
            "wall_s": round(wall, 3),  # (of this session, when the run was continued)
            "env_steps_per_s": round((steps - self.start_steps) / wall, 1) if wall > 0 else None,
            "env_kwargs": self.spec.settings.get("env_kwargs"),
            "discretize": self.spec.settings.get("discretize"),
            "action_space": str(self.model.action_space) if self.model is not None else None,
            "threshold": self.spec.settings["threshold"],
            "stop_when_solved": self.spec.settings["stop_when_solved"],
            "solved_at_env_steps": self.tracker.solved_at_env_steps,
            "solved_at_episodes": self.tracker.solved_at_episodes,
            "final_mean_return_100": self.tracker.mean_return,
            **self.evaluation,
            **(self.periodic_evaluation.best() if self.periodic_evaluation is not None else {}),
            **({"resumed_from": self.resumed_from} if self.resumed_from else {}),
        }

    def write_summary(self) -> dict[str, Any]:
        summary = self.summary()
        _atomic_write(self.out / "summary.json", json.dumps(summary, indent=2))
        return summary

    def save_model(self) -> None:
        with interrupts_deferred():
            tmp = self.out / "model.tmp.zip"
            self.model.save(tmp)
            _atomic_write(self.out / "episodes.json", json.dumps(self.tracker.state_dict()))
            save_normalize_stats(self.model, self.out / "model.zip")
            os.replace(tmp, self.out / "model.zip")


def save_normalize_stats(model: Any, model_path: Path) -> None:
    """The VecNormalize statistics of ``model``'s env (if it has them) beside ``model_path``."""
    venv = model.get_vec_normalize_env()
    if venv is not None:
        path = normalize_stats_path(model_path)
        tmp = path.with_suffix(".tmp")
        venv.save(tmp)
        os.replace(tmp, path)


def _eval_env(spec: RunSpec, model: Any, n_envs: int, stream: tuple[int, ...]) -> VecEnv:
    """An evaluation env on a stream of the run's seed (none of its training envs'); a
    normalised run's with the training statistics, frozen, and returns in the env's units."""
    env = spec.make_env(n_envs, (spec.seed, *stream))
    trained = model.get_vec_normalize_env()
    if trained is not None:
        options = {"norm_obs": trained.norm_obs, "norm_reward": False}
        options.update(clip_obs=trained.clip_obs, epsilon=trained.epsilon)
        env = normalize_env(env, trained.gamma, options, training=False)
        env.obs_rms = copy.deepcopy(trained.obs_rms)
    return env


#: the run folder's videos (``capture_video``)
VIDEO_DIR = "videos"


def _record_video(spec: RunSpec, model: Any, when: str) -> None:
    """An episode of the policy as it is now, ``OUT/videos/<when>-<env steps>.mp4``."""
    env = _eval_env(spec, model, 1, VIDEO_STREAM)
    name = f"{when}-{model.num_timesteps}"
    record_episode(model, env, spec.out / VIDEO_DIR, name, spec.settings["eval_deterministic"])


def _evaluate(spec: RunSpec, model: Any) -> dict[str, Any]:
    """The final policy's return on a fresh env (stream :data:`EVAL_STREAM` of the run's seed),
    by the one eval loop: greedy unless ``eval_deterministic`` is off."""
    env = _eval_env(spec, model, spec.settings["eval_envs"], EVAL_STREAM)
    deterministic = spec.settings["eval_deterministic"]
    try:
        result = evaluate(model, env, spec.settings["eval_episodes"], deterministic=deterministic)
    finally:
        env.close()
    return {
        "eval_episodes": spec.settings["eval_episodes"],
        "eval_deterministic": deterministic,
        "eval_mean_return": result.mean,
        "eval_std_return": result.std,
    }


def _earlier_resumes(out: Path) -> list[dict[str, Any]]:
    try:
        return list(json.loads((out / "summary.json").read_text()).get("resumed_from", []))
    except (OSError, ValueError, AttributeError):
        return []


def _progress_rows(out: Path, up_to_steps: int) -> list[dict[str, Any]]:
    """The rows of ``progress.csv`` up to a checkpoint, for a continued run to write again
    (SB3's CSV writer truncates the file it opens)."""
    import csv

    path = out / "progress.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        rows = [{k: _number(v) for k, v in row.items() if v} for row in csv.DictReader(f)]
    return [r for r in rows if r.get("time/total_timesteps", 0) <= up_to_steps]


def _number(text: str) -> Any:
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    return text


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def build(spec: RunSpec) -> tuple[Any, VecEnv]:
    """The training env and a new agent for ``spec``, or the checkpoint's agent when it
    continues a run (raises on bad settings or spaces)."""
    point = spec.resume_from
    # A continued run's envs start from other env streams than the first session's (the
    # agent's own seeding, SB3's set_random_seed on load, goes through the same stream).
    seed = (spec.seed, *resume_stream(point.env_steps)) if point else spec.seed
    if spec.settings["capture_video"]:  # before anything is built or written
        probe = spec.make_env(1, (spec.seed, *VIDEO_STREAM))
        renders = probe.render_mode == "rgb_array"
        probe.close()
        if not renders:
            raise ValueError(f"{spec.env_id} cannot render frames (rgb_array): no video")
    env = spec.make_env(spec.settings["n_envs"], seed)
    try:
        env = spec.algo_cls.prepare_env(env, spec.seed, spec.agent_kwargs)
        if spec.settings.get("normalize", False):  # (a spec built by hand may leave it out)
            stats = normalize_stats_path(point.model_path) if point is not None else None
            options = spec.settings.get("normalize_kwargs")
            env = normalize_env(env, agent_gamma(spec), options, stats)
        if point is None:
            model = spec.algo_cls(
                "MlpPolicy", env, seed=spec.seed, verbose=spec.verbose, **spec.agent_kwargs
            )
        else:
            model = spec.algo_cls.load(point.model_path, env=env)
            model.verbose = spec.verbose
    except Exception:
        env.close()
        raise
    return model, env


def run_config(spec: RunSpec) -> dict[str, Any]:
    """The run's settings as written to its ``config.yaml`` (and sent to wandb): the run keys and
    every hyperparameter of the agent's constructor, the defaults included."""
    agent = {
        name: p.default
        for name, p in algo_parameters(spec.algo_cls).items()
        if p.default is not inspect.Parameter.empty
    }
    agent.update(spec.agent_kwargs)
    return {
        "algo": spec.algo,
        "env_id": spec.env_id,
        "seed": spec.seed,
        **to_yaml_safe(spec.settings),
        **to_yaml_safe(agent),
    }


#: The run folder's TensorBoard events (``--tensorboard``): ``tensorboard --logdir OUT``.
TENSORBOARD_DIR = "tensorboard"

#: Keys of ``config.yaml`` that describe the build rather than choose it (not compared when a
#: grid resumes).
DERIVED_CONFIG_KEYS = ("policy", "control_variate", "versions")


def describe_policy(model: Any) -> dict[str, Any]:
    """The networks the policy was built with (SB3's defaults resolved), and the spaces it acts
    in (a discretised run's ``MultiDiscrete`` actions)."""
    policy = model.policy
    return to_yaml_safe(
        {
            "class": type(policy).__name__,
            "observation_space": str(model.observation_space),
            "action_space": str(model.action_space),
            "net_arch": policy.net_arch,
            "activation_fn": policy.activation_fn,
            "ortho_init": policy.ortho_init,
            "share_features_extractor": policy.share_features_extractor,
            "optimizer_class": policy.optimizer_class,
            "optimizer_kwargs": dict(policy.optimizer_kwargs),
        }
    )


def describe_control_variate(model: Any) -> dict[str, Any]:
    """``{"control_variate": ...}``: the control variate's config as the agent resolved it
    from its preset and arguments (empty for agents without one)."""
    config = getattr(model, "cv_config", None)
    if config is None:
        return {}
    fields = {k: list(v) if isinstance(v, tuple) else v for k, v in vars(config).items()}
    return {"control_variate": to_yaml_safe(fields)}


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("relax-rl", "torch", "stable-baselines3", "gymnasium", "numpy"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def train(spec: RunSpec, model: Any = None, env: VecEnv | None = None) -> dict[str, Any]:
    """Train ``model`` (built by :func:`build` if not given) and write the run folder; return
    the summary.

    ``status`` ends as ``completed``, ``solved`` (stopped at the threshold), ``interrupted``
    (Ctrl-C or SIGTERM; re-raised after saving) or ``diverged`` (NaN; :class:`TrainingDivergedError`
    re-raised after saving).
    """
    out = spec.out
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    folder = RunFolder(spec)
    if model is None or env is None:
        model, env = build(spec)
    config = {
        **run_config(spec),
        "policy": describe_policy(model),
        **describe_control_variate(model),
        "versions": package_versions(),
    }
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    folder.model = model
    point = spec.resume_from
    earlier_rows = _progress_rows(out, point.env_steps) if point is not None else []
    formats = [
        make_output_format(f, str(out)) for f in (["csv", "stdout"] if spec.verbose else ["csv"])
    ]
    for row in earlier_rows:
        formats[0].write(row, {k: () for k in row})
    if spec.settings["tensorboard"]:  # (a continued run adds an events file beside the first)
        formats.append(make_output_format("tensorboard", str(out / TENSORBOARD_DIR)))
    wandb_run = None
    if spec.tracking is not None:
        name = f"{spec.algo}-{spec.env_id}-s{spec.seed}"
        wandb_run = start_run(spec.tracking, name, config, out)
        formats.append(WandbOutputFormat(wandb_run))
    model.set_logger(Logger(str(out), formats))
    folder.write_summary()

    n_envs = spec.settings["n_envs"]
    checkpoint = RunCheckpoint(
        folder.tracker,
        save_freq=max(1, spec.settings["checkpoint_freq"] // n_envs),
        save_path=str(out / "checkpoints"),
    )
    episode_log = EpisodeLog(
        out / MONITOR_FILE, spec.env_id, point.env_steps if point is not None else 0
    )
    callbacks: list[BaseCallback] = [
        folder.tracker,
        episode_log,
        checkpoint,
        PeriodicCallback(spec.settings["checkpoint_freq"], folder.write_summary),
        GradientVarianceCallback(spec.settings["grad_var_freq"]),
        *spec.extra_callbacks,
    ]
    periodic = None
    if spec.settings["eval_freq"] > 0:
        periodic = RunEvaluation(
            _eval_env(spec, model, spec.settings["eval_envs"], PERIODIC_EVAL_STREAM),
            out,
            n_episodes=spec.settings["eval_episodes"],
            every_steps=spec.settings["eval_freq"],
            n_envs=n_envs,
            deterministic=spec.settings["eval_deterministic"],
            start_steps=point.env_steps if point is not None else 0,
            on_new_best=lambda: save_normalize_stats(model, out / f"{BEST_MODEL}.zip"),
            after_evaluation=spec.after_evaluation,
            on_evaluated=(
                (lambda: _record_video(spec, model, "eval"))
                if spec.settings["capture_video"]
                else None
            ),
        )
        folder.periodic_evaluation = periodic
        callbacks.append(periodic)
    if spec.progress:
        callbacks.append(ReturnProgressBar())
    try:
        with sigterm_as_interrupt():
            model.learn(  # a continued run: SB3's continuation, num_timesteps kept
                spec.settings["total_steps"] - model.num_timesteps,
                callback=CallbackList(callbacks),
                log_interval=spec.settings["log_interval"],
                reset_num_timesteps=point is None,
            )
            if model.logger.name_to_value:  # the last, partial interval too
                model.dump_logs(model.n_updates)
        folder.end = time.perf_counter()
        solved = folder.tracker.solved_at_env_steps is not None
        stopped = spec.settings["stop_when_solved"] and solved
        folder.status = "solved" if stopped else "completed"
        if spec.settings["eval_episodes"] > 0:
            folder.evaluation = _evaluate(spec, model)
        if spec.settings["capture_video"]:
            _record_video(spec, model, "final")
    except KeyboardInterrupt:
        folder.status = "interrupted"
        name = f"interrupted_{model.num_timesteps}_steps"
        with interrupts_deferred():
            model.save(out / "checkpoints" / f"model_{name}")
            save_normalize_stats(model, out / "checkpoints" / f"model_{name}.zip")
            _atomic_write(
                out / "checkpoints" / f"model_episodes_{name}.json",
                json.dumps(folder.tracker.state_dict()),
            )
        raise
    except TrainingDivergedError as exc:
        folder.status, folder.error = "diverged", str(exc)
        raise
    except Exception as exc:
        folder.status, folder.error = "failed", f"{type(exc).__name__}: {exc}"
        raise
    finally:
        episode_log.close()  # (a run that raised never reached its training end)
        if periodic is not None:
            periodic.eval_env.close()
        if folder.status != "running":
            folder.save_model()
            summary = folder.write_summary()
            if wandb_run is not None:
                finish(wandb_run, summary)
        model.logger.close()  # progress.csv and TensorBoard's events, flushed and closed
        env.close()
    return folder.summary()
