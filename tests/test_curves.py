"""The figures' data and looks: per-episode curves from monitor.csv (SB3's Monitor format),
no sawtooth as solved runs stop, one colour per algo everywhere, nothing silently dropped."""

import json

import matplotlib.pyplot as plt
import numpy as np
import pytest
from stable_baselines3.common.monitor import load_results

from relax_rl import plotting, report
from relax_rl.agents import ALGOS
from relax_rl.callbacks import EpisodeLog, read_monitor_rows
from relax_rl.cli import main


def test_a_run_logs_every_episode_in_sb3s_monitor_format(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--algo", "a2c", "--env", "CartPole-v1", "--total-steps", "3000"]
    settings = ["--set", "n_envs=4", "--set", "eval_episodes=0", "--no-progress"]
    assert main([*args, *settings, "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    header = (out / "monitor.csv").read_text().splitlines()[0]
    assert json.loads(header[1:])["env_id"] == "CartPole-v1"
    frame = load_results(str(out))  # SB3's reader takes it as its own Monitor's
    assert len(frame) == summary["episodes"] and {"r", "l", "t"} <= set(frame.columns)
    assert frame["env"].between(0, 3).all() and frame["env_steps"].is_monotonic_increasing
    # the return curve: one point per episode (progress.csv has a row per 100 updates)
    steps, means = report.read_curves(out)["return"]
    assert steps.size == summary["episodes"] > 10
    assert means[-1] == pytest.approx(summary["final_mean_return_100"])
    assert means[0] == frame["r"].iloc[0]  # the window grows from one episode
    held_steps, held = report.read_curves(out, end_steps=summary["total_env_steps"])["return"]
    assert held_steps[-1] == summary["total_env_steps"] and held[-1] == means[-1]


def _write_monitor(path, rows, torn=False):
    lines = ['#{"t_start": 0.0, "env_id": "X"}', "r,l,t,env_steps,env"]
    lines += [f"{r},{length},{t},{steps},0" for r, length, t, steps in rows]
    if torn:
        lines.append("7.0,3")  # a killed run's half-written line
    path.write_text("\n".join(lines) + "\n")


def test_a_continued_run_drops_the_episodes_after_its_checkpoint(tmp_path):
    path = tmp_path / "monitor.csv"
    _write_monitor(path, [(1.0, 5, 0.5, 10), (2.0, 5, 1.0, 20), (3.0, 5, 1.5, 30)], torn=True)
    assert [r["r"] for r in read_monitor_rows(path)] == [1.0, 2.0, 3.0]  # torn line skipped
    log = EpisodeLog(path, "X", resume_steps=20)
    log._on_training_start()
    log.close()
    rows = read_monitor_rows(path)
    assert [r["env_steps"] for r in rows] == [10.0, 20.0]  # steps 30 are played again
    assert json.loads(path.read_text().splitlines()[0][1:])["env_id"] == "X"
    assert log._start == pytest.approx(__import__("time").time() - 1.0, abs=5.0)  # t goes on


def test_solved_runs_carry_their_last_value_no_sawtooth():
    grid = np.linspace(0, 100, 11)
    runs = [
        (np.array([0.0, 40.0]), np.array([0.0, 10.0])),  # solved at 40 and stopped
        (np.array([0.0, 100.0]), np.array([0.0, 10.0])),
        (np.array([0.0, 60.0]), np.array([0.0, 12.0])),  # solved at 60 and stopped
    ]
    _, med, _, n = plotting._band_on_grid(runs, grid, carried=[True, False, True])
    assert (n == 3).all()
    assert med[-1] == 10.0 and np.all(np.diff(med) >= 0)  # rises then holds: no sawtooth
    # not carried (a run that ran out of budget): it ends there, and n says so
    *_, n_plain = plotting._band_on_grid(runs, grid, carried=[False, False, False])
    assert n_plain[-1] == 1 and n_plain[0] == 3


def test_every_algo_has_one_colour_in_every_figure(tmp_path, monkeypatch):
    from relax_rl.experiments.vae import ESTIMATORS

    assert set(ALGOS) <= set(plotting.COLORS) and set(ESTIMATORS) <= set(plotting.COLORS)
    for names in (ALGOS, ESTIMATORS):  # (the VAE's estimators are drawn together)
        colours = [plotting.algo_color(a) for a in names]
        assert len(set(colours)) == len(colours)
    assert plotting.algo_color("vimco") == plotting.algo_color("vimco")  # unlisted: fixed
    drawn = []
    monkeypatch.setattr(plotting.plt, "close", drawn.append)
    curve = {"return": (np.array([0.0, 50.0, 100.0]), np.array([1.0, 2.0, 3.0]))}
    empty = (np.array([]), np.array([]))
    curve.update({k: empty for k in ("grad_log10_var", "grad_log10_var_baseline")})
    for algos in (["ppo", "relax-ppo"], ["rloo", "relax-ppo", "a2c"]):
        plotting.plot_compare(
            {a: [curve, curve] for a in algos}, tmp_path / "r.png", tmp_path / "g.png"
        )
        lines = {line.get_label(): line.get_color() for line in drawn[-2].axes[0].get_lines()}
        for a in algos:
            assert lines[f"{a} (n=2)"] == plotting.COLORS[a]
    plt.close("all")


def test_a_term_estimated_at_or_below_zero_is_drawn_at_the_floor(tmp_path, monkeypatch):
    def row(action):
        return {
            "estimator": "RELAX",
            **{
                f"log10_{t}": v
                for t, v in (("state", 1.0), ("action", action), ("trajectory", 2.0))
            },
            **{f"ci_{t}": None for t in ("state", "action", "trajectory")},
            "resolved_action": action is not None,
        }

    points = [
        {"env_steps": 100, "estimators": [row(0.5)]},
        {"env_steps": 200, "estimators": [row(None)]},  # the action term came out <= 0
    ]
    drawn = []
    monkeypatch.setattr(plotting.plt, "close", drawn.append)
    plotting.plot_variance_decomposition([{"algo": "relax", "points": points}], tmp_path / "v.png")
    action_panel = drawn[0].axes[1]
    floor = [ln for ln in action_panel.get_lines() if ln.get_marker() == "v"]
    assert [ln.get_xdata()[0] for ln in floor] == [200]
    assert floor[0].get_ydata()[0] == action_panel.get_ylim()[0]
    labels = drawn[0].axes[2].get_legend_handles_labels()[1]
    assert "estimate <= 0 (no log): at the floor" in labels
    plt.close("all")
