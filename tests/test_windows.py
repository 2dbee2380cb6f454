"""Window arithmetic and the chronological split, exhaustively on small sizes."""

import numpy as np
import pytest

from hvd_stgnn.batching import num_windows, split_starts, window_starts, window_steps
from hvd_stgnn.batching.windows import StartRange


@pytest.mark.parametrize("L", [1, 2, 3, 12])
@pytest.mark.parametrize("H", [1, 2, 5, 12])
def test_every_window_reads_exactly_its_steps(L, H):
    for T in range(L + H, L + H + 30):
        starts = window_starts(T, L, H)
        assert len(starts) == num_windows(T, L, H) == T - L - H + 1
        np.testing.assert_array_equal(starts, np.arange(T - L - H + 1))
        steps = window_steps(starts, L, H)
        assert steps.shape == (len(starts), L + H)
        for s, row in zip(starts, steps):
            np.testing.assert_array_equal(row, np.arange(s, s + L + H))
        # The last window ends on the last step; nothing reads past the series.
        assert steps.max() == T - 1 and steps.min() == 0


def test_series_just_long_enough_has_one_window():
    starts = window_starts(24, 12, 12)
    np.testing.assert_array_equal(starts, [0])
    np.testing.assert_array_equal(window_steps(starts, 12, 12)[0], np.arange(24))


@pytest.mark.parametrize("T", [0, 1, 23])
def test_series_too_short_is_a_clear_error(T):
    with pytest.raises(ValueError, match=f"series of {T} steps is too short.*needs >= 24"):
        num_windows(T, 12, 12)


def test_nonpositive_lengths_rejected():
    with pytest.raises(ValueError, match="must be >= 1"):
        num_windows(100, 0, 12)
    with pytest.raises(ValueError, match="must be >= 1"):
        num_windows(100, 12, 0)


@pytest.mark.parametrize("n", list(range(3, 200)) + [34_249, 52_093])
def test_split_covers_every_window_once_in_order(n):
    split = split_starts(n)
    assert split.train.start == 0
    assert split.train.stop == split.val.start
    assert split.val.stop == split.test.start
    assert split.test.stop == n
    assert min(split.train.count, split.val.count, split.test.count) >= 1
    assert split.val.count == max(1, round(n * 0.1))
    assert split.test.count == max(1, round(n * 0.2))


def test_split_of_metr_la_size_matches_dcrnn_proportions():
    # METR-LA: 34,272 steps, L = H = 12 -> 34,249 windows; DCRNN: 23,974 / 3,425 / 6,850.
    split = split_starts(num_windows(34_272, 12, 12))
    assert (split.train.count, split.val.count, split.test.count) == (23_974, 3_425, 6_850)


def test_smallest_splittable_series():
    # L + H + 2 steps -> 3 windows -> one per split.
    split = split_starts(num_windows(26, 12, 12))
    assert [r.count for r in split.as_dict().values()] == [1, 1, 1]
    with pytest.raises(ValueError, match="cannot be split"):
        split_starts(num_windows(25, 12, 12))
    with pytest.raises(ValueError, match="cannot be split"):
        split_starts(1)


@pytest.mark.parametrize("fractions", [(0.7, 0.2, 0.2), (1.0, 0.0, 0.0), (0.5, 0.5), (0.8, -0.1, 0.3)])
def test_bad_fractions_rejected(fractions):
    with pytest.raises(ValueError, match="fractions"):
        split_starts(100, fractions)


def test_custom_fractions():
    split = split_starts(1000, (0.6, 0.2, 0.2))
    assert (split.train.count, split.val.count, split.test.count) == (600, 200, 200)


def test_steps_touched_by_a_split():
    r = StartRange(10, 20)
    # Starts 10..19 read steps 10 .. 19 + L + H - 1.
    assert r.steps_touched(12, 3) == (10, 34)
    steps = window_steps(r.as_array(), 12, 3)
    assert (steps.min(), steps.max() + 1) == r.steps_touched(12, 3)
