"""rl-zoo3's ``lin_<start>`` schedules in configs: applied by SB3's progress, recorded in the
run folder as written, taken again on resume, and refused in one line where they cannot be."""

import csv

import pytest
import yaml

from relax_rl.agents import PPO
from relax_rl.cli import main
from relax_rl.schedules import LinearSchedule


def _train(tmp_path, algo, *sets, name="run", config=None):
    out = tmp_path / name
    args = ["train", "--algo", algo, "--env", "CartPole-v1", "--total-steps", "1024",
            "--n-envs", "2", "--set", "policy_kwargs.net_arch=[8]", "--set", "eval_episodes=0",
            "--log-interval", "1", "--out", str(out), "--no-progress"]  # fmt: skip
    for s in sets:
        args += ["--set", s]
    if config is not None:
        args += ["--config", str(config)]
    return main(args), out


def _logged(out, key):
    with open(out / "progress.csv") as fh:
        return [float(r[key]) for r in csv.DictReader(fh) if r.get(key)]


def test_linear_schedule_is_the_start_times_the_progress_left():
    lin = LinearSchedule(7e-4)
    assert lin(1.0) == 7e-4 and lin(0.5) == pytest.approx(3.5e-4) and lin(0.0) == 0.0
    assert lin(-0.01) == 0.0  # the last rollout past the budget
    assert str(lin) == "lin_0.0007" and lin == LinearSchedule(0.0007)


def test_a_learning_rate_schedule_decays_over_the_run_and_is_recorded(tmp_path):
    code, out = _train(tmp_path, "a2c", "learning_rate=lin_1e-3")
    assert code == 0
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["learning_rate"] == "lin_0.001"
    lrs = _logged(out, "train/learning_rate")
    assert lrs[0] < 1e-3 and lrs[-1] < lrs[0] / 2 and lrs == sorted(lrs, reverse=True)
    # resumed from its config.yaml: the schedule again, at the progress the run had reached
    assert main(["train", "--resume", str(out), "--total-steps", "512", "--no-progress"]) == 0
    assert min(_logged(out, "train/learning_rate")) >= 0  # past the budget: 0, not negative


def test_ppo_clip_range_schedule_from_a_config_file(tmp_path):
    config = tmp_path / "ppo.yml"
    config.write_text("CartPole-v1:\n  clip_range: lin_0.2\n  n_steps: 64\n  batch_size: 64\n")
    code, out = _train(tmp_path, "ppo", config=config)
    assert code == 0
    clips = _logged(out, "train/clip_range")
    assert 0 <= clips[-1] < clips[0] < 0.2
    model = PPO.load(out / "model.zip")
    assert model.clip_range(0.5) == pytest.approx(0.1)


@pytest.mark.parametrize(
    "setting,needle",
    [
        ("learning_rate=lin_x", "learning_rate='lin_x' is not a schedule: write lin_<start"),
        ("learning_rate=lin_-1e-3", "is not a schedule"),
        ("learning_rate=lin_0", "is not a schedule"),
        ("gamma=lin_0.9", "gamma takes no schedule; A2C's scheduled settings: learning_rate"),
    ],
)
def test_bad_schedules_are_one_line(tmp_path, capsys, setting, needle):
    code, out = _train(tmp_path, "a2c", setting)
    err = capsys.readouterr().err.strip()
    assert code == 2 and needle in err and "\n" not in err
    assert not out.exists()
