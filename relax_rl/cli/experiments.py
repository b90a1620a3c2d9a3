"""``relax-rl toy`` and ``relax-rl vae``: the paper's toy problem and discrete VAE."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from relax_rl.cli.common import (
    add_tracking_args,
    check_out_dir,
    tracking_config,
)
from relax_rl.cli.flags import add_dataclass_flags, dataclass_from_args, given_overrides
from relax_rl.errors import UsageError


def add_toy(sub: argparse._SubParsersAction) -> None:
    from relax_rl.experiments.toy import ToyConfig

    p = sub.add_parser(
        "toy",
        help="the seed's toy problem: RELAX vs REBAR vs REINFORCE at t = 0.499",
        description="Minimise E_{b~Bern(theta)}[(b - t)^2], theta = sigmoid(l), l0 = 0, one "
        "sample a step, Adam for l and for the estimator's parameters. Writes results.json, "
        "figure1.png (loss, theta) and figure2.png (variance, learned relaxation).",
    )
    add_dataclass_flags(p, ToyConfig)
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

    cfg = dataclass_from_args(ToyConfig, args)
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
    from relax_rl.experiments.vae import VAEConfig

    p = sub.add_parser(
        "vae",
        help="the seed's discrete VAE benchmark: REINFORCE, Concrete, REBAR, RELAX",
        description="Train a VAE with 200 Bernoulli latents per stochastic layer on binarised "
        "digits with each estimator; writes results.json, elbo.png and variance.png.",
    )
    add_dataclass_flags(p, VAEConfig, overrides=True)
    p.add_argument(
        "--out", type=Path, default=Path("runs/vae"), help="output folder (default runs/vae)"
    )
    add_tracking_args(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_vae)


def vae_config(args: argparse.Namespace) -> Any:
    """The run's :class:`~relax_rl.experiments.vae.VAEConfig`: its ``--protocol``'s settings,
    the flags given over them."""
    from relax_rl.experiments.vae import VAEConfig

    overrides = given_overrides(args, VAEConfig, exclude=("protocol",))
    if "estimators" in overrides:
        overrides["estimators"] = tuple(overrides["estimators"])
    return VAEConfig.for_protocol(args.protocol or VAEConfig.protocol, **overrides)


def _run_vae(args: argparse.Namespace) -> int:
    from relax_rl.experiments.vae import (
        OUTPUT_FILES,
        format_table,
        load_dataset,
        run_vae,
        save_results,
    )

    try:
        cfg = vae_config(args)
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
