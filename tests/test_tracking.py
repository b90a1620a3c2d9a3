"""wandb tracking: offline run files hold the logged keys; no network is used."""

import json
import socket

import pytest

from relax_rl.cli import main


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
    data = files[0].read_bytes()
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
    assert code == 2 and "unknown wandb mode 'sometimes'" in capsys.readouterr().err
