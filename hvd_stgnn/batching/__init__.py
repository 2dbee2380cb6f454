"""Index-batching: window arithmetic, per-rank shards, normalization sums, one-gather batches."""

from hvd_stgnn.batching.gather import Batch, WindowGather, time_of_day
from hvd_stgnn.batching.normalize import Scaler, input_moment_sums, input_multiplicity, stats_from_sums
from hvd_stgnn.batching.shards import balanced_range, epoch_order, num_batches, shard_range
from hvd_stgnn.batching.windows import (
    StartRange,
    StartSplit,
    num_windows,
    split_starts,
    window_starts,
    window_steps,
)

__all__ = [
    "Batch",
    "Scaler",
    "StartRange",
    "StartSplit",
    "WindowGather",
    "balanced_range",
    "epoch_order",
    "input_moment_sums",
    "input_multiplicity",
    "num_batches",
    "num_windows",
    "shard_range",
    "split_starts",
    "stats_from_sums",
    "time_of_day",
    "window_starts",
    "window_steps",
]
