"""One table of finished runs gathered from several places, each group under a label of its own
(so that two folders' `ppo` runs, say on Gaussian and on discretised actions, stay apart):

- the last-100 mean return at the end of training: interquartile mean over seeds with rliable's
  stratified-bootstrap 95% CI (relax_rl.report), and median (min-max);
- the last-100 mean return at env-step budgets (median, min-max over seeds);
- the final greedy evaluation, env-steps/s, seconds;
- the in-training paired gradient variance (log10 reduction of the update's estimator against
  the plain advantage estimator on the same batches: `grad/log10_var_reduction`), where logged;
- with --variance, the state / action / trajectory split of `relax-rl variance` (variance.json)
  of every run that has one;
- with --improve A B, rliable's probability that a run of A ends above a run of B.

A group is LABEL=GLOB (run folders: train's --out or compare's OUT/<algo>-s<seed>) or
LABEL=FILE.json:AGENT (bench/solve.py --json runs of that agent). Example:

    python bench/runs_table.py "PPO 11 bins=runs/hc-disc/ppo-s*" \\
        "RELAX-PPO 11 bins=runs/hc-disc/relax-ppo-s*" "SB3 PPO zoo=runs/hc-sb3.json:sb3-ppo" \\
        --budgets 250000,500000,1000000 --improve "RELAX-PPO 11 bins" "PPO 11 bins"
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import math
import statistics
from pathlib import Path

from relax_rl.report import improvement_probability, iqm_interval


def _median_range(xs: list[float | None], digits: int = 0) -> str:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    if not xs:
        return "-"
    return f"{statistics.median(xs):,.{digits}f} ({min(xs):,.{digits}f} to {max(xs):,.{digits}f})"


def _iqm(xs: list[float | None], digits: int = 0) -> str:
    est = iqm_interval(xs)
    if est is None:
        return "-"
    ci = "no CI" if est["ci"] is None else ", ".join(f"{v:,.{digits}f}" for v in est["ci"])
    return f"{est['iqm']:,.{digits}f} [{ci}]"


def _progress(run_dir: Path) -> list[dict[str, str]]:
    path = run_dir / "progress.csv"
    if not path.exists():
        return []
    with open(path) as fh:
        return list(csv.DictReader(fh))


def _at_budget(rows: list[dict[str, str]], budget: int) -> float | None:
    """The last-100 mean return logged at the first row at or past ``budget`` env steps."""
    for row in rows:
        steps, value = row.get("time/total_timesteps"), row.get("rollout/ep_rew_mean")
        if steps and value and float(steps) >= budget:
            return float(value)
    return None


def _mean_column(rows: list[dict[str, str]], key: str) -> float | None:
    xs = [float(r[key]) for r in rows if r.get(key)]
    return statistics.fmean(xs) if xs else None


def load_group(spec: str, budgets: list[int]) -> tuple[str, list[dict]]:
    """``LABEL=GLOB`` or ``LABEL=FILE.json:AGENT`` as ``(label, runs)``, each run a dict of the
    table's numbers."""
    label, _, where = spec.partition("=")
    if not where:
        raise SystemExit(f"{spec!r}: expected LABEL=GLOB or LABEL=FILE.json:AGENT")
    file, colon, agent = where.rpartition(":")
    if colon and file.endswith(".json"):
        runs = [r for r in json.loads(Path(file).read_text()) if r["agent"] == agent]
        return label, [
            {
                "final": r["final_mean_return_100"],
                "at": {b: (r.get("returns_at") or {}).get(str(b)) for b in budgets},
                "eval": None,
                "steps_per_s": r["env_steps_per_s"],
                "wall_s": r["wall_s"],
                "reduction": None,
                "variance": None,
            }
            for r in runs
        ]
    runs = []
    for folder in sorted(glob.glob(where)):
        run_dir = Path(folder)
        summary_path = run_dir / "summary.json"
        if not summary_path.exists():
            continue
        summary = json.loads(summary_path.read_text())
        if summary.get("status") not in ("completed", "solved"):
            print(f"(left out: {run_dir}, status {summary.get('status')})")
            continue
        rows = _progress(run_dir)
        variance = run_dir / "variance.json"
        runs.append(
            {
                "final": summary.get("final_mean_return_100"),
                "at": {b: _at_budget(rows, b) for b in budgets},
                "eval": summary.get("eval_mean_return"),
                "steps_per_s": summary.get("env_steps_per_s"),
                "wall_s": summary.get("wall_s"),
                "reduction": _mean_column(rows, "grad/log10_var_reduction"),
                "variance": json.loads(variance.read_text()) if variance.exists() else None,
            }
        )
    return label, runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("groups", nargs="+", metavar="LABEL=WHERE")
    parser.add_argument("--budgets", default="", help="env steps, e.g. 250000,500000,1000000")
    parser.add_argument("--improve", nargs=2, action="append", default=[], metavar=("A", "B"))
    parser.add_argument("--variance", action="store_true", help="the runs' variance.json split")
    args = parser.parse_args()
    budgets = [int(float(b)) for b in args.budgets.split(",") if b]
    groups = dict(load_group(g, budgets) for g in args.groups)

    head = ["group", "runs", "last-100 return at the end: IQM [95% CI]", "median (min to max)"]
    head += [f"at {b:,} steps" for b in budgets]
    head += ["greedy eval", "env-steps/s", "seconds", "log10 var reduction (in training)"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for label, runs in groups.items():
        cells = [
            label,
            str(len(runs)),
            _iqm([r["final"] for r in runs]),
            _median_range([r["final"] for r in runs]),
            *(_median_range([r["at"][b] for r in runs]) for b in budgets),
            _median_range([r["eval"] for r in runs]),
            _median_range([r["steps_per_s"] for r in runs]),
            _median_range([r["wall_s"] for r in runs]),
            _median_range([r["reduction"] for r in runs], 2),
        ]
        print("| " + " | ".join(cells) + " |")
    for a, b in args.improve:
        poi = improvement_probability(
            [r["final"] for r in groups[a]], [r["final"] for r in groups[b]]
        )
        if poi is None:
            print(f"\nP({a} > {b}): -")
            continue
        ci = "no CI" if poi.get("ci") is None else ", ".join(f"{v:.2f}" for v in poi["ci"])
        print(f"\nP({a} > {b}) on the final last-100 return: {poi['p']:.2f} [{ci}]")
    if args.variance:
        _variance_table(groups)


def _variance_table(groups: dict[str, list[dict]]) -> None:
    """Per group, checkpoint and estimator: log10 of the total and of each term (median over
    runs, min-max), the terms' shares, and each run's log10 total against the estimator it is
    paired with on the same samples (> 0: more variance), with its 95% interval."""
    print(
        "\n| group | env steps | estimator | runs | log10 total | log10 state | log10 action "
        "| log10 trajectory | action share | log10 vs paired, per run [95% CI] |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, runs in groups.items():
        cells: dict[tuple[int, str], list[dict]] = {}
        for r in runs:
            for point in (r["variance"] or {}).get("points", []):
                for est in point["estimators"]:
                    cells.setdefault((point["env_steps"], est["estimator"]), []).append(est)
        for (steps, name), ests in sorted(cells.items()):

            def log(key: str, ests: list[dict] = ests) -> str:
                xs = [math.log10(e[key]) if e[key] > 0 else None for e in ests]
                return _median_range(xs, 2)

            shares = _median_range([e.get("share_action") for e in ests], 2)
            paired = "; ".join(
                f"{e['log10_vs_paired']:+.2f} [{e['ci_log10_vs_paired'][0]:+.2f}, "
                f"{e['ci_log10_vs_paired'][1]:+.2f}]"
                for e in ests
                if e.get("log10_vs_paired") is not None and e.get("ci_log10_vs_paired")
            )
            print(
                f"| {label} | {steps:,} | {name} | {len(ests)} | {log('total')} | {log('state')} "
                f"| {log('action')} | {log('trajectory')} | {shares} | {paired or '-'} |"
            )


if __name__ == "__main__":
    main()
