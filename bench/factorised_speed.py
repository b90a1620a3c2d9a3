"""Env-steps/s of agent variants on MultiBinaryMatch, side by side in one process.

Each variant (``ALGO[+KEY=VALUE...]``, e.g. ``relax+cv_replay=0+cv_net_arch=[32,32]``, over the
algo's shipped config for the env) is built once and warmed up; then the variants train in
turn, ``--chunk-steps`` env steps each, ``--chunks`` times, so that a change of load on the
machine hits every variant alike. Prints env-steps/s and the ratio to the first variant within
the same round, as median (min-max) over rounds.

    python bench/factorised_speed.py --d 32 a2c relax relax+cv_replay=0
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import torch as th
import yaml


def _fmt(xs: list[float], digits: int = 0) -> str:
    return f"{statistics.median(xs):,.{digits}f} ({min(xs):,.{digits}f}-{max(xs):,.{digits}f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variants", nargs="+", help="ALGO[+KEY=VALUE...]; the first is the base")
    parser.add_argument("--d", type=int, default=32)
    parser.add_argument("--chunks", type=int, default=5)
    parser.add_argument("--chunk-steps", type=int, default=1600)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    th.set_num_threads(1)
    from relax_rl.training import RunSpec, build

    models = {}
    with TemporaryDirectory() as scratch:
        for i, variant in enumerate(args.variants):
            algo, *sets = variant.split("+")
            extra = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in sets)}
            settings = {"env_kwargs": {"d": args.d}, **extra}
            out = Path(scratch) / str(i)
            spec = RunSpec.create(algo, "relax_rl/MultiBinaryMatch-v0", args.seed, out, settings)
            model, _ = build(spec)
            model.learn(args.chunk_steps)  # warm-up (first allocations, optimizer state)
            models[variant] = (model, [])
        for _ in range(args.chunks):
            for model, rates in models.values():
                start = time.perf_counter()
                model.learn(args.chunk_steps, reset_num_timesteps=False)
                rates.append(args.chunk_steps / (time.perf_counter() - start))
    base = next(iter(models.values()))[1]
    print(
        f"MultiBinaryMatch d={args.d}, {args.chunks} rounds of {args.chunk_steps:,} env steps, "
        "1 torch thread, median (min-max)"
    )
    print(f"{'variant':<48}{'env-steps/s':>26}{'x ' + args.variants[0]:>22}")
    for variant, (_, rates) in models.items():
        ratios = [r / b for r, b in zip(rates, base, strict=True)]
        print(f"{variant:<48}{_fmt(rates):>26}{_fmt(ratios, 2):>22}")


if __name__ == "__main__":
    main()
