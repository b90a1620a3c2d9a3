"""Callbacks (SB3 protocol): episode statistics, solve detection, progress bar, summaries."""

from __future__ import annotations

import csv
import json
import time
import warnings
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import (
    BaseCallback,
    CheckpointCallback,
    EvalCallback,
    ProgressBarCallback,
)
from stable_baselines3.common.utils import safe_mean

from relax_rl.errors import interrupts_deferred


class EpisodeTracker(BaseCallback):
    """Counts finished episodes and records when the mean return of the last ``window`` episodes
    first reaches ``threshold`` (env steps and episodes at that moment).

    :param threshold: the solve threshold (``None``: never solved).
    :param window: episodes in the moving mean (100: gymnasium's ``reward_threshold`` criterion).
    :param stop_when_solved: end training at that moment.
    """

    def __init__(
        self, threshold: float | None, window: int = 100, stop_when_solved: bool = False
    ) -> None:
        super().__init__()
        self.threshold = threshold
        self.window = window
        self.stop_when_solved = stop_when_solved
        self.episodes = 0
        self.recent: deque[float] = deque(maxlen=window)
        self.solved_at_env_steps: int | None = None
        self.solved_at_episodes: int | None = None

    @property
    def mean_return(self) -> float | None:
        return float(np.mean(self.recent)) if self.recent else None

    def state_dict(self) -> dict:
        """What a continued run needs to go on counting (saved beside each checkpoint)."""
        return {
            "episodes": self.episodes,
            "recent_returns": list(self.recent),
            "solved_at_env_steps": self.solved_at_env_steps,
            "solved_at_episodes": self.solved_at_episodes,
        }

    def load_state_dict(self, state: dict) -> None:
        self.episodes = int(state["episodes"])
        self.recent = deque(map(float, state["recent_returns"]), maxlen=self.window)
        self.solved_at_env_steps = state["solved_at_env_steps"]
        self.solved_at_episodes = state["solved_at_episodes"]

    def _on_step(self) -> bool:
        for info in self.locals["infos"]:
            episode = info.get("episode")
            if episode is None:
                continue
            self.episodes += 1
            self.recent.append(float(episode["r"]))
            if (
                self.solved_at_env_steps is None
                and self.threshold is not None
                and len(self.recent) == self.window
                and np.mean(self.recent) >= self.threshold
            ):
                self.solved_at_env_steps = self.num_timesteps
                self.solved_at_episodes = self.episodes
                if self.stop_when_solved:  # (a run continued after it was solved goes on)
                    return False
        return True


MONITOR_FILE = "monitor.csv"
MONITOR_COLUMNS = ("r", "l", "t", "env_steps", "env")


class EpisodeLog(BaseCallback):
    """Every finished episode as one row of ``monitor.csv`` in SB3's Monitor format (a JSON
    header line, then ``r, l, t``: return, length, seconds since the start; SB3's
    ``load_results`` reads it), with two columns more: ``env_steps``, the run's env steps when
    the episode ended, and ``env``, the index of its env. The curves are drawn from it, one
    point per episode, not from the logger's rows (one per ``log_interval`` updates).

    :param path: the file (``<run>/monitor.csv``).
    :param env_id: recorded in the header.
    :param resume_steps: a continued run's env steps at its checkpoint: the rows after it are
        dropped (the continuation plays those steps again); 0 starts a new file.
    """

    def __init__(self, path: Path, env_id: str, resume_steps: int = 0) -> None:
        super().__init__()
        self.path, self.env_id, self.resume_steps = Path(path), env_id, resume_steps
        self._file: Any = None
        self._start = time.time()

    def _on_training_start(self) -> None:
        kept = read_monitor_rows(self.path, self.resume_steps) if self.resume_steps else []
        self._start = time.time() - (kept[-1]["t"] if kept else 0.0)
        self._file = open(self.path, "w", newline="")  # noqa: SIM115 (open for the whole run)
        header = {"t_start": self._start, "env_id": self.env_id}
        self._file.write("#" + json.dumps(header) + "\n")
        self._writer = csv.writer(self._file)
        self._writer.writerow(MONITOR_COLUMNS)
        self._writer.writerows([[row[c] for c in MONITOR_COLUMNS] for row in kept])

    def _on_step(self) -> bool:
        for index, info in enumerate(self.locals["infos"]):
            episode = info.get("episode")
            if episode is not None:
                elapsed = round(time.time() - self._start, 6)
                row = (float(episode["r"]), int(episode["l"]), elapsed, self.num_timesteps, index)
                self._writer.writerow(row)
        return True

    def _on_rollout_end(self) -> None:
        self._file.flush()  # what a kill -9 can lose: one rollout's episodes at most

    def _on_training_end(self) -> None:
        self.close()

    def close(self) -> None:
        if self._file is not None and not self._file.closed:
            self._file.close()


