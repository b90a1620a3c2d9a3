"""The ``relax-rl`` command line: the one place that wires the library together (the only
module of ``relax_rl`` that imports ``agents`` and ``envs``).

Sub-commands:
  train  train an agent on a gymnasium env into a run folder
  eval   evaluate a trained run folder
  toy    the seed's toy problem (Sec. 4.1): minimise E[(b - t)^2], b ~ Bern(sigmoid(l)).
  vae    the seed's discrete VAE benchmark (Sec. 4.2).
  compare  a grid of algos x seeds on one env (local process pool or Ray Tune), then report
  plot   the comparison's report and figures from existing run folders
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path

from relax_rl.errors import Terminated, UsageError, sigterm_as_interrupt

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (no usage dump) and exit with code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _check_writable(out: Path) -> None:
    """``--out`` must be a folder this process can write, or one it can create (its nearest
    existing ancestor a writable folder): found before any work starts, not after it."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder")
    base = out if out.exists() else next(p for p in out.absolute().parents if p.exists())
    if not base.is_dir():
        raise UsageError(f"--out {out} cannot be created: {base} is not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out} is not writable ({base} is read-only for this user)")


def _seed(text: str) -> int:
    """argparse type of a seed: an integer >= 0 (numpy and gymnasium refuse negative seeds)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid seed {text!r}: expected an integer >= 0"
        ) from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"invalid seed {value}: expected an integer >= 0")
    return value


def _check_out_dir(out: Path, ours: Sequence[str]) -> None:
    """Refuse an existing folder that holds anything other than this command's own outputs."""
    _check_writable(out)
    if out.is_dir():
        other = sorted(p.name for p in out.iterdir() if p.name not in ours)
        if other:
            raise UsageError(
                f"--out {out} already holds other content ({', '.join(other[:3])}"
                f"{', ...' if len(other) > 3 else ''}); give an empty or new folder"
            )


def _add_toy(sub: argparse._SubParsersAction) -> None:
    from relax_rl.experiments.toy import ESTIMATORS

    p = sub.add_parser(
        "toy",
        help="the seed's toy problem: RELAX vs REBAR vs REINFORCE at t = 0.499",
        description="Minimise E_{b~Bern(theta)}[(b - t)^2], theta = sigmoid(l), l0 = 0, one "
        "sample a step, Adam for l and for the estimator's parameters. Writes results.json, "
        "figure1.png (loss, theta) and figure2.png (variance, learned relaxation).",
    )
    p.add_argument(
        "--estimators",
        nargs="+",
        default=list(ESTIMATORS),
        metavar="NAME",
        help=f"estimators to run (default: all of {', '.join(ESTIMATORS)})",
    )
    p.add_argument("--target", type=float, default=0.499, help="t in [0, 1] (default 0.499)")
    p.add_argument("--steps", type=int, default=10_000, help="optimisation steps (default 10000)")
    p.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1, run as one tensor")
    p.add_argument("--lr", type=float, default=0.01, help="Adam learning rate for l (and phi)")
    p.add_argument("--phi-lr", type=float, default=None, help="Adam lr for phi (default: --lr)")
    p.add_argument(
        "--var-samples",
        type=int,
        default=1000,
        help="samples per variance measurement (default 1000)",
    )
    p.add_argument(
        "--relax-cv",
        default="baseline",
        metavar="FORM",
        help="RELAX's c_phi: 'baseline' (default; c = b0 + s * MLP(z)) or 'paper' "
        "(c = s * (MLP(z) + b0), the official code's form)",
    )
    p.add_argument("--out", type=Path, default=Path("runs/toy"), help="output folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_toy)


def _run_toy(args: argparse.Namespace) -> int:
    from relax_rl.experiments.toy import (
        OUTPUT_FILES,
        ToyConfig,
        format_table,
        run_toy,
        save_results,
    )

    cfg = ToyConfig(
        estimators=tuple(args.estimators),
        target=args.target,
        steps=args.steps,
        seeds=args.seeds,
        lr=args.lr,
        phi_lr=args.phi_lr,
        var_samples=args.var_samples,
        relax_cv=args.relax_cv,
    )
    try:
        cfg.validate()
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    _check_out_dir(args.out, OUTPUT_FILES)
    results = run_toy(cfg, progress=not args.no_progress)
    save_results(results, args.out)
    print(format_table(results))
    print(f"wrote {args.out}/results.json, figure1.png, figure2.png")
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train an agent (reinforce, a2c, relax) on a gymnasium env",
        description="Train an agent into a run folder: config.yaml, progress.csv (SB3 logger), "
        "checkpoints/, model.zip and summary.json. Settings come from configs/<algo>.yaml "
        "(the entry for the env id, or --preset), then --config, then --set.",
    )
    p.add_argument("--algo", required=True, help="reinforce, a2c or relax")
    p.add_argument("--env", required=True, help="gymnasium env id, e.g. CartPole-v1")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the run (default 0)")
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
    _add_log_interval(p)
    p.add_argument("--out", type=Path, default=None, help="run folder (default runs/<name>)")
    _add_tracking_args(p)
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
        "--seed", type=_seed, default=12345, help="seed of the evaluation episodes (default 12345)"
    )
    e.add_argument("--stochastic", action="store_true", help="sample actions (default: argmax)")
    e.set_defaults(func=_run_eval)


