"""``relax-rl tune``: an Optuna study over an algo's hyperparameters on one env, as rl-zoo3's
``-optimize`` runs one: the TPE sampler, the median pruner fed by periodic evaluations
(``eval_freq``), an on-disk storage that the same command resumes, and the best settings written
as a config entry the other commands take (``--config DIR/best.yaml``).

Each agent class declares what is tuned next to its parameters, as ``search_space`` (a mapping
of constructor arguments to :class:`LogUniform`, :class:`Uniform` or :class:`Choice`); a
subclass's entries add to and override its bases' (RELAX tunes A2C's and its control variate's).
Every trial is a real run folder (``DIR/trials/trial-<n>/``): its config, curves and summary.
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from stable_baselines3.common.callbacks import BaseCallback

from relax_rl.errors import UsageError

STUDY_FILE = "study.db"
BEST_FILE = "best.yaml"
TRIALS_FILE = "trials.csv"
TUNE_INSTALL = "pip install 'relax-rl[tune]'"
#: run keys that belong to the tuning budget, not to the settings found (left out of best.yaml)
BUDGET_KEYS = (
    "total_steps",
    "eval_freq",
    "eval_episodes",
    "eval_envs",
    "eval_deterministic",
    "checkpoint_freq",
    "log_interval",
    "tensorboard",
    "threshold",
    "stop_when_solved",
)


@dataclass(frozen=True)
class LogUniform:
    """A float drawn uniformly in log space between ``low`` and ``high``."""

    low: float
    high: float

    def suggest(self, trial: Any, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high, log=True)


@dataclass(frozen=True)
class Uniform:
    """A float drawn uniformly between ``low`` and ``high``."""

    low: float
    high: float

    def suggest(self, trial: Any, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high)


@dataclass(frozen=True)
class Choice:
    """One of ``options`` (numbers, strings, booleans or None)."""

    options: tuple[Any, ...]

    def suggest(self, trial: Any, name: str) -> Any:
        return trial.suggest_categorical(name, list(self.options))


Distribution = LogUniform | Uniform | Choice


def search_space(algo_cls: type) -> dict[str, Distribution]:
    """``algo_cls``'s search space: the ``search_space`` of its classes, bases first (a
    subclass's entry overrides its base's; None takes the key out)."""
    space: dict[str, Distribution | None] = {}
    for cls in reversed(algo_cls.__mro__):
        space.update(cls.__dict__.get("search_space", {}))
    return {name: dist for name, dist in space.items() if dist is not None}


def sample_settings(trial: Any, space: Mapping[str, Distribution], n_envs: int) -> dict[str, Any]:
    """One trial's settings from ``space``; a minibatch larger than a rollout is cut to the
    rollout (rl-zoo3's rule), so that no sampled combination is invalid."""
    settings = {name: dist.suggest(trial, name) for name, dist in space.items()}
    if "batch_size" in settings and "n_steps" in settings:
        settings["batch_size"] = min(settings["batch_size"], settings["n_steps"] * n_envs)
    return settings


class ReportToTrial(BaseCallback):
    """After each periodic evaluation (SB3's ``callback_after_eval``): its mean return to the
    Optuna trial, and the run stopped where the pruner says so.

    :param trial: the Optuna trial the run is.
    """

    def __init__(self, trial: Any) -> None:
        super().__init__()
        self.trial = trial
        self.pruned = False
        #: the last evaluation's mean return: the trial's value (rl-zoo3's objective)
        self.last: float | None = None

    def _on_step(self) -> bool:
        self.last = float(self.parent.last_mean_reward)
        self.trial.report(self.last, self.num_timesteps)
        self.pruned = self.trial.should_prune()
        return not self.pruned


def optuna_module() -> Any:
    """Optuna, or a one-line error naming the extra."""
    try:
        import optuna
    except ImportError:
        raise UsageError(f"relax-rl tune needs Optuna; install it with: {TUNE_INSTALL}") from None
    return optuna


def open_study(storage: str, name: str, seed: int, description: dict[str, Any]) -> Any:
    """Create or load the study ``name`` in ``storage`` (TPE, median pruner). A study made with
    other tuning settings is refused, naming the first that differs; trials a killed command
    left running are marked failed (one tune command per study at a time)."""
    optuna = optuna_module()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(
            study_name=name,
            storage=storage,
            load_if_exists=True,
            direction="maximize",
            sampler=optuna.samplers.TPESampler(seed=seed),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0),
        )
    except ImportError as exc:  # (a storage URL whose driver is not installed)
        raise UsageError(f"--storage {storage}: {exc}") from None
    except Exception as exc:  # SQLAlchemy's errors: not a database, locked, unwritable
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"--storage {storage} is not a usable Optuna storage ({first})") from None
    stored = study.user_attrs.get("tuning")
    if stored is None:
        study.set_user_attr("tuning", description)
    else:
        for key in sorted({*stored, *description}):
            if stored.get(key) != description.get(key):
                raise UsageError(
                    f"the study {name!r} in {storage} was made with {key}={stored.get(key)!r}, "
                    f"not {description.get(key)!r}; give another --out (or --storage) for a new "
                    "study"
                )
    for trial in study.get_trials(deepcopy=False):
        if trial.state == optuna.trial.TrialState.RUNNING:
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    return study


