"""Forecasting baselines, evaluated by the same masked metrics on the same windows.

- persistence: every future step = the last observed input value of the sensor (missing
  readings skipped; a sensor with none in the window gets the training mean);
- historical average: per sensor, the mean of the same time-of-day slot over the training
  span (time-of-week slots once the span holds two weeks or more), missing readings
  excluded; a slot with no reading falls back to the sensor's mean, then the global mean.
"""

from __future__ import annotations

import numpy as np
import torch

from hvd_stgnn.data.dataset import SECONDS_PER_DAY, is_present, weekday


def persistence(raw_inputs: torch.Tensor, horizon: int, fallback: float) -> torch.Tensor:
    """raw_inputs (B, L, N), 0/NaN where missing -> predictions (B, H, N)."""
    last = torch.full_like(raw_inputs[:, 0], fallback)
    for t in range(raw_inputs.shape[1]):  # forward fill over L steps (L is small)
        step = raw_inputs[:, t]
        last = torch.where(is_present(step), step, last)
    return last[:, None].expand(-1, horizon, -1)


def slots_of(timestamps: np.ndarray, interval_s: int, weekly: bool) -> tuple[np.ndarray, int]:
    """Slot index of each step (T,) and the number of slots: time of day, or of week."""
    ts = np.asarray(timestamps, dtype=np.int64)
    per_day = SECONDS_PER_DAY // interval_s
    slot = (ts % SECONDS_PER_DAY) // interval_s
    if not weekly:
        return slot, per_day
    return weekday(ts) * per_day + slot, 7 * per_day


def slot_sums(series: np.ndarray, slots: np.ndarray, num_slots: int, t0: int, t1: int,
              chunk: int = 1024) -> np.ndarray:
    """(2, num_slots, N) float64: sums and counts of valid readings of steps [t0, t1), in
    chunks of steps (bounded temporaries at PeMS scale)."""
    out = torch.zeros((2, num_slots, series.shape[1]), dtype=torch.float64)
    for lo in range(t0, t1, chunk):
        hi = min(t1, lo + chunk)
        block = np.asarray(series[lo:hi], dtype=np.float64)
        valid = is_present(block)
        index = torch.from_numpy(np.ascontiguousarray(slots[lo:hi], dtype=np.int64))
        out[0].index_add_(0, index, torch.from_numpy(np.where(valid, block, 0.0)))
        out[1].index_add_(0, index, torch.from_numpy(valid.astype(np.float64)))
    return out.numpy()


class HistoricalAverage:
    """Predicts speed at a step from its slot's training mean: table (num_slots, N), held on
    `device` (where the batches are), so a prediction is one gather there."""

    def __init__(self, sums: np.ndarray, slots: np.ndarray, input_steps: int, horizon: int, fallback: float,
                 device: torch.device | str = "cpu"):
        total, count = sums
        sensor_mean = np.divide(total.sum(0), count.sum(0), out=np.full(total.shape[1], fallback), where=count.sum(0) > 0)
        table = np.divide(total, count, out=np.broadcast_to(sensor_mean, total.shape).copy(), where=count > 0)
        self.table = torch.from_numpy(table.astype(np.float32)).to(device)
        self.slots = torch.from_numpy(slots.astype(np.int64)).to(device)
        self.offsets = input_steps + torch.arange(horizon, device=device)

    def __call__(self, starts: torch.Tensor) -> torch.Tensor:
        """starts (B,) -> predictions (B, H, N) for the target steps of each window."""
        steps = starts.to(self.offsets.device)[:, None] + self.offsets  # (B, H)
        return self.table[self.slots[steps]]
