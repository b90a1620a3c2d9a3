"""``relax-rl tune``: an Optuna study of one algo's hyperparameters on one env
(:mod:`relax_rl.tuning`)."""

from __future__ import annotations

import argparse
import functools
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from relax_rl.agents import ALGOS
from relax_rl.cli.common import check_writable, seed_arg
from relax_rl.cli.flags import add_dataclass_flags, bounded
from relax_rl.cli.train import run_overrides
from relax_rl.config import RunSettings
from relax_rl.errors import UsageError


def add_tune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tune",
        help="tune an algo's hyperparameters on one env (Optuna: TPE, median pruner)",
        description="An Optuna study (TPE sampler, median pruner on the periodic evaluations) "
        "over the algo's search space, each trial a run folder in OUT/trials/; the study lives "
        "in OUT/study.db (or --storage), and the same command again resumes it up to --trials "
        "finished trials. Writes OUT/best.yaml (train --config OUT/best.yaml), OUT/trials.csv, "
        "history.png and importance.png.",
    )
    p.add_argument("--algo", required=True, choices=list(ALGOS), metavar="ALGO",
                   help=f"one of {', '.join(ALGOS)}")  # fmt: skip
    p.add_argument("--env", required=True, metavar="ID", help="gymnasium env id (or module:EnvId)")
    p.add_argument("--trials", type=bounded(int, 1), required=True,
                   help="finished (completed or pruned) trials the study should have")  # fmt: skip
    p.add_argument("--jobs", type=bounded(int, 1), default=1, help="trials in parallel (processes)")
    p.add_argument("--seed", type=seed_arg, default=0,
                   help="every trial's run seed, and the sampler's (default 0)")  # fmt: skip
    p.add_argument("--storage", default=None, metavar="URL",
                   help="an Optuna storage URL (default sqlite:///OUT/study.db)")  # fmt: skip
    p.add_argument("--preset", default=None, help="entry of configs/<algo>.yaml to start from")
    p.add_argument("--config", type=Path, default=None, help="a YAML file of settings")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a setting every trial keeps (not tuned), e.g. --set n_envs=8")  # fmt: skip
    add_dataclass_flags(p, RunSettings, overrides=True, default_note=" unless configs/ set it")
    p.add_argument("--out", type=Path, default=Path("runs/tune"), help="(default runs/tune)")
    p.set_defaults(func=_run_tune)


@dataclass(frozen=True)
class TrialBase:
    """What every trial of a study shares (picklable: the trials may run in other processes)."""

    algo: str
    env_id: str
    seed: int
    out: Path
    settings: dict[str, Any]
    preset: str | None
    config_file: Path | None
    n_envs: int
    #: the tuned keys: the algo's search space less the fixed keys and the options the fixed
    #: settings rule out (:func:`feasible_space`)
    space: dict[str, Any]


#: a trial whose sampled settings the agent refuses (two values that do not go together): failed
#: before any step, not counted as one of the --trials
INFEASIBLE = "infeasible settings"


def _spec(base: TrialBase, out: Path, sampled: dict[str, Any]) -> Any:
    from relax_rl.training import RunSpec

    return RunSpec.create(
        base.algo, base.env_id, base.seed, out=out, settings={**base.settings, **sampled},
        preset=base.preset, config_file=base.config_file,
    )  # fmt: skip


def _refusal(spec: Any, env: Any) -> str | None:
    """Why the agent refuses ``spec``'s settings on ``env`` (its constructor's checks, which
    run before any network is built), or None."""
    try:
        spec.algo_cls("MlpPolicy", env, _init_setup_model=False, **spec.agent_kwargs)
    except (ValueError, TypeError) as exc:
        return str(exc)
    return None


def feasible_space(base: TrialBase, env: Any) -> tuple[dict[str, Any], list[str]]:
    """The algo's search space less the keys every trial keeps, each choice less the options
    the fixed settings rule out (tried one at a time on ``env``: e.g. kappa_mode='optimal'
    under a preset that starts c_hat at 0), so that trials are not spent on runs the agent
    refuses. A choice left with one option is no longer tuned (the fixed settings imply it).

    :return: ``(space, ruled_out)``, ruled_out as ``KEY=VALUE`` strings.
    """
    from relax_rl.tuning import Choice, search_space

    space = {k: d for k, d in search_space(ALGOS[base.algo]).items() if k not in base.settings}
    ruled_out = []
    for name, dist in list(space.items()):
        if not isinstance(dist, Choice):
            continue
        kept = []
        for option in dist.options:
            spec = _spec(base, base.out / "trials" / "probe", {name: option})
            if _refusal(spec, env) is None:
                kept.append(option)
            else:
                ruled_out.append(f"{name}={option}")
        if len(kept) < 2:
            del space[name]
        elif len(kept) < len(dist.options):
            space[name] = Choice(tuple(kept))
    return space, ruled_out