def _add_tracking_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--track", action="store_true", help="log to wandb (offline by default)")
    p.add_argument("--wandb-mode", default="offline", help="offline (default), online, disabled")
    p.add_argument("--wandb-project", default="relax-rl", help="wandb project (default relax-rl)")
    p.add_argument("--wandb-group", default=None, help="wandb group of the run(s)")
    p.add_argument("--wandb-tags", nargs="*", default=[], help="wandb tags of the run(s)")


def _add_log_interval(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--log-interval",
        type=int,
        default=None,
        metavar="N",
        help="updates between rows of progress.csv, stdout and wandb (default 100, SB3 A2C's; "
        "gradient-variance measurements in between are averaged)",
    )


def _tracking(args: argparse.Namespace):
    from relax_rl.tracking import TrackingConfig

    if not args.track:
        return None
    tracking = TrackingConfig(
        args.wandb_mode, args.wandb_project, args.wandb_group, list(args.wandb_tags)
    )
    try:
        tracking.validate()
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return tracking


def _algo_class(name: str) -> type:
    from relax_rl.agents import ALGOS

    if name not in ALGOS:
        raise UsageError(f"unknown algo {name!r}; valid: {', '.join(ALGOS)}")
    return ALGOS[name]


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

    algo_cls = _algo_class(args.algo)
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
    _check_writable(out)
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
        tracking=_tracking(args),
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
            f"relax-rl train: {_stopped(exc)}; checkpoint and summary saved in {out}",
            file=sys.stderr,
        )
        return _interrupt_code(exc)
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
    algo_cls = _algo_class(algo)
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


def _add_vae(sub: argparse._SubParsersAction) -> None:
    from relax_rl.experiments.vae import DATASETS, ESTIMATORS, MODELS

    p = sub.add_parser(
        "vae",
        help="the seed's discrete VAE benchmark: REINFORCE, Concrete, REBAR, RELAX",
        description="Train a VAE with 200 Bernoulli latents per stochastic layer on binarised "
        "digits with each estimator; writes results.json, elbo.png and variance.png.",
    )
    p.add_argument("--dataset", default="mnist5k", help=f"one of {', '.join(DATASETS)}")
    p.add_argument("--model", default="linear1", help=f"one of {', '.join(MODELS)}")
    p.add_argument(
        "--estimators",
        nargs="+",
        default=list(ESTIMATORS),
        metavar="NAME",
        help=f"estimators to run (default: all of {', '.join(ESTIMATORS)})",
    )
    p.add_argument("--steps", type=int, default=50_000, help="updates (default 50000)")
    p.add_argument("--batch-size", type=int, default=24, help="images per update (default 24)")
    p.add_argument("--latents", type=int, default=200, help="Bernoulli latents per layer")
    p.add_argument("--lr", type=float, default=3e-4, help="Adam learning rate (default 3e-4)")
    p.add_argument(
        "--eval-every",
        type=int,
        default=1_000,
        help="updates between ELBO and variance evaluations (default 1000)",
    )
    p.add_argument("--seed", type=_seed, default=0, help="seed of the run (default 0)")
    p.add_argument(
        "--out", type=Path, default=Path("runs/vae"), help="output folder (default runs/vae)"
    )
    _add_tracking_args(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_vae)


