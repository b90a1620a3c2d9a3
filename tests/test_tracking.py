"""wandb tracking: offline run files hold the logged keys; no network is used."""

import json
import os
import socket

import pytest

from relax_rl.cli import main


def wandb_payload(path) -> bytes:
    """The records of a ``.wandb`` file, unframed. The file is a leveldb-style log: 32 KiB blocks
    of records, each with a 7-byte header, a record longer than a block's rest split into
    fragments; searching the raw bytes misses a key that straddles a block boundary.

    wandb's service writes the file in its own process: ``teardown`` waits until it is done
    (``finish`` may return before the last records are on disk, the tail a busy machine
    showed missing)."""
    import wandb

    wandb.teardown()
    raw, block, pos, out = path.read_bytes(), 32768, 7, bytearray()
    while pos + 7 <= len(raw):
        left = block - pos % block
        if left < 7:  # the block's zero padding
            pos += left
            continue
        length = int.from_bytes(raw[pos + 4 : pos + 6], "little")
        out += raw[pos + 7 : pos + 7 + length]
        pos += 7 + length
    return bytes(out)


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a non-local connection fails the test."""
    real = socket.socket.connect

    def guarded(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if (
            isinstance(host, str)
            and host not in ("127.0.0.1", "localhost", "::1")
            and not host.startswith("/")
        ):
            raise AssertionError(f"network connection to {address}")
        return real(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


def test_track_offline_writes_run_files_with_keys(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--algo",
            "relax",
            "--env",
            "CartPole-v1",
            "--total-steps",
            "1000",
            "--n-envs",
            "2",
            "--out",
            str(out),
            "--no-progress",
            "--track",
            "--wandb-group",
            "g1",
            "--wandb-tags",
            "t1",
            "t2",
        ]
    )
    assert code == 0
    files = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1
    data = wandb_payload(files[0])
    for key in (
        b"global_step",
        b"train/policy_loss",
        b"train/cv_loss",
        b"train/kappa",
        b"rollout/ep_rew_mean",
        b"env_id",
        b"learning_rate",
        b"g1",
        b"final_mean_return_100",
    ):
        assert key in data, key
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"


@pytest.mark.parametrize("environment", ["online", "disabled"])
def test_an_explicit_offline_mode_wins_over_wandb_mode(tmp_path, monkeypatch, no_network,
                                                      environment):  # fmt: skip
    """``--wandb-mode offline`` is offline (run files, no connection) whatever WANDB_MODE says;
    without the flag, WANDB_MODE decides (here: disabled, no files)."""
    monkeypatch.setenv("WANDB_MODE", environment)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    args = ["train", "--algo", "a2c", "--env", "CartPole-v1", "--total-steps", "200",
            "--eval-episodes", "1", "--no-progress", "--track"]  # fmt: skip
    out = tmp_path / "explicit"
    assert main([*args, "--out", str(out), "--wandb-mode", "offline"]) == 0
    assert len(list((out / "wandb").glob("offline-run-*/run-*.wandb"))) == 1
    assert os.environ["WANDB_MODE"] == environment  # (put back)
    if environment == "disabled":
        assert main([*args, "--out", str(tmp_path / "implicit")]) == 0
        assert not list((tmp_path / "implicit").glob("wandb/offline-run-*"))


def test_bad_wandb_mode(tmp_path, capsys):
    code = main(
        [
            "train",
            "--algo",
            "a2c",
            "--env",
            "CartPole-v1",
            "--track",
            "--wandb-mode",
            "sometimes",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 2 and "--wandb-mode: invalid choice: 'sometimes'" in capsys.readouterr().err


TINY_AGENT = {"n_steps": 8, "policy_kwargs": {"net_arch": [8]}}


@pytest.mark.parametrize("name", ["reinforce", "a2c", "relax"])
def test_sb3_wandb_callback_works_when_passed(name, tmp_path, monkeypatch, no_network):
    """SB3's own WandbCallback, given to a tracked run as is: it needs a wandb run before it is
    built, so the user starts one and ``train`` logs into it. The callback records the model's
    hyperparameters, logs gradient histograms through ``wandb.watch`` (RELAX's double backward
    included) and saves the model."""
    import wandb
    from wandb.integration.sb3 import WandbCallback

    from relax_rl.agents import ALGOS
    from relax_rl.envs import make_env
    from relax_rl.tracking import TrackingConfig
    from relax_rl.training import RunSpec, train

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    user_run = wandb.init(project="p", mode="offline", dir=str(tmp_path))
    models = tmp_path / "wandb_models"
    callback = WandbCallback(gradient_save_freq=5, model_save_path=str(models), model_save_freq=50)
    run = {
        "n_envs": 2,
        "total_steps": 800,
        "threshold": 475.0,
        "stop_when_solved": False,
        "checkpoint_freq": 400,
        "eval_episodes": 1,
        "vec_env": "dummy",
    }
    agent = dict(TINY_AGENT, n_steps=0) if name == "reinforce" else TINY_AGENT
    spec = RunSpec(
        name,
        ALGOS[name],
        "CartPole-v1",
        0,
        tmp_path / "run",
        {**run, "n_envs": 1} if name == "reinforce" else run,
        agent,
        lambda n, s: make_env("CartPole-v1", n, s),
        progress=False,
        extra_callbacks=[callback],
        tracking=TrackingConfig("offline"),
    )
    assert train(spec)["status"] == "completed"
    assert wandb.run is user_run  # still open: the user started it
    user_run.finish()
    assert (models / "model.zip").exists()
    data = wandb_payload(next(tmp_path.glob("wandb/offline-run-*/run-*.wandb")))
    for key in (
        b"gradients/",
        b"gamma",
        b"env_id",
        b"rollout/ep_rew_mean",
        b"global_step",
        b"final_mean_return_100",
    ):
        assert key in data, key


def test_sb3_wandb_callback_with_a_users_own_wandb_run(tmp_path, monkeypatch, no_network):
    """The SB3 docs' recipe, unchanged: wandb.init, then learn(callback=WandbCallback())."""
    import wandb
    from wandb.integration.sb3 import WandbCallback

    from relax_rl.agents import RELAX
    from relax_rl.envs import make_env

    monkeypatch.setenv("WANDB_SILENT", "true")
    run = wandb.init(project="p", mode="offline", dir=str(tmp_path), sync_tensorboard=False)
    model = RELAX("MlpPolicy", make_env("CartPole-v1", 2, 0), seed=0, **TINY_AGENT)
    model.learn(400, callback=WandbCallback(gradient_save_freq=5, verbose=0))
    run.finish()
    data = wandb_payload(next(tmp_path.glob("wandb/offline-run-*/run-*.wandb")))
    assert b"gradients/" in data and b"RELAX" in data


