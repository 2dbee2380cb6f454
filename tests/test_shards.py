"""Per-rank ranges of starts: exhaustive over small sizes and world sizes."""

import numpy as np
import pytest

from hvd_stgnn.batching import balanced_range, epoch_order, num_batches, shard_range
from hvd_stgnn.batching.windows import StartRange


@pytest.mark.parametrize("offset", [0, 7])
def test_training_shards_are_equal_disjoint_and_cover_all_but_remainder(offset):
    for n in range(1, 60):
        split = StartRange(offset, offset + n)
        for size in range(1, min(n, 9) + 1):
            shards = [shard_range(split, r, size) for r in range(size)]
            counts = {s.count for s in shards}
            assert counts == {n // size}, "every rank must run the same number of steps"
            covered = np.concatenate([s.as_array() for s in shards])
            assert len(np.unique(covered)) == len(covered), "shards overlap"
            # The union is the split minus its last n mod P starts.
            np.testing.assert_array_equal(covered, np.arange(offset, offset + n - n % size))
            for a, b in zip(shards, shards[1:]):
                assert a.stop == b.start


def test_too_many_ranks_is_a_clear_error():
    with pytest.raises(ValueError, match="3 training window.*each of 4 ranks"):
        shard_range(StartRange(0, 3), 0, 4)


@pytest.mark.parametrize("rank,size", [(-1, 2), (2, 2), (0, 0)])
def test_invalid_rank(rank, size):
    with pytest.raises(ValueError, match="invalid rank"):
        shard_range(StartRange(0, 10), rank, size)
    with pytest.raises(ValueError, match="invalid rank"):
        balanced_range(StartRange(0, 10), rank, size)


def test_balanced_ranges_cover_every_window_exactly_once():
    for n in range(0, 60):
        split = StartRange(5, 5 + n)
        for size in range(1, 10):
            parts = [balanced_range(split, r, size) for r in range(size)]
            covered = np.concatenate([p.as_array() for p in parts])
            np.testing.assert_array_equal(covered, np.arange(5, 5 + n))
            counts = [p.count for p in parts]
            assert max(counts) - min(counts) <= 1


def test_epoch_order_is_a_seeded_permutation_of_the_shard():
    shard = StartRange(100, 164)
    a = epoch_order(shard, seed=0, epoch=1, rank=0)
    np.testing.assert_array_equal(np.sort(a), shard.as_array())
    np.testing.assert_array_equal(a, epoch_order(shard, seed=0, epoch=1, rank=0))
    assert not np.array_equal(a, epoch_order(shard, seed=0, epoch=2, rank=0))
    assert not np.array_equal(a, epoch_order(shard, seed=1, epoch=1, rank=0))
    assert not np.array_equal(a, shard.as_array()), "samples must be shuffled, not only batches"


def test_num_batches():
    assert [num_batches(n, 4) for n in range(0, 10)] == [0, 1, 1, 1, 1, 2, 2, 2, 2, 3]
