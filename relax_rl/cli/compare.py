"""``relax-rl compare`` (a grid of algos x seeds, then the report) and ``relax-rl plot``."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relax_rl.agents import ALGOS
from relax_rl.cli.common import (
    add_tracking_args,
    check_writable,
    tracking_config,
)
from relax_rl.cli.flags import add_dataclass_flags, bounded
from relax_rl.cli.variance import parse_fractions
from relax_rl.config import RunSettings
from relax_rl.errors import UsageError
from relax_rl.runner import BACKENDS, GridRun


def add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="run a grid of algos x seeds on one env and report",
        description="Run every (algo, seed) into OUT/<algo>-s<seed>/ (finished runs are not "
        "run again), then write OUT/summary.json, report.md (with rliable's IQMs, bootstrap "
        "CIs and probabilities of improvement), returns.png, grad_variance.png, "
        "performance_profile.png and aggregates.png.",
    )
    p.add_argument(
        "--algos",
        nargs="+",
        required=True,
        choices=list(ALGOS),
        metavar="ALGO",
        help=f"one or more of {', '.join(ALGOS)}",
    )
    p.add_argument("--env", required=True, metavar="ID", help="gymnasium env id (or module:EnvId)")
    p.add_argument("--seeds", default="0-4", help="e.g. 0-4, 0,2,5 (default 0-4)")
    p.add_argument(
        "--preset",
        action="append",
        default=[],
        metavar="[ALGO=]NAME",
        help="entry of configs/<algo>.yaml to use instead of the env id (e.g. mujoco-discrete, "
        "simple-spread-10), for every algo, or with ALGO= for one (repeatable)",
    )
    p.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="[ALGO=]FILE",
        help="a YAML file of settings, or of env ids to settings (rl-zoo's layout), applied "
        "over configs/<algo>.yaml's, for every algo, or with ALGO= for one (repeatable)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="[ALGO.]KEY=VALUE",
        help="override a setting for every algo, or with ALGO. for one, e.g. --set "
        "relax.cv_learning_rate=1e-3 (repeatable); `relax-rl params` lists them",
    )
    add_dataclass_flags(p, RunSettings, overrides=True, default_note=" unless configs/ set it")
    p.add_argument("--jobs", type=bounded(int, 1), default=1, help="runs in parallel (processes)")
    p.add_argument(
        "--continue-interrupted",
        action="store_true",
        help="continue runs that were interrupted (Ctrl-C, SIGTERM, killed) under this grid's "
        "settings from their newest checkpoint, as train --resume does, instead of starting "
        "them again (default: again from scratch, so that each run's numbers equal an "
        "uninterrupted run's; a continued run lists the step in summary.json's resumed_from)",
    )
    p.add_argument(
        "--backend",
        default="local",
        choices=list(BACKENDS),
        help="local (a process pool, default) or ray (Ray Tune; needs relax-rl[ray])",
    )
    p.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="a running Ray cluster (host:port, ray://host:port or auto); default: start a "
        "local Ray. OUT must be on storage every node sees.",
    )
    p.add_argument(
        "--variance",
        nargs="?",
        const="0.25,0.5,0.75",
        default=None,
        metavar="FRACTIONS",
        help="after the runs, split each run's gradient variance into its state, action and "
        "trajectory terms at these fractions of its length (default 0.25,0.5,0.75; as "
        "`relax-rl variance` with 32 states and 4 repeats) and report them",
    )
    p.add_argument("--out", type=Path, default=Path("runs/compare"), help="(default runs/compare)")
    add_tracking_args(p)
    p.set_defaults(func=_run_compare)

    q = sub.add_parser(
        "plot",
        help="draw the comparison figures from run folders",
        description="Draw compare's report and figures (report.md, returns.png, "
        "grad_variance.png, performance_profile.png, aggregates.png, summary.json) from "
        "existing run folders; no wandb needed.",
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


@dataclass(frozen=True)
class GridSettings:
    """Each algo's settings source in a compare grid, as ``train`` takes them: its preset, its
    config file, its overrides (``--set`` and the flags, then ``--set ALGO.KEY=VALUE``)."""

    presets: dict[str, str | None]
    configs: dict[str, Path | None]
    overrides: dict[str, dict[str, Any]]

    def spec(self, cell: GridRun, tracking: Any = None) -> Any:
        """The RunSpec of one cell, settings resolved as ``train`` resolves them."""
        from relax_rl.training import RunSpec

        return RunSpec.create(
            cell.algo,
            cell.env_id,
            cell.seed,
            out=cell.out,
            preset=self.presets.get(cell.algo),
            config_file=self.configs.get(cell.algo),
            settings=self.overrides.get(cell.algo, {}),
            tracking=tracking,
        )


def _per_algo(values: list[str], flag: str, algos: list[str]) -> dict[str, str | None]:
    """``--preset``/``--config`` values, ``VALUE`` (every algo) or ``ALGO=VALUE`` (one algo,
    winning over a plain one); refused in one line for an algo not in the grid."""
    out: dict[str, str | None] = dict.fromkeys(algos)
    plain = [v for v in values if _algo_prefix(v, "=", algos) is None]
    if len(plain) > 1:
        raise UsageError(f"{flag} given twice for every algo ({', '.join(plain)}); give one")
    for algo in algos:
        out[algo] = plain[0] if plain else None
    for value in values:
        algo = _algo_prefix(value, "=", algos)
        if algo is not None:
            out[algo] = value.partition("=")[2]
    return out


def _algo_prefix(value: str, sep: str, algos: list[str]) -> str | None:
    """The algo ``value`` names before ``sep`` (``ppo=NAME``, ``ppo.key=1``), None for a value
    meant for every algo; an algo name not in the grid is refused."""
    head, found, _ = value.partition(sep)
    if not found or head not in ALGOS:
        return None
    if head not in algos:
        raise UsageError(f"{value!r} names {head}, which is not in --algos ({', '.join(algos)})")
    return head


class GridProgress:
    """compare's progress lines on stderr: at the start, the runs to do (finished ones are not
    run again); then, as each run ends, ``[done/total]`` with the elapsed time and an ETA from
    the pace so far (runs finished per second, parallel jobs included)."""

    def __init__(self, cells: list[GridRun], jobs: int) -> None:
        from relax_rl.runner import is_finished

        self.total = len(cells)
        self.done = sum(is_finished(cell.out) for cell in cells)
        self.start_done = self.done
        self.start = time.monotonic()
        todo = self.total - self.done
        kept = f" ({self.done} finished already)" if self.done else ""
        print(
            f"compare: {self.total} runs{kept}, {todo} to run, {min(jobs, max(todo, 1))} at a time",
            file=sys.stderr,
            flush=True,
        )

    def finished(self) -> str:
        """Count one more run done; the ``[done/total] elapsed, ETA`` prefix of its line."""
        self.done += 1
        elapsed = time.monotonic() - self.start
        ran = self.done - self.start_done
        left = self.total - self.done
        eta = f", ETA {_duration(elapsed / ran * left)}" if left else ""
        return f"[{self.done}/{self.total}, {_duration(elapsed)}{eta}]"


def _duration(seconds: float) -> str:
    """``42s``, ``7m05s``, ``2h03m``."""
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _grid_worker(
    cell, settings: GridSettings, tracking, continue_interrupted: bool = False
) -> dict:
    """Train one cell of a compare grid (in a worker process); an unfinished earlier attempt in
    its folder is continued (``continue_interrupted``, when it can be) or started again."""
    import shutil

    import torch

    from relax_rl.training import train

    torch.set_num_threads(1)
    spec = settings.spec(cell, tracking)
    if cell.out.exists():  # an unfinished earlier attempt
        resumed = _resumable(cell, spec, tracking) if continue_interrupted else None
        if resumed is None:  # nothing to continue from, or other settings: start it again
            shutil.rmtree(cell.out)
        else:
            steps = resumed.resume_from.env_steps
            print(f"resuming {cell.algo} seed {cell.seed} at {steps:,} env steps",
                  file=sys.stderr, flush=True)  # fmt: skip
            return train(resumed)
    print(f"started {cell.algo} seed {cell.seed}", file=sys.stderr, flush=True)
    return train(spec)


#: statuses of an unfinished run that its checkpoint continues (a diverged or failed run's
#: model is not one to go on from)
RESUMABLE = ("interrupted", "running")


def _resumable(cell, spec, tracking):
    """The run in ``cell.out`` continued from its newest checkpoint (``train``'s resume:
    step count, optimiser states, noise stream and episode counts carried over, the rows of
    ``progress.csv`` up to it kept) when it was interrupted (Ctrl-C, SIGTERM) or killed under
    the settings this grid has; None when it has nothing to continue from, ended otherwise, or
    ran with other settings."""
    import yaml

    from relax_rl.training import DERIVED_CONFIG_KEYS, RunSpec, run_config

    try:
        status = json.loads((cell.out / "summary.json").read_text()).get("status", "running")
        old = yaml.safe_load((cell.out / "config.yaml").read_text()) or {}
    except (OSError, ValueError, yaml.YAMLError):
        return None
    new = run_config(spec)
    # (a key an older config.yaml lacks is not compared, as for finished runs)
    keys = (set(old) & set(new)) - set(DERIVED_CONFIG_KEYS)
    if status not in RESUMABLE or any(old.get(k) != new.get(k) for k in keys):
        return None
    try:
        return RunSpec.resume(cell.out, tracking=tracking)
    except ValueError:  # no checkpoint yet, or its total_steps already trained
        return None


def _check_finished_runs_match(cells, settings: GridSettings) -> None:
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
        new = run_config(settings.spec(cell))
        # (a key an older config.yaml lacks is not compared)
        for key in sorted(set(old) & set(new) - set(DERIVED_CONFIG_KEYS)):
            if old.get(key) != new.get(key):
                raise UsageError(
                    f"{cell.out} finished with {key}={old.get(key)!r} but this grid has "
                    f"{key}={new.get(key)!r}; give a new --out, or the same settings to resume"
                )


def _grid_settings(args: argparse.Namespace) -> GridSettings:
    """Each algo's preset, config file and overrides: ``--set KEY=VALUE`` and the run-key
    flags for every algo, ``--set ALGO.KEY=VALUE`` for one (over its configs/<algo>.yaml
    entry); bad keys and settings every run would fail on are refused here, before any run
    starts."""
    from relax_rl import config as cfg
    from relax_rl.cli.train import run_overrides

    common = [s for s in args.set if _algo_prefix(s, ".", args.algos) is None]
    base = run_overrides(argparse.Namespace(**{**vars(args), "set": common}))
    overrides = {}
    for algo in args.algos:
        own = [s.partition(".")[2] for s in args.set if _algo_prefix(s, ".", args.algos) == algo]
        overrides[algo] = cfg.merge(base, cfg.parse_set(own))
    configs = _per_algo([str(c) for c in args.config], "--config", args.algos)
    settings = GridSettings(
        presets=_per_algo(args.preset, "--preset", args.algos),
        configs={a: None if c is None else Path(c) for a, c in configs.items()},
        overrides=overrides,
    )
    for algo in args.algos:
        spec = settings.spec(GridRun(algo, args.env, 0, args.out))
        if spec.settings["stop_when_solved"] and spec.settings["threshold"] is None:
            raise UsageError(
                f"--until-solved needs a reward threshold and {args.env} has none; "
                "add --threshold VALUE"
            )
        _check_env_setup(spec)
    return settings


def _check_env_setup(spec) -> None:
    """The run as every cell of the grid builds it (the env as the agent takes it, e.g. envs
    in groups; then the agent over it: its arguments checked), built once and closed, so that
    a setting every run would fail on is refused before any run starts."""
    from relax_rl.training import build

    try:
        _, env = build(spec)
    except (ValueError, TypeError) as exc:  # (a bad env option: the env's constructor's error)
        raise UsageError(f"{spec.algo} on {spec.env_id}: {exc}") from None
    env.close()


def _write_comparison(out: Path, run_dirs: list[Path], summaries: list[dict]) -> None:
    from relax_rl.plotting import plot_aggregates, plot_compare, plot_performance_profile
    from relax_rl.report import (
        aggregate,
        differences,
        final_returns,
        grad_variance_stats,
        performance_profile,
        read_curves,
        write_report,
    )

    for d, s in zip(run_dirs, summaries, strict=True):
        s.update(grad_variance_stats(d, s.get("solved_at_env_steps")))
    aggregates, diffs = aggregate(summaries), differences(summaries)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(
        json.dumps({"runs": summaries, "aggregates": aggregates, "differences": diffs}, indent=2)
    )
    variance: dict[str, list[dict]] = {}  # the runs' decompositions (relax-rl variance)
    for d, s in zip(run_dirs, summaries, strict=True):
        with contextlib.suppress(OSError, ValueError):
            variance.setdefault(s["algo"], []).append(json.loads((d / "variance.json").read_text()))
    write_report(out, summaries, aggregates, {a: v for a, v in variance.items() if v}, diffs)
    if any(variance.values()):
        from relax_rl.plotting import plot_variance_decomposition

        labelled = [
            {**r, "label": f"{a} s{i}"} for a, runs in variance.items() for i, r in enumerate(runs)
        ]
        plot_variance_decomposition(labelled, out / "variance.png")
    curves: dict[str, list] = {}
    for d, s in zip(run_dirs, summaries, strict=True):
        curves.setdefault(s["algo"], []).append(read_curves(d, s.get("total_env_steps")))
    thresholds = {s.get("threshold") for s in summaries} - {None}
    threshold = thresholds.pop() if len(thresholds) == 1 else None
    stops: dict[str, list[bool]] = {}
    for s in summaries:
        stops.setdefault(s["algo"], []).append(s.get("status") == "solved")
    plot_compare(
        curves, out / "returns.png", out / "grad_variance.png", threshold, solved_stops=stops
    )
    # rliable's figures: the final-return score distributions, and the IQMs with their CIs
    scores = final_returns(summaries)
    plot_performance_profile(
        *performance_profile(scores),
        out / "performance_profile.png",
        runs={algo: len(v) for algo, v in scores.items()},
        threshold=threshold,
    )
    plot_aggregates(aggregates, out / "aggregates.png")


def _run_compare(args: argparse.Namespace) -> int:
    import functools

    from relax_rl.envs import check_env_id
    from relax_rl.runner import check_ray_backend, parse_seeds, run_grid

    if args.ray_address is not None and args.backend != "ray":
        raise UsageError("--ray-address needs --backend ray")
    if args.backend == "ray":
        check_ray_backend(args.ray_address)
    try:
        check_env_id(args.env)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    seeds = parse_seeds(args.seeds)
    check_writable(args.out)
    settings = _grid_settings(args)
    if args.variance is not None:  # refused now rather than after the runs
        from relax_rl.decomposition import check_copyable

        parse_fractions(args.variance, "--variance")
        first = settings.spec(GridRun(args.algos[0], args.env, 0, args.out))
        try:
            check_copyable(args.env, first.settings["env_kwargs"], first.settings["discretize"])
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    tracking = tracking_config(args)
    if tracking is not None and tracking.group is None:
        # Named after the output folder, so that a resumed comparison stays in one group.
        tracking.group = f"compare-{args.env}-{args.out.resolve().name}"
    cells = [GridRun(a, args.env, s, args.out / f"{a}-s{s}") for a in args.algos for s in seeds]
    _check_finished_runs_match(cells, settings)
    worker = functools.partial(
        _grid_worker,
        settings=settings,
        tracking=tracking,
        continue_interrupted=args.continue_interrupted,
    )

    progress = GridProgress(cells, jobs=args.jobs)

    def done(cell, summary) -> None:
        solved = summary.get("solved_at_env_steps")
        outcome = (
            f"solved at {solved:,} env steps"
            if solved is not None
            else summary.get("error")
            or ("not solved" if summary.get("threshold") is not None else "no threshold")
        )
        print(
            f"{progress.finished()} {cell.algo} seed {cell.seed}: {summary.get('status')}, "
            f"{outcome}",
            file=sys.stderr,
            flush=True,
        )

    summaries = run_grid(
        cells,
        worker,
        jobs=args.jobs,
        on_done=done,
        backend=args.backend,
        ray_address=args.ray_address,
        ray_storage=args.out / "ray",
    )
    if args.variance is not None:
        _decompose_runs(cells, summaries, parse_fractions(args.variance, "--variance"))
    _write_comparison(args.out, [cell.out for cell in cells], summaries)
    print((args.out / "report.md").read_text())
    if all(s.get("status") in ("failed", "diverged") for s in summaries):
        print(f"relax-rl compare: every run failed; see {args.out}/report.md", file=sys.stderr)
        return 1
    return 0


def _decompose_runs(cells, summaries: list[dict], fractions: list[float]) -> None:
    """``relax-rl variance`` on every finished run of the grid (16 states, 4 actions and
    continuations each), unless it has its ``variance.json`` at those points already."""
    from relax_rl.decomposition import MIN_STATES_FOR_INTERVALS, decompose_run
    from relax_rl.runner import FINISHED

    for cell, summary in zip(cells, summaries, strict=True):
        path = cell.out / "variance.json"
        if summary.get("status") not in FINISHED:
            continue
        with contextlib.suppress(OSError, ValueError, KeyError):
            if [p["fraction"] for p in json.loads(path.read_text())["points"]] == fractions:
                continue
        print(f"{cell.algo} seed {cell.seed}: variance decomposition", file=sys.stderr)
        result = decompose_run(
            cell.out, fractions, n_states=MIN_STATES_FOR_INTERVALS, repeats=4, seed=cell.seed
        )
        path.write_text(json.dumps(result, indent=2))


def _read_summary(d: Path) -> dict:
    try:
        summary = json.loads((d / "summary.json").read_text())
    except (OSError, ValueError):
        raise UsageError(f"{d} is not a run folder (no readable summary.json)") from None
    if not isinstance(summary, dict) or ("algo" not in summary and "runs" not in summary):
        raise UsageError(f"{d}/summary.json is neither a run's nor a comparison's")
    return summary


def _run_env(run_dir: Path, summary: dict) -> str:
    """The env a run trained on, with its options (from its config.yaml where an older
    summary.json lacks them)."""
    import yaml

    from relax_rl.report import env_setup

    if "env_kwargs" not in summary:
        with contextlib.suppress(OSError, yaml.YAMLError, AttributeError):
            config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
            summary = {**summary, **{k: config.get(k) for k in ("env_kwargs", "discretize")}}
    return env_setup(summary)


def _check_plottable(run_dirs: list[Path], summaries: list[dict]) -> None:
    """Refuse what one report cannot pool: a run given twice, runs of different envs (or env
    options); say when the runs' lengths differ."""
    seen: dict[Path, Path] = {}
    for d in run_dirs:
        key = d.resolve()
        if key in seen:
            raise UsageError(
                f"the run {key} is given twice (as {seen[key]} and {d}); plot each once"
            )
        seen[key] = d
    envs: dict[str, int] = {}
    for d, s in zip(run_dirs, summaries, strict=True):
        env = _run_env(d, s)
        envs[env] = envs.get(env, 0) + 1
    if len(envs) > 1:
        listed = ", ".join(f"{env} ({n} runs)" for env, n in envs.items())
        raise UsageError(f"the runs are of different envs: {listed}; plot one env at a time")
    for d, s in zip(run_dirs, summaries, strict=True):
        # a finished run writes a row at its end at least: none means a damaged folder
        if s.get("status") in ("completed", "solved") and not _has_rows(d / "progress.csv"):
            raise UsageError(
                f"{d / 'progress.csv'} has no rows, though the run finished: its curves are "
                "lost (a damaged run folder); leave the run out"
            )
    lengths = {s.get("total_env_steps") for s in summaries if s.get("status") == "completed"}
    lengths.discard(None)
    if len(lengths) > 1:
        print(
            f"note: the completed runs' lengths differ ({min(lengths):,} to {max(lengths):,} env "
            "steps): final returns are compared at different budgets",
            file=sys.stderr,
        )


def _has_rows(path: Path) -> bool:
    try:
        with open(path) as fh:
            return sum(1 for line in fh if line.strip()) > 1  # (a header and a row)
    except OSError:
        return False


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
    _check_plottable(run_dirs, summaries)
    out = args.out
    check_writable(out)
    into_a_run = any(out.resolve() == d.resolve() for d in run_dirs) or (
        (out / "summary.json").is_file() and "algo" in _read_summary(out)
    )
    if into_a_run:
        raise UsageError(f"--out {out} is a run folder; plot never writes over a run's files")
    _write_comparison(out, run_dirs, summaries)
    variance = ", variance.png" if (out / "variance.png").exists() else ""
    print(
        f"wrote {out}/report.md, returns.png, grad_variance.png, performance_profile.png, "
        f"aggregates.png{variance}, summary.json"
    )
    return 0
