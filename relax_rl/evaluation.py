"""The one evaluation loop: SB3's ``evaluate_policy``, returning per-episode numbers; and an
episode recorded as a video (SB3's ``VecVideoRecorder``, which writes through moviepy)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecEnv, VecVideoRecorder

from relax_rl.errors import UsageError

VIDEO_INSTALL = "pip install 'relax-rl[video]'"


@dataclass
class EvalResult:
    returns: list[float]
    lengths: list[int]

    @property
    def mean(self) -> float:
        return float(np.mean(self.returns))

    @property
    def std(self) -> float:
        return float(np.std(self.returns))


def evaluate(
    model: BaseAlgorithm, env: VecEnv, n_episodes: int = 10, deterministic: bool = True
) -> EvalResult:
    """Run ``n_episodes`` episodes of ``model`` on ``env`` (Monitor-wrapped for true returns)."""
    returns, lengths = evaluate_policy(
        model,
        env,
        n_eval_episodes=n_episodes,
        deterministic=deterministic,
        return_episode_rewards=True,
        warn=False,
    )
    return EvalResult([float(r) for r in returns], [int(n) for n in lengths])


def check_video_support() -> None:
    """moviepy (SB3's video recorder writes through it), or a one-line error naming the extra."""
    try:
        import moviepy  # noqa: F401
    except ImportError:
        raise UsageError(f"videos need moviepy; install it with: {VIDEO_INSTALL}") from None


class _QuietVideoRecorder(VecVideoRecorder):
    """SB3's recorder, with moviepy's progress bars kept off the terminal."""

    def _stop_recording(self) -> None:
        from moviepy.video.io.ImageSequenceClip import ImageSequenceClip

        if self.recorded_frames:
            clip = ImageSequenceClip(self.recorded_frames, fps=self.frames_per_sec)
            clip.write_videofile(self.video_path, logger=None)
        self.recorded_frames = []
        self.recording = False


def record_episode(
    model: BaseAlgorithm,
    env: VecEnv,
    folder: Path,
    name: str,
    deterministic: bool = True,
    max_steps: int = 10_000,
) -> Path:
    """One episode of ``model`` on ``env`` (one env that renders ``rgb_array`` frames) as
    ``folder/name.mp4``; ``env`` is closed after it.

    :param max_steps: the longest video, in env steps (an env without a time limit).
    """
    if env.num_envs != 1 or env.render_mode != "rgb_array":
        env.close()
        raise UsageError("this env cannot render frames (render_mode rgb_array): no video")
    # frames need no display: pygame's dummy driver (else SDL complains on a headless machine)
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    recorder = _QuietVideoRecorder(
        env, str(folder), lambda step: step == 0, video_length=max_steps, name_prefix=name
    )
    try:
        obs = recorder.reset()
        for _ in range(max_steps):
            action, _ = model.predict(obs, deterministic=deterministic)
            obs, _, dones, _ = recorder.step(action)
            if dones[0]:
                break
    finally:
        recorder.close()  # (writes the file)
    path = folder / f"{name}.mp4"
    os.replace(recorder.video_path, path)
    return path
