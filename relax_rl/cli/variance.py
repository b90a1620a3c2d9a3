"""``relax-rl variance``: where a run's policy-gradient variance comes from (state, action,
trajectory), at its checkpoints."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from relax_rl.cli.common import check_writable, seed_arg
from relax_rl.cli.flags import bounded
from relax_rl.errors import UsageError


def add_variance(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "variance",
        help="split a run's policy-gradient variance into its state, action and trajectory terms",
        description="At the run's checkpoints nearest to --at (fractions of its length), "
        "estimate the three terms of the variance of the update's gradient estimator (Tucker "
        "et al. 2018): from the state distribution, from the action drawn at a state (the only "
        "one an action-dependent control variate can reduce) and from the rest of the "
        "trajectory, by restarting copies of the env at N stored states with K actions each "
        "and K continuations per action. Writes variance.json and variance.png. Needs an env "
        "whose state can be copied (pure-Python envs: the project's own, classic control, "
        "SimpleSpread; MuJoCo envs).",
    )
    p.add_argument("run_dir", type=Path, help="the run folder train wrote (its checkpoints)")
    p.add_argument(
        "--states", type=bounded(int, 2), default=32, metavar="N", help="states (default 32)"
    )
    p.add_argument(
        "--repeats",
        type=bounded(int, 2),
        default=8,
        metavar="K",
        help="actions per state and continuations per action (default 8)",
    )
    p.add_argument(
        "--at",
        default="0.25,0.5,0.75",
        metavar="FRACTIONS",
        help="points of the run, as fractions of its length (default 0.25,0.5,0.75; 1: the end)",
    )
    p.add_argument("--seed", type=seed_arg, default=0, help="seed of the design (default 0)")
    p.add_argument(
        "--window",
        type=bounded(int, 1),
        default=None,
        metavar="T",
        help="steps of each continuation (default: the agent's n_steps, or up to 1000 for a "
        "whole-episode agent): an n_steps agent's GAE over T steps is its estimator for a "
        "sample T steps before its rollout's end; a short window measures those at a fraction "
        "of the env steps (PPO's 2,048-step MuJoCo rollouts: --window 256)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for variance.json and variance.png (default: the run folder)",
    )
    p.set_defaults(func=_run_variance)


def parse_fractions(text: str, flag: str = "--at") -> list[float]:
    """``0.25,0.5,0.75`` as sorted distinct fractions in [0, 1] (one-line errors naming
    ``flag``)."""
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError:
        raise UsageError(f"{flag} {text!r}: expected fractions such as 0.25,0.5,0.75") from None
    if any(not 0.0 <= v <= 1.0 for v in values):
        raise UsageError(f"{flag} {text!r}: every fraction must be in [0, 1]")
    return sorted(set(values))


def _run_variance(args: argparse.Namespace) -> int:
    import yaml

    from relax_rl.decomposition import (
        MIN_STATES_FOR_INTERVALS,
        check_copyable,
        decompose_run,
        run_checkpoints,
    )
    from relax_rl.plotting import plot_variance_decomposition

    run_dir: Path = args.run_dir
    fractions = parse_fractions(args.at)
    if not (run_dir / "config.yaml").is_file():
        raise UsageError(f"{run_dir} is not a run folder (no config.yaml)")
    if not run_checkpoints(run_dir):
        raise UsageError(f"{run_dir} holds no checkpoint and no model.zip")
    out = args.out or run_dir
    check_writable(out)
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        env_id = config["env_id"]
    except (OSError, yaml.YAMLError, TypeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"{run_dir}/config.yaml is damaged ({first})") from None
    try:
        check_copyable(env_id, config.get("env_kwargs"), config.get("discretize"))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        result = decompose_run(
            run_dir, fractions, args.states, args.repeats, args.seed, window=args.window
        )
    except ValueError as exc:  # (a damaged checkpoint, named)
        raise UsageError(str(exc)) from None
    out.mkdir(parents=True, exist_ok=True)
    (out / "variance.json").write_text(json.dumps(result, indent=2))
    plot_variance_decomposition([result], out / "variance.png")
    print(format_decomposition(result))
    if args.states < MIN_STATES_FOR_INTERVALS:
        print(
            f"note: with {args.states} states the 95% intervals cover less than 95% (measured: "
            f"the state term's 77% at 8 states, 85% at 16); --states {MIN_STATES_FOR_INTERVALS} "
            "or more for intervals to trust",
            file=sys.stderr,
        )
    print(f"wrote {out}/variance.json, variance.png")
    return 0


def format_decomposition(result: dict) -> str:
    """A table: per checkpoint and estimator, log10 of the total variance with its 95%
    interval, the three terms' shares (a term whose interval reaches 0 is marked ``?``: not
    resolved by the design), and an agent's paired log10 ratio to the plain estimator."""
    lines = [
        f"{result['algo']} on {result['env_id']}: variance of the update's gradient estimator "
        "(log10, 95% bootstrap intervals over the states)",
        f"{'env steps':>10}  {'estimator':<24} {'log10 total':>21}  "
        f"{'state':>6} {'action':>6} {'trajectory':>10}  {'vs same samples':>22}",
    ]
    unresolved = False
    for point in result["points"]:
        for e in point["estimators"]:
            shares = []
            for t in ("state", "action", "trajectory"):
                share = e[f"share_{t}"]
                mark = "" if e.get(f"resolved_{t}", True) else "?"
                unresolved |= bool(mark) and e[t] != 0
                shares.append("-" if share is None else f"{share:.0%}{mark}")
            lines.append(
                f"{point['env_steps']:>10,}  {e['estimator']:<24} "
                f"{_log10_with_interval(e['total'], e.get('ci_total')):>21}  "
                f"{shares[0]:>6} {shares[1]:>6} {shares[2]:>10}  "
                f"{_ratio(e):>22}"
            )
    if unresolved:
        lines.append(
            "?: the term's interval reaches 0: not resolved at this design (more --states, or "
            "--repeats, would resolve it); its share is of the terms clipped at 0"
        )
    return "\n".join(lines)


def _log10_with_interval(value: float, interval: list[float] | None) -> str:
    def log(x: float) -> str:
        return f"{math.log10(x):.2f}" if x > 0 else "<0"

    if value <= 0:
        return "-"
    return log(value) + ("" if interval is None else f" [{log(interval[0])}, {log(interval[1])}]")


def _ratio(e: dict) -> str:
    """``log10(total / plain total)`` on the same samples, with its paired interval."""
    if e.get("log10_vs_paired") is None:
        return ""
    ci = e.get("ci_log10_vs_paired")
    band = "" if ci is None else f" [{ci[0]:+.2f}, {ci[1]:+.2f}]"
    return f"{e['log10_vs_paired']:+.2f}{band}"
