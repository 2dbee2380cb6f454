"""Closed-form training statistics == statistics of the materialized training inputs."""

import numpy as np
import pytest

from hvd_stgnn.batching import input_moment_sums, input_multiplicity, stats_from_sums
from hvd_stgnn.batching.windows import StartRange, window_steps


def _series(T, N, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(60, 8, size=(T, N)).astype(np.float32)
    x[rng.random((T, N)) < 0.05] = 0.0
    x[rng.random((T, N)) < 0.02] = np.nan
    return x


@pytest.mark.parametrize("L", [1, 3, 12])
def test_multiplicity_counts_the_windows_holding_each_step(L):
    for start in (0, 5):
        for count in range(1, 40):
            r = StartRange(start, start + count)
            t0, w = input_multiplicity(r, L)
            brute = np.zeros(count + L - 1)
            for s in r.as_array():
                brute[s - t0 : s - t0 + L] += 1
            assert t0 == start
            np.testing.assert_array_equal(w, brute)


@pytest.mark.parametrize("L,H", [(12, 12), (3, 1), (1, 4)])
def test_stats_equal_materialized_training_inputs(L, H):
    series = _series(300, 7)
    train = StartRange(0, 180)
    inputs = series[window_steps(train.as_array(), L, H)[:, :L]]  # (B, L, N) materialized
    valid = inputs[np.isfinite(inputs) & (inputs != 0)].astype(np.float64)
    mean, std = stats_from_sums(input_moment_sums(series, train, L))
    assert mean == pytest.approx(valid.mean(), rel=1e-12)
    assert std == pytest.approx(valid.std(), rel=1e-9)


def test_sums_are_separable_over_ranges_and_respect_offsets():
    series = _series(400, 5, seed=3)
    whole = input_moment_sums(series, StartRange(0, 250), 12)
    parts = [StartRange(0, 90), StartRange(90, 91), StartRange(91, 250)]
    np.testing.assert_allclose(sum(input_moment_sums(series, p, 12) for p in parts), whole, rtol=1e-12)
    # A rank holding only steps [80, 400) gives the same sums for its range.
    local = input_moment_sums(series[80:], StartRange(91, 250), 12, step_offset=80)
    np.testing.assert_allclose(local, input_moment_sums(series, StartRange(91, 250), 12), rtol=1e-12)
    assert input_moment_sums(series, StartRange(10, 10), 12).tolist() == [0, 0, 0]


def test_no_valid_reading_is_an_error_and_constant_series_has_unit_std():
    with pytest.raises(ValueError, match="no valid"):
        stats_from_sums(np.zeros(3))
    mean, std = stats_from_sums(input_moment_sums(np.full((50, 2), 42.0, np.float32), StartRange(0, 20), 4))
    assert mean == pytest.approx(42.0) and std == 1.0
