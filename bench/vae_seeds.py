"""The discrete VAE table over seeds: every (model, estimator, seed) in its own process.

Each run appends its evaluations to ``OUT/<model>-<estimator>-s<seed>.jsonl`` as they happen
(so a run cut short still counts up to its last evaluation) and its final results to
``OUT/<model>-<estimator>-s<seed>.json``. ``--report`` (or the end of a run) prints, per model
and estimator, the best train and valid ELBO (median and min-max over seeds, with each seed's
value), and for each model the seeds where RELAX's best valid ELBO is above REBAR's.

    python bench/vae_seeds.py --models nonlinear --estimators rebar relax --seeds 0-2 --jobs 6
    python bench/vae_seeds.py --report --out runs/vae_seeds
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path


def run_one(model: str, estimator: str, seed: int, steps: int, eval_every: int, out: Path) -> str:
    import torch

    torch.set_num_threads(1)
    from relax_rl.experiments.vae import VAEConfig, run_vae

    name = f"{model}-{estimator}-s{seed}"
    log = out / f"{name}.jsonl"
    log.write_text("")

    def on_eval(_estimator: str, step: int, point: dict) -> None:
        with open(log, "a") as fh:
            fh.write(json.dumps({"step": step, **point}) + "\n")

    cfg = VAEConfig(
        model=model, estimators=(estimator,), steps=steps, seed=seed, eval_every=eval_every
    )
    results = run_vae(cfg, progress=False, on_eval=on_eval)
    (out / f"{name}.json").write_text(json.dumps(results["runs"][0]))
    return name


def report(out: Path) -> None:
    best: dict[tuple[str, str], dict[int, tuple[float, float, int]]] = {}
    for path in sorted(out.glob("*.jsonl")):
        model, estimator, seed = path.stem.rsplit("-", 2)
        points = [json.loads(line) for line in path.read_text().splitlines() if line]
        if points:
            best.setdefault((model, estimator), {})[int(seed[1:])] = (
                max(p["train_elbo"] for p in points),
                max(p["valid_elbo"] for p in points),
                points[-1]["step"],
            )
    for model in sorted({m for m, _ in best}):
        print(f"\n{model}: best ELBO over evaluations, median (min-max) over seeds [per seed]")
        for (m, est), seeds in sorted(best.items()):
            if m != model:
                continue
            for i, what in ((0, "train"), (1, "valid")):
                vals = [seeds[s][i] for s in sorted(seeds)]
                each = ", ".join(f"s{s} {seeds[s][i]:.2f}" for s in sorted(seeds))
                print(
                    f"  {est:<10}{what:<6}{statistics.median(vals):9.2f} "
                    f"({min(vals):.2f} to {max(vals):.2f}) [{each}]"
                )
            print(f"  {'':<16}steps reached: {sorted({v[2] for v in seeds.values()})}")
        rebar, relax = best.get((model, "rebar"), {}), best.get((model, "relax"), {})
        common = sorted(set(rebar) & set(relax))
        if common:
            wins = [s for s in common if relax[s][1] > rebar[s][1]]
            print(f"  RELAX best valid ELBO above REBAR's in {len(wins)} of {len(common)} seeds")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["linear1", "linear2", "nonlinear"])
    p.add_argument("--estimators", nargs="+", default=["reinforce", "concrete", "rebar", "relax"])
    p.add_argument("--seeds", default="0-2", help="e.g. 0-2 or 0,3")
    p.add_argument("--steps", type=int, default=50_000)
    p.add_argument("--eval-every", type=int, default=1_000)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("runs/vae_seeds"))
    p.add_argument("--report", action="store_true", help="only print the table of OUT")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.report:
        from relax_rl.runner import parse_seeds

        cells = list(itertools.product(args.models, args.estimators, parse_seeds(args.seeds)))
        with ProcessPoolExecutor(args.jobs) as pool:
            futures = [
                pool.submit(run_one, m, e, s, args.steps, args.eval_every, args.out)
                for m, e, s in cells
            ]
            for f in futures:
                print("done", f.result(), flush=True)
    report(args.out)


if __name__ == "__main__":
    main()
