"""Gymnasium wrappers the run settings reach (``discretize``)."""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces


def check_bins(bins: Any) -> int:
    """``bins`` as an int >= 2, or ``ValueError`` saying what is valid."""
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer, float)):
        raise ValueError(f"discretize must be an integer number of bins >= 2, got {bins!r}")
    if not math.isfinite(bins) or int(bins) != bins or bins < 2:
        raise ValueError(f"discretize must be an integer number of bins >= 2, got {bins!r}")
    return int(bins)


def check_discretizable(space: gym.Space, bins: int, name: str = "the env") -> None:
    """Refuse, in one line, an action space :class:`DiscretizeAction` cannot take."""
    if not isinstance(space, spaces.Box):
        raise ValueError(
            f"discretize={bins} needs Box actions; {name} has {space} (its actions are "
            "discrete already: drop discretize)"
        )
    if not (np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))):
        raise ValueError(
            f"discretize={bins} needs finite action bounds; {name} has {space} (bound it "
            "first, e.g. gymnasium's ClipAction over a rescaled space)"
        )


class DiscretizeAction(gym.ActionWrapper):
    """A ``Box`` action space as ``MultiDiscrete([bins] * d)``: each of the ``d`` action
    dimensions (a multi-dimensional Box is flattened) takes one of ``bins`` values evenly spaced
    over its bounds, both bounds included (Tang & Agrawal, AAAI 2020, "Discretizing Continuous
    Action Space for On-Policy Optimization": a factorised categorical policy, K = 11 bins on
    MuJoCo). Bin ``j`` of dimension ``i`` is ``low_i + j (high_i - low_i) / (bins - 1)``.

    :param env: an env with a bounded ``Box`` action space.
    :param bins: values per dimension (``K >= 2``).
    """

    def __init__(self, env: gym.Env, bins: int) -> None:
        bins = check_bins(bins)
        spec = getattr(env, "spec", None)
        check_discretizable(env.action_space, bins, spec.id if spec is not None else "the env")
        super().__init__(env)
        box = env.action_space
        self.bins = bins
        self.box_shape = box.shape
        low = box.low.astype(np.float64).ravel()
        high = box.high.astype(np.float64).ravel()
        #: the values of each dimension's bins, ``(d, bins)``
        self.bin_values = (low[:, None] + (high - low)[:, None] * np.linspace(0, 1, bins)).astype(
            box.dtype
        )
        self.action_space = spaces.MultiDiscrete(np.full(low.size, bins, dtype=np.int64))

    def action(self, action: Any) -> np.ndarray:
        index = np.asarray(action, dtype=np.int64).reshape(-1)
        if index.shape != (self.bin_values.shape[0],):
            raise ValueError(
                f"action of shape {np.shape(action)}; expected ({self.bin_values.shape[0]},) "
                f"bin indices"
            )
        if index.min() < 0 or index.max() >= self.bins:
            raise ValueError(f"bin indices must be in [0, {self.bins - 1}], got {index}")
        chosen = self.bin_values[np.arange(index.size), index]
        return chosen.reshape(self.box_shape)