def read_monitor_rows(path: Path, up_to_steps: int | None = None) -> list[dict[str, float]]:
    """The rows of an :class:`EpisodeLog` file as dicts of numbers, those after
    ``up_to_steps`` env steps left out; a torn last line (a killed run's) is skipped.

    :param path: the ``monitor.csv``.
    :param up_to_steps: keep the episodes that ended at or before this many env steps.
    """
    rows = []
    try:
        with open(path, newline="") as fh:
            lines = (line for line in fh if not line.startswith("#"))
            for row in csv.DictReader(lines):
                try:
                    parsed = {c: float(row[c]) for c in MONITOR_COLUMNS}
                except (KeyError, TypeError, ValueError):
                    continue
                if up_to_steps is None or parsed["env_steps"] <= up_to_steps:
                    rows.append(parsed)
    except OSError:
        return []
    return rows


class RunCheckpoint(CheckpointCallback):
    """SB3's checkpoints, each with the episode counts and returns of ``tracker`` beside it
    (``model_episodes_<steps>_steps.json``), and a normalised env's statistics
    (``model_vecnormalize_<steps>_steps.pkl``), so that ``relax-rl train --resume`` goes on
    counting from there."""

    def __init__(self, tracker: EpisodeTracker, save_freq: int, save_path: str) -> None:
        super().__init__(
            save_freq=save_freq, save_path=save_path, name_prefix="model", save_vecnormalize=True
        )
        self.tracker = tracker

    def _on_step(self) -> bool:
        if self.n_calls % self.save_freq != 0:
            return True
        with interrupts_deferred():  # an interrupt waits for the checkpoint to be whole
            path = Path(self._checkpoint_path("episodes_", extension="json"))
            path.write_text(json.dumps(self.tracker.state_dict()))
            return super()._on_step()


class ReturnProgressBar(ProgressBarCallback):
    """SB3's progress bar with the running mean return of the last 100 episodes, redrawn a few
    times a second rather than at every step (rich's rendering costs more than a step), on
    stderr."""

    def __init__(self, min_interval_s: float = 0.25) -> None:
        super().__init__()
        self.min_interval_s = min_interval_s
        self._pending = 0
        self._last = 0.0

    def _on_training_start(self) -> None:
        from rich.console import Console
        from tqdm import TqdmExperimentalWarning
        from tqdm.rich import tqdm

        # On stderr: stdout carries only the result (a summary a pipe can parse).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TqdmExperimentalWarning)  # as SB3 does
            self.pbar = tqdm(
                total=self.locals["total_timesteps"] - self.model.num_timesteps,
                options={"console": Console(stderr=True)},
            )

    def _on_step(self) -> bool:
        self._pending += self.training_env.num_envs
        now = time.monotonic()
        if now - self._last >= self.min_interval_s:
            self.pbar.update(self._pending)
            self._pending, self._last = 0, now
        return True

    def _on_training_end(self) -> None:
        self.pbar.update(self._pending)
        self._pending = 0
        super()._on_training_end()

    def _on_rollout_end(self) -> None:
        buffer = self.model.ep_info_buffer
        if buffer:
            self.pbar.set_postfix_str(f"mean return {safe_mean([e['r'] for e in buffer]):.1f}")


