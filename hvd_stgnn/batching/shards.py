"""Which starts each rank owns. Pure integer arithmetic, no MPI.

Training (distributed-index-batching): rank r of P gets the contiguous range
[r*c, (r+1)*c) of the training starts with c = n // P, so every rank runs the same number
of steps per epoch and no rank waits in an allreduce for a peer that has run out. The last
n mod P training starts (the latest in time, fewer than P windows) are dropped.

Evaluation: every window counts exactly once, so ranks get balanced contiguous ranges
that may differ in length by one; metrics are reduced as sums and counts, never per step.
"""

from __future__ import annotations

import numpy as np

from hvd_stgnn.batching.windows import StartRange


def shard_range(split: StartRange, rank: int, size: int) -> StartRange:
    """Rank's equal-sized contiguous share of `split` (training); remainder dropped."""
    _check_rank(rank, size)
    per_rank = split.count // size
    if per_rank < 1:
        raise ValueError(
            f"{split.count} training window(s) cannot give each of {size} ranks at least one; "
            "use fewer ranks or a longer series"
        )
    start = split.start + rank * per_rank
    return StartRange(start, start + per_rank)


def balanced_range(split: StartRange, rank: int, size: int) -> StartRange:
    """Rank's share of `split` when all windows must be covered (evaluation, statistics)."""
    _check_rank(rank, size)
    n = split.count
    return StartRange(split.start + (rank * n) // size, split.start + ((rank + 1) * n) // size)


def epoch_order(shard: StartRange, seed: int, epoch: int, rank: int) -> np.ndarray:
    """The shard's starts in this epoch's order: a permutation seeded by (seed, epoch, rank)."""
    rng = np.random.default_rng([seed, epoch, rank])
    return shard.start + rng.permutation(shard.count).astype(np.int64)


def num_batches(count: int, batch_size: int) -> int:
    """Batches for `count` samples, the last one partial."""
    return -(-count // batch_size)


def _check_rank(rank: int, size: int) -> None:
    if size < 1 or not 0 <= rank < size:
        raise ValueError(f"invalid rank {rank} of world size {size}")
