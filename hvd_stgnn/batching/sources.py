"""Where one rank's batches come from: index-batching (shard or global) or materialized.

A `BatchSource` holds what one split (train, val or test) needs on one rank and gives
(1) the rank's starts for an epoch, in order, and (2) the batch for any B of them.

- index / shard (default): the rank's contiguous share of starts and ONLY the raw steps
  those windows read (its range + L + H - 1 halo): on CPU a zero-copy view of the node's
  shared array, on GPU one host-to-device copy at start; samples shuffled within the range.
- index / global: the whole series, and the rank's slice of one global permutation per
  epoch (PGT's distributed-index-batching), for comparison.
- materialized: every window of the split precomputed into tensors on every rank, shares
  taken by torch's DistributedSampler (PGT's classic path, the data side of "standard
  DDP"). Built by the same gather, so the batches are identical for the same starts.

Every rank runs the same number of training steps in all three modes. Evaluation splits
give each rank a balanced share of the windows, each window counted once.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DistributedSampler

from hvd_stgnn.batching.gather import Batch, WindowGather
from hvd_stgnn.batching.shards import balanced_range, epoch_order, shard_range
from hvd_stgnn.batching.windows import StartRange
from hvd_stgnn.profiling.memory import sample_pss

SHUFFLE_MODES = ("shard", "global")
DATA_MODES = ("index", "materialized")


@dataclass(frozen=True)
class BatchingSpec:
    input_steps: int
    horizon: int
    mean: float
    std: float
    with_day_of_week: bool = False


def _gather_on(series: np.ndarray, timestamps: np.ndarray, t0: int, t1: int, spec: BatchingSpec, device) -> WindowGather:
    """A gather over raw steps [t0, t1): a view on CPU, one host-to-device copy otherwise."""
    with warnings.catch_warnings():
        # The node-shared series is read-only on purpose; torch warns it cannot write it.
        warnings.simplefilter("ignore", UserWarning)
        rows = torch.from_numpy(series[t0:t1])
    rows = rows.to(device)  # no copy when device is the CPU
    return WindowGather(
        rows, timestamps[t0:t1], spec.input_steps, spec.horizon, spec.mean, spec.std,
        step_offset=t0, with_day_of_week=spec.with_day_of_week,
    )


class BatchSource:
    """Base: `epoch_starts(epoch)` -> (S,) int64 starts of this rank; `source(starts)` -> Batch."""

    kind = "abstract"

    def __init__(self, gather: WindowGather, mine: StartRange) -> None:
        self.gather = gather
        self.mine = mine  # the starts this rank may draw

    @property
    def scaler(self):
        """The normalization its batches carry (batching/normalize.py Scaler)."""
        return self.gather.scaler

    @property
    def num_features(self) -> int:
        return self.gather.num_features

    @property
    def device_bytes(self) -> int:
        """Bytes of data this source keeps on its device for this rank."""
        return self.gather.series.numel() * self.gather.series.element_size()

    @property
    def shares_node_memory(self) -> bool:
        """True when the bytes are a view of the node-shared array (not a private copy)."""
        return self.gather.series.device.type == "cpu"

    def epoch_starts(self, epoch: int) -> torch.Tensor:
        """Training order of this rank's starts for `epoch` (1-based)."""
        raise NotImplementedError

    def eval_starts(self) -> torch.Tensor:
        return torch.from_numpy(self.mine.as_array())

    def __call__(self, starts: torch.Tensor) -> Batch:
        return self.gather(starts)


class ShardSource(BatchSource):
    kind = "index/shard"

    def __init__(self, gather, mine, seed: int, rank: int) -> None:
        super().__init__(gather, mine)
        self.seed, self.rank = seed, rank

    def epoch_starts(self, epoch: int) -> torch.Tensor:
        return torch.from_numpy(epoch_order(self.mine, self.seed, epoch, self.rank))


