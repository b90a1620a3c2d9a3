"""``relax-rl train`` / ``eval`` end to end, and their one-line errors."""

import csv
import json

import gymnasium as gym
import numpy as np
import pytest
import yaml
from conftest import wait_until
from stable_baselines3.common.callbacks import BaseCallback

from relax_rl.cli import main


def _train(tmp_path, *extra):
    out = tmp_path / "run"
    args = [
        "train",
        "--algo",
        "relax",
        "--env",
        "CartPole-v1",
        "--total-steps",
        "1200",
        "--n-envs",
        "2",
        "--set",
        "policy_kwargs.net_arch=[8]",
        "--set",
        "cv_net_arch=[8]",
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]
    return main(args), out


def test_train_then_eval(tmp_path, capsys):
    code, out = _train(tmp_path)
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["algo"] == "relax" and summary["threshold"] == 475.0
    assert summary["total_env_steps"] >= 1200
    printed = json.loads(capsys.readouterr().out)
    assert printed["episodes"] == summary["episodes"]
    config = (out / "config.yaml").read_text()
    assert "cv_net_arch" in config and "n_envs: 2" in config
    # every hyperparameter the agent was built with, defaults included, and the versions
    resolved = yaml.safe_load(config)
    assert resolved["learning_rate"] == 7e-4 and resolved["gamma"] == 0.99
    assert resolved["n_steps"] == 5 and resolved["control_variate"]["kappa"] == "optimal"
    assert resolved["policy"]["net_arch"] == [8]
    assert resolved["policy"]["activation_fn"] == "tanh"
    assert {"torch", "stable-baselines3", "gymnasium", "relax-rl"} <= set(resolved["versions"])
    assert main(["eval", str(out), "--episodes", "3"]) == 0
    assert "mean return" in capsys.readouterr().out