def _run_vae(args: argparse.Namespace) -> int:
    from relax_rl.experiments.vae import (
        OUTPUT_FILES,
        VAEConfig,
        format_table,
        load_dataset,
        run_vae,
        save_results,
    )

    cfg = VAEConfig(
        dataset=args.dataset,
        model=args.model,
        estimators=tuple(args.estimators),
        steps=args.steps,
        batch_size=args.batch_size,
        latents=args.latents,
        lr=args.lr,
        cv_lr=args.lr,
        seed=args.seed,
        eval_every=args.eval_every,
    )
    try:
        cfg.validate()
        cfg.validate(len(load_dataset(cfg.dataset)["train"]))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    _check_out_dir(args.out, (*OUTPUT_FILES, "wandb"))
    tracking = _tracking(args)
    wandb_run = None
    on_eval = None
    if tracking is not None:
        from relax_rl.tracking import start_run

        args.out.mkdir(parents=True, exist_ok=True)
        wandb_run = start_run(
            tracking,
            f"vae-{cfg.model}-{cfg.dataset}-s{cfg.seed}",
            {"experiment": "vae", **vars(cfg)},
            args.out,
        )

        def on_eval(estimator: str, step: int, point: dict) -> None:
            wandb_run.log(
                {
                    "global_step": step,
                    **{f"{estimator}/{k}": v for k, v in point.items() if v is not None},
                }
            )

    results = run_vae(cfg, progress=not args.no_progress, on_eval=on_eval)
    save_results(results, args.out)
    if wandb_run is not None:
        from relax_rl.tracking import finish

        finish(
            wandb_run, {f"{r['estimator']}/valid_elbo": r["valid_elbo"] for r in results["runs"]}
        )
    print(format_table(results))
    print(f"wrote {args.out}/results.json, elbo.png, variance.png")
    return 0


def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="run a grid of algos x seeds on one env and report",
        description="Run every (algo, seed) into OUT/<algo>-s<seed>/ (finished runs are not "
        "run again), then write OUT/summary.json, report.md, returns.png, grad_variance.png.",
    )
    p.add_argument(
        "--algos", nargs="+", required=True, metavar="ALGO", help="e.g. reinforce a2c relax"
    )
    p.add_argument("--env", required=True, help="a gymnasium env id, e.g. CartPole-v1")
    p.add_argument("--seeds", default="0-4", help="e.g. 0-4, 0,2,5 (default 0-4)")
    p.add_argument(
        "--total-steps", type=int, default=None, help="env steps per run (default: the config's)"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key for every algo (repeatable)",
    )
    p.add_argument(
        "--grad-var-freq",
        type=int,
        default=None,
        help="updates between gradient-variance measurements (0: off; default: the agent's, "
        "50, or 5 whole episodes for reinforce)",
    )
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel (processes)")
    _add_log_interval(p)
    p.add_argument(
        "--backend",
        default="local",
        help="local (a process pool, default) or ray (Ray Tune; needs relax-rl[ray])",
    )
    p.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="a running Ray cluster (host:port, ray://host:port or auto); default: start a "
        "local Ray. OUT must be on storage every node sees.",
    )
    p.add_argument("--out", type=Path, default=Path("runs/compare"), help="(default runs/compare)")
    _add_tracking_args(p)
    p.set_defaults(func=_run_compare)

    q = sub.add_parser(
        "plot",
        help="draw the comparison figures from run folders",
        description="Draw returns.png and grad_variance.png (and report.md) "
        "from existing run folders; no wandb needed.",
    )
    q.add_argument(
        "run_dirs",
        nargs="+",
        type=Path,
        metavar="DIR",
        help="run folders (train's --out) or a compare folder (all of its runs)",
    )
    q.add_argument(
        "--out",
        type=Path,
        default=Path("plots"),
        help="folder for report.md, the figures and summary.json (default ./plots; never a run "
        "folder)",
    )
    q.set_defaults(func=_run_plot)


def _grid_spec(cell, settings: dict, tracking):
    """The RunSpec of one cell of a compare grid."""
    from relax_rl import config as cfg
    from relax_rl.envs import make_env, reward_threshold
    from relax_rl.training import RunSpec

    algo_cls = _algo_class(cell.algo)
    run_keys, agent_kwargs = cfg.validate(settings[cell.algo], algo_cls)
    if run_keys["threshold"] is None:
        run_keys["threshold"] = reward_threshold(cell.env_id)
    return RunSpec(
        cell.algo,
        algo_cls,
        cell.env_id,
        cell.seed,
        cell.out,
        run_keys,
        agent_kwargs,
        lambda n, s: make_env(cell.env_id, n, s, vec_env=run_keys["vec_env"]),
        progress=False,
        tracking=tracking,
    )


def _grid_worker(cell, settings: dict, tracking) -> dict:
    """Train one cell of a compare grid (in a worker process)."""
    import shutil

    import torch

    from relax_rl.training import train

    torch.set_num_threads(1)
    spec = _grid_spec(cell, settings, tracking)
    if cell.out.exists():  # an unfinished earlier attempt: start it again
        shutil.rmtree(cell.out)
    return train(spec)


