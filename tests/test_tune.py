"""``relax-rl tune``: an Optuna study with a tiny budget: trials as run folders, the best settings
as a config entry train takes, a study the same command resumes (a killed trial marked failed),
pruning through the periodic evaluations, the search spaces, and one-line refusals."""

import csv
import sys

import pytest
import yaml

from relax_rl.agents import ALGOS
from relax_rl.cli import main
from relax_rl.config import algo_parameters
from relax_rl.tuning import search_space

optuna = pytest.importorskip("optuna")


def _tune(out, trials, *extra, algo="a2c", env="CartPole-v1"):
    args = ["tune", "--algo", algo, "--env", env, "--trials", str(trials),
            "--total-steps", "600", "--n-envs", "2", "--eval-episodes", "2", "--set",
            "policy_kwargs.net_arch=[8]", "--out", str(out), *extra]  # fmt: skip
    return main(args)


def _trials(out):
    with open(out / "trials.csv") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("algo", list(ALGOS))
def test_every_search_space_names_the_algos_own_settings(algo):
    space = search_space(ALGOS[algo])
    assert space and set(space) <= set(algo_parameters(ALGOS[algo]))
    if algo in ("relax", "relax-ppo"):
        assert "cv_learning_rate" in space  # the control variate's knobs are tuned too


def test_tune_writes_trials_and_best_settings_train_takes_and_resumes(tmp_path, capsys):
    out = tmp_path / "study"
    assert _tune(out, 2) == 0
    rows = _trials(out)
    assert [r["state"] for r in rows] == ["COMPLETE", "COMPLETE"]
    for r in rows:  # each trial a run folder, evaluated every 60 env steps (10 per trial)
        assert (tmp_path / "study" / "trials" / f"trial-{r['number']}" / "summary.json").exists()
    best = yaml.safe_load((out / "best.yaml").read_text())
    entry = best["CartPole-v1"]
    assert {"learning_rate", "n_steps", "gamma"} <= set(entry) and entry["n_envs"] == 2
    assert "total_steps" not in entry  # the budget is the tuning's, not a setting found
    assert (out / "history.png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "best: trial" in printed and "2 complete, 0 pruned, 0 failed" in printed
    run = tmp_path / "run"
    args = ["train", "--algo", "a2c", "--env", "CartPole-v1", "--config", str(out / "best.yaml"),
            "--total-steps", "200", "--out", str(run), "--no-progress"]  # fmt: skip
    assert main(args) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["n_steps"] == entry["n_steps"]
    # a trial left running by a killed command is marked failed; the study goes on to 3
    study = optuna.load_study(study_name="a2c-CartPole-v1", storage=f"sqlite:///{out}/study.db")
    study.ask()
    assert _tune(out, 3) == 0
    assert [r["state"] for r in _trials(out)] == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE"]
    assert "3 finished trials, 0 to run" in (_tune(out, 3) == 0 and capsys.readouterr().err)


def test_a_setting_fixed_with_set_is_not_tuned(tmp_path, capsys):
    out = tmp_path / "study"
    assert _tune(out, 1, "--set", "gamma=0.9") == 0
    assert "tuning learning_rate, n_steps, gae_lambda" in capsys.readouterr().err
    rows = _trials(out)
    assert (
        "gamma" not in rows[0]
        and yaml.safe_load((out / "best.yaml").read_text())["CartPole-v1"]["gamma"] == 0.9
    )


def test_pruned_trials_stop_at_the_evaluation_the_pruner_names(tmp_path, capsys, monkeypatch):
    """The median pruner's decision, as any pruner's, reaches the run through its periodic
    evaluations: here a pruner that prunes every trial at its first report."""
    monkeypatch.setattr(
        optuna.pruners, "MedianPruner", lambda **kw: optuna.pruners.ThresholdPruner(lower=1e9)
    )
    out = tmp_path / "study"
    assert _tune(out, 2) == 0
    rows = _trials(out)
    assert [r["state"] for r in rows] == ["PRUNED", "PRUNED"]
    assert all(int(r["env_steps"]) < 600 for r in rows)
    assert "no trial completed" in capsys.readouterr().out
    assert not (out / "best.yaml").exists()


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--trials", "0"], "--trials: invalid value 0: expected an integer >= 1"),
        (["--env", "NoSuchEnv-v9"], "unknown env id 'NoSuchEnv-v9'"),
        (["--set", "gamma=2"], "gamma must be in [0, 1], got 2"),
        (["--storage", "nosuchdb://x"], "--storage nosuchdb://x"),
    ],
)
def test_bad_tune_input_is_one_line(tmp_path, capsys, extra, needle):
    code = _tune(tmp_path / "study", 1, *extra)
    err = capsys.readouterr().err.strip()
    assert code == 2 and needle in err and "\n" not in err, err


