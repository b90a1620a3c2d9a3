"""Videos: ``train --capture-video`` (an episode after each periodic evaluation and at the end),
``eval --capture-video``, ``eval --render``, and one-line refusals."""

import os
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import gymnasium as gym
import numpy as np
import pytest

from relax_rl.cli import main

moviepy = pytest.importorskip("moviepy")


class NoFrames(gym.Env):
    """An env that cannot render."""

    metadata: ClassVar[dict] = {"render_modes": []}
    observation_space = gym.spaces.Box(-1, 1, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(2, np.float32), {}

    def step(self, action):
        return np.zeros(2, np.float32), 1.0, True, False, {}


gym.register("test_video/NoFrames-v0", entry_point=NoFrames, max_episode_steps=5)


def _train(out, *extra, env="CartPole-v1"):
    args = ["train", "--algo", "a2c", "--env", env, "--total-steps", "400", "--n-envs", "2",
            "--set", "policy_kwargs.net_arch=[8]", "--eval-episodes", "1", "--out", str(out),
            "--no-progress", *extra]  # fmt: skip
    return main(args)


def _frames(path: Path) -> tuple[int, tuple[int, int]]:
    from moviepy import VideoFileClip

    with VideoFileClip(str(path)) as clip:
        return clip.n_frames, tuple(clip.size)


def test_train_and_eval_record_episodes(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out, "--capture-video", "--eval-freq", "200") == 0
    videos = sorted(p.name for p in (out / "videos").iterdir())
    assert videos == ["eval-200.mp4", "eval-400.mp4", "final-400.mp4"]
    n, size = _frames(out / "videos" / "final-400.mp4")
    assert n >= 2 and size == (600, 400)  # CartPole's frames, the whole episode
    capsys.readouterr()
    assert main(["eval", str(out), "--capture-video"]) == 0
    assert f"video: {out / 'videos' / 'eval-seed0.mp4'}" in capsys.readouterr().out
    assert _frames(out / "videos" / "eval-seed0.mp4")[0] >= 2


def test_video_refusals_are_one_line(tmp_path, capsys, monkeypatch):
    assert _train(tmp_path / "a", "--capture-video", env="test_video/NoFrames-v0") == 2
    err = capsys.readouterr().err.strip()
    assert "cannot render frames (rgb_array): no video" in err and "\n" not in err
    assert not (tmp_path / "a").exists()
    assert _train(tmp_path / "b") == 0
    monkeypatch.setitem(sys.modules, "moviepy", None)  # import moviepy -> ImportError
    assert _train(tmp_path / "c", "--capture-video") == 2
    assert main(["eval", str(tmp_path / "b"), "--capture-video"]) == 2
    for line in capsys.readouterr().err.strip().splitlines()[-2:]:
        assert line.endswith("videos need moviepy; install it with: pip install 'relax-rl[video]'")


def test_eval_render_watches_or_says_it_needs_a_display(tmp_path):
    """In a process of its own (pygame's display state is per process): with SDL's dummy video
    driver the episodes play; with none available, one line and exit 2."""
    out = tmp_path / "run"
    assert _train(out) == 0
    cli = Path(sys.executable).with_name("relax-rl")
    argv = [str(cli), "eval", str(out), "--render", "--episodes", "1"]
    for driver, code in (("dummy", 0), ("no-such-driver", 2)):
        env = {**os.environ, "SDL_VIDEODRIVER": driver}
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == code, done.stderr
        if code == 2:
            last = done.stderr.strip().splitlines()[-1]
            assert "--render needs a display" in last