class PeriodicCallback(BaseCallback):
    """Calls ``fn`` every ``every`` env steps (at the end of a rollout)."""

    def __init__(self, every: int, fn: Callable[[], None]) -> None:
        super().__init__()
        self.every, self.fn, self._next = every, fn, every

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        if self.num_timesteps >= self._next:
            self._next = self.num_timesteps + self.every
            self.fn()


EVALUATIONS_FILE = "evaluations.npz"
BEST_MODEL = "best_model"


class RunEvaluation(EvalCallback):
    """SB3's ``EvalCallback`` as a run's periodic evaluation: every ``every_steps`` env steps,
    ``n_episodes`` episodes on ``eval_env`` (a stream of the run's seed of its own), written to
    ``evaluations.npz`` (SB3's layout: timesteps, results, ep_lengths) with the best model so far
    as ``best_model.zip``. A continued run keeps the evaluations up to its checkpoint and goes on
    from the best of them.

    :param on_new_best: called after ``best_model.zip`` is written (a normalised run saves its
        statistics beside it).
    :param after_evaluation: SB3's ``callback_after_eval``: run after each evaluation, which it
        can stop the training from (returning False).
    :param on_evaluated: called after each evaluation (a video of the policy then).
    """

    def __init__(
        self,
        eval_env: Any,
        out: Path,
        n_episodes: int,
        every_steps: int,
        n_envs: int,
        deterministic: bool = True,
        start_steps: int = 0,
        on_new_best: Callable[[], None] | None = None,
        after_evaluation: BaseCallback | None = None,
        on_evaluated: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(
            eval_env,
            callback_after_eval=after_evaluation,
            n_eval_episodes=n_episodes,
            eval_freq=max(1, every_steps // n_envs),
            log_path=str(out),
            best_model_save_path=str(out),
            deterministic=deterministic,
            verbose=0,
            warn=False,
        )
        self._on_new_best = on_new_best
        self._on_evaluated = on_evaluated
        # SB3 counts calls, one per vector step: go on counting from the checkpoint
        self.n_calls = start_steps // n_envs
        if start_steps:
            self._keep_earlier(out / EVALUATIONS_FILE, start_steps)

    def _keep_earlier(self, path: Path, up_to_steps: int) -> None:
        try:
            with np.load(path) as data:
                keep = data["timesteps"] <= up_to_steps
                self.evaluations_timesteps = [int(t) for t in data["timesteps"][keep]]
                self.evaluations_results = [list(r) for r in data["results"][keep]]
                self.evaluations_length = [list(n) for n in data["ep_lengths"][keep]]
        except (OSError, KeyError, ValueError):  # none yet, or unreadable: start afresh
            return
        if self.evaluations_results:
            self.best_mean_reward = max(float(np.mean(r)) for r in self.evaluations_results)

    def _init_callback(self) -> None:
        with warnings.catch_warnings():  # (our wrappers differ in type, not in the env)
            warnings.filterwarnings("ignore", "Training and eval env are not of the same type")
            super()._init_callback()

    def _on_step(self) -> bool:
        best, done = self.best_mean_reward, len(self.evaluations_timesteps)
        go_on = super()._on_step()
        if self.best_mean_reward > best and self._on_new_best is not None:
            self._on_new_best()
        if len(self.evaluations_timesteps) > done and self._on_evaluated is not None:
            self._on_evaluated()
        return go_on

    def best(self) -> dict[str, Any]:
        """The best evaluation so far, for the run's summary."""
        if not self.evaluations_results:
            return {}
        means = [float(np.mean(r)) for r in self.evaluations_results]
        i = int(np.argmax(means))
        return {
            "best_eval_mean_return": means[i],
            "best_eval_env_steps": self.evaluations_timesteps[i],
        }
