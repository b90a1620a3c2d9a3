"""relax-rl compare / plot: a tiny grid, its report and figures, resume, failures, bad input."""

import json
import socket
import sys
import time
from pathlib import Path

import matplotlib.image as mpimg
import pytest
import yaml
from conftest import wait_until

from relax_rl.cli import main
from relax_rl.runner import parse_seeds

GRID = [
    "compare",
    "--algos",
    "a2c",
    "relax",
    "--env",
    "CartPole-v1",
    "--seeds",
    "0-1",
    "--total-steps",
    "600",
    "--set",
    "n_envs=4",
    "--set",
    "policy_kwargs.net_arch=[8]",
    "--grad-var-freq",
    "5",
    "--jobs",
    "2",
]


def test_tiny_compare_report_figures_and_resume(tmp_path, capsys, monkeypatch):
    out = tmp_path / "cmp"
    assert main([*GRID, "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "| a2c | 0/2 |" in report and "| relax | 0/2 |" in report
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["runs"]) == 4 and set(summary["aggregates"]) == {"a2c", "relax"}
    assert summary["aggregates"]["relax"]["grad_log10_var"] is not None
    assert summary["aggregates"]["a2c"]["grad_log10_var_reduction"] is None
    assert "Paired variance reduction" in report and "relax " in report.split("Paired")[1]
    # rliable's aggregates: IQM with a bootstrap CI, probability of improvement, two figures
    relax = summary["aggregates"]["relax"]
    low, high = relax["final_mean_return_100_iqm"]["ci"]
    assert low <= relax["final_mean_return_100_iqm"]["iqm"] <= high
    a2c_over_relax = summary["aggregates"]["a2c"]["probability_of_improvement"]["relax"]["p"]
    assert relax["probability_of_improvement"]["a2c"]["p"] == pytest.approx(1 - a2c_over_relax)
    assert "## Aggregates (rliable)" in report and "| P(row > column) | a2c | relax |" in report
    for png in ("returns.png", "grad_variance.png", "performance_profile.png", "aggregates.png"):
        assert mpimg.imread(out / png).ndim == 3
    stamp = (out / "a2c-s0" / "summary.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main([*GRID, "--out", str(out)]) == 0  # finished runs are not run again
    assert (out / "a2c-s0" / "summary.json").stat().st_mtime_ns == stamp
    assert "seed" not in capsys.readouterr().err
    # Other settings into the same folder would mix two experiments in one report.
    other = [*GRID[: GRID.index("--total-steps") + 1], "700", *GRID[GRID.index("--set") :]]
    assert main([*other, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "finished with total_steps=600 but this grid has total_steps=700" in err
    assert "\n" not in err

    plot_out = tmp_path / "plots"
    assert main(["plot", str(out / "a2c-s0"), str(out / "relax-s1"), "--out", str(plot_out)]) == 0
    assert (plot_out / "returns.png").exists() and (plot_out / "report.md").exists()
    for png in ("performance_profile.png", "aggregates.png"):  # one run per algo: no CI, drawn
        assert mpimg.imread(plot_out / png).ndim == 3
    assert "(no CI: 1 run)" in (plot_out / "report.md").read_text()
    # plot never writes over a run's own files, whatever --out says or defaults to
    run = out / "a2c-s0"
    before = (run / "summary.json").read_text()
    capsys.readouterr()
    assert main(["plot", str(run), "--out", str(run)]) == 2
    assert "never writes over a run's files" in capsys.readouterr().err
    monkeypatch.chdir(run)
    assert main(["plot", "."]) == 0  # the default --out is ./plots
    assert (run / "summary.json").read_text() == before
    assert (run / "plots" / "report.md").exists()
    # a compare folder stands for all of its runs
    assert main(["plot", str(out), "--out", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "summary.json").read_text())
    assert len(again["runs"]) == 4


_CRASHING_ENV = """
import gymnasium as gym
import numpy as np


class Crashes(gym.Env):  # builds and resets (compare's checks pass), fails at its 50th step
    observation_space = gym.spaces.Box(0, 1, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)
    steps = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(1, np.float32), {}

    def step(self, action):
        Crashes.steps += 1
        if Crashes.steps >= 50:
            raise RuntimeError("the simulator fell over")
        return np.zeros(1, np.float32), 1.0, False, False, {}


gym.register("Crashes-v0", entry_point=Crashes, max_episode_steps=20)
"""


def test_a_crashing_run_is_reported_and_others_go_on(tmp_path, monkeypatch):
    (tmp_path / "crashing_envs.py").write_text(_CRASHING_ENV)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "cmp"
    args = ["compare", "--algos", "a2c", "--env", "crashing_envs:Crashes-v0", "--seeds", "0",
            "--total-steps", "300", "--set", "n_envs=2", "--out", str(out)]  # fmt: skip
    assert main(args) == 1  # every run failed: the report is written, the exit code says so
    report = (out / "report.md").read_text()
    assert "1 failed" in report and "the simulator fell over" in report
    assert (out / "aggregates.png").exists() and (out / "performance_profile.png").exists()


def test_a_setting_every_run_would_fail_on_is_refused_before_any_run(tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["compare", "--algos", "a2c", "--env", "CartPole-v1", "--seeds", "0", "--set",
            "n_envs=2", "--set", "n_steps=0", "--out", str(out)]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs n_envs=1" in err[0], err
    assert not out.exists()


@pytest.mark.parametrize(
    "text,seeds", [("0-4", [0, 1, 2, 3, 4]), ("0,2,5", [0, 2, 5]), ("3", [3]), ("0-1,7", [0, 1, 7])]
)
def test_parse_seeds(text, seeds):
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--seeds", "4-1"], "malformed seed range '4-1'"),
        (["--seeds", "a-b"], "malformed seed range"),
        (["--algos", "trpo"], "invalid choice: 'trpo'"),
        (["--env", "CartPol-v1"], "did you mean CartPole-v1"),
        (["--backend", "slurm"], "invalid choice: 'slurm' (choose from 'local', 'ray')"),
        (["--total-steps", "0"], "--total-steps: invalid value 0: expected an integer >= 1"),
        (["--set", "total_steps=0"], "total_steps must be >= 1, got 0"),
        (["--set", "ppo.n_epochs=3"], "'ppo.n_epochs=3' names ppo, which is not in --algos (a2c)"),
        (["--set", "a2c.n_epochs=3"], "n_epochs"),  # not an A2C setting: refused by name
        (["--preset", "ppo=mujoco"], "names ppo, which is not in --algos (a2c)"),
        (["--config", "missing.yaml"], "config file missing.yaml does not exist"),
    ],
)
def test_compare_bad_input(tmp_path, capsys, args, needle):
    base = {"--algos": ["a2c"], "--env": ["CartPole-v1"], "--seeds": ["0"]}
    for i in range(0, len(args), 2):
        base[args[i]] = [args[i + 1]]
    argv = ["compare", "--out", str(tmp_path / "o")]
    for key, values in base.items():
        argv += [key, *values]
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and needle in err and "\n" not in err


def test_plot_refuses_a_folder_without_summary(tmp_path, capsys):
    assert main(["plot", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err


@pytest.mark.ray
def test_ray_backend_runs_the_same_grid_as_the_local_one(tmp_path, capsys, monkeypatch):
    """Two tiny trials under a local Ray: same run folders and report as the process pool, and
    the same numbers (seeded runs do not depend on where they run); tracked runs write their
    offline wandb files from the Ray workers, in one group."""
    pytest.importorskip("ray.tune")
    monkeypatch.setenv("WANDB_MODE", "offline")
    grid = [*GRID[: GRID.index("--seeds") + 1], "0", *GRID[GRID.index("--seeds") + 2 :]]
    assert main([*grid, "--backend", "ray", "--track", "--out", str(tmp_path / "ray")]) == 0
    tracked = sorted((tmp_path / "ray").glob("*-s0/wandb/offline-run-*/run-*.wandb"))
    assert len(tracked) == 2
    assert all(b"compare-CartPole-v1-ray" in path.read_bytes() for path in tracked)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert main([*grid, "--out", str(tmp_path / "local")]) == 0
    for name in ("a2c-s0", "relax-s0"):
        by_ray = json.loads((tmp_path / "ray" / name / "summary.json").read_text())
        local = json.loads((tmp_path / "local" / name / "summary.json").read_text())
        assert by_ray["status"] == "completed"
        assert by_ray["final_mean_return_100"] == local["final_mean_return_100"]
        assert (tmp_path / "ray" / name / "model.zip").exists()
    report = (tmp_path / "ray" / "report.md").read_text()
    assert "| a2c | 0/1 |" in report and "| relax | 0/1 |" in report
    for png in ("returns.png", "grad_variance.png"):
        assert mpimg.imread(tmp_path / "ray" / png).ndim == 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--backend", "local", "--ray-address", "auto"], "--ray-address needs --backend ray"),
        (["--backend", "ray", "--ray-address", "host:port"], "malformed --ray-address"),
        (["--backend", "ray", "--ray-address", "127.0.0.1:{port}"], "cannot reach a Ray cluster"),
    ],
)
def test_compare_bad_ray_input(tmp_path, capsys, args, needle):
    pytest.importorskip("ray.tune")
    args = [a.format(port=_free_port()) for a in args]
    argv = ["compare", "--algos", "a2c", "--env", "CartPole-v1", "--seeds", "0", *args]
    code = main([*argv, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and needle in err and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_ray_backend_without_ray_says_how_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    argv = ["compare", "--algos", "a2c", "--env", "CartPole-v1", "--seeds", "0"]
    code = main([*argv, "--backend", "ray", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "pip install 'relax-rl[ray]'" in err and "\n" not in err


def test_tracked_compare_puts_every_run_in_one_wandb_group(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "tracked"
    grid = [*GRID[: GRID.index("--total-steps") + 1], "200", *GRID[GRID.index("--set") :]]
    assert main([*grid, "--track", "--out", str(out)]) == 0
    runs = sorted(out.glob("*-s*/wandb/offline-run-*/run-*.wandb"))
    assert len(runs) == 4
    for path in runs:
        data = path.read_bytes()
        assert b"compare-CartPole-v1-tracked" in data and b"grad/log10_var" in data


@pytest.mark.ray
def test_ray_backend_on_a_running_cluster(tmp_path):
    """``--ray-address`` joins a cluster started with ``ray start --head`` (here on this
    machine) instead of starting a local Ray. The driver is the CLI in its own process, as a
    user would run it (Ray's auth settings are per process)."""
    pytest.importorskip("ray.tune")
    import os
    import subprocess

    port = _free_port()
    # the cluster and the driver agree on auth; the head's workers run at the tests' priority
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_worker_niceness": "0"}
    ray_bin = Path(sys.executable).with_name("ray")
    log = tmp_path / "head.log"
    with open(log, "w") as fh:
        head = subprocess.Popen(
            [
                str(ray_bin),
                "start",
                "--head",
                "--block",
                f"--port={port}",
                "--num-cpus=2",
                "--include-dashboard=false",
                "--disable-usage-stats",
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        for _ in range(240):  # the head prints this once every process is up
            if "block forever" in log.read_text() or head.poll() is not None:
                break
            time.sleep(0.25)
        assert head.poll() is None, log.read_text()[-2000:]
        # one run (relax, seed 0): joining the cluster is what is tested here
        grid = ["compare", "--algos", "relax", *GRID[GRID.index("--env") : GRID.index("--seeds")],
                "--seeds", "0", *GRID[GRID.index("--seeds") + 2 :]]  # fmt: skip
        out = tmp_path / "cluster"
        argv = [*grid, "--backend", "ray", "--ray-address", f"127.0.0.1:{port}"]
        cli = Path(sys.executable).with_name("relax-rl")
        done = subprocess.run(
            [str(cli), *argv, "--out", str(out)], env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert "| relax | 0/1 |" in (out / "report.md").read_text()
        assert json.loads((out / "relax-s0" / "summary.json").read_text())["status"] == "completed"
    finally:
        head.terminate()
        head.wait(timeout=60)


def test_ctrl_c_stops_the_grid_keeps_what_ran_and_resume_starts_the_rest(tmp_path):
    """Ctrl-C: runs in flight save a checkpoint and an `interrupted` summary, queued runs never
    start, exit code 130; the same command again with --continue-interrupted continues the
    interrupted cells from their checkpoints (their progress kept) and starts the queued one;
    without it (or with other settings) every unfinished cell starts again."""
    import os
    import signal
    import subprocess

    out = tmp_path / "grid"
    argv = [
        "compare", "--algos", "a2c", "--env", "CartPole-v1", "--seeds", "0-2",
        "--total-steps", "2000000", "--set", "n_envs=2", "--jobs", "2", "--out", str(out),
        "--checkpoint-freq", "2000",  # a first checkpoint in a second, not 50k steps
    ]  # fmt: skip
    code = (
        "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        f"from relax_rl.cli import main; sys.exit(main({argv!r}))"
    )
    env = {**os.environ, "WANDB_MODE": "disabled"}
    proc = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # its own process group, as a terminal's Ctrl-C reaches it
    )  # fmt: skip
    ckpts = [out / f"a2c-s{s}" / "checkpoints" for s in (0, 1)]
    wait_until(
        lambda: all(c.exists() and any(c.glob("*.zip")) for c in ckpts),
        proc,
        "a checkpoint from both running cells",
    )
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "run the same command again to resume" in err
    for s in (0, 1):
        summary = json.loads((out / f"a2c-s{s}" / "summary.json").read_text())
        assert summary["status"] == "interrupted", summary
        assert list((out / f"a2c-s{s}" / "checkpoints").glob("model_interrupted_*.zip"))
    assert not (out / "a2c-s2").exists()  # queued: never started
    stopped_at = {s: _interrupted_steps(out / f"a2c-s{s}") for s in (0, 1)}
    # a run folder written before a setting existed (its config.yaml lacks the key) resumes too
    config = out / "a2c-s0" / "config.yaml"
    config.write_text("\n".join(line for line in config.read_text().splitlines()
                                if not line.startswith("capture_video:")))  # fmt: skip
    rows = _csv_rows(out / "a2c-s0" / "progress.csv")
    # Again with --continue-interrupted: the two cells go on from their checkpoints (stopped
    # once more at their next checkpoint, to keep the test quick), the queued one starts.
    code = code.replace("'--jobs'", "'--continue-interrupted', '--jobs'")
    proc = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    wait_until(
        lambda: all(_newest_checkpoint(out / f"a2c-s{s}") > stopped_at[s] for s in (0, 1)),
        proc,
        "a checkpoint after the interrupted one in both resumed cells",
    )
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    for s in (0, 1):
        assert f"resuming a2c seed {s} at {stopped_at[s]:,} env steps" in err
        summary = json.loads((out / f"a2c-s{s}" / "summary.json").read_text())
        assert summary["resumed_from"][0]["env_steps"] == stopped_at[s], summary
        assert summary["total_env_steps"] > stopped_at[s]
    again = _csv_rows(out / "a2c-s0" / "progress.csv")
    assert again[: len(rows)] == rows and len(again) > len(rows)  # the earlier rows kept
    # Again with other settings (shorter, to keep the test quick), --continue-interrupted or
    # not: every unfinished cell runs, from scratch.
    short = [*argv[: argv.index("--total-steps") + 1], "300", *argv[argv.index("--set") :]]
    assert main([*short, "--continue-interrupted"]) == 0
    for s in (0, 1, 2):
        assert json.loads((out / f"a2c-s{s}" / "summary.json").read_text())["status"] == (
            "completed"
        )


def _csv_rows(path) -> list[dict]:
    """progress.csv's rows, each without its empty cells (a resumed logger may order the
    columns otherwise)."""
    import csv

    with open(path) as fh:
        return [{k: v for k, v in row.items() if v != ""} for row in csv.DictReader(fh)]


def _interrupted_steps(run) -> int:
    (path,) = (run / "checkpoints").glob("model_interrupted_*_steps.zip")
    return int(path.stem.split("_")[-2])


def _newest_checkpoint(run) -> int:
    steps = [p.stem.split("_")[-2] for p in (run / "checkpoints").glob("model_*_steps.zip")]
    return max(int(s) for s in steps if s.isdigit())


@pytest.mark.parametrize("background", [False, True], ids=["foreground", "background"])
def test_sigterm_to_the_main_process_stops_the_whole_grid(tmp_path, background):
    """`kill PID` (SIGTERM to compare's main process only, as `timeout` or `kill` send it):
    runs in flight are stopped and saved as on Ctrl-C, queued runs never start, exit 143.
    Also for a compare a script started in the background (`compare ... & kill $!`), which
    runs with SIGINT ignored, as do its workers."""
    import os
    import signal
    import subprocess

    out = tmp_path / "grid"
    argv = [
        "compare", "--algos", "a2c", "--env", "CartPole-v1", "--seeds", "0-2",
        "--total-steps", "2000000", "--set", "n_envs=2", "--jobs", "2", "--out", str(out),
        "--checkpoint-freq", "2000",  # a first checkpoint in a second, not 50k steps
    ]  # fmt: skip
    code = f"import sys; from relax_rl.cli import main; sys.exit(main({argv!r}))"
    env = {**os.environ, "WANDB_MODE": "disabled"}
    ignore_sigint = lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)  # noqa: E731
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=ignore_sigint if background else None,
    )
    ckpts = [out / f"a2c-s{s}" / "checkpoints" for s in (0, 1)]
    wait_until(
        lambda: all(c.exists() and any(c.glob("*.zip")) for c in ckpts),
        proc,
        "a checkpoint from both running cells",
    )
    proc.send_signal(signal.SIGTERM)  # the main process only
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "terminated" in err
    for s in (0, 1):
        summary = json.loads((out / f"a2c-s{s}" / "summary.json").read_text())
        assert summary["status"] == "interrupted", summary
        assert (out / f"a2c-s{s}" / "model.zip").exists()
        assert list((out / f"a2c-s{s}" / "checkpoints").glob("model_interrupted_*.zip"))
    assert not (out / "a2c-s2").exists()  # queued: never started


@pytest.mark.parametrize("recorded", [None, "dead"])
def test_ray_address_auto_with_no_live_cluster_fails_in_seconds(tmp_path, monkeypatch, recorded):
    """`auto` resolves as Ray would (RAY_ADDRESS, then the record of the last `ray start`, which
    outlives its cluster); a record of a cluster that is gone must not hang ray.init."""
    from relax_rl.errors import UsageError
    from relax_rl.runner import check_ray_address

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    if recorded == "dead":
        (tmp_path / "ray").mkdir()
        (tmp_path / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{_free_port()}\n")
    start = time.monotonic()
    with pytest.raises(UsageError, match="cannot reach" if recorded else "no running Ray"):
        check_ray_address("auto")
    assert time.monotonic() - start < 10


def _fake_run(folder, algo, seed, env_id="CartPole-v1", steps=1000, env_kwargs=None):
    """A finished run's summary.json and progress.csv, as train writes them."""
    folder.mkdir(parents=True)
    summary = {"algo": algo, "env_id": env_id, "seed": seed, "status": "completed",
               "error": None, "total_env_steps": steps, "episodes": 50, "wall_s": 1.0,
               "env_steps_per_s": 1000.0, "threshold": 475.0, "solved_at_env_steps": None,
               "solved_at_episodes": None, "final_mean_return_100": 20.0 + seed,
               "env_kwargs": env_kwargs, "discretize": None}  # fmt: skip
    (folder / "summary.json").write_text(json.dumps(summary))
    rows = "time/total_timesteps,rollout/ep_rew_mean\n" + "".join(
        f"{t},{10 + t / 100}\n" for t in range(100, steps + 1, 100)
    )
    (folder / "progress.csv").write_text(rows)
    return folder


def test_plot_refuses_mixed_envs_and_a_run_given_twice_notes_unequal_lengths(tmp_path, capsys):
    a = _fake_run(tmp_path / "a2c-s0", "a2c", 0)
    b = _fake_run(tmp_path / "a2c-s1", "a2c", 1, steps=2000)
    other = _fake_run(tmp_path / "other" / "a2c-s0", "a2c", 0, env_id="Acrobot-v1")
    options = _fake_run(tmp_path / "d16" / "a2c-s0", "a2c", 0, env_kwargs={"d": 16})
    out = ["--out", str(tmp_path / "plots")]
    for runs, needle in (
        ([a, other], "different envs: CartPole-v1 (1 runs), Acrobot-v1 (1 runs)"),
        ([a, options], "different envs: CartPole-v1 (1 runs), CartPole-v1 (d=16) (1 runs)"),
        ([a, tmp_path / "a2c-s0" / ".." / "a2c-s0"], "is given twice"),
    ):
        assert main(["plot", *map(str, runs), *out]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
        assert not (tmp_path / "plots").exists()
    assert main(["plot", str(a), str(b), *out]) == 0
    assert "lengths differ (1,000 to 2,000 env steps)" in capsys.readouterr().err
    (b / "progress.csv").write_text("time/total_timesteps,rollout/ep_rew_mean\n")
    assert main(["plot", str(a), str(b), "--out", str(tmp_path / "again")]) == 2
    assert "progress.csv has no rows, though the run finished" in capsys.readouterr().err


def test_per_algo_settings_presets_and_zoo_config_files(tmp_path, capfd):
    """--set ALGO.KEY=VALUE, --config ALGO=FILE (rl-zoo's layout: env ids to settings) and
    plain --set for every algo; the progress lines from the start."""
    zoo = tmp_path / "relax.yml"
    zoo.write_text(
        "CartPole-v1:\n  cv_learning_rate: 0.002\n  gamma: 0.95\nAcrobot-v1:\n  gamma: 0.9\n"
    )
    out = tmp_path / "cmp"
    args = ["compare", "--algos", "a2c", "relax", "--env", "CartPole-v1", "--seeds", "0",
            "--total-steps", "200", "--set", "n_envs=2", "--set", "policy_kwargs.net_arch=[8]",
            "--set", "a2c.learning_rate=0.01", "--set", "relax.n_steps=4",
            "--config", f"relax={zoo}", "--set", "eval_episodes=0", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    captured = capfd.readouterr()  # fd-level: the workers (other processes) print too
    a2c = yaml.safe_load((out / "a2c-s0" / "config.yaml").read_text())
    relax = yaml.safe_load((out / "relax-s0" / "config.yaml").read_text())
    assert a2c["learning_rate"] == 0.01 and relax["learning_rate"] != 0.01
    assert relax["n_steps"] == 4 and a2c["n_steps"] != 4
    assert relax["cv_learning_rate"] == 0.002 and relax["gamma"] == 0.95 and a2c["gamma"] == 0.99
    assert a2c["n_envs"] == relax["n_envs"] == 2
    err = captured.err.splitlines()
    assert err[0] == "compare: 2 runs, 2 to run, 1 at a time"
    assert "started a2c seed 0" in err
    done = [line for line in err if line.startswith("[")]
    assert (
        done[0].startswith("[1/2, ") and ", ETA " in done[0] and "a2c seed 0: completed" in done[0]
    )
    assert done[1].startswith("[2/2, ") and "ETA" not in done[1]
    # resumed: the finished runs are counted as such; a file without the env's entry is refused
    assert main(args) == 0
    assert (
        capfd.readouterr().err.splitlines()[0]
        == "compare: 2 runs (2 finished already), 0 to run, 1 at a time"
    )
    zoo.write_text("Acrobot-v1:\n  gamma: 0.9\n")
    assert main([*args[:-2], "--out", str(tmp_path / "o2")]) == 2
    err = capfd.readouterr().err.strip()
    needle = "maps env ids to settings and has no entry 'CartPole-v1'; it has: Acrobot-v1"
    assert err.endswith(f"config file {zoo} {needle}") and "\n" not in err
