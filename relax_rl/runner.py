"""Running a grid of runs (algo x seed), each into its own run folder, on a backend.

A grid resumes by skipping runs whose ``summary.json`` says they finished (the worker decides
whether an unfinished one starts again or continues from its checkpoint). Two backends run the
rest: ``local`` (a process pool on this machine) and ``ray`` (Ray Tune, on a local Ray or a
cluster). A crash becomes a ``failed`` summary naming its error; the other runs go on. What the
runs are is the worker's business: ``relax-rl compare`` trains agents, ``bench/solve.py`` races
ours against SB3's. The report on the finished runs is :mod:`relax_rl.report`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from relax_rl.errors import UsageError

FINISHED = ("completed", "solved")
BACKENDS = ("local", "ray")
RAY_INSTALL = "pip install 'relax-rl[ray]'"


@dataclass(frozen=True)
class GridRun:
    """One cell of the grid and its run folder."""

    algo: str
    env_id: str
    seed: int
    out: Path


def parse_seeds(text: str) -> list[int]:
    """``"0-4"``, ``"0,2,5"`` or ``"3"`` (mixable: ``"0-2,7"``) into a list of seeds."""
    seeds: list[int] = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if m is None or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
            raise UsageError(f"malformed seed range {text!r}; use e.g. 0-4, 0,2,5 or 3")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        seeds += range(lo, hi + 1)
    return sorted(set(seeds))


def is_finished(run_dir: Path) -> bool:
    try:
        return json.loads((run_dir / "summary.json").read_text())["status"] in FINISHED
    except (OSError, ValueError, KeyError):
        return False


def run_grid(
    runs: Sequence[GridRun],
    worker: Callable[[GridRun], dict],
    jobs: int = 1,
    on_done: Callable[[GridRun, dict], None] | None = None,
    backend: str = "local",
    ray_address: str | None = None,
    ray_storage: Path | None = None,
) -> list[dict]:
    """Run every unfinished cell with ``worker``, ``jobs`` at a time, on ``backend``.

    A crash becomes a ``failed`` summary with its error line, and the other runs go on.
    ``ray_address`` (Ray backend only) names a running cluster; without it a local Ray starts.
    ``ray_storage`` is where Ray Tune keeps its own experiment state.
    """
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
    results: dict[GridRun, dict] = {}
    todo = []
    for run in runs:
        if is_finished(run.out):
            results[run] = json.loads((run.out / "summary.json").read_text())
        else:
            todo.append(run)

    def record(run: GridRun, summary: dict) -> None:
        results[run] = summary
        if on_done is not None:
            on_done(run, summary)

    if todo and backend == "local":
        _run_local(todo, worker, jobs, record)
    elif todo:
        _run_ray(todo, worker, jobs, record, ray_address, ray_storage)
    return [results[run] for run in runs]


def failed_summary(run: GridRun, exc: BaseException | str) -> dict:
    """The summary of a run that crashed: its cell and the first line of its error."""
    text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    lines = [line for line in text.splitlines() if line.strip()] or ["unknown error"]
    return {
        "algo": run.algo,
        "env_id": run.env_id,
        "seed": run.seed,
        "status": "failed",
        "error": lines[0],
    }


_interrupted = False  # in a pool worker: Ctrl-C or SIGTERM was seen, start no further run


def _on_interrupt(signum: int, frame: Any) -> None:
    global _interrupted
    if _interrupted:  # already stopping: let the run in flight save itself undisturbed
        return
    _interrupted = True
    raise KeyboardInterrupt


def _init_pool_worker() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, _on_interrupt)


def _start_unless_interrupted(worker: Callable[[GridRun], dict], run: GridRun) -> dict:
    # A worker may already hold the next run in its queue when Ctrl-C arrives.
    if _interrupted:
        raise KeyboardInterrupt("not started: the grid was interrupted")
    return worker(run)


def _run_local(todo, worker, jobs: int, record) -> None:
    pool = ProcessPoolExecutor(max(1, jobs), initializer=_init_pool_worker)
    try:
        futures = {pool.submit(_start_unless_interrupted, worker, run): run for run in todo}
        for future in as_completed(futures):
            run = futures[future]
            try:
                summary = future.result()
            except Exception as exc:  # the run's own error, reported, not raised
                summary = failed_summary(run, exc)
            record(run, summary)
    except KeyboardInterrupt:  # runs in flight save themselves; queued ones never start
        # A terminal's Ctrl-C reaches every worker; a SIGTERM (kill, timeout, SLURM) may reach
        # only this process: pass it on (a worker already stopping ignores the second one).
        # As SIGTERM: a command started in the background by a script (`compare ... &`) runs
        # with SIGINT ignored, and so do its workers.
        for pid in list(getattr(pool, "_processes", None) or {}):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown()


def check_ray_backend(address: str | None) -> None:
    """Refuse the Ray backend, in one line, where Ray Tune is not installed or ``address``
    names no cluster; a command calls this before it prints or starts anything."""
    try:
        import ray  # noqa: F401
        from ray import tune  # noqa: F401
    except ImportError:
        raise UsageError(f"--backend ray needs Ray Tune; install it with: {RAY_INSTALL}") from None
    if address is not None:
        check_ray_address(address)


def check_ray_address(address: str) -> None:
    """Refuse an address no Ray cluster answers on, in seconds (``ray.init`` would retry for
    minutes). Accepts ``auto``, ``host:port`` (GCS, port 6379 if left out) and
    ``ray://host:port`` (Ray Client, port 10001 if left out)."""
    if address == "auto":  # what Ray would resolve it to: RAY_ADDRESS, or its last cluster
        recorded = _recorded_ray_cluster()
        resolved = os.environ.get("RAY_ADDRESS") or (
            recorded.read_text().strip() if recorded else ""
        )
        if not resolved:
            raise UsageError(
                "--ray-address auto: no running Ray cluster is recorded on this machine; start "
                "one with `ray start --head` or give its address"
            )
        address = resolved
    m = re.fullmatch(r"(ray://)?([^:/\s]+)(?::(\d+))?/?", address)
    if m is None:
        raise UsageError(
            f"malformed --ray-address {address!r}; use host:port, ray://host:port or auto"
        )
    port = int(m.group(3)) if m.group(3) else (10001 if m.group(1) else 6379)
    try:
        socket.create_connection((m.group(2), port), timeout=5).close()
    except OSError as exc:
        raise UsageError(
            f"cannot reach a Ray cluster at {address!r} ({exc.strerror or exc}); "
            "start one with `ray start --head` or check --ray-address"
        ) from None


