"""The report on a grid of run folders: per-algo aggregates, ``report.md`` and the curves the
figures are drawn from. Everything is read from the run folders alone (``summary.json``,
``progress.csv``, ``config.yaml``), so ``relax-rl plot`` can redraw it without wandb.
"""

from __future__ import annotations

import csv
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from relax_rl.diagnostics import MIN_GROUPS
from relax_rl.runner import FINISHED


def aggregate(summaries: Sequence[dict]) -> dict[str, dict[str, Any]]:
    """Per algo: seeds solved, env steps and episodes to threshold (median, IQR), final mean
    return, mean grad log10 variance and env-steps/s."""
    out: dict[str, dict[str, Any]] = {}
    for algo in dict.fromkeys(s["algo"] for s in summaries):
        rs = [s for s in summaries if s["algo"] == algo]
        ok = [s for s in rs if s.get("status") in FINISHED]
        solved = [s for s in ok if s.get("solved_at_env_steps") is not None]
        out[algo] = {
            "runs": len(rs),
            "failed": len(rs) - len(ok),
            "solved": len(solved),
            "env_steps_to_solve": _quartiles([s["solved_at_env_steps"] for s in solved]),
            "episodes_to_solve": _quartiles([s["solved_at_episodes"] for s in solved]),
            "final_mean_return_100": _quartiles(
                [
                    s["final_mean_return_100"]
                    for s in ok
                    if s.get("final_mean_return_100") is not None
                ]
            ),
            "grad_log10_var": _mean([s.get("mean_grad_log10_var") for s in ok]),
            "grad_log10_var_reduction": _mean([s.get("mean_grad_log10_var_reduction") for s in ok]),
            "grad_log10_var_reduction_before_solved": _mean(
                [s.get("mean_grad_log10_var_reduction_before_solved") for s in ok]
            ),
            "env_steps_per_s": _quartiles(
                [s["env_steps_per_s"] for s in ok if s.get("env_steps_per_s")]
            ),
        }
    return out


def _mean(xs: Sequence[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return float(statistics.fmean(vals)) if vals else None


def _quartiles(xs: Sequence[float]) -> dict[str, float] | None:
    if not xs:
        return None
    q1, med, q3 = np.percentile(np.asarray(xs, dtype=float), [25, 50, 75])
    return {"median": float(med), "q1": float(q1), "q3": float(q3)}


# Curves read from a run's progress.csv: name -> SB3 logger key.
CURVE_KEYS = {
    "return": "rollout/ep_rew_mean",
    "grad_log10_var": "grad/log10_var",
    # the plain advantage estimator on the same batches (agents with a control variate)
    "grad_log10_var_baseline": "grad/log10_var_baseline",
    "grad_log10_var_reduction": "grad/log10_var_reduction",
}


def read_curves(run_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each of :data:`CURVE_KEYS` as (env steps, values) from a run's progress.csv; a curve the
    run did not log is two empty arrays."""
    points: dict[str, list[tuple[float, float]]] = {name: [] for name in CURVE_KEYS}
    path = run_dir / "progress.csv"
    if path.exists():
        with open(path) as fh:
            for row in csv.DictReader(fh):
                t = row.get("time/total_timesteps")
                for name, key in CURVE_KEYS.items():
                    if t and row.get(key):
                        points[name].append((float(t), float(row[key])))
    return {
        name: (np.asarray([x for x, _ in xy]), np.asarray([y for _, y in xy]))
        for name, xy in points.items()
    }


def _fmt(q: dict[str, float] | None, digits: int = 0) -> str:
    if q is None:
        return "-"
    return f"{q['median']:,.{digits}f} [{q['q1']:,.{digits}f}, {q['q3']:,.{digits}f}]"


def _signed(x: float | None) -> str:
    return "-" if x is None else f"{x:+.2f}"


def write_report(out: Path, summaries: Sequence[dict], aggregates: dict[str, dict]) -> None:
    """``report.md``: one row per algo, then every failed run with its error line."""
    env_ids = sorted({s.get("env_id", "?") for s in summaries})
    lines = [
        f"# Comparison on {', '.join(env_ids)}",
        "",
        "Medians with [Q1, Q3] over seeds; steps and episodes to the threshold over solved "
        "seeds only.",
        "",
        "| algo | solved | env steps to solve | episodes to solve | final mean return (100) "
        "| mean grad log10 var | env-steps/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for algo, a in aggregates.items():
        var = "-" if a["grad_log10_var"] is None else f"{a['grad_log10_var']:.2f}"
        failed = f" ({a['failed']} failed)" if a["failed"] else ""
        lines.append(
            f"| {algo} | {a['solved']}/{a['runs']}{failed} | {_fmt(a['env_steps_to_solve'])} "
            f"| {_fmt(a['episodes_to_solve'])} | {_fmt(a['final_mean_return_100'], 1)} "
            f"| {var} | {_fmt(a['env_steps_per_s'])} |"
        )
    paired = {a: v for a, v in aggregates.items() if v["grad_log10_var_reduction"] is not None}
    if paired:
        lines += [
            "",
            "Paired variance reduction: log10 Var of the plain advantage estimator minus the "
            "agent's, on the same batches (mean over measurements, then seeds): "
            + ", ".join(
                f"{a} {v['grad_log10_var_reduction']:+.2f} over the run, "
                f"{_signed(v['grad_log10_var_reduction_before_solved'])} before the threshold"
                for a, v in paired.items()
            )
            + ".",
        ]
    unmeasured = list(
        dict.fromkeys(s["algo"] for s in summaries if s.get("grad_var_groups") == "none")
    )
    if unmeasured:
        lines += [
            "",
            f"{', '.join(unmeasured)}: fewer than {MIN_GROUPS} envs per update, so the gradient "
            "variance is not measured (it needs independent envs within one batch).",
        ]
    failures = [s for s in summaries if s.get("status") not in FINISHED]
    if failures:
        lines += ["", "## Failed runs", ""]
        lines += [
            f"- {s['algo']} seed {s['seed']}: {s.get('status')}: {s.get('error')}" for s in failures
        ]
    (out / "report.md").write_text("\n".join(lines) + "\n")


def grad_variance_stats(run_dir: Path, solved_at: float | None) -> dict[str, float | None]:
    """A run's mean grad log10 variance and mean paired reduction, the latter also before the
    threshold was reached (after it, the policy is nearly deterministic, kappa near 0, and the
    reduction near 0). None where not logged."""
    curves = read_curves(run_dir)
    _, gv = curves["grad_log10_var"]
    at, red = curves["grad_log10_var_reduction"]
    before = red[at < solved_at] if solved_at is not None else red
    try:
        n_envs = int(yaml.safe_load((run_dir / "config.yaml").read_text())["n_envs"])
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
        n_envs = None
    return {
        "grad_var_groups": None if n_envs is None else ("envs" if n_envs >= MIN_GROUPS else "none"),
        "mean_grad_log10_var": float(gv.mean()) if gv.size else None,
        "mean_grad_log10_var_reduction": float(red.mean()) if red.size else None,
        "mean_grad_log10_var_reduction_before_solved": (
            float(before.mean()) if before.size else None
        ),
    }
