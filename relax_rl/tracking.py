"""Experiment tracking with wandb, offline unless asked otherwise.

SB3 logger records go to wandb directly through a logger output format (no tensorboard sync),
with ``global_step`` (env steps) as every metric's x-axis so that runs of different estimators
line up in one dashboard.
"""

from __future__ import annotations

import netrc
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stable_baselines3.common.logger import KVWriter

WANDB_MODES = ("offline", "online", "disabled")
#: characters wandb refuses in a project name
PROJECT_FORBIDDEN = "/\\#?%:"


@dataclass
class TrackingConfig:
    """``relax-rl ... --track`` settings (the ``--wandb-*`` flags are generated from them)."""

    mode: str | None = field(
        default=None,
        metadata={
            "help": "offline (the default, unless WANDB_MODE says otherwise): no network at "
            "all, `wandb sync` later; online needs a login. Given here, it wins over WANDB_MODE",
            "choices": WANDB_MODES,
        },
    )
    project: str = field(default="relax-rl", metadata={"help": "wandb project"})
    group: str | None = field(
        default=None, metadata={"help": "wandb group of the run(s) (compare: its folder's name)"}
    )
    tags: list[str] = field(default_factory=list, metadata={"help": "wandb tags of the run(s)"})

    def resolved_mode(self) -> str:
        """The mode a run gets: ``mode`` when given, else ``WANDB_MODE``, else offline."""
        return self.mode or os.environ.get("WANDB_MODE") or "offline"

    def validate(self) -> None:
        mode = self.resolved_mode()
        if mode not in WANDB_MODES:
            where = "WANDB_MODE" if self.mode is None else "wandb mode"
            raise ValueError(f"unknown {where} {mode!r}; valid: {', '.join(WANDB_MODES)}")
        # what wandb refuses at init, after the run folder exists: checked before any work
        bad = sorted(set(self.project) & set(PROJECT_FORBIDDEN))
        if not self.project or bad or len(self.project) > 128:
            why = f"contains {' '.join(bad)}" if bad else "must be 1 to 128 characters"
            raise ValueError(f"wandb project {self.project!r} {why} (wandb refuses it)")
        for tag in self.tags:
            if not 1 <= len(tag) <= 64:
                raise ValueError(f"wandb tag {tag!r} must be 1 to 64 characters (wandb's limit)")
        if mode == "online" and not _wandb_login_known():
            raise ValueError(
                "wandb mode online needs a login: run `wandb login` or set WANDB_API_KEY "
                "(or track with --wandb-mode offline and `wandb sync` later)"
            )


def _wandb_login_known() -> bool:
    """An API key in the environment or in ~/.netrc (where `wandb login` writes it)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("//")[-1]
        return netrc.netrc().authenticators(host.split("/")[0]) is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbOutputFormat(KVWriter):
    """An SB3 logger output that logs every numeric record to a wandb run at ``global_step``."""

    def __init__(self, run: Any) -> None:
        self.run = run

    def write(
        self, key_values: dict[str, Any], key_excluded: dict[str, tuple[str, ...]], step: int = 0
    ) -> None:
        data = {
            key: value
            for key, value in key_values.items()
            if isinstance(value, numbers.Number) and "wandb" not in (key_excluded.get(key) or ())
        }
        data["global_step"] = step
        self.run.log(data)

    def close(self) -> None:
        """The run is finished by :func:`finish`, not by the logger."""


# Runs the caller started with ``wandb.init`` and that :func:`finish` must leave open.
_ADOPTED: set[str] = set()


def start_run(tracking: TrackingConfig, name: str, config: dict[str, Any], out: Path) -> Any:
    """A wandb run in ``out/wandb``, in ``tracking``'s mode (:meth:`TrackingConfig.resolved_mode`:
    a mode given wins over ``WANDB_MODE``, so that offline means no network whatever the
    environment says).

    If the caller already started a run (``wandb.init``, e.g. to build SB3's
    ``WandbCallback``, which needs one), log into that run and leave it open.
    """
    tracking.validate()
    os.environ.setdefault("WANDB_SILENT", "true")  # no banners on the terminal
    import wandb

    if wandb.run is not None:
        run = wandb.run
        run.config.update(config, allow_val_change=True)
        _ADOPTED.add(run.id)
        run.define_metric("global_step")
        run.define_metric("*", step_metric="global_step")
        return run
    mode = tracking.resolved_mode()
    # wandb reads WANDB_MODE over its own arguments in places: it is set to the run's mode
    # for wandb's set-up and init (and put back after)
    before = os.environ.get("WANDB_MODE")
    os.environ["WANDB_MODE"] = mode
    try:
        if mode != "online":
            # wandb's process-wide settings, read before init's own: its telemetry exporter
            # takes its mode from them and would otherwise probe wandb's server (a DNS query).
            wandb.setup(settings=wandb.Settings(mode=mode))
        run = wandb.init(
            project=tracking.project,
            group=tracking.group,
            tags=tracking.tags or None,
            name=name,
            config=config,
            dir=str(out),
            mode=mode,
            reinit="finish_previous",
            settings=wandb.Settings(silent=True, console="off"),
        )
    finally:
        if before is None:
            os.environ.pop("WANDB_MODE", None)
        else:
            os.environ["WANDB_MODE"] = before
    run.define_metric("global_step")
    run.define_metric("*", step_metric="global_step")
    return run


def finish(run: Any, summary: dict[str, Any]) -> None:
    """Copy the run's summary into wandb's and close it (unless the caller started it)."""
    for key, value in summary.items():
        if value is not None:
            run.summary[key] = value
    if run.id in _ADOPTED:
        _ADOPTED.discard(run.id)
    else:
        run.finish()
