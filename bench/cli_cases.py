"""The command line as a user meets it: every reproducer of issue 15, run against one or two
installs side by side, as a Markdown table (command, exit code, stderr lines, what happened).

    python bench/cli_cases.py --after .venv/bin [--before /path/to/old/venv/bin] [--only 1a,3c]

Each case runs in a fresh temporary folder (its own HOME, WANDB_MODE=disabled unless the case
says otherwise) with a module ``my_envs`` on PYTHONPATH that registers the envs the cases need.
A case that runs longer than its limit is killed and reported as such.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MY_ENVS = """
import gymnasium as gym
import numpy as np
from gymnasium.envs.classic_control import CartPoleEnv


class DictObs(gym.Env):
    observation_space = gym.spaces.Dict({"x": gym.spaces.Box(-1, 1, (2,))})
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return {"x": np.zeros(2, np.float32)}, {}

    def step(self, action):
        return {"x": np.zeros(2, np.float32)}, 1.0, True, False, {}


class Pixels(DictObs):
    observation_space = gym.spaces.Box(0, 255, (32, 32, 3), np.uint8)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros((32, 32, 3), np.uint8), {}

    def step(self, action):
        return np.zeros((32, 32, 3), np.uint8), 1.0, True, False, {}


gym.register("Grid-v0", entry_point=CartPoleEnv, max_episode_steps=50, reward_threshold=40.0)
gym.register("NoThreshold-v0", entry_point=CartPoleEnv, max_episode_steps=50)
gym.register("DictObs-v0", entry_point=DictObs)
gym.register("Pixels-v0", entry_point=Pixels)
"""

SB3_LOCALS = """
import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from relax_rl.agents import A2C

class Counts(BaseCallback):
    def _on_step(self):
        np.bincount(self.locals["actions"].astype(np.int64))
        assert self.locals["values"].shape == (2, 1), self.locals["values"].shape
        self.locals["clipped_actions"], self.locals["obs_tensor"]
        return True

