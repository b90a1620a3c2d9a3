"""Hyperparameter schedules written in configs as rl-zoo3 writes them: ``lin_7e-4`` is a value
that starts at 7e-4 and falls linearly to 0 over the run (SB3's ``progress_remaining`` goes
from 1 to 0). Any agent argument SB3 types ``float | Schedule`` takes one: ``learning_rate``,
and PPO's ``clip_range``."""

from __future__ import annotations

import math
import re

from relax_rl.errors import UsageError

_LINEAR = re.compile(r"lin_(.+)")


class LinearSchedule:
    """``initial * progress_remaining``: SB3 calls it with 1 at the start and 0 at the end (a
    continued run's progress is of its new total: ``--resume --total-steps N`` restarts the
    decay from where the new total puts it).

    :param initial: the value at the start (finite, > 0).
    """

    def __init__(self, initial: float) -> None:
        self.initial = float(initial)

    def __call__(self, progress_remaining: float) -> float:
        # The last rollout may pass the step budget (progress < 0): 0 then, never negative.
        return self.initial * max(progress_remaining, 0.0)

    def __str__(self) -> str:  # the form config.yaml records, read back by parse_schedule
        return f"lin_{self.initial!r}"

    __repr__ = __str__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LinearSchedule) and other.initial == self.initial

    def __hash__(self) -> int:
        return hash(("lin", self.initial))


def is_schedule_text(value: object) -> bool:
    """Whether a config value is written as a schedule (``lin_...``)."""
    return isinstance(value, str) and value.startswith("lin_")


def parse_schedule(key: str, text: str) -> LinearSchedule:
    """``lin_<initial>`` as a :class:`LinearSchedule`, or a one-line error naming ``key``."""
    m = _LINEAR.fullmatch(text)
    try:
        initial = float(m.group(1)) if m else math.nan
    except ValueError:
        initial = math.nan
    if not (math.isfinite(initial) and initial > 0):
        raise UsageError(
            f"{key}={text!r} is not a schedule: write lin_<start value > 0> (e.g. lin_7e-4), "
            "a value falling linearly to 0 over the run"
        )
    return LinearSchedule(initial)
