"""Figures drawn with matplotlib (Agg backend: no display needed); the comparison's aggregate
figures with rliable's plotting helpers."""

from __future__ import annotations

import math
import warnings
import zlib
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import EngFormatter

# One colour per agent and estimator in every figure and legend, whichever others it is drawn
# with (a test checks that every agent has one); a name not listed gets a fixed colour of its
# own from SPARE_COLORS (by a stable hash of the name, never by its place in a figure).
COLORS = {
    "exact": "black",
    "reinforce": "tab:blue",
    "concrete": "tab:gray",
    "rebar": "tab:orange",
    "relax": "tab:red",
    "a2c": "tab:green",
    "lax": "tab:purple",
    "ppo": "tab:olive",
    "relax-ppo": "tab:pink",
    "rloo": "tab:brown",
    "grpo": "tab:cyan",
    # the VAE's multi-sample Bernoulli estimators
    "reinforce-loo": "teal",
    "arm": "goldenrod",
    "disarm": "indigo",
    "arms": "darkgreen",
    "double-cv": "crimson",
}
SPARE_COLORS = ("navy", "teal", "goldenrod", "indigo", "darkred", "slategray", "darkgreen", "peru")


def algo_color(name: str) -> str:
    """The colour of an agent or estimator: :data:`COLORS`'s, else a fixed one of
    :data:`SPARE_COLORS` chosen by the name's CRC32 (the same in every process and figure)."""
    return COLORS.get(name) or SPARE_COLORS[zlib.crc32(name.encode()) % len(SPARE_COLORS)]


def _band(ax, x, per_seed: np.ndarray, label: str, color: str | None) -> None:
    """Mean line and min-max band over seeds; ``per_seed`` has shape ``(points, seeds)``."""
    with warnings.catch_warnings():  # all-NaN columns (zero variance) stay NaN: a gap
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(per_seed, axis=1)
        lo, hi = np.nanmin(per_seed, axis=1), np.nanmax(per_seed, axis=1)
    ax.plot(x, mean, label=label, color=color, lw=1.6)
    if per_seed.shape[1] > 1:
        ax.fill_between(x, lo, hi, color=color, alpha=0.18, lw=0)


