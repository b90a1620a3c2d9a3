"""``--tensorboard``: SB3's TensorBoard events beside progress.csv, with every metric it has, and
one line naming the extra where TensorBoard is missing."""

import csv
import sys

import pytest

from relax_rl.cli import main


def _train(tmp_path, *extra):
    out = tmp_path / "run"
    args = ["train", "--algo", "relax", "--env", "CartPole-v1", "--total-steps", "1024",
            "--n-envs", "4", "--grad-var-freq", "2", "--log-interval", "4", "--set",
            "policy_kwargs.net_arch=[8]", "--set", "eval_episodes=0", "--out", str(out),
            "--no-progress", *extra]  # fmt: skip
    return main(args), out


def test_tensorboard_events_hold_every_metric_of_progress_csv(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    code, out = _train(tmp_path, "--tensorboard")
    assert code == 0
    with open(out / "progress.csv") as fh:
        rows = list(csv.DictReader(fh))
    numeric = {k for row in rows for k, v in row.items() if v not in ("", None)}
    events = EventAccumulator(str(out / "tensorboard")).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"rollout/ep_rew_mean", "train/cv_loss", "grad/log10_var_reduction"} <= tags
    # all but the counters SB3 itself keeps out of TensorBoard (the step is its x axis)
    counters = {"time/total_timesteps", "time/iterations", "time/time_elapsed", "train/n_updates"}
    assert numeric - tags <= counters and len(tags) > 10
    steps = [e.step for e in events.Scalars("rollout/ep_rew_mean")]
    assert steps == [
        int(float(r["time/total_timesteps"])) for r in rows if r["rollout/ep_rew_mean"]
    ]


def test_without_tensorboard_installed_one_line_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard -> ImportError
    code, out = _train(tmp_path, "--tensorboard")
    err = capsys.readouterr().err.strip()
    assert code == 2 and "pip install 'relax-rl[tensorboard]'" in err and "\n" not in err
    assert not out.exists()