def objective(trial: Any, base: TrialBase) -> float:
    """One trial: the sampled settings over the fixed ones, trained into its own run folder;
    its value is its last evaluation's mean return."""
    import optuna

    from relax_rl.training import build, train
    from relax_rl.tuning import ReportToTrial, sample_settings

    sampled = sample_settings(trial, base.space, base.n_envs)
    out = base.out / "trials" / f"trial-{trial.number}"
    if out.exists():  # (numbers are never reused: a leftover of a killed attempt)
        shutil.rmtree(out)
    spec = _spec(base, out, sampled)
    try:  # two sampled values that do not go together: failed now, before any step
        _, env = build(spec)
    except (ValueError, TypeError) as exc:
        trial.set_user_attr("infeasible", str(exc))
        raise ValueError(f"{INFEASIBLE}: {exc}") from None
    env.close()
    reporter = ReportToTrial(trial)
    spec.after_evaluation = reporter
    trial.set_user_attr("run", str(out))
    summary = train(spec)
    trial.set_user_attr("env_steps", summary["total_env_steps"])
    if summary["status"] not in ("completed", "solved"):
        raise RuntimeError(summary.get("error") or summary["status"])
    if reporter.pruned:
        raise optuna.TrialPruned()
    if reporter.last is None:
        raise RuntimeError("the run made no evaluation")
    return reporter.last


def _progress(total: int, start: float, study: Any, trial: Any) -> None:
    from relax_rl.tuning import finished_trials

    what = {
        "COMPLETE": lambda: f"mean return {trial.value:.4g}",
        "PRUNED": lambda: f"pruned at {trial.user_attrs.get('env_steps', 0):,} env steps",
        "FAIL": lambda: f"failed: {trial.system_attrs.get('fail_reason', '?').splitlines()[-1]}",
    }.get(trial.state.name, lambda: trial.state.name)()
    done = finished_trials(study)
    print(f"[{done}/{total}, {time.monotonic() - start:.0f}s] trial {trial.number}: {what}",
          file=sys.stderr, flush=True)  # fmt: skip


def _optimize(
    storage: str, name: str, seed: int, n_trials: int, total: int, base: TrialBase
) -> None:
    """A worker's share of the trials (its own sampler seed: workers draw different points),
    until the study has ``total`` finished trials: a failed trial is not one of them, so the
    worker tries again, up to ``n_trials`` failures of its own beyond its share (a study whose
    trials all crash ends rather than loops)."""
    import optuna
    import torch

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(
        study_name=name,
        storage=storage,
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0),
    )
    from relax_rl.tuning import finished_trials

    start, attempts = time.monotonic(), 0
    while finished_trials(study) < total and attempts < 2 * n_trials:
        attempts += 1
        study.optimize(
            functools.partial(objective, base=base),
            n_trials=1,
            catch=(Exception,),  # a failed trial is recorded with its error; the study goes on
            callbacks=[functools.partial(_progress, total, start)],
        )


def _run_tune(args: argparse.Namespace) -> int:
    from relax_rl.envs import check_env_id
    from relax_rl.training import RunSpec, build
    from relax_rl.tuning import (
        STUDY_FILE,
        finished_trials,
        open_study,
        optuna_module,
        write_outputs,
    )

    optuna_module()
    try:
        check_env_id(args.env)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    check_writable(args.out)
    fixed = run_overrides(args)
    # the settings every trial shares, checked once before anything runs
    probe = RunSpec.create(args.algo, args.env, args.seed, out=args.out / "trials" / "probe",
                           settings=fixed, preset=args.preset, config_file=args.config)  # fmt: skip
    try:  # a bad value fixed for every trial: one line now, not a failed study
        _, env = build(probe)
    except (ValueError, TypeError, AssertionError) as exc:
        raise UsageError(f"{args.algo} on {args.env}: {exc}") from None
    settings = dict(fixed)
    if probe.settings["eval_freq"] == 0:  # the pruner needs evaluations: 10 per trial
        settings["eval_freq"] = max(1, probe.settings["total_steps"] // 10)
    base = TrialBase(args.algo, args.env, args.seed, args.out.resolve(), settings, args.preset,
                     args.config, probe.settings["n_envs"], {})  # fmt: skip
    space, ruled_out = feasible_space(base, env)
    env.close()
    base = replace(base, space=space)
    args.out.mkdir(parents=True, exist_ok=True)
    storage = args.storage or f"sqlite:///{(args.out / STUDY_FILE).resolve()}"
    name = f"{args.algo}-{args.env}"
    description = {
        "algo": args.algo, "env": args.env, "seed": args.seed, "preset": args.preset,
        "config": str(args.config) if args.config else None,
        **{key: str(value) for key, value in sorted(settings.items())},
    }  # fmt: skip
    study = open_study(storage, name, args.seed, description)
    left = args.trials - finished_trials(study)
    jobs = min(args.jobs, max(left, 1))
    skipped = f" (left out, the fixed settings rule them out: {', '.join(ruled_out)})"
    print(f"tune: study {name!r} in {storage}: {finished_trials(study)} finished trials, "
          f"{max(left, 0)} to run, {jobs} at a time; tuning {', '.join(space)}"
          f"{skipped if ruled_out else ''}", file=sys.stderr, flush=True)  # fmt: skip
    if left > 0:
        shares = [left // jobs + (i < left % jobs) for i in range(jobs)]
        run = functools.partial(_optimize, storage, name, total=args.trials, base=base)
        if jobs == 1:
            run(args.seed, shares[0])
        else:
            with ProcessPoolExecutor(jobs) as pool:
                for future in [pool.submit(run, args.seed + i, n) for i, n in enumerate(shares)]:
                    future.result()
        study = open_study(storage, name, args.seed, description)
    for line in write_outputs(study, args.out, args.env, settings):
        print(line)
    return 0