def _check_finished_runs_match(cells, settings: dict) -> None:
    """Refuse to resume into a folder whose finished runs used other settings: the report
    would mix two experiments."""
    import yaml

    from relax_rl.runner import is_finished
    from relax_rl.training import DERIVED_CONFIG_KEYS, run_config

    for cell in cells:
        if not is_finished(cell.out):
            continue
        try:
            old = yaml.safe_load((cell.out / "config.yaml").read_text()) or {}
        except (OSError, yaml.YAMLError):
            old = {}
        new = run_config(_grid_spec(cell, settings, None))
        # (a key an older config.yaml lacks is not compared)
        for key in sorted(set(old) & set(new) - set(DERIVED_CONFIG_KEYS)):
            if old.get(key) != new.get(key):
                raise UsageError(
                    f"{cell.out} finished with {key}={old.get(key)!r} but this grid has "
                    f"{key}={new.get(key)!r}; give a new --out, or the same settings to resume"
                )


def _grid_settings(args: argparse.Namespace) -> dict[str, dict]:
    """Per algo: configs/<algo>.yaml's entry for the env, then --set, --total-steps."""
    from relax_rl import config as cfg

    settings = {}
    for algo in args.algos:
        algo_cls = _algo_class(algo)
        s = cfg.merge(cfg.zoo_settings(algo, args.env), cfg.parse_set(args.set))
        if args.total_steps is not None:
            s["total_steps"] = args.total_steps
        if args.grad_var_freq is not None:
            s["grad_var_freq"] = args.grad_var_freq
        if args.log_interval is not None:
            s["log_interval"] = args.log_interval
        cfg.validate(s, algo_cls)  # refuse bad keys before any run starts
        settings[algo] = s
    return settings


def _write_comparison(out: Path, run_dirs: list[Path], summaries: list[dict]) -> None:
    from relax_rl.plotting import plot_compare
    from relax_rl.report import aggregate, grad_variance_stats, read_curves, write_report

    for d, s in zip(run_dirs, summaries, strict=True):
        s.update(grad_variance_stats(d, s.get("solved_at_env_steps")))
    aggregates = aggregate(summaries)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(
        json.dumps({"runs": summaries, "aggregates": aggregates}, indent=2)
    )
    write_report(out, summaries, aggregates)
    curves: dict[str, list] = {}
    for d, s in zip(run_dirs, summaries, strict=True):
        curves.setdefault(s["algo"], []).append(read_curves(d))
    thresholds = {s.get("threshold") for s in summaries} - {None}
    plot_compare(
        curves,
        out / "returns.png",
        out / "grad_variance.png",
        threshold=thresholds.pop() if len(thresholds) == 1 else None,
    )


def _run_compare(args: argparse.Namespace) -> int:
    import functools

    from relax_rl.envs import check_env_id
    from relax_rl.runner import BACKENDS, GridRun, parse_seeds, run_grid

    if args.backend not in BACKENDS:
        raise UsageError(f"unknown backend {args.backend!r}; valid: {', '.join(BACKENDS)}")
    if args.ray_address is not None and args.backend != "ray":
        raise UsageError("--ray-address needs --backend ray")
    if args.jobs < 1:
        raise UsageError(f"--jobs must be >= 1, got {args.jobs}")
    try:
        check_env_id(args.env)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    seeds = parse_seeds(args.seeds)
    _check_writable(args.out)
    settings = _grid_settings(args)
    tracking = _tracking(args)
    if tracking is not None and tracking.group is None:
        # Named after the output folder, so that a resumed comparison stays in one group.
        tracking.group = f"compare-{args.env}-{args.out.resolve().name}"
    cells = [GridRun(a, args.env, s, args.out / f"{a}-s{s}") for a in args.algos for s in seeds]
    _check_finished_runs_match(cells, settings)
    worker = functools.partial(_grid_worker, settings=settings, tracking=tracking)

    def done(cell, summary) -> None:
        solved = summary.get("solved_at_env_steps")
        outcome = (
            f"solved at {solved:,} env steps"
            if solved is not None
            else summary.get("error")
            or ("not solved" if summary.get("threshold") is not None else "no threshold")
        )
        print(f"{cell.algo} seed {cell.seed}: {summary.get('status')}, {outcome}", file=sys.stderr)

    summaries = run_grid(
        cells,
        worker,
        jobs=args.jobs,
        on_done=done,
        backend=args.backend,
        ray_address=args.ray_address,
        ray_storage=args.out / "ray",
    )
    _write_comparison(args.out, [cell.out for cell in cells], summaries)
    print((args.out / "report.md").read_text())
    if all(s.get("status") in ("failed", "diverged") for s in summaries):
        print(f"relax-rl compare: every run failed; see {args.out}/report.md", file=sys.stderr)
        return 1
    return 0


