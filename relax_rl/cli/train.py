"""``relax-rl train`` and ``relax-rl eval``: one run folder, and its evaluation."""

from __future__ import annotations

import argparse
import json
import sys
import time
import zipfile
from pathlib import Path

from relax_rl.cli.common import (
    add_log_interval,
    add_tracking_args,
    algo_class,
    check_writable,
    interrupt_code,
    seed_arg,
    stopped,
    tracking_config,
)
from relax_rl.errors import UsageError


def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train an agent (reinforce, a2c, relax) on a gymnasium env",
        description="Train an agent into a run folder: config.yaml, progress.csv (SB3 logger), "
        "checkpoints/, model.zip and summary.json. Settings come from configs/<algo>.yaml "
        "(the entry for the env id, or --preset), then --config, then --set.",
    )
    p.add_argument("--algo", required=True, help="reinforce, a2c or relax")
    p.add_argument("--env", required=True, help="gymnasium env id, e.g. CartPole-v1")
    p.add_argument("--seed", type=seed_arg, default=0, help="seed of the run (default 0)")
    p.add_argument("--total-steps", type=int, default=None, help="env steps (overrides config)")
    p.add_argument("--n-envs", type=int, default=None, help="parallel envs (overrides config)")
    p.add_argument(
        "--preset",
        default=None,
        help="entry of configs/<algo>.yaml to use instead of the env id (e.g. paper)",
    )
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="a YAML file of settings (a mapping), applied over the defaults",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting (YAML value), e.g. --set learning_rate=1e-3",
    )
    p.add_argument(
        "--until-solved",
        action="store_true",
        help="stop when the last-100 mean return reaches the env's threshold",
    )
    add_log_interval(p)
    p.add_argument("--out", type=Path, default=None, help="run folder (default runs/<name>)")
    add_tracking_args(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_train)

    e = sub.add_parser(
        "eval",
        help="evaluate a trained run folder",
        description="Load RUN_DIR/model.zip and print the mean and std return.",
    )
    e.add_argument("run_dir", type=Path, help="the run folder train wrote (its model.zip)")
    e.add_argument("--episodes", type=int, default=10, help="episodes to run (default 10)")
    e.add_argument(
        "--seed",
        type=seed_arg,
        default=12345,
        help="seed of the evaluation episodes (default 12345)",
    )
    e.add_argument("--stochastic", action="store_true", help="sample actions (default: argmax)")
    e.set_defaults(func=_run_eval)


def resolve_settings(args: argparse.Namespace, algo_cls: type) -> tuple[dict, dict]:
    """Defaults from configs/<algo>.yaml, then --config, then --set, then the flags."""
    from relax_rl import config as cfg

    if args.preset is not None:
        settings = cfg.zoo_settings(args.algo, args.preset, required=True)
    else:
        settings = cfg.zoo_settings(args.algo, args.env)
    if args.config is not None:
        settings = cfg.merge(settings, cfg.load_config_file(args.config))
    settings = cfg.merge(settings, cfg.parse_set(args.set))
    if args.total_steps is not None:
        settings["total_steps"] = args.total_steps
    if args.n_envs is not None:
        settings["n_envs"] = args.n_envs
    if args.until_solved:
        settings["stop_when_solved"] = True
    if args.log_interval is not None:
        settings["log_interval"] = args.log_interval
    return cfg.validate(settings, algo_cls)


def _run_train(args: argparse.Namespace) -> int:
    from relax_rl.envs import check_env_id, make_env, reward_threshold
    from relax_rl.on_policy import TrainingDivergedError
    from relax_rl.training import RunSpec, build, train

    algo_cls = algo_class(args.algo)
    try:
        check_env_id(args.env)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    run, agent_kwargs = resolve_settings(args, algo_cls)
    if run["threshold"] is None:
        run["threshold"] = reward_threshold(args.env)
    if run["stop_when_solved"] and run["threshold"] is None:
        raise UsageError(
            f"--until-solved needs a reward threshold and {args.env} has none; "
            "add --set threshold=VALUE"
        )
    out = (
        args.out
        or Path("runs")
        / f"{args.algo}-{args.env.replace('/', '_')}-s{args.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    check_writable(out)
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"--out {out} already exists and is not empty; give a new folder")

    def env_fn(n_envs: int, seed: int):
        try:
            return make_env(args.env, n_envs, seed, vec_env=run["vec_env"])
        except ValueError as exc:
            raise UsageError(str(exc)) from None

    spec = RunSpec(
        args.algo,
        algo_cls,
        args.env,
        args.seed,
        out,
        run,
        agent_kwargs,
        env_fn,
        progress=not args.no_progress,
        tracking=tracking_config(args),
    )
    try:  # a wrong action space or a bad hyperparameter value: one line, before any file
        model, env = build(spec)
    except (ValueError, TypeError, AssertionError) as exc:
        raise UsageError(f"{args.algo} on {args.env}: {exc}") from None
    print(f"training {args.algo} on {args.env} (seed {args.seed}) into {out}", file=sys.stderr)
    try:
        summary = train(spec, model, env)
    except KeyboardInterrupt as exc:
        print(
            f"relax-rl train: {stopped(exc)}; checkpoint and summary saved in {out}",
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


def _run_eval(args: argparse.Namespace) -> int:
    from relax_rl.envs import make_env
    from relax_rl.evaluation import evaluate

    run_dir: Path = args.run_dir
    if args.episodes <= 0:
        raise UsageError(f"--episodes must be positive, got {args.episodes}")
    summary_path, model_path = run_dir / "summary.json", run_dir / "model.zip"
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"{run_dir} is a file; give the run folder that train wrote")
    if not run_dir.is_dir():
        raise UsageError(f"run folder {run_dir} does not exist")
    if not model_path.exists():
        raise UsageError(f"{model_path} is missing: is {run_dir} a finished run folder?")
    try:
        summary = json.loads(summary_path.read_text())
        algo, env_id = summary["algo"], summary["env_id"]
    except (OSError, ValueError, KeyError):
        raise UsageError(f"{summary_path} is missing or unreadable") from None
    algo_cls = algo_class(algo)
    env = make_env(env_id, 1, args.seed)
    try:
        model = algo_cls.load(model_path, env=env, device="cpu")
    except (zipfile.BadZipFile, ValueError, KeyError, RuntimeError, EOFError) as exc:
        raise UsageError(f"{model_path} is corrupt or not a {algo} model ({exc})") from None
    result = evaluate(model, env, args.episodes, deterministic=not args.stochastic)
    env.close()
    print(
        f"{algo} on {env_id}: mean return {result.mean:.2f} +- {result.std:.2f} "
        f"over {args.episodes} episodes ({'stochastic' if args.stochastic else 'deterministic'})"
    )
    return 0