def finished_trials(study: Any) -> int:
    """Trials that count towards ``--trials``: completed or pruned."""
    from optuna.trial import TrialState

    return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)


def best_entry(study: Any, env_id: str, fixed: Mapping[str, Any]) -> dict[str, Any] | None:
    """The best trial's settings as a config file's entry for ``env_id`` (the settings the
    tune command fixed, then the tuned ones), or None before any trial completed."""
    try:
        best = study.best_trial
    except ValueError:
        return None
    fixed = {k: v for k, v in fixed.items() if k not in BUDGET_KEYS}
    return {env_id: {**fixed, **best.params}}


def write_outputs(study: Any, out: Path, env_id: str, fixed: Mapping[str, Any]) -> list[str]:
    """``best.yaml``, ``trials.csv``, and Optuna's history and importance figures; returns the
    lines of the study's summary."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    names = sorted({p for t in trials for p in t.params})
    with open(out / TRIALS_FILE, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["number", "state", "value", "env_steps", "run", *names])
        for t in trials:
            writer.writerow(
                [t.number, t.state.name, t.value, t.user_attrs.get("env_steps"),
                 t.user_attrs.get("run"), *(t.params.get(n) for n in names)]
            )  # fmt: skip
    counts = {s: sum(t.state == s for t in trials) for s in TrialState}
    infeasible = sum(t.state == TrialState.FAIL and "infeasible" in t.user_attrs for t in trials)
    lines = [
        f"study {study.study_name}: {counts[TrialState.COMPLETE]} complete, "
        f"{counts[TrialState.PRUNED]} pruned, {counts[TrialState.FAIL]} failed"
        + (f" ({infeasible} of them refused settings, before any step)" if infeasible else "")
    ]
    entry = best_entry(study, env_id, fixed)
    if entry is None:
        lines.append("no trial completed: no best settings yet")
        return lines
    best = study.best_trial
    header = (
        f"# relax-rl tune: best of {len(trials)} trials of study {study.study_name!r}: trial "
        f"{best.number}, last evaluation's mean return {best.value:.4g}\n"
        f"# use it with: relax-rl train --config {out / BEST_FILE} ...\n"
    )
    (out / BEST_FILE).write_text(header + yaml.safe_dump(entry, sort_keys=False))
    lines.append(f"best: trial {best.number}, mean return {best.value:.4g}")
    lines += [f"  {k}: {v}" for k, v in best.params.items()]
    lines.append(f"best settings: {out / BEST_FILE} (relax-rl train --config {out / BEST_FILE})")
    lines += _figures(study, out)
    return lines


def _figures(study: Any, out: Path) -> list[str]:
    """Optuna's optimisation history, and the parameter importances where Optuna can estimate
    them (it warns, and gives every parameter the same share, from too few trials)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as ovm
    from optuna.exceptions import ExperimentalWarning

    written = []
    for name, draw in (("history.png", ovm.plot_optimization_history),
                       ("importance.png", ovm.plot_param_importances)):  # fmt: skip
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                ax = draw(study)
            except (ValueError, RuntimeError, ZeroDivisionError) as exc:
                written.append(f"{name}: not drawn ({exc})")
                continue
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        # Optuna's own doubts only (UserWarning): not its ExperimentalWarning, nor a
        # ResourceWarning the garbage collector happens to raise meanwhile
        doubts = [
            str(w.message)
            for w in caught
            if issubclass(w.category, UserWarning)
            and not issubclass(w.category, ExperimentalWarning)
        ]
        if doubts:  # (a figure of equal shares would mislead)
            plt.close(fig)
            written.append(f"{name}: not drawn ({doubts[0]})")
            continue
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        written.append(f"{name}: {out / name}")
    return written
