"""What every command shares: the parser class, argument types and checks, tracking flags."""

from __future__ import annotations

import argparse
import signal
import tempfile
from collections.abc import Sequence
from pathlib import Path

from relax_rl.cli.flags import add_dataclass_flags, bounded, dataclass_from_args
from relax_rl.errors import Terminated, UsageError

EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (no usage dump) and exit with code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def check_writable(out: Path) -> None:
    """``--out`` must be a folder this process can write, or one it can create (its nearest
    existing ancestor a writable folder): found before any work starts, not after it. Tried
    for real (a probe folder made and removed): ``os.access`` says yes to root everywhere,
    even on read-only file systems and in ``/proc``."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder")
    base = out if out.exists() else next(p for p in out.absolute().parents if p.exists())
    if not base.is_dir():
        raise UsageError(f"--out {out} cannot be created: {base} is not a folder")
    try:
        probe = Path(tempfile.mkdtemp(prefix=".relax-rl-probe-", dir=base))
    except OSError as exc:
        raise UsageError(f"--out {out} is not writable ({base}: {exc.strerror or exc})") from None
    probe.rmdir()


#: argparse type of a seed: numpy and gymnasium refuse negative seeds.
seed_arg = bounded(int, 0)


def check_out_dir(out: Path, ours: Sequence[str]) -> None:
    """Refuse an existing folder that holds anything other than this command's own outputs."""
    check_writable(out)
    if out.is_dir():
        other = sorted(p.name for p in out.iterdir() if p.name not in ours)
        if other:
            raise UsageError(
                f"--out {out} already holds other content ({', '.join(other[:3])}"
                f"{', ...' if len(other) > 3 else ''}); give an empty or new folder"
            )


def add_tracking_args(p: argparse.ArgumentParser) -> None:
    from relax_rl.tracking import TrackingConfig

    p.add_argument("--track", action="store_true", help="log to wandb (offline by default)")
    add_dataclass_flags(p, TrackingConfig, prefix="wandb-")


def tracking_config(args: argparse.Namespace):
    from relax_rl.tracking import TrackingConfig

    if not args.track:
        return None
    tracking = dataclass_from_args(TrackingConfig, args, prefix="wandb-")
    try:
        tracking.validate()
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return tracking


def algo_class(name: str) -> type:
    from relax_rl.agents import ALGOS

    if name not in ALGOS:
        raise UsageError(f"unknown algo {name!r}; valid: {', '.join(ALGOS)}")
    return ALGOS[name]


def stopped(exc: KeyboardInterrupt) -> str:
    return "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"


def interrupt_code(exc: KeyboardInterrupt) -> int:
    """The shell's exit code for a process stopped by the signal: 128 + its number."""
    return 128 + (signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)