def plot_toy_figure1(results: dict, path: Path) -> None:
    """The seed's Figure 1: expected loss (left) and theta (right) against step."""
    curves, cfg = results["curves"], results["config"]
    steps = np.asarray(curves["step"])
    fig, (ax_loss, ax_theta) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, c in curves["estimators"].items():
        color = algo_color(name)
        _band(ax_loss, steps, np.asarray(c["loss"], dtype=float), name, color)
        _band(ax_theta, steps, np.asarray(c["theta"], dtype=float), name, color)
    ax_loss.set(xlabel="step", ylabel=r"$E[(b-t)^2]$", title=f"Loss (t = {cfg['target']})")
    ax_theta.set(xlabel="step", ylabel=r"$\theta$", title=r"$\theta = \sigma(l)$", ylim=(0, 1))
    ax_theta.axhline(0.1, color="0.6", ls=":", lw=1, label=r"$\theta$ = 0.1")
    n = cfg["seeds"]
    for ax in (ax_loss, ax_theta):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, title=f"mean, min-max of {n} seeds", title_fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_toy_figure2(results: dict, path: Path) -> None:
    """The seed's Figure 2: log10 estimator variance against step (left) and the learned
    relaxation ``c_phi(z)`` of seed 0 at its final theta (right)."""
    curves, cfg = results["curves"], results["config"]
    steps = np.asarray(curves["step"])
    fig, (ax_var, ax_rel) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, c in curves["estimators"].items():
        lv = np.asarray([[np.nan if x is None else x for x in row] for row in c["log10_var"]])
        if name == "exact" or np.isnan(lv).all():
            continue  # the exact gradient has zero variance
        _band(ax_var, steps, lv, name, algo_color(name))
    ax_var.set(
        xlabel="step",
        ylabel="log10 Var[g]",
        title=f"Estimator variance ({cfg['var_samples']} samples per point)",
    )
    ax_var.grid(alpha=0.3)
    if ax_var.get_legend_handles_labels()[0]:
        ax_var.legend(fontsize=8)

    z = np.asarray(curves["relaxation_z"])
    t = cfg["target"]
    ax_rel.plot(z, (np.asarray(z > 0, dtype=float) - t) ** 2, color="0.4", ls="--", label="f(H(z))")
    for name, c in curves["estimators"].items():
        if c.get("relaxation") is not None:
            theta = c["theta"][-1][0]
            label = rf"{name} ($\theta$ = {theta:.3g})"
            ax_rel.plot(z, np.asarray(c["relaxation"][0]), color=algo_color(name), label=label)
    ax_rel.set(
        xlabel="z", ylabel=r"$c_\phi(z)$", title="Learned relaxation, seed 0 at its final theta"
    )
    ax_rel.grid(alpha=0.3)
    ax_rel.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_vae(results: dict, elbo_path: Path, variance_path: Path) -> None:
    """Train and valid ELBO per estimator against steps and against f-evaluations per example
    (an equal-evaluations comparison: each estimator's steps times its evaluations per step),
    the mean over seeds with a band of +- 1 SE where there are several; log10 gradient variance
    against step."""
    cfg = results["config"]
    evals = {name: row["f_evals_per_example"] for name, row in results.get("summary", {}).items()}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for name, c in results["curves"].items():
        color = algo_color(name)
        steps = np.asarray(c["step"], dtype=float)
        for ax, x in ((axes[0], steps), (axes[1], steps * evals.get(name, 1))):
            for key, ls, lw, what in (("train_elbo", "-", 1.6, "train"),
                                      ("valid_elbo", "--", 1.2, "valid")):  # fmt: skip
                y = np.asarray(c[key], dtype=float)
                ax.plot(x, y, color=color, lw=lw, ls=ls, label=f"{name} {what}")
                se = c.get(f"{key}_se")
                if se is not None and key == "train_elbo":
                    se = np.asarray([np.nan if v is None else v for v in se], dtype=float)
                    ax.fill_between(x, y - se, y + se, color=color, alpha=0.2, lw=0)
    seeds = cfg.get("seeds", 1)
    band = f", mean of {seeds} seeds +- 1 SE" if seeds > 1 else ""
    axes[0].set(xlabel="step", ylabel="ELBO (nats)",
                title=f"Discrete VAE: {cfg['model']} on {cfg['dataset']}{band}")  # fmt: skip
    axes[1].set(xlabel="f-evaluations per example (steps x evaluations per step)",
                title="at equal function evaluations")  # fmt: skip
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(elbo_path, dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for name, c in results["curves"].items():
        lv = [np.nan if v is None else v for v in c["log10_var"]]
        ax.plot(c["step"], lv, color=algo_color(name), lw=1.6, label=name)
    ax.set(
        xlabel="step",
        ylabel="log10 Var (encoder gradient)",
        title=f"Encoder gradient variance ({cfg['var_samples']} draws on one batch)",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(variance_path, dpi=120)
    plt.close(fig)


def _band_on_grid(
    curves: list[tuple[np.ndarray, np.ndarray]], grid: np.ndarray, carried: list[bool]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """Q1, median, Q3 over runs at each grid point, and how many runs each rests on. A run that
    stopped at the threshold (``carried``) keeps its last value to the grid's end, so that the
    median does not jump as the solved runs stop; any other run ends where it ended.

    :param curves: per run, (env steps, values).
    :param grid: the env steps to evaluate at.
    :param carried: per run, whether its last value is carried to the end.
    """
    rows = [
        np.interp(grid, x, y, left=np.nan, right=y[-1] if carry else np.nan)
        for (x, y), carry in zip(curves, carried, strict=True)
        if x.size > 1
    ]
    if not rows:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        stack = np.vstack(rows)
        return (
            np.nanpercentile(stack, 25, axis=0),
            np.nanmedian(stack, axis=0),
            np.nanpercentile(stack, 75, axis=0),
            np.isfinite(stack).sum(axis=0),
        )


def plot_compare(
    curves_by_algo: dict[str, list[dict[str, tuple[np.ndarray, np.ndarray]]]],
    returns_path: Path,
    grad_path: Path,
    threshold: float | None = None,
    solved_stops: dict[str, list[bool]] | None = None,
) -> None:
    """``returns.png``: mean return (last 100 episodes, at every episode) against env steps,
    median line and IQR band over seeds per algo, and (dashed) the periodic evaluations' mean
    return where the runs have them; ``grad_variance.png``: grad log10 variance
    against env steps, with (dashed) the plain advantage estimator's on the same batches for
    agents that measure it. Runs that stopped at the threshold carry their last value on (no
    sawtooth as seeds stop); the line is dotted where it rests on fewer runs than the algo has.

    :param curves_by_algo: per algo, each run's :func:`relax_rl.report.read_curves`.
    :param threshold: the env's solve threshold, drawn on the returns.
    :param solved_stops: per algo, per run, whether it stopped at the threshold
        (``--until-solved``); default none did.
    """
    solved_stops = solved_stops or {}
    for path, name, ylabel, title in (
        (returns_path, "return", "mean return (last 100 episodes)", "Return"),
        (
            grad_path,
            "grad_log10_var",
            "log10 Var of the policy-gradient estimate",
            "Policy-gradient variance",
        ),
    ):
        fig, ax = plt.subplots(figsize=(7.5, 4.5))
        partial = False
        for algo, runs in curves_by_algo.items():
            color = algo_color(algo)
            carried = solved_stops.get(algo) or [False] * len(runs)
            lines = [(name, "-", f"{algo} (n={len(runs)})")]
            if name == "return":  # the periodic evaluations (eval_freq), where the runs have them
                lines.append(("eval", "--", f"{algo}: evaluation (eval_freq)"))
            if name == "grad_log10_var":
                label = f"{algo}: advantage estimator, same batches"
                lines.append(("grad_log10_var_baseline", "--", label))
            for curve, style, label in lines:
                empty = (np.array([]), np.array([]))
                pairs = [
                    (c.get(curve, empty), carry) for c, carry in zip(runs, carried, strict=True)
                ]
                pairs = [(xy, carry) for xy, carry in pairs if xy[0].size]
                top = max((xy[0].max() for xy, _ in pairs), default=0)
                grid = np.linspace(0, top, 400)
                band = (
                    _band_on_grid([xy for xy, _ in pairs], grid, [c for _, c in pairs])
                    if top > 0
                    else None
                )
                if band is None:
                    continue
                lo, med, hi, n = band
                whole = np.where(n == len(runs), med, np.nan)
                ax.plot(grid, whole, color=color, ls=style, lw=1.6, label=label)
                if (n < len(runs)).any() and np.isfinite(med[n < len(runs)]).any():
                    partial = True  # the same median where some runs have ended: dotted
                    thin = np.where(n < len(runs), med, np.nan)
                    ax.plot(grid, thin, color=color, ls=":", lw=1.4)
                if style == "-":
                    ax.fill_between(grid, lo, hi, color=color, alpha=0.2, lw=0)
        if threshold is not None and name == "return":
            ax.axhline(threshold, color="0.5", ls=":", lw=1, label=f"threshold {threshold:g}")
        ax.set(xlabel="env steps", ylabel=ylabel, title=f"{title}: median and IQR over seeds")
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 100k, 1M
        ax.grid(alpha=0.3)
        if partial:
            ax.plot([], [], color="0.3", ls=":", label="dotted: fewer runs than n")
        if any(any(v) for v in solved_stops.values()):
            ax.plot([], [], ls="none", label="solved runs carry their last value")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)


def _algo_colors(algos: list[str]) -> dict[str, Any]:
    """Each algo's :func:`algo_color`.

    :param algos: the algos to color.
    """
    return {a: algo_color(a) for a in algos}


def _no_data_figure(path: Path, title: str) -> None:
    """A figure that says there is nothing to draw (all runs failed, say): the file exists, so a
    figure from an earlier report in the same folder is not mistaken for this one's.

    :param path: where to write the figure.
    :param title: the figure's title.
    """
    fig, ax = plt.subplots(figsize=(6, 2))
    ax.text(0.5, 0.5, "no finished run with a final mean return", ha="center", va="center")
    ax.set(title=title, xticks=[], yticks=[])
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_performance_profile(
    taus: np.ndarray,
    profiles: dict[str, np.ndarray],
    bands: dict[str, np.ndarray],
    path: Path,
    runs: dict[str, int],
    threshold: float | None = None,
) -> None:
    """``performance_profile.png``: rliable's score distribution of the final mean return per
    algo (fraction of runs above tau) with its 95% bootstrap band.

    :param taus: the thresholds the profiles are evaluated on.
    :param profiles: per algo, the fraction of runs above each tau.
    :param bands: per algo, ``(2, len(taus))`` lower and upper bounds.
    :param path: where to write the figure.
    :param runs: per algo, how many runs the profile is over (for the legend).
    :param threshold: the env's solve threshold, drawn as a vertical line.
    """
    title = "Performance profile: final mean return"
    if not profiles:
        _no_data_figure(path, title)
        return
    from rliable import plot_utils  # seaborn and arch: only when a comparison is drawn

    label = {a: f"{a} (n={runs.get(a, 0)})" for a in profiles}
    colors = _algo_colors(list(profiles))
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    plot_utils.plot_performance_profiles(
        {label[a]: p for a, p in profiles.items()},
        taus,
        performance_profile_cis={label[a]: b for a, b in bands.items()},
        ax=ax,
        colors={label[a]: c for a, c in colors.items()},
        xlabel=r"final mean return (last 100 episodes) $\tau$",
        ylabel=r"fraction of runs with return $> \tau$",
        labelsize="medium",
        ticklabelsize="medium",
    )
    if threshold is not None:
        ax.axvline(threshold, color="0.5", ls=":", lw=1, label=f"threshold {threshold:g}")
    ax.set_title(f"{title} (95% stratified-bootstrap bands)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_aggregates(aggregates: dict[str, dict[str, Any]], path: Path) -> None:
    """``aggregates.png``: rliable's interval-estimate plot of the IQM final mean return and
    (where the runs have a threshold) the IQM env steps to solve, unsolved runs censored at
    their budget (an algo that solved nothing sits at the budget), per algo, with 95%
    bootstrap CIs.

    :param aggregates: :func:`relax_rl.report.aggregate`'s output.
    :param path: where to write the figure.
    """
    title = "IQM with 95% CI"
    keys = {
        "final_mean_return_100_iqm": "IQM final return",
        "env_steps_to_solve_iqm": "IQM env steps to solve\n(unsolved at the budget)",
    }
    algos = [a for a, v in aggregates.items() if any(v.get(k) for k in keys)]
    keys = {k: name for k, name in keys.items() if any(aggregates[a].get(k) for a in algos)}
    if not algos:
        _no_data_figure(path, title)
        return
    from rliable import plot_utils  # seaborn and arch: only when a comparison is drawn

    colors = _algo_colors(algos)
    ests = {a: [aggregates[a].get(k) for k in keys] for a in algos}
    # An algo without an estimate (no threshold) gets no bar; with one run, no CI: the point.
    points = {
        a: np.array([np.nan if e is None else e["iqm"] for e in es]) for a, es in ests.items()
    }
    intervals = {
        a: np.array(
            [[np.nan, np.nan] if e is None else (e["ci"] or [e["iqm"], e["iqm"]]) for e in es]
        ).T
        for a, es in ests.items()
    }
    row_height = max(0.7, 1.8 / len(algos))  # rliable sizes the figure by rows: not too flat
    fig, axes = plot_utils.plot_interval_estimates(
        points,
        intervals,
        list(keys.values()),
        algorithms=algos,
        colors=colors,
        subfigure_width=4.0,
        row_height=row_height,
        xlabel=f"{title} (black: IQM; bar: bootstrap CI over runs; diamond: one run, no CI)",
        # rliable places this label in figure coordinates: keep it ~0.4 in below the axes
        xlabel_y_coordinate=-0.4 / (row_height * len(algos)),
    )
    for idx, ax in enumerate(np.atleast_1d(axes)):
        for row, a in enumerate(algos):
            e = ests[a][idx]
            if e is not None and e["ci"] is None:  # a zero-width bar would not show
                ax.plot(e["iqm"], row, marker="D", ms=7, color=colors[a], zorder=3)
        ax.use_sticky_edges = False  # bars stick the limits to their ends: no room for a point
        ax.margins(x=0.08)
        ax.title.set_fontsize("large")
        ax.tick_params(labelsize="medium")
        if "steps" in ax.get_title():
            ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    for text in fig.texts:
        text.set_fontsize("medium")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot_variance_decomposition(results: list[dict[str, Any]], path: Path) -> None:
    """``variance.png``: the three terms of the policy-gradient variance (log10) against the
    checkpoint's env steps, one panel per term, a line per run and estimator (dashed: the
    plain advantage estimator on the same samples), with 95% bootstrap intervals; a hollow
    marker is a term whose interval reaches 0 (not resolved by the design)."""
    terms = ("state", "action", "trajectory")
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharey=True)
    floor: dict[Any, list[tuple[float, Any]]] = {ax: [] for ax in axes}
    for run in results:
        for name in dict.fromkeys(e["estimator"] for p in run["points"] for e in p["estimators"]):
            paired = "same samples" in name
            label = f"{run.get('label', run['algo'])}: {name}" if len(results) > 1 else name
            color = algo_color("a2c" if paired else run["algo"])
            for ax, term in zip(axes, terms, strict=True):
                xs, ys, low, high, unresolved = [], [], [], [], []
                for point in run["points"]:
                    row = next(e for e in point["estimators"] if e["estimator"] == name)
                    y = row[f"log10_{term}"] if row[f"log10_{term}"] is not None else np.nan
                    ci = row.get(f"ci_{term}")
                    xs.append(point["env_steps"])
                    ys.append(y)
                    # the 95% interval where it stays above 0 (a log axis has no room below)
                    resolved = ci is not None and ci[0] > 0 and np.isfinite(y)
                    low.append(y - math.log10(ci[0]) if resolved else np.nan)
                    high.append(math.log10(ci[1]) - y if resolved else np.nan)
                    unresolved.append(not row.get(f"resolved_{term}", True))
                drawn = ax.errorbar(
                    xs,
                    ys,
                    yerr=[low, high],
                    marker="o",
                    ls="--" if paired else "-",
                    color=color,
                    capsize=3,
                    label=label,
                )
                # a term whose interval reaches 0: hollow (not resolved by the design)
                hollow = [(x, y) for x, y, u in zip(xs, ys, unresolved, strict=True) if u]
                if hollow:
                    hx, hy = zip(*hollow, strict=True)
                    ax.plot(hx, hy, "o", mfc="white", color=drawn.lines[0].get_color(), zorder=3)
                # an estimate <= 0 has no log: drawn at the panel's floor, not left out
                floor[ax] += [
                    (x, drawn.lines[0].get_color())
                    for x, y in zip(xs, ys, strict=True)
                    if np.isnan(y)
                ]
    for ax, points in floor.items():
        if points:
            bottom, top = ax.get_ylim()
            for x, color in points:
                ax.plot(x, bottom, "v", color=color, mfc="white", ms=8, clip_on=False, zorder=4)
            ax.set_ylim(bottom, top)
    if any(floor.values()):
        label = "estimate <= 0 (no log): at the floor"
        axes[-1].plot([], [], "v", color="0.3", mfc="white", label=label)
    for ax, term in zip(axes, terms, strict=True):
        symbol = {"state": "s", "action": "a", "trajectory": "tau"}[term]
        ax.set_title(f"Sigma_{symbol}: the {term} term")
        ax.set_xlabel("env steps")
        ax.xaxis.set_major_formatter(EngFormatter())
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("log10 variance (summed over actor parameters)")
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