class GlobalSource(BatchSource):
    kind = "index/global"

    def __init__(self, gather, split: StartRange, seed: int, rank: int, size: int) -> None:
        super().__init__(gather, split)
        self.split, self.seed, self.rank, self.size = split, seed, rank, size
        self.per_rank = shard_range(split, rank, size).count  # same count as shard mode

    def epoch_starts(self, epoch: int) -> torch.Tensor:
        perm = np.random.default_rng([self.seed, epoch]).permutation(self.split.count)
        mine = perm[self.rank * self.per_rank : (self.rank + 1) * self.per_rank]
        return torch.from_numpy(self.split.start + mine.astype(np.int64))


class MaterializedSource(BatchSource):
    """Every window of `split` built up front: x (S, L, N, F), y (S, H, N), mask (S, H, N)."""

    kind = "materialized"

    def __init__(self, gather, split: StartRange, mine: StartRange, seed: int, rank: int, size: int,
                 build_batch: int = 256) -> None:
        super().__init__(gather, mine)
        self.split = split
        parts = [gather(torch.arange(s, min(s + build_batch, split.stop))) for s in range(split.start, split.stop, build_batch)]
        self.x = torch.cat([p.x for p in parts])
        self.y = torch.cat([p.y for p in parts])
        self.mask = torch.cat([p.mask for p in parts])
        sample_pss()  # the build's peak (parts and their concatenation coexist): PSS keeps no peak itself
        del parts
        self.sampler = DistributedSampler(range(split.count), num_replicas=size, rank=rank, shuffle=True, seed=seed)

    @property
    def device_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.x, self.y, self.mask))

    @property
    def shares_node_memory(self) -> bool:
        return False

    def epoch_starts(self, epoch: int) -> torch.Tensor:
        self.sampler.set_epoch(epoch)
        return self.split.start + torch.tensor(list(self.sampler), dtype=torch.int64)

    def __call__(self, starts: torch.Tensor) -> Batch:
        i = torch.as_tensor(starts, dtype=torch.int64, device=self.x.device) - self.split.start
        return Batch(x=self.x[i], y=self.y[i], mask=self.mask[i], scaler=self.scaler)


def build_sources(
    series: np.ndarray,
    timestamps: np.ndarray,
    splits: dict[str, StartRange],
    spec: BatchingSpec,
    rank: int,
    size: int,
    seed: int,
    shuffle: str = "shard",
    data_mode: str = "index",
    device: torch.device | str = "cpu",
) -> dict[str, BatchSource]:
    """The rank's source for each split. series: (T, N) raw (e.g. the node-shared view)."""
    if shuffle not in SHUFFLE_MODES:
        raise ValueError(f"shuffle must be one of {SHUFFLE_MODES} (got {shuffle!r})")
    if data_mode not in DATA_MODES:
        raise ValueError(f"data mode must be one of {DATA_MODES} (got {data_mode!r})")
    L, H = spec.input_steps, spec.horizon
    T = series.shape[0]
    sources: dict[str, BatchSource] = {}
    for name, split in splits.items():
        training = name == "train"
        if data_mode == "materialized":
            t0, t1 = split.steps_touched(L, H)
            gather = _gather_on(series, timestamps, t0, t1, spec, device)
            mine = balanced_range(split, rank, size)
            sources[name] = MaterializedSource(gather, split, mine, seed, rank, size)
        elif training and shuffle == "global":
            sources[name] = GlobalSource(_gather_on(series, timestamps, 0, T, spec, device), split, seed, rank, size)
        else:
            mine = shard_range(split, rank, size) if training else balanced_range(split, rank, size)
            t0, t1 = mine.steps_touched(L, H) if mine.count else (mine.start, mine.start)
            gather = _gather_on(series, timestamps, t0, t1, spec, device)
            sources[name] = ShardSource(gather, mine, seed, rank) if training else BatchSource(gather, mine)
    return sources
