"""The ``relax-rl`` command line, over the library (``relax_rl.training``, ``relax_rl.runner``,
``relax_rl.experiments``).

Sub-commands:
  train  train an agent on a gymnasium env into a run folder
  eval   evaluate a trained run folder
  toy    the seed's toy problem (Sec. 4.1): minimise E[(b - t)^2], b ~ Bern(sigmoid(l)).
  vae    the seed's discrete VAE benchmark (Sec. 4.2).
  compare  a grid of algos x seeds on one env (local process pool or Ray Tune), then report
  plot   the comparison's report and figures from existing run folders
  params   an algorithm's keys, their defaults and meaning
  variance  a run's policy-gradient variance split into state, action and trajectory terms
  tune   an Optuna study of an algo's hyperparameters on one env

One module per command (train.py: train and eval; experiments.py: toy and vae; compare.py:
compare and plot; params.py; variance.py; tune.py), what they share in common.py; this module
keeps the root parser and the error handling.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from relax_rl.cli.common import EXIT_USAGE, Parser, interrupt_code, stopped
from relax_rl.cli.compare import add_compare
from relax_rl.cli.experiments import add_toy, add_vae
from relax_rl.cli.params import add_params
from relax_rl.cli.train import add_train
from relax_rl.cli.tune import add_tune
from relax_rl.cli.variance import add_variance
from relax_rl.errors import UsageError, sigterm_as_interrupt


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="relax-rl",
        description="RELAX and friends: low-variance gradient estimators for discrete choices.",
    )
    from relax_rl import __version__

    parser.add_argument("--version", action="version", version=f"relax-rl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    add_train(sub)
    add_toy(sub)
    add_vae(sub)
    add_compare(sub)
    add_params(sub)
    add_variance(sub)
    add_tune(sub)
    for command in sub.choices.values():
        command.add_argument(
            "--threads",
            type=int,
            default=1,
            help="torch threads (default 1: the fastest for this project's small networks)",
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a one-line argparse error
        return int(exc.code or 0)
    try:
        if args.threads < 1:
            raise UsageError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
        with sigterm_as_interrupt():
            return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"relax-rl {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as exc:
        hint = (
            "; finished runs are kept: run the same command again to resume"
            if args.command == "compare"
            else ""
        )
        print(f"relax-rl {args.command}: {stopped(exc)}{hint}", file=sys.stderr)
        return interrupt_code(exc)
    except BrokenPipeError:  # the reader went away (`relax-rl params | head`): not an error
        # (stdout to devnull: the interpreter's own flush at exit would fail on the pipe again)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


__all__ = ["build_parser", "main"]
