"""``relax-rl train`` and ``relax-rl eval``: one run folder, and its evaluation."""

from __future__ import annotations

import argparse
import dataclasses
import json
import pickle
import sys
import zipfile
from pathlib import Path

from relax_rl.agents import ALGOS
from relax_rl.cli.common import (
    add_tracking_args,
    algo_class,
    check_writable,
    interrupt_code,
    seed_arg,
    stopped,
    tracking_config,
)
from relax_rl.cli.flags import add_dataclass_flags, flag_name, given_overrides
from relax_rl.config import RunSettings
from relax_rl.errors import UsageError


def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help=f"train an agent ({', '.join(ALGOS)}) on a gymnasium env",
        description="Train an agent into a run folder: config.yaml, progress.csv (SB3 logger), "
        "checkpoints/, model.zip and summary.json. Settings come from configs/<algo>.yaml "
        "(the entry for the env id, or --preset), then --config, then --set, then the flags "
        "below. --resume RUN_DIR continues a run instead.",
    )
    p.add_argument("--algo", choices=list(ALGOS), help="the agent (required unless --resume)")
    p.add_argument(
        "--env",
        metavar="ID",
        help="gymnasium env id, e.g. CartPole-v1, or module:EnvId to import the module that "
        "registers it (required unless --resume)",
    )
    p.add_argument("--seed", type=seed_arg, default=0, help="seed of the run (default 0)")
    p.add_argument(
        "--preset",
        default=None,
        help="entry of configs/<algo>.yaml to use instead of the env id (e.g. paper)",
    )
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="a YAML file of settings (a mapping), applied over configs/<algo>.yaml's (with "
        "inherit: ALGO, over configs/ALGO.yaml's)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting (YAML value), e.g. --set learning_rate=1e-3; "
        "`relax-rl params --algo ALGO` lists them",
    )
    add_dataclass_flags(p, RunSettings, overrides=True, default_note=" unless configs/ set it")
    p.add_argument("--out", type=Path, default=None, help="run folder (default runs/<name>)")
    p.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="RUN_DIR",
        help="continue RUN_DIR (a run train wrote, finished, stopped or killed) from its newest "
        "model with its own settings, SB3-style: --total-steps N trains N more env steps "
        "(default: what is left of its total_steps)",
    )
    add_tracking_args(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_train)

    e = sub.add_parser(
        "eval",
        help="evaluate a trained run folder",
        description="Load RUN_DIR/model.zip and print the mean and std return.",
    )
    e.add_argument("run_dir", type=Path, help="the run folder train wrote (its model.zip)")
    e.add_argument(
        "--episodes",
        type=int,
        default=None,
        help="episodes to run (default: as many as train's own evaluation ran, else 10)",
    )
    e.add_argument(
        "--seed",
        type=seed_arg,
        default=None,
        help="seed of the evaluation episodes (default: the run's, which replays train's own "
        "final evaluation)",
    )
    e.add_argument(
        "--stochastic",
        action="store_true",
        help="sample actions (default: as train's evaluation did, argmax unless "
        "eval_deterministic was off)",
    )
    e.add_argument(
        "--capture-video",
        action="store_true",
        help="also record the first episode as RUN_DIR/videos/eval-seed<seed>.mp4 (needs "
        "relax-rl[video])",
    )
    e.add_argument("--render", action="store_true", help="watch the episodes in a window")
    e.add_argument(
        "--best",
        action="store_true",
        help="the best model of the periodic evaluations (best_model.zip; train --eval-freq)",
    )
    e.set_defaults(func=_run_eval)


#: What --resume takes from the run folder rather than from the command line: dest -> flag.
RESUME_FIXED = {
    **{name: f"--{name}" for name in ("algo", "env", "preset", "config", "set", "out")},
    **{
        f.name: flag_name(f)
        for f in dataclasses.fields(RunSettings)
        if f.name != "total_steps"  # (with --resume: N more steps)
        and f.metadata.get("cli", True)
    },
}