def test_preset_and_config_file(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("learning_rate: 0.003\n")
    code, out = _train(tmp_path, "--preset", "paper", "--config", str(cfg), "--n-envs", "1")
    assert code == 0
    config = (out / "config.yaml").read_text()
    assert "learning_rate: 0.003" in config and "use_baseline: false" in config


class _OddObservations(gym.Env):
    def __init__(self, observation_space, action_space=None):
        self.observation_space = observation_space
        self.action_space = action_space or gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, True, False, {}


@pytest.fixture(scope="module")
def odd_envs():
    """Envs a user may bring: dict observations, image observations, unbounded actions."""
    spaces = gym.spaces
    dict_obs = spaces.Dict({"a": spaces.Box(-1, 1, (2,)), "b": spaces.Discrete(3)})
    pixels = spaces.Box(0, 255, (32, 32, 3), np.uint8)
    for name, space in (("test/DictObs-v0", dict_obs), ("test/Pixels-v0", pixels)):
        gym.register(name, entry_point=_OddObservations, kwargs={"observation_space": space})
    unbounded = {
        "observation_space": spaces.Box(-1, 1, (2,)),
        "action_space": spaces.Box(-np.inf, np.inf, (2,)),
    }
    gym.register("test/UnboundedActions-v0", entry_point=_OddObservations, kwargs=unbounded)
    yield
    for name in ("test/DictObs-v0", "test/Pixels-v0", "test/UnboundedActions-v0"):
        gym.registry.pop(name, None)


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--algo", "trpo", "--env", "CartPole-v1"], "invalid choice: 'trpo' (choose from"),
        (["--algo", "ppo", "--env", "CartPole-v1", "--set", "ratio=bits"], "unknown ratio 'bits'"),
        (["--algo", "a2c", "--env", "CartPol-v1"], "did you mean CartPole-v1"),
        (["--algo", "a2c", "--env", "test/UnboundedActions-v0"], "finite lower and upper bound"),
        (["--algo", "a2c", "--env", "CartPole-v1", "--set", "lr=1"], "unknown config key 'lr'"),
        (["--algo", "a2c", "--env", "CartPole-v1", "--set", "gamma=high"], "wrong type"),
        (["--algo", "a2c", "--env", "CartPole-v1", "--set", "gamma"], "not key=value"),
        (["--algo", "a2c", "--env", "CartPole-v1", "--preset", "nope"], "no entry 'nope'"),
        (
            ["--algo", "a2c", "--env", "CartPole-v1", "--total-steps", "0"],
            "--total-steps: invalid value 0",
        ),
        (
            ["--algo", "a2c", "--env", "CartPole-v1", "--set", "total_steps=0"],
            "total_steps must be >= 1",
        ),
        (
            ["--algo", "a2c", "--env", "CartPole-v1", "--set", "vec_env=ray"],
            "unknown vec_env 'ray'",
        ),
        (["--env", "CartPole-v1"], "--algo is required (or --resume RUN_DIR)"),
        (["--algo", "a2c", "--env", "CartPole-v1", "--set", "optimizer=sgd"], "optimizer"),
        (["--algo", "relax", "--env", "CartPole-v1", "--set", "cv_net_arch=5"], "[64, 64]"),
        (["--algo", "a2c", "--env", "ALE/Pong-v5"], "namespace 'ALE'"),
        (["--algo", "a2c", "--env", "relax_rl/ContextualBandit2-v0", "--until-solved"], "has none"),
        (["--algo", "a2c", "--env", "test/DictObs-v0"], "FlattenObservation"),
        (["--algo", "a2c", "--env", "test/Pixels-v0"], "raw pixels"),
    ],
)
def test_train_bad_input(tmp_path, capsys, args, needle, odd_envs):
    code = main(["train", *args, "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "o").exists()


def test_malformed_config_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rate: [1, 2\n")
    code = main(
        [
            "train",
            "--algo",
            "a2c",
            "--env",
            "CartPole-v1",
            "--config",
            str(bad),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 2 and "not valid YAML" in capsys.readouterr().err


def test_eval_missing_and_corrupt_model(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "a_file").write_text("x")
    assert main(["eval", str(tmp_path / "a_file")]) == 2
    assert "is a file" in capsys.readouterr().err
    run = tmp_path / "run"
    run.mkdir()
    assert main(["eval", str(run)]) == 2
    assert "model.zip is missing" in capsys.readouterr().err
    (run / "model.zip").write_bytes(b"not a zip")
    (run / "summary.json").write_text(json.dumps({"algo": "a2c", "env_id": "CartPole-v1"}))
    assert main(["eval", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert "corrupt" in err and len(err.splitlines()) == 1


def test_scientific_notation_in_set_and_config_files(tmp_path):
    """YAML 1.1 reads 1e-3 (no dot) as a string; a float or int key takes it as a number."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("learning_rate: 3e-4\n")
    code, out = _train(
        tmp_path, "--config", str(cfg), "--set", "cv_learning_rate=1e-3", "--set", "n_steps=1e1"
    )
    assert code == 0
    config = (out / "config.yaml").read_text()
    assert "learning_rate: 0.0003" in config and "cv_learning_rate: 0.001" in config
    assert "n_steps: 10" in config


def test_progress_bar_leaves_stdout_to_the_summary(tmp_path, capsys):
    """`relax-rl train ... | python -c "import json; json.load(sys.stdin)"` must work."""
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--algo",
            "a2c",
            "--env",
            "CartPole-v1",
            "--total-steps",
            "400",
            "--set",
            "policy_kwargs.net_arch=[8]",
            "--out",
            str(out),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0
    assert json.loads(captured.out)["algo"] == "a2c"
    assert "400" in captured.err  # the bar itself


def test_sigterm_saves_the_run_like_ctrl_c(tmp_path):
    """`kill PID` / `timeout` / SLURM send SIGTERM: the run keeps a checkpoint, its model and a
    summary saying interrupted, and the exit code is 143 (128 + SIGTERM)."""
    import os
    import signal
    import subprocess
    import sys

    out = tmp_path / "run"
    argv = [
        "train", "--algo", "relax", "--env", "CartPole-v1", "--total-steps", "2000000",
        "--set", "checkpoint_freq=500", "--out", str(out), "--no-progress",
    ]  # fmt: skip
    code = f"import sys; from relax_rl.cli import main; sys.exit(main({argv!r}))"
    env = {**os.environ, "WANDB_MODE": "disabled"}
    proc = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, text=True
    )
    wait_until(lambda: any((out / "checkpoints").glob("*.zip")), proc, "a first checkpoint")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["total_env_steps"] > 0
    assert (out / "model.zip").exists()
    assert list((out / "checkpoints").glob("model_interrupted_*.zip"))


@pytest.mark.parametrize(
    "args,needle",
    [
        (["train", "--algo", "a2c", "--env", "CartPole-v1", "--out", "{file}"], "not a folder"),
        (["compare", "--algos", "a2c", "--env", "CartPole-v1", "--out", "{file}"], "not a folder"),
        (["vae", "--steps", "300", "--out", "{file}/sub"], "cannot be created"),
        (["toy", "--steps", "300", "--out", "{file}"], "not a folder"),
        (["train", "--algo", "a2c", "--env", "CartPole-v1", "--config", "{tmp}"], "is a folder"),
        (
            ["train", "--algo", "a2c", "--env", "CartPole-v1", "--seed", "-1"],
            "--seed: invalid value -1",
        ),
        (["vae", "--seed", "-1"], "--seed: invalid value -1"),
        # a folder no one can create, even root (for whom os.access says yes everywhere)
        (["vae", "--steps", "300", "--out", "/proc/relax-rl-out"], "is not writable"),
        (["toy", "--steps", "300", "--out", "/proc/relax-rl-out"], "is not writable"),
        (["train", "--algo", "a2c", "--env", "CartPole-v1", "--out", "/proc/r"], "not writable"),
    ],
)
def test_bad_paths_and_seeds_fail_in_one_line_before_any_work(tmp_path, capsys, args, needle):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    argv = [a.format(file=a_file, tmp=tmp_path) for a in args]
    code = main([*argv, "--no-progress"] if argv[0] in ("train", "vae", "toy") else argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and needle in err[0], err
    assert a_file.read_text() == "not a folder"


def test_a_users_own_env_as_module_colon_id(tmp_path, monkeypatch, capsys):
    """gymnasium's `module:EnvId`: the module is imported, which registers the env."""
    pkg = tmp_path / "my_grid_envs"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "import gymnasium as gym\n"
        "gym.register('MyGrid-v0', max_episode_steps=50,\n"
        "             entry_point='gymnasium.envs.classic_control.cartpole:CartPoleEnv')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "run"
    argv = ["train", "--algo", "a2c", "--env", "my_grid_envs:MyGrid-v0", "--total-steps", "300"]
    assert main([*argv, "--out", str(out), "--no-progress"]) == 0
    assert json.loads((out / "summary.json").read_text())["env_id"] == "my_grid_envs:MyGrid-v0"
    assert main(["eval", str(out), "--episodes", "2"]) == 0
    capsys.readouterr()
    bad = ["train", "--algo", "a2c", "--env", "no_such_module_xyz:Grid-v0", "--out", str(out)]
    assert main(bad) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot import module 'no_such_module_xyz'" in err[0]


def test_version(capsys):
    from relax_rl import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"relax-rl {__version__}"


@pytest.mark.parametrize("interval,rows", [(None, 3), (10, 21)])
def test_log_interval_sets_the_rows_of_progress_csv(tmp_path, interval, rows):
    """SB3 A2C's habit: a row every 100 updates by default (and one for the last, partial
    interval), not one per update."""
    out = tmp_path / "run"
    argv = ["train", "--algo", "a2c", "--env", "CartPole-v1", "--total-steps", "2000"]
    argv += ["--n-envs", "2", "--set", "policy_kwargs.net_arch=[8]", "--out", str(out)]
    if interval is not None:
        argv += ["--log-interval", str(interval)]
    assert main([*argv, "--no-progress"]) == 0  # 200 updates of 2 x 5 steps
    with open(out / "progress.csv") as fh:
        logged = list(csv.DictReader(fh))
    assert len(logged) == rows
    assert logged[-1]["time/total_timesteps"] == "2000"


def test_every_option_has_help():
    import argparse

    from relax_rl.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    missing = [
        f"{name} {action.option_strings or action.dest}"
        for name, command in sub.choices.items()
        for action in command._actions
        if not isinstance(action, argparse._HelpAction) and not action.help
    ]
    assert not missing, missing


def test_params_lists_every_key_with_default_config_value_and_meaning(capsys):
    assert main(["params", "--algo", "relax", "--env", "CartPole-v1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    by_key = {line.split()[0]: line for line in lines[1:]}
    from relax_rl import config as cfg
    from relax_rl.agents import RELAX

    assert set(by_key) == set(cfg.RUN_KEYS) | set(cfg.algo_parameters(RELAX))
    assert "relax.yaml[CartPole-v1]: 8" in by_key["n_envs"]  # the zoo entry's value
    assert "0.0007" in by_key["learning_rate"] and "learning rate" in by_key["learning_rate"]
    assert "kappa" in by_key["kappa_mode"] and "optimal" in by_key["kappa_mode"]
    assert main(["params", "--algo", "trpo"]) == 2


def test_runspec_create_resolves_settings_as_the_cli(tmp_path):
    from relax_rl.errors import UsageError
    from relax_rl.training import RunSpec, train

    spec = RunSpec.create(
        "a2c",
        "CartPole-v1",
        out=tmp_path / "run",
        settings={"total_steps": 400, "n_envs": 2, "policy_kwargs": {"net_arch": [8]}},
    )
    assert spec.settings["threshold"] == 475.0 and spec.settings["n_envs"] == 2
    assert train(spec)["total_env_steps"] >= 400
    paper = RunSpec.create("relax", "CartPole-v1", preset="paper")
    assert paper.agent_kwargs["use_baseline"] is False  # the preset's entry
    with pytest.raises(UsageError, match="unknown config key 'lr'"):
        RunSpec.create("a2c", "CartPole-v1", settings={"lr": 1})
    with pytest.raises(ValueError, match="unknown algo 'trpo'"):
        RunSpec.create("trpo", "CartPole-v1")


def test_wandb_online_without_a_login_fails_in_one_line_before_any_file(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    out = tmp_path / "run"
    argv = ["train", "--algo", "a2c", "--env", "CartPole-v1", "--total-steps", "200"]
    code = main([*argv, "--track", "--wandb-mode", "online", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "needs a login" in err[0], err
    assert not out.exists()


class _StopAt(BaseCallback):
    """Ctrl-C at ``steps`` env steps (what the user's interrupt does to train())."""

    def __init__(self, steps: int) -> None:
        super().__init__()
        self.steps = steps

    def _on_step(self) -> bool:
        if self.num_timesteps >= self.steps:
            raise KeyboardInterrupt
        return True


def _stopped_run(tmp_path, stop_at=600, total=1600, checkpoint_freq=200):
    from relax_rl.training import RunSpec, train

    spec = RunSpec.create(
        "relax",
        "CartPole-v1",
        seed=3,
        out=tmp_path / "run",
        settings={
            "total_steps": total,
            "n_envs": 2,
            "checkpoint_freq": checkpoint_freq,
            "log_interval": 10,
            "eval_episodes": 0,
            "policy_kwargs": {"net_arch": [8]},
            "cv_net_arch": [8],
            "learning_rate": 3e-3,
        },
        callbacks=[_StopAt(stop_at)],
    )
    if stop_at < total:
        with pytest.raises(KeyboardInterrupt):
            train(spec)
    else:
        train(spec)
    return spec.out


def _steps_column(out):
    with (out / "progress.csv").open() as f:
        return [int(r["time/total_timesteps"]) for r in csv.DictReader(f)]


def _assert_monitor_matches(out, summary):
    """monitor.csv holds each episode the summary counts once, in order of env steps."""
    from relax_rl.callbacks import read_monitor_rows

    rows = read_monitor_rows(out / "monitor.csv")
    steps = [r["env_steps"] for r in rows]
    assert len(rows) == summary["episodes"] and steps == sorted(steps)
    assert steps[-1] <= summary["total_env_steps"]
    last = [r["r"] for r in rows[-100:]]
    assert np.mean(last) == pytest.approx(summary["final_mean_return_100"])


def test_resume_continues_an_interrupted_run_to_its_total(tmp_path, capsys):
    out = _stopped_run(tmp_path)
    before = json.loads((out / "summary.json").read_text())
    assert before["status"] == "interrupted" and 600 <= before["total_env_steps"] < 1600
    rows_before = _steps_column(out)
    from relax_rl.agents import RELAX

    saved = RELAX.load(out / "model.zip").policy.state_dict()

    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["status"] == "completed" and summary["total_env_steps"] >= 1600
    assert summary["resumed_from"] == [
        {"env_steps": before["total_env_steps"], "model": "model.zip"}
    ]
    # the episodes go on counting from the checkpoint's
    assert summary["episodes"] > before["episodes"]
    # progress.csv: the first session's rows, then the continued run's, steps increasing
    steps = _steps_column(out)
    assert steps[: len(rows_before)] == rows_before and len(steps) > len(rows_before)
    assert steps == sorted(steps) and steps[-1] >= 1600
    _assert_monitor_matches(out, summary)  # the episodes of both sessions, each once
    # the continued run started from the saved parameters and trained them further
    trained = RELAX.load(out / "model.zip").policy.state_dict()
    assert any(not np.allclose(saved[k], trained[k]) for k in saved)
    assert yaml.safe_load((out / "config.yaml").read_text())["seed"] == 3


@pytest.mark.parametrize("killed_at_the_interrupt", [True, False])
def test_resume_a_killed_run_from_its_newest_checkpoint(tmp_path, capsys, killed_at_the_interrupt):
    out = _stopped_run(tmp_path, stop_at=900)
    # a run killed with SIGKILL: no model.zip, its summary still says running
    (out / "model.zip").unlink()
    (out / "episodes.json").unlink()
    summary = json.loads((out / "summary.json").read_text())
    (out / "summary.json").write_text(json.dumps({**summary, "status": "running"}))
    (newest_zip,) = (out / "checkpoints").glob("model_interrupted_*_steps.zip")
    regular = max(
        (int(p.stem.split("_")[1]), p)
        for p in (out / "checkpoints").glob("model_*_steps.zip")
        if p.stem.split("_")[1].isdigit()
    )
    if killed_at_the_interrupt:  # the newest checkpoint: the one saved at the interrupt
        newest = int(newest_zip.stem.split("_")[2])
        assert newest > regular[0]
        state = "interrupted_"
    else:  # killed before: only the periodic checkpoints
        newest_zip.unlink()
        newest, newest_zip = regular
        state = ""
    episodes = json.loads(
        (out / "checkpoints" / f"model_episodes_{state}{newest}_steps.json").read_text()
    )["episodes"]
    assert main(["train", "--resume", str(out), "--no-progress", "--total-steps", "400"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["resumed_from"][0]["env_steps"] == newest
    assert result["resumed_from"][0]["model"] == f"checkpoints/{newest_zip.name}"
    # SB3-style: --total-steps N is N more env steps
    assert newest + 400 <= result["total_env_steps"] < newest + 400 + 2 * 5
    assert result["episodes"] > episodes
    # rows after the checkpoint the killed run had logged are replaced by the continued run's
    steps = _steps_column(out)
    assert steps == sorted(steps)
    _assert_monitor_matches(out, result)  # monitor.csv's too: none counted twice


@pytest.mark.parametrize(
    "extra,needle",
    [
        ([], "has trained its total_steps=1,600 already; give --total-steps N"),
        (["--algo", "a2c"], "--algo cannot be given with it"),
        (["--n-envs", "4"], "--n-envs cannot be given with it"),
        (["--until-solved"], "--until-solved cannot be given with it"),
        (["--total-steps", "-3"], "--total-steps: invalid value -3"),
    ],
)
def test_resume_refuses_in_one_line(tmp_path, capsys, extra, needle):
    out = _stopped_run(tmp_path, stop_at=10**9, total=1600, checkpoint_freq=10**6)
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"
    code = main(["train", "--resume", str(out), "--no-progress", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and needle in err[0], err


def test_resume_a_folder_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for target, needle in [
        (tmp_path / "nothing", "no such run folder"),
        (tmp_path / "empty", "not a run folder (no readable config.yaml)"),
    ]:
        assert main(["train", "--resume", str(target)]) == 2
        assert needle in capsys.readouterr().err


_NO_RENDER_ENVS = """
import gymnasium as gym
import numpy as np


class DictObs(gym.Env):  # no metadata: no render modes
    observation_space = gym.spaces.Dict({"x": gym.spaces.Box(-1, 1, (2,))})
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        return {"x": np.zeros(2, np.float32)}, {}

    def step(self, action):
        return {"x": np.zeros(2, np.float32)}, 1.0, True, False, {}


gym.register("NoRenderDict-v0", entry_point=DictObs)
"""


def test_a_users_env_without_render_modes_gets_one_line_and_no_warning(tmp_path):
    """SB3's make_vec_env asks every env for render_mode="rgb_array"; a user's env that
    declares no render modes must not add gymnasium's warning to the one-line error."""
    import os
    import subprocess
    import sys

    (tmp_path / "user_envs.py").write_text(_NO_RENDER_ENVS)
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "WANDB_MODE": "disabled"}
    done = subprocess.run(
        [sys.executable, "-m", "relax_rl", "train", "--algo", "a2c", "--env",
         "user_envs:NoRenderDict-v0", "--out", str(tmp_path / "r")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "FlattenObservation" in lines[0], lines


def test_eval_seed_reproduces_trains_own_evaluation(tmp_path, capsys):
    """`eval` runs the evaluation episodes of the run's seed (`--seed S`: of seed S): it prints
    the evaluation train wrote into summary.json; another seed runs other episodes."""
    code, out = _train(tmp_path)
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    capsys.readouterr()
    assert main(["eval", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"mean return {summary['eval_mean_return']:.2f}" in printed, (printed, summary)
    assert main(["eval", str(out), "--seed", str(summary["seed"])]) == 0
    assert capsys.readouterr().out == printed
    assert main(["eval", str(out), "--seed", str(summary["seed"] + 1), "--stochastic"]) == 0
    assert capsys.readouterr().out != printed


def test_resume_keeps_the_update_count(tmp_path, capsys):
    out = _stopped_run(tmp_path, stop_at=600)
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    with (out / "progress.csv").open() as f:
        updates = [int(r["train/n_updates"]) for r in csv.DictReader(f) if r["train/n_updates"]]
    assert updates == sorted(updates)  # the continued run counts on from the checkpoint's


def test_integer_flags_take_scientific_notation(capsys):
    from relax_rl.cli import build_parser

    args = build_parser().parse_args(["train", "--algo", "a2c", "--env", "CartPole-v1",
                                      "--total-steps", "1e4"])  # fmt: skip
    assert args.total_steps == 10_000
    assert main(["train", "--algo", "a2c", "--env", "CartPole-v1", "--total-steps", "1.5"]) == 2
    assert "invalid value '1.5'" in capsys.readouterr().err


_USER_BANDIT = """
import gymnasium as gym
import numpy as np


class Bandit(gym.Env):
    observation_space = gym.spaces.Box(0, 1, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(1, np.float32), {}

    def step(self, action):
        return np.zeros(1, np.float32), float(action), True, False, {}


gym.register("UserBandit-v0", entry_point=Bandit)
"""


def test_a_module_env_id_from_the_current_folder_works_from_the_console_script(tmp_path):
    """`relax-rl train --env user_envs:UserBandit-v0` in the folder holding user_envs.py, no
    PYTHONPATH (as `python -m relax_rl` finds it), and `eval` of that run likewise."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "user_envs.py").write_text(_USER_BANDIT)
    script = Path(sys.executable).parent / "relax-rl"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["WANDB_MODE"] = "disabled"
    for argv in (
        ["train", "--algo", "a2c", "--env", "user_envs:UserBandit-v0", "--total-steps", "200",
         "--eval-episodes", "2", "--no-progress", "--out", "run"],
        ["eval", "run", "--episodes", "2"],
    ):  # fmt: skip
        done = subprocess.run([str(script), *argv], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stderr
    assert "mean return" in done.stdout


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--set", "gamma=1.5"], "gamma must be in [0, 1], got 1.5"),
        (["--set", "gamma=-0.1"], "gamma must be in [0, 1], got -0.1"),
        (["--set", "gamma=.nan"], "gamma must be in [0, 1], got nan"),
        (["--set", "gae_lambda=2"], "gae_lambda must be in [0, 1], got 2.0"),
        (["--threshold", "nan"], "threshold must be a finite number, got nan"),
        (["--threshold", "inf"], "threshold must be a finite number, got inf"),
    ],
)
@pytest.mark.parametrize("command", ["train", "compare"])
def test_values_out_of_range_are_refused_before_a_run_folder(tmp_path, capsys, args, needle,
                                                             command):  # fmt: skip
    algo = ["--algo", "a2c"] if command == "train" else ["--algos", "a2c", "--seeds", "0"]
    out = tmp_path / "run"
    code = main([command, *algo, "--env", "CartPole-v1", *args, "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and needle in err[0], err
    assert not out.exists()


def test_compare_until_solved_without_a_threshold_and_params_of_an_unknown_env(tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["compare", "--algos", "a2c", "--env", "Pendulum-v1", "--until-solved", "--seeds", "0"]
    assert main([*args, "--out", str(out)]) == 2
    assert "needs a reward threshold and Pendulum-v1 has none" in capsys.readouterr().err
    assert not out.exists()
    assert main(["params", "--algo", "a2c", "--env", "NoSuchEnv-v0"]) == 2
    err = capsys.readouterr()
    assert "unknown env id 'NoSuchEnv-v0'" in err.err and err.out == ""


_BROKEN_ENVS = {
    "broken_import": "import gymnasium\nraise RuntimeError('boom at import')\n",
    "syntax_error": "import gymnasium\ndef f(:\n    pass\n",
    "user_bad_envs": """
import gymnasium as gym
import numpy as np


class Base(gym.Env):
    observation_space = gym.spaces.Box(0, 1, (3,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        return np.zeros(3, np.float32), {}

    def step(self, action):
        return np.zeros(3, np.float32), 0.0, True, False, {}


class WrongReset(Base):
    def reset(self, *, seed=None, options=None):
        return np.zeros(5, np.float32), {}


class OldApi(Base):
    def reset(self, *, seed=None, options=None):
        return np.zeros(3, np.float32)


class OldStep(Base):
    def step(self, action):
        return np.zeros(3, np.float32), 0.0, True, {}


class RaisesInStep(Base):
    def step(self, action):
        raise ValueError("physics exploded")


class WrongStep(Base):
    def step(self, action):
        return np.zeros(4, np.float32), 0.0, False, False, {}


for cls in (WrongReset, OldApi, OldStep, RaisesInStep, WrongStep):
    gym.register(f"{cls.__name__}-v0", entry_point=cls)
""",
}


@pytest.mark.parametrize(
    "env_id,needle",
    [
        ("broken_import:X-v0", "cannot import module 'broken_import' (boom at import)"),
        ("syntax_error:X-v0", "cannot import module 'syntax_error' (invalid syntax"),
        ("user_bad_envs:WrongReset-v0", "reset() returned an observation of shape (5,)"),
        ("user_bad_envs:OldApi-v0", "reset() returned a ndarray, not (observation, info)"),
        ("user_bad_envs:OldStep-v0", "step() returned 4 values, not (observation, reward"),
        ("user_bad_envs:RaisesInStep-v0", "step() failed: ValueError: physics exploded"),
        ("user_bad_envs:WrongStep-v0", "step() returned an observation of shape (4,)"),
    ],
)
def test_a_broken_user_env_is_one_line_before_a_run_folder(tmp_path, monkeypatch, capsys,
                                                           env_id, needle):  # fmt: skip
    for name, code in _BROKEN_ENVS.items():
        (tmp_path / f"{name}.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "run"
    args = ["train", "--algo", "a2c", "--env", env_id, "--out", str(out), "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not out.exists()


@pytest.fixture(scope="module")
def _finished_ppo_run(tmp_path_factory):
    """A small finished PPO run with normalised observations (copied by each test)."""
    out = tmp_path_factory.mktemp("ppo") / "run"
    args = ["train", "--algo", "ppo", "--env", "CartPole-v1", "--total-steps", "256", "--set",
            "n_steps=64", "--set", "batch_size=64", "--set", "policy_kwargs.net_arch=[8]",
            "--normalize", "--eval-episodes", "1", "--no-progress", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    return out


def _damage(run, how):
    if how == "truncated model.zip":
        (run / "model.zip").write_bytes((run / "model.zip").read_bytes()[:1000])
    elif how == "model.zip a folder":
        (run / "model.zip").unlink()
        (run / "model.zip").mkdir()
    elif how == "summary of another algo":
        summary = json.loads((run / "summary.json").read_text())
        (run / "summary.json").write_text(json.dumps({**summary, "algo": "a2c"}))
    elif how == "summary of an unknown algo":
        summary = json.loads((run / "summary.json").read_text())
        (run / "summary.json").write_text(json.dumps({**summary, "algo": "nope"}))
    elif how == "corrupt summary.json":
        (run / "summary.json").write_text("{bad json")
    elif how == "corrupt vecnormalize.pkl":
        (run / "vecnormalize.pkl").write_bytes(b"not a pickle")


@pytest.mark.parametrize(
    "how,needle",
    [
        ("truncated model.zip", "model.zip is corrupt or not ppo's model"),
        ("model.zip a folder", "model.zip is a folder, not a saved model"),
        ("summary of another algo", "the model was saved by PPO, not A2C"),
        ("summary of an unknown algo", "names an unknown algo 'nope'; valid: reinforce"),
        ("corrupt summary.json", "summary.json is not valid JSON"),
        ("corrupt vecnormalize.pkl", "vecnormalize.pkl is corrupt"),
    ],
)
def test_eval_of_a_damaged_run_folder_names_the_problem(_finished_ppo_run, tmp_path, capsys,
                                                        how, needle):  # fmt: skip
    import shutil

    run = tmp_path / "run"
    shutil.copytree(_finished_ppo_run, run)
    _damage(run, how)
    capsys.readouterr()
    assert main(["eval", str(run), "--episodes", "1"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert "mean return" not in captured.out


@pytest.mark.parametrize(
    "how,needle",
    [
        ("corrupt checkpoints", "model_128_steps.zip is corrupt or not PPO's model"),
        ("corrupt config.yaml", "config.yaml is damaged"),
    ],
)
def test_variance_of_a_damaged_run_folder_names_the_problem(tmp_path, capsys, how, needle):
    out = tmp_path / "run"
    args = ["train", "--algo", "ppo", "--env", "CartPole-v1", "--total-steps", "256", "--n-envs",
            "1", "--set", "n_steps=64", "--set", "batch_size=64", "--checkpoint-freq", "128",
            "--eval-episodes", "0", "--no-progress", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    if how == "corrupt checkpoints":
        for path in (out / "checkpoints").glob("*.zip"):
            path.write_text("junk")
    else:
        (out / "config.yaml").write_text("{{{")
    capsys.readouterr()
    assert main(["variance", str(out), "--at", "0.5", "--states", "2", "--repeats", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[-1], err
