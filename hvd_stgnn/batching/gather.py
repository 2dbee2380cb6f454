"""Build a batch from window starts with one gather on the raw series.

The raw series is held once (on CPU a view of the node-shared array, or of the array this
process read; on GPU one device copy). A batch of B starts becomes a (B, L+H) index of steps and one
`index_select` of (B*(L+H), N) rows: no per-sample Python loop and no materialized windows.
Normalization and time features are applied to the gathered rows only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hvd_stgnn.batching.normalize import Scaler
from hvd_stgnn.data.dataset import SECONDS_PER_DAY, is_present, weekday


@dataclass
class Batch:
    """A batch and its transform (as tsl's batches carry theirs): the model sees `x`, its
    normalized output goes back to speeds with `scaler.inverse` before any metric."""

    x: torch.Tensor  # (B, L, N, F) normalized speed, time of day [, day of week]
    y: torch.Tensor  # (B, H, N) raw target speed
    mask: torch.Tensor  # (B, H, N) bool, True where the target reading is present
    scaler: Scaler

    def normalized_targets(self) -> torch.Tensor:
        """(B, H, N) normalized targets, 0 (the training mean) where missing: the ground truth
        a sequence-to-sequence decoder is fed under teacher forcing."""
        return self.scaler.transform(self.y).masked_fill(~self.mask, 0.0)


def time_of_day(timestamps: np.ndarray) -> np.ndarray:
    """Fraction of the day in [0, 1) for int64 seconds since epoch: (T,) float32."""
    return ((np.asarray(timestamps, dtype=np.int64) % SECONDS_PER_DAY) / SECONDS_PER_DAY).astype(np.float32)


def day_of_week(timestamps: np.ndarray) -> np.ndarray:
    """Day of week / 7 in [0, 1), Monday = 0: (T,) float32."""
    return (weekday(timestamps) / 7.0).astype(np.float32)


class WindowGather:
    """Callable: starts (B,) int64 -> Batch.

    series: (T_local, N) float32 raw speeds, 0 or NaN where missing; row 0 is global step
        `step_offset`, so a rank may hold only the steps its starts need.
    timestamps: (T_local,) int64 seconds of the same rows.
    Features of x: normalized speed, time of day, and day of week if `with_day_of_week`.
    Time features are computed once for the rows held, (T_local, 1 or 2): never per sensor.
    """

    def __init__(
        self,
        series: torch.Tensor,
        timestamps: np.ndarray,
        input_steps: int,
        horizon: int,
        mean: float,
        std: float,
        step_offset: int = 0,
        with_day_of_week: bool = False,
    ) -> None:
        if series.dim() != 2:
            raise ValueError(f"series must be (T, N), got shape {tuple(series.shape)}")
        self.series = series
        self.device = series.device
        time_features = [time_of_day(timestamps)] + ([day_of_week(timestamps)] if with_day_of_week else [])
        self.time_features = torch.from_numpy(np.stack(time_features, axis=1)).to(self.device)  # (T_local, 1|2)
        self.num_features = 1 + len(time_features)
        self.input_steps = input_steps
        self.horizon = horizon
        self.scaler = Scaler(mean, std)
        self.step_offset = step_offset
        self._offsets = torch.arange(input_steps + horizon, device=self.device)

    @property
    def num_nodes(self) -> int:
        return self.series.shape[1]

    def raw_inputs(self, starts: torch.Tensor | np.ndarray) -> torch.Tensor:
        """The raw input speeds (B, L, N) of each window (for baselines), 0/NaN kept."""
        starts = torch.as_tensor(starts, dtype=torch.int64, device=self.device)
        steps = (starts - self.step_offset)[:, None] + self._offsets[: self.input_steps]
        return self.series.index_select(0, steps.reshape(-1)).view(-1, self.input_steps, self.num_nodes)

    def __call__(self, starts: torch.Tensor | np.ndarray) -> Batch:
        starts = torch.as_tensor(starts, dtype=torch.int64, device=self.device)
        L, H, N = self.input_steps, self.horizon, self.num_nodes
        steps = (starts - self.step_offset)[:, None] + self._offsets  # (B, L+H)
        window = self.series.index_select(0, steps.reshape(-1)).view(-1, L + H, N)

        inputs, y = window[:, :L], window[:, L:]
        present = is_present(inputs)
        # Missing inputs become 0 after normalization, i.e. the training mean.
        speed = self.scaler.transform(inputs).masked_fill(~present, 0.0)
        time = self.time_features[steps[:, :L]]  # (B, L, 1|2), broadcast over sensors
        x = torch.cat([speed[..., None], time[:, :, None, :].expand(-1, -1, N, -1)], dim=-1)

        mask = is_present(y)
        y = y.masked_fill(~mask, 0.0)
        return Batch(x=x, y=y, mask=mask, scaler=self.scaler)
