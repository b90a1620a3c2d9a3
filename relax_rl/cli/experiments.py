"""``relax-rl toy`` and ``relax-rl vae``: the paper's toy problem and discrete VAE."""

from __future__ import annotations

import argparse
from pathlib import Path

from relax_rl.cli.common import (
    add_tracking_args,
    check_out_dir,
    seed_arg,
    tracking_config,
)
from relax_rl.errors import UsageError


def add_toy(sub: argparse._SubParsersAction) -> None:
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
    check_out_dir(args.out, OUTPUT_FILES)
    results = run_toy(cfg, progress=not args.no_progress)
    save_results(results, args.out)
    print(format_table(results))
    print(f"wrote {args.out}/results.json, figure1.png, figure2.png")
    return 0


def add_vae(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument("--seed", type=seed_arg, default=0, help="seed of the run (default 0)")
    p.add_argument(
        "--out", type=Path, default=Path("runs/vae"), help="output folder (default runs/vae)"
    )
    add_tracking_args(p)
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
    check_out_dir(args.out, (*OUTPUT_FILES, "wandb"))
    tracking = tracking_config(args)
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