def run_overrides(args: argparse.Namespace) -> dict:
    """--set, then the run-key flags given (the flags win)."""
    from relax_rl import config as cfg

    return cfg.merge(cfg.parse_set(args.set), given_overrides(args, RunSettings))


def _resume_spec(args: argparse.Namespace):
    from relax_rl.training import RunSpec

    fixed = [flag for dest, flag in RESUME_FIXED.items() if getattr(args, dest) not in (None, [])]
    if args.seed != 0:
        fixed.append("--seed")
    if fixed:
        raise UsageError(
            f"--resume continues {args.resume} with its own settings; {fixed[0]} cannot be "
            "given with it (--total-steps N trains N more steps)"
        )
    if not args.resume.is_dir():
        raise UsageError(f"--resume {args.resume}: no such run folder")
    check_writable(args.resume)
    try:
        return RunSpec.resume(
            args.resume,
            more_steps=args.total_steps,
            tracking=tracking_config(args),
            progress=not args.no_progress,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _new_spec(args: argparse.Namespace):
    from relax_rl.envs import check_env_id
    from relax_rl.training import RunSpec

    missing = [flag for flag in ("algo", "env") if getattr(args, flag) is None]
    if missing:
        raise UsageError(f"--{missing[0]} is required (or --resume RUN_DIR)")
    try:
        check_env_id(args.env)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    tracking = tracking_config(args)
    spec = RunSpec.create(
        args.algo,
        args.env,
        args.seed,
        out=args.out,
        settings=run_overrides(args),
        tracking=tracking,
        preset=args.preset,
        progress=not args.no_progress,
        config_file=args.config,
    )
    if spec.settings["stop_when_solved"] and spec.settings["threshold"] is None:
        raise UsageError(
            f"--until-solved needs a reward threshold and {args.env} has none; "
            "add --threshold VALUE"
        )
    check_writable(spec.out)
    if spec.out.exists() and any(spec.out.iterdir()):
        raise UsageError(
            f"--out {spec.out} already exists and is not empty; give a new folder "
            f"(or --resume {spec.out} to continue it)"
        )
    return spec


def _run_train(args: argparse.Namespace) -> int:
    from relax_rl.on_policy import TrainingDivergedError
    from relax_rl.training import build, train

    spec = _resume_spec(args) if args.resume is not None else _new_spec(args)
    try:  # a wrong action space or a bad hyperparameter value: one line, before any file
        model, env = build(spec)
    except (ValueError, TypeError, AssertionError) as exc:
        raise UsageError(f"{spec.algo} on {spec.env_id}: {exc}") from None
    out = spec.out
    point = spec.resume_from
    what = f"continuing from {point.env_steps:,} env steps" if point else f"seed {spec.seed}"
    print(f"training {spec.algo} on {spec.env_id} ({what}) into {out}", file=sys.stderr)
    try:
        summary = train(spec, model, env)
    except KeyboardInterrupt as exc:
        print(
            f"relax-rl train: {stopped(exc)}; checkpoint and summary saved in {out} "
            f"(relax-rl train --resume {out} continues it)",
            file=sys.stderr,
        )
        return interrupt_code(exc)
    except TrainingDivergedError as exc:
        print(
            f"relax-rl train: stopped: {exc}; last checkpoint and summary in {out}", file=sys.stderr
        )
        return 1
    print(json.dumps(summary, indent=2))
    return 0


def read_run_summary(path: Path) -> dict:
    """A run's summary.json, or a one-line error naming what is wrong with it."""
    if not path.is_file():
        raise UsageError(f"{path} is missing: is {path.parent} a run folder train wrote?")
    try:
        summary = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path} cannot be read ({exc})") from None
    except ValueError as exc:
        raise UsageError(f"{path} is not valid JSON ({exc}): the file is damaged") from None
    missing = [k for k in ("algo", "env_id") if not isinstance(summary, dict) or k not in summary]
    if missing:
        raise UsageError(f"{path} has no {' or '.join(missing)}: not a run's summary")
    if summary["algo"] not in ALGOS:
        raise UsageError(
            f"{path} names an unknown algo {summary['algo']!r}; valid: {', '.join(ALGOS)}"
        )
    return summary


