"""The report on a grid of run folders: per-algo aggregates, ``report.md`` and the curves the
figures are drawn from. Everything is read from the run folders alone (``summary.json``,
``progress.csv``, ``config.yaml``), so ``relax-rl plot`` can redraw it without wandb.

The comparison statistics are rliable's (Agarwal et al., NeurIPS 2021): the interquartile mean
(IQM) over runs with a stratified-bootstrap confidence interval, and the probability of
improvement (the Mann-Whitney U statistic over the two algos' runs, normalised), with its own
bootstrap interval. The medians and IQRs beside them are plain descriptive statistics.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import math
import statistics
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from relax_rl.callbacks import EVALUATIONS_FILE, MONITOR_FILE, read_monitor_rows
from relax_rl.diagnostics import MIN_GROUPS
from relax_rl.runner import FINISHED


# rliable is imported on first use: it pulls in arch, statsmodels and seaborn (1.4 s), which
# reading runs and curves do not need.
def _rly():
    from rliable import library

    return library


def _metrics():
    from rliable import metrics

    return metrics


# Bootstrap resamples per interval: rliable's own default for performance profiles; enough for
# stable 95% percentile bounds at the handful of seeds a comparison has, and about a second per
# pair of algos for the probability of improvement.
BOOTSTRAP_REPS = 2000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95
# A bootstrap of one run only ever redraws that run: its "interval" would be the point itself.
MIN_RUNS_FOR_CI = 2


@contextlib.contextmanager
def _seeded_bootstrap(seed: int = BOOTSTRAP_SEED) -> Iterator[None]:
    """Seed numpy's global RNG for one rliable call, then put the caller's state back.

    rliable 1.2's stratified bootstraps draw their indices with ``np.random.choice`` (the
    global RNG) and ignore their ``random_state`` argument (which arch 7 deprecates anyway), so
    this is the only way to make the intervals repeatable without disturbing anyone else's
    draws.

    :param seed: the seed for the duration of the ``with`` block.
    """
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _finite(xs: Sequence[float | None]) -> np.ndarray:
    """The finite values of ``xs`` as a 1-D float array (None, NaN and inf dropped).

    :param xs: numbers, some possibly None.
    """
    vals = np.asarray([x for x in xs if x is not None], dtype=float)
    return vals[np.isfinite(vals)]


def _iqm(scores: np.ndarray) -> np.ndarray:
    """rliable's IQM of a (runs x tasks) matrix, as the 1-D array its bootstrap wants.

    :param scores: a ``(runs, tasks)`` matrix.
    """
    return np.array([_metrics().aggregate_iqm(scores)])


def iqm_interval(values: Sequence[float | None]) -> dict[str, Any] | None:
    """Interquartile mean of ``values`` (one score per run, one task) with rliable's stratified
    bootstrap CI.

    :param values: one number per run; None, NaN and inf are left out.
    :return: ``{"iqm", "ci", "runs"}``; ``ci`` is ``[low, high]`` at :data:`CONFIDENCE`, or None
        with fewer than :data:`MIN_RUNS_FOR_CI` runs. None when no run has a value.
    """
    vals = _finite(values)
    if vals.size == 0:
        return None
    scores = {"x": vals.reshape(-1, 1)}  # rliable's layout: runs x tasks
    if vals.size < MIN_RUNS_FOR_CI:
        return {"iqm": float(_iqm(scores["x"])[0]), "ci": None, "runs": int(vals.size)}
    with _seeded_bootstrap():
        point, interval = _rly().get_interval_estimates(
            scores, _iqm, reps=BOOTSTRAP_REPS, confidence_interval_size=CONFIDENCE
        )
    low, high = interval["x"][:, 0]
    return {"iqm": float(point["x"][0]), "ci": [float(low), float(high)], "runs": int(vals.size)}


def improvement_probability(
    x: Sequence[float | None], y: Sequence[float | None]
) -> dict[str, Any] | None:
    """rliable's probability of improvement P(X > Y): the chance that a random run of X scores
    higher than a random run of Y (ties count half), with its stratified bootstrap CI.

    :param x: one score per run of X (higher is better); None, NaN and inf are left out.
    :param y: the same for Y.
    :return: ``{"p", "ci", "runs"}`` with ``runs`` as ``[n_x, n_y]``; ``ci`` is None unless
        both have :data:`MIN_RUNS_FOR_CI` runs. None when either has no run.
    """
    xs, ys = _finite(x).reshape(-1, 1), _finite(y).reshape(-1, 1)
    if xs.size == 0 or ys.size == 0:
        return None
    runs = [int(xs.shape[0]), int(ys.shape[0])]
    if min(runs) < MIN_RUNS_FOR_CI:
        p = _metrics().probability_of_improvement(xs, ys)
        return {"p": float(p), "ci": None, "runs": runs}
    with _seeded_bootstrap():
        point, interval = _rly().get_interval_estimates(
            {"xy": (xs, ys)},
            _metrics().probability_of_improvement,
            reps=BOOTSTRAP_REPS,
            confidence_interval_size=CONFIDENCE,
        )
    low, high = np.ravel(interval["xy"])
    return {"p": float(point["xy"]), "ci": [float(low), float(high)], "runs": runs}


def _reversed(poi: dict[str, Any] | None) -> dict[str, Any] | None:
    """P(Y > X) from P(X > Y): the two U statistics sum to n_x * n_y, so P(Y > X) = 1 - P(X > Y),
    and the percentile interval maps the same way (saves a second bootstrap per pair).

    :param poi: :func:`improvement_probability`'s result for (X, Y), or None.
    """
    if poi is None:
        return None
    ci = None if poi["ci"] is None else [1.0 - poi["ci"][1], 1.0 - poi["ci"][0]]
    return {"p": 1.0 - poi["p"], "ci": ci, "runs": poi["runs"][::-1]}


def final_returns(summaries: Sequence[dict]) -> dict[str, np.ndarray]:
    """Per algo (in order of first appearance), the final mean return of each finished run
    that has one: the score rliable's aggregates and profiles are computed on.

    :param summaries: the runs' summaries (``algo``, ``status``, ``final_mean_return_100``).
    """
    out: dict[str, np.ndarray] = {}
    for algo in dict.fromkeys(s["algo"] for s in summaries):
        out[algo] = _finite(
            [
                s.get("final_mean_return_100")
                for s in summaries
                if s["algo"] == algo and s.get("status") in FINISHED
            ]
        )
    return out


def profile_taus(scores: Mapping[str, np.ndarray], points: int = 101) -> np.ndarray:
    """Thresholds for :func:`performance_profile`: from a little below the lowest score (so that
    every profile starts at 1) to the highest (where every profile is 0).

    :param scores: per algo, one score per run.
    :param points: how many thresholds.
    """
    vals = np.concatenate([np.asarray(v, dtype=float).ravel() for v in scores.values()] or [[]])
    if vals.size == 0:
        return np.linspace(0.0, 1.0, points)
    low, high = float(vals.min()), float(vals.max())
    pad = 0.02 * (high - low) or 0.02 * abs(low) or 1.0  # all scores equal: a visible step
    return np.linspace(low - pad, high, points)


def performance_profile(
    scores: Mapping[str, np.ndarray], taus: np.ndarray | None = None
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """rliable's score distribution per algo: the fraction of runs scoring above each tau, with
    stratified bootstrap 95% bands (seeded).

    :param scores: per algo, one score per run (algos without runs are left out).
    :param taus: the thresholds, increasing (default :func:`profile_taus`).
    :return: ``(taus, profiles, bands)``: per algo a ``(len(taus),)`` profile and a
        ``(2, len(taus))`` band; an algo with a single run gets its profile as its band.
    """
    taus = profile_taus(scores) if taus is None else np.asarray(taus, dtype=float)

    def above(runs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
        # rliable's default score distribution, vectorised over taus: same numbers, ~25x faster
        return (runs.reshape(-1, 1) > thresholds.reshape(1, -1)).mean(axis=0)

    data = {a: np.asarray(v, dtype=float).reshape(-1, 1) for a, v in scores.items() if len(v)}
    if not data:
        return taus, {}, {}
    with _seeded_bootstrap():
        profiles, bands = _rly().create_performance_profile(
            data,
            taus,
            custom_profile_func=above,
            reps=BOOTSTRAP_REPS,
            confidence_interval_size=CONFIDENCE,
        )
    return taus, profiles, bands


def _pairwise(
    per_algo: Mapping[str, np.ndarray], stat: Callable[..., dict[str, Any] | None]
) -> dict[str, dict[str, dict[str, Any] | None]]:
    """``stat(x, y)`` for every ordered pair of algos, one bootstrap per unordered pair.

    :param per_algo: per algo, one score per run.
    :param stat: :func:`improvement_probability` or a function like it, antisymmetric as
        :func:`_reversed` assumes.
    """
    out: dict[str, dict[str, dict[str, Any] | None]] = {a: {} for a in per_algo}
    for a, b in itertools.combinations(per_algo, 2):
        out[a][b] = stat(per_algo[a], per_algo[b])
        out[b][a] = _reversed(out[a][b])
    return out


# Per unit of "to solve": the summary's key of the point a run reached the threshold, and the
# key of its budget, where an unsolved run is censored (what the finished run was given and ran).
TO_SOLVE = {
    "env_steps": ("solved_at_env_steps", "total_env_steps"),
    "episodes": ("solved_at_episodes", "episodes"),
}


def steps_to_solve(
    summaries: Sequence[dict], unit: str = "env_steps"
) -> tuple[np.ndarray, np.ndarray] | None:
    """Each finished run's env steps (or episodes) to the threshold, an unsolved run censored at
    its budget: the env steps (episodes) it ran, ``total_env_steps`` (``episodes``) of its
    summary, which a finished run that did not solve reaches only once its ``total_steps`` are
    spent. Counting an unsolved run as its budget instead of leaving it out keeps an algo that
    solves 1 seed of 5 quickly from ranking above one that solves all 5.

    :param summaries: the runs' summaries; only the finished ones count (failed and interrupted
        runs did not get their budget).
    :param unit: a key of :data:`TO_SOLVE`.
    :return: ``(values, censored)``, one entry per finished run (``censored``: the run did not
        solve and its value is its budget, a lower bound); None when no run finished, the runs
        have no threshold, or an unsolved run's budget is not recorded.
    """
    solved_key, budget_key = TO_SOLVE[unit]
    values, censored = [], []
    for s in summaries:
        if s.get("status") not in FINISHED:
            continue
        if "threshold" in s and s["threshold"] is None:
            return None  # nothing to solve
        at = s.get(solved_key)
        if at is None and s.get(budget_key) is None:
            return None
        values.append(float(s[budget_key] if at is None else at))
        censored.append(at is None)
    if not values:
        return None
    return np.asarray(values), np.asarray(censored, dtype=bool)


def lower_bounds(
    point: Callable[[np.ndarray], dict[str, Any] | None], values: np.ndarray, censored: np.ndarray
) -> list[str]:
    """The keys of ``point(values)`` that rest on a censored value, so are only lower bounds:
    those that move when the censored values grow (quantiles and trimmed means are monotone, so
    one that does not move does not depend on them).

    :param point: a statistic of one value per run, as a dict of numbers.
    :param values: one value per run.
    :param censored: which of them are censored (lower bounds themselves).
    """
    if not censored.any():
        return []
    at, raised = point(values), point(np.where(censored, 2.0 * values + 1.0, values))
    if at is None or raised is None:
        return []
    return [
        k
        for k, v in at.items()
        if isinstance(v, float) and not math.isclose(v, raised[k], rel_tol=1e-9, abs_tol=0.0)
    ]


def _censored_stat(
    stat: Callable[[np.ndarray], dict[str, Any] | None],
    point: Callable[[np.ndarray], dict[str, Any] | None],
    data: tuple[np.ndarray, np.ndarray] | None,
) -> dict[str, Any] | None:
    """``stat`` of :func:`steps_to_solve`'s values, with ``censored`` (how many runs count as
    their budget), ``budget`` (the largest such, None without one) and ``lower_bounds`` (the
    keys that rest on censored runs).

    :param stat: the statistic (:func:`iqm_interval`, :func:`_quartiles`).
    :param point: its point estimates alone (no bootstrap), for :func:`lower_bounds`.
    :param data: :func:`steps_to_solve`'s result.
    """
    if data is None:
        return None
    values, censored = data
    est = stat(values)
    if est is None:
        return None
    return {
        **est,
        "censored": int(censored.sum()),
        "budget": int(values[censored].max()) if censored.any() else None,
        "lower_bounds": lower_bounds(point, values, censored),
    }


def iqm_point(values: np.ndarray) -> dict[str, float]:
    """``{"iqm": ...}`` of one value per run, without the bootstrap (:func:`lower_bounds`)."""
    return {"iqm": float(_iqm(values.reshape(-1, 1))[0])}


# --- Differences between two algos: how much, and how sure -----------------------------------

# A difference whose interval spans "no difference": the seeds per algo for an 80% chance that
# a new experiment's 95% CI excludes it (the usual power); beyond MAX_SEEDS_NEEDED the report
# says "more than".
POWER = 0.8
MAX_SEEDS_NEEDED = 10_000


def _iqm_of(values: np.ndarray) -> float:
    return float(_metrics().aggregate_iqm(np.asarray(values, dtype=float).reshape(-1, 1)))


def _two_sample_interval(
    x: np.ndarray, y: np.ndarray, stat: Callable[[np.ndarray, np.ndarray], float]
) -> dict[str, Any]:
    """``stat(x, y)`` with rliable's bootstrap CI, the runs of each algo resampled on their
    own (its independent stratified bootstrap: the two algos' seeds are unrelated).

    :param x: one value per run of X (1-D).
    :param y: the same for Y.
    :param stat: a statistic of the two samples.
    :return: ``{"point", "ci", "runs"}``; ``ci`` None unless both have
        :data:`MIN_RUNS_FOR_CI` runs.
    """
    runs = [int(x.size), int(y.size)]
    point = float(stat(x, y))
    if min(runs) < MIN_RUNS_FOR_CI:
        return {"point": point, "ci": None, "runs": runs}
    with _seeded_bootstrap():
        _, interval = _rly().get_interval_estimates(
            {"xy": (x.reshape(-1, 1), y.reshape(-1, 1))},
            lambda a, b: np.array([stat(a.ravel(), b.ravel())]),
            reps=BOOTSTRAP_REPS,
            confidence_interval_size=CONFIDENCE,
        )
    low, high = np.ravel(interval["xy"])
    return {"point": point, "ci": [float(low), float(high)], "runs": runs}


def return_difference(x: Sequence[float | None], y: Sequence[float | None]) -> dict | None:
    """IQM(X) - IQM(Y) of the final mean returns, with its 95% bootstrap CI.

    :param x: one final mean return per run of X; None, NaN and inf are left out.
    :param y: the same for Y.
    :return: :func:`_two_sample_interval`'s result, None when either has no run.
    """
    xs, ys = _finite(x), _finite(y)
    if xs.size == 0 or ys.size == 0:
        return None
    return _two_sample_interval(xs, ys, lambda a, b: _iqm_of(a) - _iqm_of(b))


def _encoded(data: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Steps to solve as one array, a censored value negated: a bootstrap resamples the value
    and its censoring together (steps to solve are always positive)."""
    values, censored = data
    return np.where(censored, -values, values).astype(float)


def _decoded(enc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.abs(enc), enc < 0


def solve_ratio(
    x: tuple[np.ndarray, np.ndarray] | None, y: tuple[np.ndarray, np.ndarray] | None
) -> dict | None:
    """IQM(X) / IQM(Y) of the env steps to solve, unsolved runs censored at their budget
    (:func:`steps_to_solve`), with its 95% bootstrap CI; below 1: X solves in fewer steps.

    A censored run's true value is above its budget, so an IQM that rests on X's censored runs
    is a lower bound and the ratio is one too (``bound`` ``">="``); resting on Y's it is an
    upper bound (``"<="``); on both it could lie either way (``"?"``); else ``bound`` is None.

    :param x: :func:`steps_to_solve`'s ``(values, censored)`` for X.
    :param y: the same for Y.
    :return: :func:`_two_sample_interval`'s result with ``bound``; None without data.
    """
    if x is None or y is None:
        return None

    def ratio(a: np.ndarray, b: np.ndarray) -> float:
        return _iqm_of(np.abs(a)) / _iqm_of(np.abs(b))

    ex, ey = _encoded(x), _encoded(y)
    est = _two_sample_interval(ex, ey, ratio)

    def raised(enc: np.ndarray) -> np.ndarray:  # the censored runs solving much later
        values, censored = _decoded(enc)
        return np.where(censored, 2.0 * values + 1.0, values)

    moves_x = not math.isclose(ratio(raised(ex), ey), est["point"], rel_tol=1e-9)
    moves_y = not math.isclose(ratio(ex, raised(ey)), est["point"], rel_tol=1e-9)
    bound = {(True, False): ">=", (False, True): "<=", (True, True): "?"}.get((moves_x, moves_y))
    return {**est, "bound": bound}


def _sooner(a: np.ndarray, b: np.ndarray) -> float:
    """P(a run of A solves in fewer env steps than a run of B), each pair scored as Gehan's
    generalised Wilcoxon test scores censored data: a pair decides only where the censoring
    allows (A solved at s, B unsolved after a budget >= s: A sooner); a pair it cannot order
    (both unsolved, or one solved after the other's budget ran out) counts half, as a tie.

    :param a: A's steps to solve, encoded by :func:`_encoded`.
    :param b: the same for B.
    """
    va, ca = _decoded(np.ravel(a))
    vb, cb = _decoded(np.ravel(b))
    va, ca, vb, cb = va[:, None], ca[:, None], vb[None, :], cb[None, :]
    win = (~ca & ~cb & (va < vb)) | (~ca & cb & (va <= vb))
    lose = (~ca & ~cb & (va > vb)) | (ca & ~cb & (vb <= va))
    return float(np.mean(win + 0.5 * ~(win | lose)))


def solve_sooner_probability(
    x: tuple[np.ndarray, np.ndarray] | None, y: tuple[np.ndarray, np.ndarray] | None
) -> dict | None:
    """The probability of improvement on env steps to solve: P(a run of X solves in fewer env
    steps than a run of Y), unsolved runs censored (:func:`_sooner`), with its 95% bootstrap
    CI. After ``--until-solved`` this, not the final return, says which solves faster: every
    solved run stops at the threshold, so final returns only tell solved from unsolved.

    :param x: :func:`steps_to_solve`'s ``(values, censored)`` for X.
    :param y: the same for Y.
    """
    if x is None or y is None:
        return None
    return _two_sample_interval(_encoded(x), _encoded(y), _sooner)


def seeds_needed(est: dict[str, Any] | None, null: float, log: bool = False) -> int | None:
    """Seeds per algo for a :data:`POWER` chance that the 95% CI excludes ``null``, if the
    difference and the spread of the runs are as measured: the interval's half-width gives the
    standard error, which narrows as sqrt(1/n_x + 1/n_y), and the usual normal power formula
    n = 2 sigma^2 (z_{alpha/2} + z_power)^2 / effect^2 does the rest. None when the CI excludes
    ``null`` already or there is no CI.

    :param est: a :func:`_two_sample_interval` result.
    :param null: the value of "no difference" (0 for a difference, 1 for a ratio, 0.5 for a
        probability of improvement).
    :param log: compare on the log scale (ratios).
    """
    if est is None or est["ci"] is None:
        return None
    f = math.log if log else float
    low, high = est["ci"]
    if log and (low <= 0 or est["point"] <= 0):
        return None
    if f(low) > f(null) or f(high) < f(null):
        return None
    effect, half = abs(f(est["point"]) - f(null)), (f(high) - f(low)) / 2
    nx, ny = est["runs"]
    if effect == 0:
        return MAX_SEEDS_NEEDED + 1
    from scipy import stats

    z_alpha, z_power = stats.norm.ppf(0.5 + CONFIDENCE / 2), stats.norm.ppf(POWER)
    sigma2 = (half / z_alpha) ** 2 / (1.0 / nx + 1.0 / ny)  # one run's variance, as measured
    need = 2.0 * sigma2 * (z_alpha + z_power) ** 2 / effect**2
    return min(MAX_SEEDS_NEEDED + 1, max(max(nx, ny) + 1, math.ceil(need)))


def until_solved(summaries: Sequence[dict]) -> bool:
    """Whether the runs stopped when they solved (``--until-solved``): their final returns sit
    at the threshold and say nothing beyond solved or not."""
    return any(s.get("stop_when_solved") or s.get("status") == "solved" for s in summaries)


def differences(summaries: Sequence[dict]) -> list[dict[str, Any]]:
    """Every pair of algos (in order of first appearance): the IQM difference of the final mean
    returns (left out after ``--until-solved``), the IQM ratio of the env steps to solve and the
    probability of solving sooner (where the runs have a threshold), each with its 95% CI and
    the seeds per algo a resolved conclusion would need where the CI spans "no difference".

    :param summaries: the runs' summaries (failed runs are left out).
    """
    finished = [s for s in summaries if s.get("status") in FINISHED]
    returns = final_returns(finished)
    stopped = until_solved(finished)
    steps = {algo: steps_to_solve([s for s in finished if s["algo"] == algo]) for algo in returns}
    out = []
    for a, b in itertools.combinations(returns, 2):
        ret = None if stopped else return_difference(returns[a], returns[b])
        ratio = solve_ratio(steps[a], steps[b])
        sooner = solve_sooner_probability(steps[a], steps[b])
        out.append(
            {
                "x": a,
                "y": b,
                "return_difference": ret,
                "solve_ratio": ratio,
                "solve_sooner": sooner,
                "seeds_needed": {
                    "return_difference": seeds_needed(ret, 0.0),
                    "solve_ratio": seeds_needed(ratio, 1.0, log=True),
                    "solve_sooner": seeds_needed(sooner, 0.5),
                },
            }
        )
    return out


def paired_reduction(values: Sequence[float | None], measurements: int) -> dict | None:
    """The paired variance reduction over runs: the mean of the runs' own means (log10 Var of
    the plain advantage estimator minus the agent's, on the same batches), its standard error
    over runs and a t interval; runs are the independent units (one run's measurements are
    correlated, consecutive updates of one policy).

    :param values: each run's mean reduction (None: not measured).
    :param measurements: the measurements behind them, all runs together.
    :return: ``{"mean", "se", "ci", "runs", "measurements"}``; ``se`` and ``ci`` None with
        fewer than two runs; None when no run measured it.
    """
    vals = _finite(values)
    if vals.size == 0:
        return None
    out: dict[str, Any] = {"mean": float(vals.mean()), "se": None, "ci": None}
    if vals.size >= 2:
        from scipy import stats

        se = float(vals.std(ddof=1) / math.sqrt(vals.size))
        half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, vals.size - 1)) * se
        out.update(se=se, ci=[out["mean"] - half, out["mean"] + half])
    return {**out, "runs": int(vals.size), "measurements": int(measurements)}


