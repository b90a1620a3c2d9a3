"""User-facing errors (the CLI prints them as one line and exits with code 2) and the
termination signal as an interrupt."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class UsageError(ValueError):
    """Bad input from the user (a value, a path, a name); the message names it and what is valid."""


class TrainingDivergedError(RuntimeError):
    """A loss or gradient became NaN/inf; the model (policy, control variate, their optimizers
    and statistics) was left as it was before the update."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``timeout``, SLURM, ``docker stop``), handled like Ctrl-C: runs save a
    checkpoint, their model and a summary saying ``interrupted``."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated(f"terminated by signal {signum}")


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` (a ``KeyboardInterrupt``) in the
    main thread, unless the program already handles SIGTERM itself; restored afterwards."""
    install = (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    )
    if install:
        signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        if install:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Within the block, Ctrl-C and SIGTERM wait until it ends: a file being written (a
    checkpoint, a model) is finished, not left half-written (an interrupt inside ``zipfile``
    would also turn into its ``ValueError``). The signal's own handler runs at the end."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    handlers = {
        sig: signal.getsignal(sig)
        for sig in (signal.SIGINT, signal.SIGTERM)
        if signal.getsignal(sig) not in (signal.SIG_IGN, None)
    }
    for sig in handlers:
        signal.signal(sig, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    if received:
        handler = handlers[received[0]]
        if callable(handler):
            handler(received[0], None)
        else:  # SIG_DFL: die of it as the signal would have done
            signal.raise_signal(received[0])
