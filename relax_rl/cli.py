"""The ``relax-rl`` command line: the one place that wires the library together.

Sub-commands:
  toy    the seed's toy problem (Sec. 4.1): minimise E[(b - t)^2], b ~ Bern(sigmoid(l)).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from relax_rl.errors import UsageError

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (no usage dump) and exit with code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _check_out_dir(out: Path, ours: Sequence[str]) -> None:
    """Refuse an existing folder that holds anything other than this command's own outputs."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder")
    if out.is_dir():
        other = sorted(p.name for p in out.iterdir() if p.name not in ours)
        if other:
            raise UsageError(
                f"--out {out} already holds other content ({', '.join(other[:3])}"
                f"{', ...' if len(other) > 3 else ''}); give an empty or new folder"
            )


def _add_toy(sub: argparse._SubParsersAction) -> None:
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
    _check_out_dir(args.out, OUTPUT_FILES)
    results = run_toy(cfg, progress=not args.no_progress)
    save_results(results, args.out)
    print(format_table(results))
    print(f"wrote {args.out}/results.json, figure1.png, figure2.png")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="relax-rl",
        description="RELAX and friends: low-variance gradient estimators for discrete choices.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    _add_toy(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a one-line argparse error
        return int(exc.code or 0)
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"relax-rl {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"relax-rl {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