_NETWORK_SPY = """
import atexit, socket, sys, threading
attempts = []
# registered first, so run last: after wandb's own exit handlers flush its exporters
atexit.register(lambda: open(sys.argv[1], "w").write("\\n".join(attempts)))
real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect
def getaddrinfo(host, *args, **kwargs):
    attempts.append(f"getaddrinfo {host} ({threading.current_thread().name})")
    raise OSError("no network in this test")
def connect(self, address):
    if self.family != socket.AF_UNIX and address[0] not in ("127.0.0.1", "localhost", "::1"):
        attempts.append(f"connect {address}")
        raise OSError("no network in this test")
    return real_connect(self, address)
socket.getaddrinfo, socket.socket.connect = getaddrinfo, connect
from relax_rl.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_offline_by_default_means_no_network_even_without_wandb_mode(tmp_path):
    """``--track`` with no WANDB_MODE in the environment: wandb must be offline from its first
    call (its telemetry exporter once probed wandb's server, a DNS query, in offline mode)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env["HOME"] = str(tmp_path)  # no wandb login or settings of the machine's user
    record = tmp_path / "attempts.txt"
    args = ["train", "--algo", "a2c", "--env", "CartPole-v1", "--total-steps", "600"]
    args += ["--out", str(tmp_path / "run"), "--no-progress", "--track", "--log-interval", "1"]
    done = subprocess.run(
        [sys.executable, "-c", _NETWORK_SPY, str(record), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert record.read_text() == ""


@pytest.mark.parametrize(
    "flags,needle",
    [
        (["--wandb-project", "a/b"], "wandb project 'a/b' contains /"),
        (["--wandb-project", "what?"], "wandb project 'what?' contains ?"),
        (["--wandb-project", ""], "must be 1 to 128 characters"),
        (["--wandb-tags", "x" * 65], "must be 1 to 64 characters"),
    ],
)
def test_what_wandb_would_refuse_is_refused_before_any_file(tmp_path, capsys, flags, needle):
    out = tmp_path / "run"
    args = ["train", "--algo", "a2c", "--env", "CartPole-v1", "--track", *flags, "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not out.exists()
