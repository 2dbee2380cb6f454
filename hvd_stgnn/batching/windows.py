"""Window arithmetic: pure functions on integers, no data, no MPI.

A window with start s reads raw steps [s, s + L + H): input speed[s : s+L], target
speed[s+L : s+L+H]. With T raw steps the valid starts are 0 .. T-L-H (inclusive).

Starts are split chronologically into train / val / test (70/10/20 by default), as DCRNN
splits its windows. Split k with starts [a, b) touches raw steps [a, b - 1 + L + H); the
val inputs overlap the last train targets, which is how the standard benchmarks split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def num_windows(num_steps: int, input_steps: int, horizon: int) -> int:
    """Number of (input, target) windows in a series of `num_steps` steps."""
    if input_steps < 1 or horizon < 1:
        raise ValueError(f"input steps and horizon must be >= 1 (got L={input_steps}, H={horizon})")
    n = num_steps - input_steps - horizon + 1
    if n < 1:
        raise ValueError(
            f"series of {num_steps} steps is too short for one window of "
            f"L={input_steps} input + H={horizon} target steps (needs >= {input_steps + horizon})"
        )
    return n


def window_starts(num_steps: int, input_steps: int, horizon: int) -> np.ndarray:
    """All valid window starts, int64 (num_windows,)."""
    return np.arange(num_windows(num_steps, input_steps, horizon), dtype=np.int64)


def window_steps(starts: np.ndarray, input_steps: int, horizon: int) -> np.ndarray:
    """Raw steps read by each window: (B,) -> (B, L+H), row b = starts[b] + [0, L+H)."""
    starts = np.asarray(starts, dtype=np.int64)
    return starts[:, None] + np.arange(input_steps + horizon, dtype=np.int64)[None, :]


@dataclass(frozen=True)
class StartRange:
    """A contiguous range of window starts [start, stop)."""

    start: int
    stop: int

    @property
    def count(self) -> int:
        return self.stop - self.start

    def steps_touched(self, input_steps: int, horizon: int) -> tuple[int, int]:
        """Raw steps [t0, t1) read by the windows of this range."""
        return self.start, self.stop - 1 + input_steps + horizon

    def as_array(self) -> np.ndarray:
        return np.arange(self.start, self.stop, dtype=np.int64)


@dataclass(frozen=True)
class StartSplit:
    train: StartRange
    val: StartRange
    test: StartRange

    def as_dict(self) -> dict[str, StartRange]:
        return {"train": self.train, "val": self.val, "test": self.test}


def split_starts(n_windows: int, fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)) -> StartSplit:
    """Chronological split of starts 0..n_windows-1 into train / val / test.

    val and test get round(n * fraction) windows each (at least one), train the rest, so
    every window is in exactly one split.
    """
    if len(fractions) != 3 or any(f <= 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must be three positive numbers summing to 1 (got {fractions})")
    n_val = max(1, int(round(n_windows * fractions[1])))
    n_test = max(1, int(round(n_windows * fractions[2])))
    n_train = n_windows - n_val - n_test
    if n_train < 1:
        raise ValueError(
            f"{n_windows} window(s) cannot be split into train/val/test with at least one each "
            f"(need >= 3 windows; the series needs >= L+H+2 steps)"
        )
    return StartSplit(
        train=StartRange(0, n_train),
        val=StartRange(n_train, n_train + n_val),
        test=StartRange(n_train + n_val, n_windows),
    )