def _run_eval(args: argparse.Namespace) -> int:
    import yaml

    from relax_rl.envs import make_env, normalize_env
    from relax_rl.evaluation import check_video_support, evaluate, record_episode
    from relax_rl.seeding import EVAL_STREAM
    from relax_rl.training import normalize_stats_path

    run_dir: Path = args.run_dir
    if args.episodes is not None and args.episodes <= 0:
        raise UsageError(f"--episodes must be positive, got {args.episodes}")
    summary_path = run_dir / "summary.json"
    model_path = run_dir / ("best_model.zip" if args.best else "model.zip")
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"{run_dir} is a file; give the run folder that train wrote")
    if not run_dir.is_dir():
        raise UsageError(f"run folder {run_dir} does not exist")
    if args.best and not model_path.exists():
        raise UsageError(
            f"{model_path} is missing: the run kept no best model (train with --eval-freq N)"
        )
    if not model_path.exists():
        raise UsageError(f"{model_path} is missing: is {run_dir} a finished run folder?")
    if not model_path.is_file():
        raise UsageError(f"{model_path} is a folder, not a saved model")
    summary = read_run_summary(summary_path)
    algo, env_id = summary["algo"], summary["env_id"]
    algo_cls = algo_class(algo)
    try:  # the env's own options, as the run had them
        config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        config = {}
    seed = summary.get("seed", 0) if args.seed is None else args.seed
    if args.capture_video:
        check_video_support()

    def open_env(n_envs: int, render_mode: str | None = None):
        """The run's env on its evaluation stream (normalised as the run was)."""
        env_kwargs = dict(config.get("env_kwargs") or {})
        if render_mode is not None:
            env_kwargs["render_mode"] = render_mode
        env = make_env(
            env_id,
            n_envs,
            (seed, *EVAL_STREAM),
            env_kwargs=env_kwargs or None,
            discretize=config.get("discretize"),
        )
        if config.get("normalize"):  # the run's statistics, frozen; returns in the env's units
            stats = normalize_stats_path(model_path)
            try:
                env = normalize_env(env, stats=stats, training=False)
            except ValueError as exc:
                env.close()
                raise UsageError(str(exc)) from None
            except (pickle.UnpicklingError, EOFError, OSError, AttributeError, TypeError) as exc:
                env.close()
                raise UsageError(f"{stats} is corrupt ({type(exc).__name__}: {exc})") from None
            env.norm_reward = False
        return env

    if args.render:  # a window: the episodes are watched, one env
        try:
            env = open_env(1, "human")
        except Exception as exc:  # (no display: pygame's or the env's own error)
            raise UsageError(
                f"--render needs a display ({exc}); --capture-video writes mp4"
            ) from None
    else:
        env = open_env(config.get("eval_envs") or 1)  # as train's evaluation ran, to replay it
    try:
        # (without env=: SB3's load would take the seeded first reset, and --seed would not
        # give the episodes train's own evaluation ran)
        model = algo_cls.load(model_path, device="cpu")
    except (zipfile.BadZipFile, ValueError, KeyError, RuntimeError, EOFError, OSError) as exc:
        raise UsageError(f"{model_path} is corrupt or not {algo}'s model ({exc})") from None
    episodes = args.episodes or summary.get("eval_episodes") or 10
    deterministic = not args.stochastic and config.get("eval_deterministic", True)
    try:
        result = evaluate(model, env, episodes, deterministic=deterministic)
    except Exception as exc:
        if not args.render:
            raise
        raise UsageError(f"--render needs a display ({exc}); --capture-video writes mp4") from None
    finally:
        env.close()
    print(
        f"{algo} on {env_id}{' (best model)' if args.best else ''}: mean return "
        f"{result.mean:.2f} +- {result.std:.2f} over {episodes} episodes "
        f"({'deterministic' if deterministic else 'stochastic'})"
    )
    if args.capture_video:  # the first of those episodes, as a video
        name = f"eval{'-best' if args.best else ''}-seed{seed}"
        path = record_episode(model, open_env(1), run_dir / "videos", name, deterministic)
        print(f"video: {path}")
    return 0