def aggregate(summaries: Sequence[dict]) -> dict[str, dict[str, Any]]:
    """Per algo: seeds solved, env steps and episodes to threshold (median, IQR), final mean
    return, mean grad log10 variance and env-steps/s; and rliable's aggregates: the IQM with its
    95% bootstrap CI of the final mean return (``final_mean_return_100_iqm``) and of the env
    steps to solve (``env_steps_to_solve_iqm``), both as :func:`iqm_interval` returns them, and
    ``probability_of_improvement``: per other algo, P(this algo's final mean return > the
    other's) as :func:`improvement_probability` returns it.

    Steps and episodes to solve are over every finished run, an unsolved one censored at its
    budget (:func:`steps_to_solve`); their estimates add ``censored``, ``budget`` and
    ``lower_bounds`` (:func:`_censored_stat`).

    :param summaries: the runs' summaries, failed ones included (they count as failed).
    """
    returns = final_returns(summaries)
    # after --until-solved the final returns only tell solved from unsolved: no P(X > Y) on them
    stopped = until_solved(summaries)
    poi = _pairwise(returns, improvement_probability)
    out: dict[str, dict[str, Any]] = {}
    for algo in dict.fromkeys(s["algo"] for s in summaries):
        rs = [s for s in summaries if s["algo"] == algo]
        ok = [s for s in rs if s.get("status") in FINISHED]
        solved = [s for s in ok if s.get("solved_at_env_steps") is not None]
        env_steps = steps_to_solve(ok, "env_steps")
        out[algo] = {
            "runs": len(rs),
            "failed": len(rs) - len(ok),
            "solved": len(solved),
            "env_steps_to_solve": _censored_stat(_quartiles, _quartiles, env_steps),
            "episodes_to_solve": _censored_stat(
                _quartiles, _quartiles, steps_to_solve(ok, "episodes")
            ),
            "final_mean_return_100": _quartiles(
                [
                    s["final_mean_return_100"]
                    for s in ok
                    if s.get("final_mean_return_100") is not None
                ]
            ),
            "grad_log10_var": _mean([s.get("mean_grad_log10_var") for s in ok]),
            "grad_log10_var_reduction": _mean([s.get("mean_grad_log10_var_reduction") for s in ok]),
            "grad_log10_var_reduction_before_solved": _mean(
                [s.get("mean_grad_log10_var_reduction_before_solved") for s in ok]
            ),
            "grad_log10_var_reduction_over_runs": paired_reduction(
                [s.get("mean_grad_log10_var_reduction") for s in ok],
                sum(s.get("grad_log10_var_reduction_measurements") or 0 for s in ok),
            ),
            "env_steps_per_s": _quartiles(
                [s["env_steps_per_s"] for s in ok if s.get("env_steps_per_s")]
            ),
            "final_mean_return_100_iqm": iqm_interval(returns[algo]),
            "env_steps_to_solve_iqm": _censored_stat(iqm_interval, iqm_point, env_steps),
            "probability_of_improvement": None if stopped else poi[algo],
        }
    return out