def _recorded_ray_cluster() -> Path | None:
    """Ray's record of the last cluster started here (``ray start`` writes it; it outlives the
    cluster, which is why ``auto`` can point at one that is gone)."""
    tmp = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or tempfile.gettempdir()
    path = Path(tmp) / "ray" / "ray_current_cluster"
    return path if path.is_file() else None


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2: while it retries an address that is not a Ray cluster (~20 s),
    Ray's C++ client prints a warning a second straight to it; our one-line error follows."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _ray_trial(config: dict, worker: Callable[[GridRun], dict], runs: list[GridRun]) -> None:
    """One Ray Tune trial = one grid cell; its summary travels back as a JSON metric."""
    from ray import tune

    run = runs[config["cell"]]
    try:
        summary = worker(run)
    except Exception as exc:  # reported like the local backend's failures
        summary = failed_summary(run, exc)
    tune.report({"summary": json.dumps(summary)})


def _run_ray(todo, worker, jobs: int, record, address: str | None, storage: Path | None) -> None:
    # Trials keep the driver's working directory; Tune's console output stays quiet (our own
    # one line per finished run is printed by ``on_done``).
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # A local Ray starts its workers at nice 15 (Ray's default): beside any other busy process
    # the trials then crawl (measured: 600 CartPole steps in 42 s against 0.3 s), and their
    # env-steps/s stop being comparable to the process pool's. The trials are the work here.
    os.environ.setdefault("RAY_worker_niceness", "0")
    check_ray_backend(address)
    import ray
    from ray import tune

    # Ray workers (other processes, maybe other machines) see absolute paths only.
    cells = [replace(run, out=run.out.resolve()) for run in todo]
    started = not ray.is_initialized()
    if started:
        try:
            if address is None:
                # "local": a new Ray for this grid, even if `ray start` left one running here.
                ray.init(
                    address="local",
                    num_cpus=max(1, jobs),
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level=logging.WARNING,
                )
            else:
                with _quiet_stderr():
                    ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        except ConnectionError as exc:
            raise UsageError(
                f"cannot connect to Ray at {address!r}: {exc} (a cluster with token "
                "authentication also needs RAY_AUTH_MODE=token and its token here)"
            ) from None

    # Tune's notes on its own state and on Tuner.restore do not apply: a grid resumes by
    # running the same command again.
    logging.getLogger("ray.tune").setLevel(logging.ERROR)
    reported: set[GridRun] = set()

    class Reporter(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            run = todo[trial.config["cell"]]
            reported.add(run)
            record(run, json.loads(result["summary"]))

    try:
        storage_path = (storage or Path("ray_results")).resolve()
        tuner = tune.Tuner(
            tune.with_resources(
                tune.with_parameters(_ray_trial, worker=worker, runs=cells), {"cpu": 1}
            ),
            param_space={"cell": tune.grid_search(list(range(len(cells))))},
            tune_config=tune.TuneConfig(
                max_concurrent_trials=max(1, jobs),
                trial_dirname_creator=lambda trial: todo[trial.config["cell"]].out.name,
            ),
            run_config=tune.RunConfig(
                name="grid", storage_path=str(storage_path), verbose=0, callbacks=[Reporter()]
            ),
        )
        by_cell = {r.config["cell"]: r for r in tuner.fit() if r.config}
        unfinished = 0
        for cell, run in enumerate(todo):
            result = by_cell.get(cell)
            if run in reported:
                continue
            if result is not None and result.error is not None:  # e.g. the worker was killed
                record(run, failed_summary(run, str(result.error)))
            else:  # Tune stopped before the trial reported: Ctrl-C (Tune catches SIGINT)
                unfinished += 1
        if unfinished:
            raise KeyboardInterrupt(f"{unfinished} runs did not finish")
    finally:
        if started:
            ray.shutdown()