A2C("MlpPolicy", make_vec_env("CartPole-v1", 2), seed=0).learn(200, callback=Counts())
print("SB3's callback ran")
"""

RUNSPEC_CREATE = """
from relax_rl.training import RunSpec, train
spec = RunSpec.create("a2c", "CartPole-v1", out="r", settings={"total_steps": 1000})
print(train(spec)["status"])
"""

VERBOSE_LINES = """
from stable_baselines3.common.env_util import make_vec_env
from relax_rl.agents import A2C
A2C("MlpPolicy", make_vec_env("CartPole-v1", 1), verbose=1, seed=0).learn(1000)
"""

DNS_QUERIES = "strace -f -e trace=connect -o trace.txt {rl} train --algo a2c --env CartPole-v1 \
--total-steps 1000 --track --out r --no-progress > /dev/null; rc=$?; \
echo DNS queries: $(grep -c 'htons(53)' trace.txt); exit $rc"


@dataclass
class Case:
    name: str
    what: str
    command: str  # bash; {rl} is relax-rl, {py} the install's python
    check: Callable[[Path, str], str] | None = None  # (folder, stdout) -> what happened
    env: dict[str, str | None] | None = None  # None removes the variable
    limit_s: float = 300


def _json_key(path: str, key: str) -> Callable[[Path, str], str]:
    def check(folder: Path, _: str) -> str:
        import json

        try:
            data = json.loads((folder / path).read_text())
        except (OSError, ValueError):
            return f"no readable {path}"
        return f"{path}: {key}={data.get(key)!r}"

    return check


def _exists(*paths: str) -> Callable[[Path, str], str]:
    def check(folder: Path, _: str) -> str:
        return ", ".join(f"{p} {'yes' if (folder / p).exists() else 'no'}" for p in paths)

    return check


def _last_line(folder: Path, stdout: str) -> str:
    lines = stdout.strip().splitlines()
    return lines[-1][:80] if lines else "(no stdout)"


def _count_rows(path: str) -> Callable[[Path, str], str]:
    def check(folder: Path, _: str) -> str:
        try:
            return f"{len((folder / path).read_text().splitlines()) - 1} rows in {path}"
        except OSError:
            return f"no {path}"

    return check


def _stdout_lines(folder: Path, stdout: str) -> str:
    return f"{len(stdout.splitlines())} stdout lines"


def _sigterm(command: str, wait_s: float) -> str:
    return f"{command} & pid=$!; sleep {wait_s}; kill $pid; wait $pid"


TRAIN = "{rl} train --algo a2c --env CartPole-v1 --no-progress"
QUICK = f"{TRAIN} --total-steps 1000"

CASES = [
    Case(
        "1a",
        "SIGTERM to train",
        _sigterm("{rl} train --algo relax --env CartPole-v1 --total-steps 2000000 --out r", 8),
        lambda f, o: (
            f"{_exists('r/model.zip')(f, o)}; {_json_key('r/summary.json', 'status')(f, o)}"
        ),
    ),
    Case(
        "1b",
        "SIGTERM to compare's process alone",
        _sigterm(
            "{rl} compare --algos a2c --env CartPole-v1 --seeds 0-3 --jobs 2 "
            "--total-steps 2000000 --out c",
            12,
        )
        + "; rc=$?; sleep 3; exit $rc",
        lambda f, o: (
            f"{_json_key('c/a2c-s0/summary.json', 'status')(f, o)}; queued run started: "
            f"{'yes' if (f / 'c/a2c-s3').exists() else 'no'}"
        ),
        limit_s=90,
    ),
    Case(
        "2a",
        "plot run inside a run folder (default --out)",
        f"{QUICK} --out r > /dev/null && cd r && {{rl}} plot .",
        lambda f, o: (
            f"r/summary.json still a run's: {'algo' in (f / 'r/summary.json').read_text()}"
        ),
    ),
    Case(
        "2b",
        "plot a compare folder",
        "{rl} compare --algos a2c --env CartPole-v1 --seeds 0 --total-steps 1000 --out c "
        "> /dev/null 2>&1; {rl} plot c --out p",
        _exists("p/report.md"),
    ),
    Case(
        "3a",
        "vae --out an uncreatable folder",
        "{rl} vae --dataset digits --steps 300 --out /proc/relax-out",
        limit_s=600,
    ),
    Case("3b", "toy --out an uncreatable folder", "{rl} toy --steps 300 --out /proc/relax-out"),
    Case("3c", "train --out a file", f"touch f && {TRAIN} --out f"),
    Case(
        "3d",
        "compare --out a file",
        "touch f && {rl} compare --algos a2c --env CartPole-v1 --seeds 0 --out f",
    ),
    Case("3e", "train --config a folder", f"mkdir d && {TRAIN} --config d --out r"),
    Case("3f", "train --seed -1", f"{TRAIN} --seed -1 --out r"),
    Case(
        "4",
        "config.yaml holds every hyperparameter",
        f"{QUICK} --out r > /dev/null",
        lambda f, o: (
            f"learning_rate in config.yaml: {'learning_rate' in (f / 'r/config.yaml').read_text()}"
        ),
    ),
    Case(
        "5",
        "--set learning_rate=1e-3",
        f"{QUICK} --set learning_rate=1e-3 --out r > /dev/null",
        _exists("r/model.zip"),
    ),
    Case("6", "--env module:EnvId", f"{QUICK.replace('CartPole-v1', 'my_envs:Grid-v0')} --out r"),
    Case(
        "7a",
        "Dict observations",
        f"{TRAIN.replace('CartPole-v1', 'my_envs:DictObs-v0')} --out r",
    ),
    Case("7b", "ALE/Pong-v5", f"{TRAIN.replace('CartPole-v1', 'ALE/Pong-v5')} --out r"),
    Case(
        "7c",
        "eval on a file",
        "touch model.zip && {rl} eval model.zip",
    ),
    Case(
        "7d",
        "--until-solved on an env without a threshold",
        f"{QUICK.replace('CartPole-v1', 'my_envs:NoThreshold-v0')} --until-solved --out r",
    ),
    Case(
        "7e",
        "--set cv_net_arch=5",
        "{rl} train --algo relax --env CartPole-v1 --set cv_net_arch=5 --out r",
    ),
    Case(
        "7f", "image observations", f"{QUICK.replace('CartPole-v1', 'my_envs:Pixels-v0')} --out r"
    ),
    Case(
        "8a",
        "compare where every run fails",
        "{rl} compare --algos a2c --env CartPole-v1 --seeds 0-1 --total-steps 1000 "
        "--set n_steps=0 --out c > /dev/null",
    ),
    Case(
        "8b",
        "compare --total-steps 0",
        "{rl} compare --algos a2c --env CartPole-v1 --total-steps 0 --out c",
    ),
    Case(
        "8c",
        "compare --ray-address auto with a stale record",
        "mkdir -p /tmp/ray && cp /tmp/ray/ray_current_cluster saved 2>/dev/null; "
        "echo 127.0.0.1:6399 > /tmp/ray/ray_current_cluster; {rl} compare --algos a2c --env "
        "CartPole-v1 --seeds 0 --total-steps 1000 --backend ray --ray-address auto --out c; "
        "rc=$?; if [ -f saved ]; then cp saved /tmp/ray/ray_current_cluster; "
        "else rm -f /tmp/ray/ray_current_cluster; fi; exit $rc",
        limit_s=90,
    ),
    Case(
        "9a",
        "--wandb-mode online without a login",
        f"{QUICK} --track --wandb-mode online --out r",
        _exists("r"),
        env={"WANDB_MODE": None, "WANDB_API_KEY": None},
    ),
    Case(
        "9b",
        "--track, WANDB_MODE unset: network queries",
        DNS_QUERIES,
        _last_line,
        env={"WANDB_MODE": None},
    ),
    Case(
        "10",
        "an SB3 callback reading self.locals",
        "{py} -c " + shlex.quote(SB3_LOCALS),
        _last_line,
    ),
    Case(
        "11a",
        "progress.csv rows, 20k steps",
        "{rl} train --algo a2c --env CartPole-v1 --total-steps 20000 --n-envs 1 --no-progress "
        "--out r > /dev/null",
        _count_rows("r/progress.csv"),
    ),
    Case(
        "11b",
        "stdout lines at verbose=1, 1k steps (Python)",
        "{py} -c " + shlex.quote(VERBOSE_LINES),
        _stdout_lines,
    ),
    Case(
        "12",
        "train | python -c json.load (progress bar on)",
        "{rl} train --algo a2c --env CartPole-v1 --total-steps 2000 --out r | {py} -c "
        + shlex.quote("import json, sys; print(json.load(sys.stdin)['status'])"),
        _last_line,
    ),
    Case(
        "13", "RunSpec.create in three lines", "{py} -c " + shlex.quote(RUNSPEC_CREATE), _last_line
    ),
    Case("14a", "relax-rl --version", "{rl} --version", _last_line),
    Case("14b", "relax-rl params --algo relax", "{rl} params --algo relax", _stdout_lines),
    Case(
        "14c",
        "train --resume after SIGTERM",
        _sigterm(f"{TRAIN} --total-steps 2000000 --out r", 6)
        + "; {rl} train --resume r --total-steps 2000 --no-progress > /dev/null",
        _json_key("r/summary.json", "resumed_from"),
    ),
    Case(
        "15",
        "compare's report: rliable aggregates",
        "{rl} compare --algos a2c --env CartPole-v1 --seeds 0-2 --total-steps 1000 --out c "
        "> /dev/null 2>&1",
        lambda f, o: (
            f"IQM in report.md: {'IQM' in (f / 'c/report.md').read_text()}"
            if (f / "c/report.md").exists()
            else "no report.md"
        ),
    ),
]


def run_case(case: Case, bin_dir: Path) -> dict[str, str]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "my_envs.py").write_text(MY_ENVS)
        # (replace, not format: the Python snippets have braces of their own)
        command = case.command.replace("{rl}", str(bin_dir / "relax-rl"))
        command = command.replace("{py}", str(bin_dir / "python"))
        env = {**os.environ, "HOME": tmp, "PYTHONPATH": tmp, "WANDB_MODE": "disabled"}
        for key, value in (case.env or {}).items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        start = time.perf_counter()
        proc = subprocess.Popen(
            ["bash", "-c", command],
            cwd=folder,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group: what it leaves behind is killed
        )
        try:
            out, err = proc.communicate(timeout=case.limit_s)
            code = str(proc.returncode)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            code = f"killed after {case.limit_s:.0f} s"
        with contextlib.suppress(ProcessLookupError):  # e.g. workers a stopped run orphaned
            os.killpg(proc.pid, signal.SIGKILL)
        wall = time.perf_counter() - start
        err_lines = [line for line in err.splitlines() if line.strip()]
        first = err_lines[-1] if err_lines else ""
        if case.check is not None:
            try:
                outcome = case.check(folder, out)
            except OSError as exc:
                outcome = f"check failed: {exc}"
        else:
            outcome = first[:110]
        return {
            "code": code,
            "stderr_lines": str(len(err_lines)),
            "outcome": outcome.replace("|", "/"),
            "wall": f"{wall:.0f} s",
        }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--after", type=Path, required=True, help="bin folder of the install to test")
    p.add_argument("--before", type=Path, default=None, help="bin folder of an older install")
    p.add_argument("--only", default=None, help="comma-separated case names, e.g. 1a,3c")
    args = p.parse_args()
    chosen = set(args.only.split(",")) if args.only else None
    sides = (
        [("before", args.before), ("after", args.after)] if args.before else [("after", args.after)]
    )
    header = "| case | what | " + " | ".join(
        f"{name}: exit, stderr lines, what happened" for name, _ in sides
    )
    print(header + " |")
    print("|---|---|" + "---|" * len(sides))
    for case in CASES:
        if chosen is not None and case.name not in chosen:
            continue
        cells = []
        for _, bin_dir in sides:
            r = run_case(case, bin_dir.absolute())
            cells.append(f"{r['code']}, {r['stderr_lines']}: {r['outcome']}")
        print(f"| {case.name} | {case.what} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