def _mean(xs: Sequence[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return float(statistics.fmean(vals)) if vals else None


def _quartiles(xs: Sequence[float]) -> dict[str, float] | None:
    if len(xs) == 0:
        return None
    q1, med, q3 = np.percentile(np.asarray(xs, dtype=float), [25, 50, 75])
    return {"median": float(med), "q1": float(q1), "q3": float(q3)}


# Curves read from a run's progress.csv: name -> SB3 logger key.
CURVE_KEYS = {
    "return": "rollout/ep_rew_mean",
    "grad_log10_var": "grad/log10_var",
    # the plain advantage estimator on the same batches (agents with a control variate)
    "grad_log10_var_baseline": "grad/log10_var_baseline",
    "grad_log10_var_reduction": "grad/log10_var_reduction",
}


# The return curve's moving window: the last 100 episodes, as the logger's ep_rew_mean and the
# solve criterion.
RETURN_WINDOW = 100


def episode_returns(
    run_dir: Path, end_steps: float | None = None
) -> tuple[np.ndarray, np.ndarray] | None:
    """The mean return of the last :data:`RETURN_WINDOW` episodes (fewer at the start) at the
    end of every episode, against the run's env steps then, from its ``monitor.csv``
    (:class:`relax_rl.callbacks.EpisodeLog`); None for a run without one (older runs).

    :param run_dir: the run folder.
    :param end_steps: the env steps the run ended at: the last value holds until then (no
        episode ended after it to move the mean).
    """
    if not (run_dir / MONITOR_FILE).is_file():
        return None
    rows = read_monitor_rows(run_dir / MONITOR_FILE)
    if end_steps is not None and rows and end_steps > rows[-1]["env_steps"]:
        rows.append({**rows[-1], "env_steps": float(end_steps), "r": np.nan})
    steps = np.asarray([r["env_steps"] for r in rows], dtype=float)
    returns = np.asarray([r["r"] for r in rows], dtype=float)
    sums = np.concatenate([[0.0], np.cumsum(returns)])
    ends = np.arange(1, returns.size + 1)
    starts = np.maximum(0, ends - RETURN_WINDOW)
    means = (sums[ends] - sums[starts]) / (ends - starts)
    if end_steps is not None and rows and np.isnan(returns[-1]):
        means[-1] = means[-2] if means.size > 1 else np.nan  # the held value, to the run's end
    return steps, means


def read_curves(
    run_dir: Path, end_steps: float | None = None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each of :data:`CURVE_KEYS` as (env steps, values): the return at every episode from the
    run's ``monitor.csv`` (:func:`episode_returns`), the rest from its progress.csv (one row per
    ``log_interval`` updates), as is the return of a run without a monitor file; a curve the run
    did not log is two empty arrays.

    :param run_dir: the run folder.
    :param end_steps: the env steps the run ended at (its summary's ``total_env_steps``): the
        per-episode return holds its last value until then.
    """
    points: dict[str, list[tuple[float, float]]] = {name: [] for name in CURVE_KEYS}
    path = run_dir / "progress.csv"
    if path.exists():
        with open(path) as fh:
            for row in csv.DictReader(fh):
                t = row.get("time/total_timesteps")
                for name, key in CURVE_KEYS.items():
                    if t and row.get(key):
                        points[name].append((float(t), float(row[key])))
    curves = {
        name: (np.asarray([x for x, _ in xy]), np.asarray([y for _, y in xy]))
        for name, xy in points.items()
    }
    per_episode = episode_returns(run_dir, end_steps)
    if per_episode is not None:
        curves["return"] = per_episode
    curves["eval"] = evaluation_returns(run_dir)
    return curves


def evaluation_returns(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The periodic evaluations' mean return against env steps (``evaluations.npz``, SB3's
    EvalCallback layout; ``eval_freq``), or two empty arrays where the run has none."""
    try:
        with np.load(run_dir / EVALUATIONS_FILE) as data:
            steps = np.asarray(data["timesteps"], dtype=float)
            means = np.asarray(data["results"], dtype=float).mean(axis=1)
    except (OSError, KeyError, ValueError):
        return np.array([]), np.array([])
    return steps, means


def _at_least(est: dict[str, Any], key: str, digits: int) -> str:
    """``est[key]``, marked "≥" where it rests on censored runs (:func:`_censored_stat`)."""
    mark = "≥ " if key in est.get("lower_bounds", ()) else ""
    return f"{mark}{est[key]:,.{digits}f}"


def _censored_note(est: dict[str, Any] | None, budget: bool = True) -> str:
    """`` (k censored at N)`` after a steps-to-solve estimate with censored runs, else nothing.

    :param est: a :func:`_censored_stat` result, or None.
    :param budget: whether to name the budget (not when the table's header does).
    """
    if not est or not est.get("censored"):
        return ""
    at = f" at {est['budget']:,}" if budget else ""
    return f" ({est['censored']} censored{at})"


def _fmt(q: dict[str, Any] | None, digits: int = 0) -> str:
    if q is None:
        return "-"
    return (
        f"{_at_least(q, 'median', digits)} [{_at_least(q, 'q1', digits)}, "
        f"{_at_least(q, 'q3', digits)}]"
    )


def _signed(x: float | None) -> str:
    return "-" if x is None else f"{x:+.2f}"


def write_report(
    out: Path,
    summaries: Sequence[dict],
    aggregates: dict[str, dict],
    variance: dict[str, list[dict]] | None = None,
    diffs: list[dict[str, Any]] | None = None,
) -> None:
    """``report.md``: one row per algo (medians and IQRs), the paired variance reduction with
    its standard error, rliable's aggregates (IQM with 95% CIs, probability of improvement),
    the differences between algos with their CIs and the seeds a conclusion would need, the
    variance decomposition where the runs have one, then every failed run with its error line.

    :param out: the folder to write it into.
    :param summaries: the runs' summaries.
    :param aggregates: :func:`aggregate`'s output for them.
    :param variance: per algo, its runs' ``variance.json`` contents (``relax-rl variance``).
    :param diffs: :func:`differences`'s output for them (computed when not given).
    """
    env_ids = sorted({env_setup(s) for s in summaries})
    lines = [
        f"# Comparison on {', '.join(env_ids)}",
        "",
        "Medians with [Q1, Q3] over seeds. Env steps and episodes to the threshold are over "
        "every finished run, an unsolved one censored at its budget (the env steps and episodes "
        "it ran): it counts as its budget, not left out; a value marked ≥ rests on censored runs "
        "and is a lower bound.",
        "",
        "| algo | solved | env steps to solve | episodes to solve | final mean return (100) "
        "| mean grad log10 var | env-steps/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for algo, a in aggregates.items():
        var = "-" if a["grad_log10_var"] is None else f"{a['grad_log10_var']:.2f}"
        failed = f" ({a['failed']} failed)" if a["failed"] else ""
        lines.append(
            f"| {algo} | {a['solved']}/{a['runs']}{failed} | {_fmt(a['env_steps_to_solve'])}"
            f"{_censored_note(a['env_steps_to_solve'])} | {_fmt(a['episodes_to_solve'])}"
            f"{_censored_note(a['episodes_to_solve'], budget=False)} "
            f"| {_fmt(a['final_mean_return_100'], 1)} "
            f"| {var} | {_fmt(a['env_steps_per_s'])} |"
        )
    lines += _paired_reduction_section(aggregates)
    unmeasured = list(
        dict.fromkeys(s["algo"] for s in summaries if s.get("grad_var_groups") == "none")
    )
    if unmeasured:
        lines += [
            "",
            f"{', '.join(unmeasured)}: fewer than {MIN_GROUPS} independent units per update "
            "(envs; groups of envs for a group baseline), so the gradient variance is not "
            "measured (it needs independent estimates within one batch).",
        ]
    lines += _rliable_section(aggregates)
    lines += _differences_section(differences(summaries) if diffs is None else diffs)
    if variance:
        lines += variance_section(variance)
    failures = [s for s in summaries if s.get("status") not in FINISHED]
    if failures:
        lines += ["", "## Failed runs", ""]
        lines += [
            f"- {s['algo']} seed {s['seed']}: {s.get('status')}: {s.get('error')}" for s in failures
        ]
    (out / "report.md").write_text("\n".join(lines) + "\n")


def _fmt_interval(est: dict[str, Any] | None, key: str, digits: int) -> str:
    """``point [low, high]``, ``point (no CI: 1 run)``, or ``-`` when there is no estimate.

    :param est: an :func:`iqm_interval` or :func:`improvement_probability` result, or None.
    :param key: the point's key in ``est`` (``iqm`` or ``p``).
    :param digits: decimals shown.
    """
    if est is None:
        return "-"
    point = _at_least(est, key, digits)
    if est["ci"] is None:
        return f"{point} (no CI: {min(np.atleast_1d(est['runs']))} run)"
    low, high = est["ci"]
    return f"{point} [{low:,.{digits}f}, {high:,.{digits}f}]"


def _rliable_section(aggregates: dict[str, dict]) -> list[str]:
    """report.md's "Aggregates (rliable)": IQM [95% CI] per algo, then P(row > column).

    :param aggregates: :func:`aggregate`'s output.
    """
    steps = [a["env_steps_to_solve_iqm"] for a in aggregates.values()]
    budgets = {e["budget"] for e in steps if e and e["budget"] is not None}
    one_budget = len(budgets) == 1
    budget = f" ({budgets.pop():,} env steps)" if one_budget else ""
    lines = [
        "",
        "## Aggregates (rliable)",
        "",
        f"IQM: interquartile mean, the mean of the middle 50% of the finished runs (robust to "
        f"an outlier seed, less noisy than the median); [95% CI]: stratified bootstrap over runs "
        f"({BOOTSTRAP_REPS} resamples, seed {BOOTSTRAP_SEED}), none for an algo with a single "
        f"run; with a handful of seeds read it as a rough guide (bootstrap intervals tend to "
        f"undercover at small n).",
        "",
        "Env steps to solve: every finished run counts, an unsolved one censored at the budget "
        "(the env steps it ran) rather than left out, so an algo that solves a few seeds fast "
        "does not rank above one that solves them all by dropping its failures; an IQM marked ≥ "
        "rests on censored runs "
        "(a lower bound: the true IQM is at least that; ≥ the budget when the middle runs all "
        "failed to solve).",
        "",
        "| algo | runs | IQM final mean return (100) [95% CI] "
        f"| solved | IQM env steps to solve, unsolved runs censored at the budget{budget} "
        "[95% CI] |",
        "|---|---|---|---|---|",
    ]
    for algo, a in aggregates.items():
        ret = a["final_mean_return_100_iqm"]
        lines.append(
            f"| {algo} | {0 if ret is None else ret['runs']} "
            f"| {_fmt_interval(ret, 'iqm', 1)} | {a['solved']}/{a['runs']} "
            f"| {_fmt_interval(a['env_steps_to_solve_iqm'], 'iqm', 0)}"
            f"{_censored_note(a['env_steps_to_solve_iqm'], budget=not one_budget)} |"
        )
    scored = [algo for algo, a in aggregates.items() if a["final_mean_return_100_iqm"]]
    if len(scored) >= 2 and any(
        a["probability_of_improvement"] is None for a in aggregates.values()
    ):
        lines += [
            "",
            "No probability of improvement on the final mean return: the runs stopped when they "
            "solved (`--until-solved`), so their final returns only tell solved from unsolved; "
            "P(solves sooner) below compares them on env steps to solve.",
        ]
    elif len(scored) >= 2:
        lines += [
            "",
            "Probability of improvement on the final mean return: P(a run of the row's algo "
            "scores higher than a run of the column's), ties counting half [95% CI].",
            "",
            "| P(row > column) | " + " | ".join(scored) + " |",
            "|---" * (len(scored) + 1) + "|",
        ]
        for x in scored:
            poi = aggregates[x]["probability_of_improvement"]
            cells = ["-" if y == x else _fmt_interval(poi.get(y), "p", 2) for y in scored]
            lines.append(f"| {x} | " + " | ".join(cells) + " |")
    return lines


def _paired_reduction_section(aggregates: dict[str, dict]) -> list[str]:
    """report.md's paired variance reduction per agent with a control variate: mean over runs
    with its standard error, 95% t interval, the variance ratio it means, and how many runs and
    measurements it rests on.

    :param aggregates: :func:`aggregate`'s output.
    """
    paired = {
        a: v["grad_log10_var_reduction_over_runs"]
        for a, v in aggregates.items()
        if v.get("grad_log10_var_reduction_over_runs")
    }
    if not paired:
        return []
    lines = [
        "",
        "Paired variance reduction: log10 Var of the plain advantage estimator minus the agent's, "
        "on the same batches (> 0: the control variate reduces the variance), each run's mean "
        "over its measurements, then mean ± standard error over runs (the independent units) and "
        "a 95% t interval; the variance ratio is 10 to that power.",
        "",
        "| algo | reduction (log10) ± SE | 95% CI | variance ratio [95% CI] | before the threshold "
        "| runs | measurements |",
        "|---|---|---|---|---|---|---|",
    ]
    for algo, r in paired.items():
        se = "" if r["se"] is None else f" ± {r['se']:.2f}"
        if r["ci"] is None:
            ci, ratio = "(no CI: 1 run)", f"{10 ** r['mean']:.2f}x"
        else:
            low, high = r["ci"]
            ci = f"[{low:+.2f}, {high:+.2f}]"
            ratio = f"{10 ** r['mean']:.2f}x [{10**low:.2f}, {10**high:.2f}]"
        before = _signed(aggregates[algo]["grad_log10_var_reduction_before_solved"])
        lines.append(
            f"| {algo} | {r['mean']:+.2f}{se} | {ci} | {ratio} | {before} | {r['runs']} "
            f"| {r['measurements']:,} |"
        )
    return lines


def _excludes(est: dict[str, Any] | None, null: float) -> bool:
    return bool(est and est["ci"] and (est["ci"][0] > null or est["ci"][1] < null))


def _verdict(d: dict[str, Any]) -> str:
    """The last column of the differences table: what the 95% CIs resolve, and the seeds per
    algo an unresolved one would need."""
    x, y, need = d["x"], d["y"], d["seeds_needed"]
    parts = []

    def unresolved(name: str, key: str) -> str:
        n = need[key]
        if n is None:
            return f"{name}: no CI (1 run)"
        more = "more than " if n > MAX_SEEDS_NEEDED else "~"
        return f"{name}: unresolved, {more}{min(n, MAX_SEEDS_NEEDED):,} seeds per algo"

    ret = d["return_difference"]
    if ret is not None:
        if _excludes(ret, 0.0):
            parts.append(f"{x if ret['point'] > 0 else y} higher return")
        else:
            parts.append(unresolved("return", "return_difference"))
    ratio, sooner = d["solve_ratio"], d["solve_sooner"]
    if ratio is not None:
        if ratio.get("bound") == "?":
            parts.append("steps to solve: undetermined (both rest on unsolved runs)")
        elif _excludes(sooner, 0.5):  # the test is P(solves sooner); the ratio: how much
            parts.append(f"{x if sooner['point'] > 0.5 else y} solves sooner")
        else:
            parts.append(unresolved("steps to solve", "solve_sooner"))
    return "; ".join(parts)


def _fmt_estimate(est: dict[str, Any] | None, fmt: str, mark: str = "") -> str:
    """``point [low, high]`` of a :func:`_two_sample_interval` result with ``fmt``."""
    if est is None:
        return "-"
    point = f"{mark}{est['point']:{fmt}}"
    if est["ci"] is None:
        return f"{point} (no CI: 1 run)"
    return f"{point} [{est['ci'][0]:{fmt}}, {est['ci'][1]:{fmt}}]"


def _differences_section(diffs: list[dict[str, Any]]) -> list[str]:
    """report.md's "Differences between algos": per pair, the IQM difference of the final
    returns, the IQM ratio of the env steps to solve and P(solves sooner), each with its 95%
    CI, and what they resolve.

    :param diffs: :func:`differences`'s output.
    """
    if not diffs:
        return []
    has_return = any(d["return_difference"] for d in diffs)
    has_steps = any(d["solve_ratio"] for d in diffs)
    header = ["X vs Y"]
    if has_return:
        header.append("IQM final return X - Y [95% CI]")
    if has_steps:
        header += ["IQM env steps to solve X / Y [95% CI]", "P(X solves sooner) [95% CI]"]
    header.append("conclusion (95%)")
    about = (
        "Which is better, by how much, how sure: rliable's bootstrap over each algo's runs "
        f"({BOOTSTRAP_REPS} resamples, seed {BOOTSTRAP_SEED})."
    )
    if has_steps:  # only where a threshold makes "solved" mean something
        about += (
            " Env steps to solve count an unsolved run at its budget (censored); a ratio marked"
            " ≥ (≤) rests on X's (Y's) unsolved runs and is a lower (upper) bound. P(X solves"
            " sooner) scores each pair of runs as Gehan's test does: a pair the censoring cannot"
            " order counts half."
        )
    about += (
        " An unresolved difference (its CI spans no difference) names the seeds per algo that"
        f" would give a {POWER:.0%} chance of resolving a difference this size, if the runs'"
        " spread is as measured."
    )
    lines = [
        "",
        "## Differences between algos",
        "",
        about,
        "",
        "| " + " | ".join(header) + " |",
        "|---" * len(header) + "|",
    ]
    for d in diffs:
        cells = [f"{d['x']} vs {d['y']}"]
        if has_return:
            cells.append(_fmt_estimate(d["return_difference"], "+,.1f"))
        if has_steps:
            ratio = d["solve_ratio"]
            mark = {">=": "≥ ", "<=": "≤ ", "?": "? "}.get((ratio or {}).get("bound"), "")
            cells.append(_fmt_estimate(ratio, ".2f", mark))
            cells.append(_fmt_estimate(d["solve_sooner"], ".2f"))
        cells.append(_verdict(d))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def grad_variance_stats(run_dir: Path, solved_at: float | None) -> dict[str, float | None]:
    """A run's mean grad log10 variance and mean paired reduction, the latter also before the
    threshold was reached (after it, the policy is nearly deterministic, kappa near 0, and the
    reduction near 0). None where not logged."""
    curves = read_curves(run_dir)
    _, gv = curves["grad_log10_var"]
    at, red = curves["grad_log10_var_reduction"]
    before = red[at < solved_at] if solved_at is not None else red
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        n_envs = int(config["n_envs"])
        group_size = int(config.get("group_size") or 1)  # (a group baseline's units: groups)
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
        n_envs, group_size = None, 1
    unit = "groups" if group_size > 1 else "envs"
    return {
        "grad_var_groups": (
            None if n_envs is None else (unit if n_envs // group_size >= MIN_GROUPS else "none")
        ),
        "grad_log10_var_reduction_measurements": int(red.size),
        "mean_grad_log10_var": float(gv.mean()) if gv.size else None,
        "mean_grad_log10_var_reduction": float(red.mean()) if red.size else None,
        "mean_grad_log10_var_reduction_before_solved": (
            float(before.mean()) if before.size else None
        ),
    }


def variance_section(variance: dict[str, list[dict]]) -> list[str]:
    """The report's variance decomposition: per algo, estimator and point of the runs (a
    fraction of their length), the medians over seeds of log10 of the total variance and of the
    shares of its state, action and trajectory terms, with the runs' 95% bootstrap intervals
    and, for an agent with a control variate, its paired log10 ratio to the plain estimator."""
    lines = [
        "",
        "## Where the gradient's variance comes from",
        "",
        "Variance of one sample of the update's gradient estimator, split into the state, action "
        "and trajectory terms (Tucker et al. 2018; `relax-rl variance`); medians over seeds, and "
        "the span of the runs' 95% bootstrap intervals over states. Only the action term can be "
        "reduced by an action-dependent control variate. `?`: a term whose interval reaches 0 in "
        "some run (not resolved by the design). *vs same samples*: log10 of the total over the "
        "plain advantage estimator's on the same samples (median; runs whose interval is below "
        "0, i.e. a resolved reduction).",
        "",
        "| algo | estimator | at | env steps | log10 total [runs' CIs] | state | action "
        "| trajectory | vs same samples |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for algo, runs in variance.items():
        rows: dict[tuple[str, float], list[tuple[int, dict]]] = {}
        for run in runs:
            for point in run["points"]:
                for e in point["estimators"]:
                    key = (e["estimator"], point["fraction"])
                    rows.setdefault(key, []).append((point["env_steps"], e))
        for (name, fraction), items in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            steps = statistics.median(st for st, _ in items)
            ests = [e for _, e in items]
            cells = [_log10_span(ests)]
            for term in ("state", "action", "trajectory"):
                shares = [e[f"share_{term}"] for e in ests if e[f"share_{term}"] is not None]
                mark = (
                    ""
                    if all(e.get(f"resolved_{term}", True) or e[term] == 0 for e in ests)
                    else "?"
                )
                cells.append(f"{statistics.median(shares):.0%}{mark}" if shares else "-")
            cells.append(_paired_cell(ests))
            lines.append(
                f"| {algo} | {name} | {fraction:g} | {steps:,.0f} | " + " | ".join(cells) + " |"
            )
    return lines


def _log10_span(ests: list[dict]) -> str:
    totals = [math.log10(e["total"]) for e in ests if e["total"] > 0]
    if not totals:
        return "-"
    lows = [e["ci_total"][0] for e in ests if e.get("ci_total")]
    highs = [e["ci_total"][1] for e in ests if e.get("ci_total")]
    if not lows:
        return f"{statistics.median(totals):.2f}"
    low = f"{math.log10(min(lows)):.2f}" if min(lows) > 0 else "<0"
    return f"{statistics.median(totals):.2f} [{low}, {math.log10(max(highs)):.2f}]"


def _paired_cell(ests: list[dict]) -> str:
    ratios = [e["log10_vs_paired"] for e in ests if e.get("log10_vs_paired") is not None]
    if not ratios:
        return ""
    below = sum(1 for e in ests if e.get("ci_log10_vs_paired") and e["ci_log10_vs_paired"][1] < 0)
    return f"{statistics.median(ratios):+.2f} ({below}/{len(ratios)} below 0)"


def env_setup(summary: Mapping[str, Any]) -> str:
    """The env a run trained on, with what changes it: ``env_kwargs`` and ``discretize``."""
    parts = [str(summary.get("env_id", "?"))]
    if summary.get("env_kwargs"):
        parts.append(", ".join(f"{k}={v}" for k, v in sorted(summary["env_kwargs"].items())))
    if summary.get("discretize"):
        parts.append(f"discretize={summary['discretize']}")
    return parts[0] + (f" ({'; '.join(parts[1:])})" if len(parts) > 1 else "")