def _read_summary(d: Path) -> dict:
    try:
        summary = json.loads((d / "summary.json").read_text())
    except (OSError, ValueError):
        raise UsageError(f"{d} is not a run folder (no readable summary.json)") from None
    if not isinstance(summary, dict) or ("algo" not in summary and "runs" not in summary):
        raise UsageError(f"{d}/summary.json is neither a run's nor a comparison's")
    return summary


def _run_plot(args: argparse.Namespace) -> int:
    run_dirs, summaries = [], []
    for d in args.run_dirs:
        summary = _read_summary(d)
        if "algo" in summary:
            run_dirs.append(d)
            summaries.append(summary)
            continue
        # A compare folder: its runs are the subfolders with a run's summary.
        found = [c for c in sorted(d.iterdir()) if (c / "summary.json").is_file()]
        found = [(c, s) for c in found if "algo" in (s := _read_summary(c))]
        if not found:
            raise UsageError(f"{d} is a comparison folder without any run folder in it")
        run_dirs += [c for c, _ in found]
        summaries += [s for _, s in found]
    out = args.out
    _check_writable(out)
    for d in run_dirs:
        if out.resolve() == d.resolve():
            raise UsageError(f"--out {out} is a run folder; plot never writes over a run's files")
    if (out / "summary.json").is_file() and "algo" in _read_summary(out):
        raise UsageError(f"--out {out} is a run folder; plot never writes over a run's files")
    _write_comparison(out, run_dirs, summaries)
    print(f"wrote {out}/report.md, returns.png, grad_variance.png, summary.json")
    return 0


def _add_params(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "params",
        help="list an algorithm's hyperparameters, their defaults and a config's values",
        description="Every key train and compare take for ALGO (the agent's constructor "
        "arguments and the run keys), its default, the value configs/<algo>.yaml sets for "
        "--env (or --preset), and what it means.",
    )
    p.add_argument("--algo", required=True, help="reinforce, a2c or relax")
    p.add_argument("--env", default=None, help="also show configs/<algo>.yaml's entry for ENV")
    p.add_argument("--preset", default=None, help="or the entry of a named preset (paper)")
    p.set_defaults(func=_run_params)


def _run_params(args: argparse.Namespace) -> int:
    from relax_rl import config as cfg

    algo_cls = _algo_class(args.algo)
    entry = args.preset or args.env
    configured = cfg.zoo_settings(args.algo, entry, required=args.preset is not None)
    path = cfg.CONFIG_DIR / f"{args.algo}.yaml"
    docs = cfg.parameter_docs(algo_cls)
    rows = [(k, repr(d), cfg.RUN_KEY_DOCS[k]) for k, (_, d) in cfg.RUN_KEYS.items()]
    rows += [
        (k, "-" if p.default is p.empty else repr(p.default), docs.get(k, ""))
        for k, p in cfg.algo_parameters(algo_cls).items()
    ]
    width = max(len(k) for k, _, _ in rows)
    source = f"{path.name}[{entry}]" if configured else None
    print(f"{algo_cls.__name__}: key, default{', ' + source if source else ''}, meaning")
    for key, default, doc in rows:
        value = f"  {source}: {configured[key]!r}" if key in configured else ""
        print(f"{key:<{width}}  {default:<12}{value}  {doc}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="relax-rl",
        description="RELAX and friends: low-variance gradient estimators for discrete choices.",
    )
    from relax_rl import __version__

    parser.add_argument("--version", action="version", version=f"relax-rl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    _add_train(sub)
    _add_toy(sub)
    _add_vae(sub)
    _add_compare(sub)
    _add_params(sub)
    for command in sub.choices.values():
        command.add_argument(
            "--threads",
            type=int,
            default=1,
            help="torch threads (default 1: the fastest for this project's small networks)",
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a one-line argparse error
        return int(exc.code or 0)
    try:
        if args.threads < 1:
            raise UsageError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
        with sigterm_as_interrupt():
            return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"relax-rl {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as exc:
        hint = (
            "; finished runs are kept: run the same command again to resume"
            if args.command == "compare"
            else ""
        )
        print(f"relax-rl {args.command}: {_stopped(exc)}{hint}", file=sys.stderr)
        return _interrupt_code(exc)


def _stopped(exc: KeyboardInterrupt) -> str:
    return "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"


def _interrupt_code(exc: KeyboardInterrupt) -> int:
    """The shell's exit code for a process stopped by the signal: 128 + its number."""
    return 128 + (signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)


if __name__ == "__main__":
    raise SystemExit(main())
