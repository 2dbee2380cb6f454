"""Z-score statistics of the training inputs, exact, without building a window.

DCRNN normalizes with the mean and std of the materialized training inputs x_train. A raw
step t appears in as many training inputs as there are starts s with s <= t < s + L, so
weighting each step by that multiplicity gives the same mean and std in closed form.
Missing readings (0 or NaN) are excluded, as they are masked in the loss.

Sums are separable over disjoint start ranges: each rank sums its range, an allreduce of
the three numbers gives the global statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hvd_stgnn.batching.windows import StartRange
from hvd_stgnn.data.dataset import is_present


def input_multiplicity(starts: StartRange, input_steps: int) -> tuple[int, np.ndarray]:
    """Steps [t0, t0 + len(w)) and the number of input windows of `starts` holding each.

    w[t - t0] = #{s in [start, stop) : s <= t < s + L}.
    """
    t0 = starts.start
    t = np.arange(starts.count + input_steps - 1, dtype=np.int64)  # relative to t0
    first = np.maximum(0, t - input_steps + 1)  # earliest start whose input holds t
    last = np.minimum(t, starts.count - 1)  # latest start whose input holds t
    return t0, (last - first + 1).astype(np.float64)


def input_moment_sums(series: np.ndarray, starts: StartRange, input_steps: int, step_offset: int = 0,
                      chunk: int = 1024) -> np.ndarray:
    """[sum w, sum w*x, sum w*x^2] over valid readings of the inputs of `starts`, float64.

    series: (T_local, N) raw speeds whose row 0 is global step `step_offset`. Summed over
    chunks of `chunk` steps, so temporaries stay ~chunk x N x 8 bytes (a whole float64 copy
    of a rank's share of full PeMS would be 3.3 GB, several of them 13 GB).
    """
    if starts.count == 0:
        return np.zeros(3)
    t0, weights = input_multiplicity(starts, input_steps)
    sums = np.zeros(3)
    for lo in range(0, len(weights), chunk):
        hi = min(len(weights), lo + chunk)
        block = np.asarray(series[t0 - step_offset + lo : t0 - step_offset + hi], dtype=np.float64)
        valid = is_present(block)
        x = np.where(valid, block, 0.0)
        w = weights[lo:hi, None] * valid
        wx = w * x
        sums += [w.sum(), wx.sum(), (wx * x).sum()]
    return sums


@dataclass(frozen=True)
class Scaler:
    """The z-score of speeds that a batch source applies and a prediction undoes: models see
    and predict normalized speeds, metrics compare raw ones."""

    mean: float
    std: float

    def transform(self, x):
        """Raw speeds -> normalized (any shape): (x - mean) * (1 / std). A multiplication by
        the reciprocal, not a division: CUDA divides by a Python number that way, the CPU
        exactly, and one formulation makes CPU and GPU batches bit-equal."""
        return (x - self.mean) * (1.0 / self.std)

    def inverse(self, z):
        """Normalized (e.g. a model's output (B, H, N)) -> raw speeds."""
        return z * self.std + self.mean


def stats_from_sums(sums: np.ndarray) -> tuple[float, float]:
    """(mean, std) from [sum w, sum w*x, sum w*x^2]; population std, as numpy's x.std()."""
    total, s1, s2 = (float(v) for v in sums)
    if total <= 0:
        raise ValueError("no valid (non-zero, finite) reading in the training inputs")
    mean = s1 / total
    var = max(s2 / total - mean * mean, 0.0)
    std = float(np.sqrt(var))
    return mean, (std if std > 0 else 1.0)
