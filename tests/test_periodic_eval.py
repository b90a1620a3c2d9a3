"""Periodic evaluation during training (``--eval-freq``, SB3's EvalCallback): evaluations.npz,
best_model.zip, the summary's best, a continued run's evaluations kept, ``eval --best``, the
curves, and one-line refusals."""

import csv
import json

import numpy as np
import pytest

from relax_rl.agents import A2C
from relax_rl.cli import main
from relax_rl.report import read_curves


def _train(out, *extra, steps="1000"):
    args = ["train", "--algo", "a2c", "--env", "CartPole-v1", "--total-steps", steps,
            "--n-envs", "2", "--set", "policy_kwargs.net_arch=[8]", "--eval-freq", "250",
            "--eval-episodes", "2", "--eval-envs", "2", "--log-interval", "10", "--out",
            str(out), "--no-progress", *extra]  # fmt: skip
    return main(args)


def test_evaluations_best_model_and_summary(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out) == 0
    with np.load(out / "evaluations.npz") as data:
        steps, results = data["timesteps"], data["results"]
    assert list(steps) == [250, 500, 750, 1000] and results.shape == (4, 2)
    means = results.mean(axis=1)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best_eval_mean_return"] == pytest.approx(means.max())
    assert summary["best_eval_env_steps"] == steps[int(np.argmax(means))]
    assert summary["eval_deterministic"] is True
    assert isinstance(A2C.load(out / "best_model.zip"), A2C)
    with open(out / "progress.csv") as fh:
        assert any(row.get("eval/mean_reward") for row in csv.DictReader(fh))
    eval_steps, eval_means = read_curves(out)["eval"]
    assert list(eval_steps) == [250, 500, 750, 1000] and np.allclose(eval_means, means)
    capsys.readouterr()
    assert main(["eval", str(out), "--best"]) == 0
    assert "(best model): mean return" in capsys.readouterr().out
    assert main(["plot", str(out), "--out", str(tmp_path / "plots")]) == 0
    assert (tmp_path / "plots" / "returns.png").stat().st_size > 0


def test_a_continued_run_keeps_its_evaluations_and_best(tmp_path):
    out = tmp_path / "run"
    assert _train(out) == 0
    best = json.loads((out / "summary.json").read_text())["best_eval_mean_return"]
    assert main(["train", "--resume", str(out), "--total-steps", "500", "--no-progress"]) == 0
    with np.load(out / "evaluations.npz") as data:
        assert list(data["timesteps"]) == [250, 500, 750, 1000, 1250, 1500]
        means = data["results"].mean(axis=1)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best_eval_mean_return"] == pytest.approx(means.max())
    assert means.max() >= best


def test_sampled_evaluations_and_a_normalised_run_keeps_its_best_statistics(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out, "--set", "eval_deterministic=false", "--normalize") == 0
    assert (out / "best_model.zip").exists() and (out / "best_model_vecnormalize.pkl").exists()
    assert json.loads((out / "summary.json").read_text())["eval_deterministic"] is False
    capsys.readouterr()
    assert main(["eval", str(out), "--best"]) == 0
    assert "(stochastic)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--eval-episodes", "0"], "eval_freq=250 evaluates 0 episodes; give eval_episodes >= 1"),
        (["--eval-envs", "0"], "--eval-envs: invalid value 0: expected an integer >= 1"),
        (["--eval-freq", "-5"], "-5"),
    ],
)
def test_bad_evaluation_settings_are_one_line(tmp_path, capsys, extra, needle):
    out = tmp_path / "run"
    assert _train(out, *extra) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err and not out.exists()


def test_eval_best_of_a_run_without_periodic_evaluations(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out, "--eval-freq", "0") == 0
    capsys.readouterr()
    assert not (out / "evaluations.npz").exists() and not (out / "best_model.zip").exists()
    assert main(["eval", str(out), "--best"]) == 2
    err = capsys.readouterr().err.strip()
    assert "the run kept no best model (train with --eval-freq N)" in err and "\n" not in err