def test_a_corrupt_study_file_or_missing_optuna_is_one_line(tmp_path, capsys, monkeypatch):
    out = tmp_path / "study"
    out.mkdir()
    (out / "study.db").write_text("not a database")
    assert _tune(out, 1) == 2
    err = capsys.readouterr().err.strip()
    assert "is not a usable Optuna storage" in err and "\n" not in err
    monkeypatch.setitem(sys.modules, "optuna", None)
    assert _tune(tmp_path / "other", 1) == 2
    err = capsys.readouterr().err.strip()
    assert "pip install 'relax-rl[tune]'" in err and "\n" not in err


def _synthetic_study(n_trials):
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(
        lambda t: (
            -((t.suggest_float("lr", 1e-4, 1e-1, log=True) - 0.01) ** 2)
            + 0.1 * (t.suggest_categorical("mode", ["a", "b"]) == "a")
        ),
        n_trials=n_trials,
    )
    return study


def test_importance_is_drawn_unless_optuna_doubts_it(tmp_path, monkeypatch):
    """importance.png from enough trials, even when an unrelated warning (a ResourceWarning
    from the garbage collector) arrives while Optuna draws; not drawn, with Optuna's reason,
    from too few trials (equal shares would mislead)."""
    import warnings

    import optuna.visualization.matplotlib as ovm

    from relax_rl.tuning import _figures

    draw = ovm.plot_param_importances

    def with_a_stray_warning(study):
        warnings.warn("unclosed file <progress.csv>", ResourceWarning, stacklevel=1)
        return draw(study)

    monkeypatch.setattr(ovm, "plot_param_importances", with_a_stray_warning)
    lines = _figures(_synthetic_study(12), tmp_path)
    assert f"importance.png: {tmp_path / 'importance.png'}" in lines, lines
    assert (tmp_path / "importance.png").stat().st_size > 0
    (tmp_path / "few").mkdir()
    few = _figures(_synthetic_study(1), tmp_path / "few")
    assert any(line.startswith("importance.png: not drawn (") for line in few), few


def test_options_the_fixed_settings_rule_out_are_not_tuned(tmp_path, capsys):
    """MultiBinaryMatch's RELAX settings (the factorised preset: c_hat starts at 0, which needs a
    learned kappa; the return target, which needs raw advantages): kappa_mode and
    normalize_advantage are not tuned (said so), and no trial is spent on a refused run."""
    out = tmp_path / "t"
    small = ("--set", "env_kwargs.d=4", "--total-steps", "200")
    assert _tune(out, 1, *small, algo="relax", env="relax_rl/MultiBinaryMatch-v0") == 0
    header = capsys.readouterr().err.splitlines()[0]
    ruled_out = (
        "left out, the fixed settings rule them out: normalize_advantage=True, kappa_mode=optimal"
    )
    assert ruled_out in header, header
    tuned = header.split("; tuning ")[1].split(" (left out")[0].split(", ")
    assert "kappa_mode" not in tuned and "normalize_advantage" not in tuned and "cv_replay" in tuned
    assert [t["state"] for t in _trials(out)] == ["COMPLETE"]


def test_a_refused_combination_fails_before_any_step_and_is_not_counted(tmp_path):
    """Two sampled values that do not go together: the trial fails at once (its reason kept),
    and the worker draws another until the study has its finished trials."""
    from relax_rl.cli.tune import TrialBase, _optimize
    from relax_rl.tuning import Choice, finished_trials, open_study

    settings = {"cv_zero_init": True, "total_steps": 200, "n_envs": 2, "eval_episodes": 2,
                "eval_freq": 100, "policy_kwargs": {"net_arch": [8]}}  # fmt: skip
    space = {"kappa_mode": Choice(("optimal", "learned"))}  # (not through feasible_space)
    base = TrialBase("relax", "CartPole-v1", 0, tmp_path, settings, None, None, 2, space)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    open_study(storage, "s", 0, {})
    _optimize(storage, "s", seed=1, n_trials=3, total=3, base=base)
    study = open_study(storage, "s", 0, {})
    refused = [t for t in study.trials if t.state.name == "FAIL"]
    assert refused and all("kappa_mode='optimal'" in t.user_attrs["infeasible"] for t in refused)
    assert not any((tmp_path / "trials" / f"trial-{t.number}").exists() for t in refused)
    assert finished_trials(study) == 3
