"""BENCHMARKS.md's VAE rows from ``relax-rl vae`` results.json files.

Per estimator, over its seeds (mean ± standard error): the final train ELBO and 100-sample
test bound, the train ELBO when it has made ``--f-evals`` decoder passes per example (the
papers' equal-evaluations comparison; "-" where no evaluation step falls there), the final
log10 variance of the encoder's gradient, the median ms per step, and the scalars the estimator
learned (Double-CV's alpha: min to max over seeds).

    python bench/vae_table.py runs/i29/p-linear1-5k/results.json [--f-evals 10000] [--label L]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

NAMES = {"reinforce-loo": "REINFORCE-LOO", "arm": "ARM", "disarm": "DisARM", "arms": "ARMS",
         "double-cv": "Double-CV", "rebar": "REBAR", "relax": "RELAX", "reinforce": "REINFORCE",
         "concrete": "Concrete"}  # fmt: skip


def mean_se(values: list[float], digits: int = 1) -> str:
    se = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):.{digits}f} ± {se:.2f}"


def rows(results: dict, f_evals: int, label: str | None = None) -> list[str]:
    out = []
    for est in results["config"]["estimators"]:
        runs = [r for r in results["runs"] if r["estimator"] == est]
        per_example = runs[0]["f_evals_per_example"]
        curve = results["curves"][est]
        step = f_evals // per_example
        at = "-"
        if step in curve["step"]:
            i = curve["step"].index(step)
            se = curve.get("train_elbo_se", [float("nan")] * len(curve["step"]))[i]
            at = f"{curve['train_elbo'][i]:.1f} ± {se:.2f}"
        name = NAMES.get(est, est)
        alphas = [r.get("estimator_scalars", {}).get("alpha") for r in runs]
        if all(a is not None for a in alphas):
            name += f" (alpha {min(alphas):.2f} to {max(alphas):.2f})"
        ms = statistics.median(r["ms_per_step"] for r in runs)
        out.append(
            f"| {label or results['config']['model']} | {name} | {per_example} | "
            f"{mean_se([r['final_train_elbo'] for r in runs])} | "
            f"{mean_se([r['test_iwae100'] for r in runs])} | {at} | "
            f"{mean_se([r['final_log10_var'] for r in runs], 2)} | {ms:.1f} |"
        )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, nargs="+")
    parser.add_argument("--f-evals", type=int, default=10_000)
    parser.add_argument("--label", default=None, help="the model column (default: the model)")
    args = parser.parse_args(argv)
    print("| model | estimator | f-evals | train ELBO | test IWAE-100 | at "
          f"{args.f_evals:,} f-evals | log10 var | ms/step |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for path in args.results:
        for row in rows(json.loads(path.read_text()), args.f_evals, args.label):
            print(row)


if __name__ == "__main__":
    main()
