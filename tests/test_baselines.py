"""Baselines: persistence and historical average against direct numpy computations."""

import numpy as np
import pytest
import torch

from hvd_stgnn.metrics import HistoricalAverage, persistence, slot_sums, slots_of


def test_persistence_is_the_last_observed_value():
    raw = torch.tensor([[[1.0, 5.0, 0.0], [2.0, 0.0, 0.0], [float("nan"), 0.0, 0.0]]])  # (B=1, L=3, N=3)
    pred = persistence(raw, horizon=4, fallback=42.0)
    assert pred.shape == (1, 4, 3)
    torch.testing.assert_close(pred[0, 0], torch.tensor([2.0, 5.0, 42.0]))
    assert torch.equal(pred[0, 0], pred[0, 3])


def test_slots_of_day_and_week():
    ts = 1_704_067_200 + 300 * np.arange(2 * 7 * 288, dtype=np.int64)  # two weeks from a Monday 00:00
    day, n_day = slots_of(ts, 300, weekly=False)
    week, n_week = slots_of(ts, 300, weekly=True)
    assert (n_day, n_week) == (288, 2016)
    np.testing.assert_array_equal(day[:288], np.arange(288))
    np.testing.assert_array_equal(week[:2016], np.arange(2016))
    np.testing.assert_array_equal(week[2016:], np.arange(2016))


def test_historical_average_is_the_slot_mean_without_missing():
    rng = np.random.default_rng(0)
    T, N, per_day = 4 * 288, 3, 288
    series = rng.uniform(20, 70, size=(T, N)).astype(np.float32)
    series[5, 0] = 0.0
    series[5 + 288, 0] = np.nan
    ts = 1_704_067_200 + 300 * np.arange(T, dtype=np.int64)
    slots, n = slots_of(ts, 300, weekly=False)
    # Sums are separable: two "ranks" add up to one.
    sums = slot_sums(series, slots, n, 0, 500) + slot_sums(series, slots, n, 500, T)
    np.testing.assert_allclose(sums, slot_sums(series, slots, n, 0, T))
    ha = HistoricalAverage(sums, slots, input_steps=12, horizon=2, fallback=50.0)
    expected_slot5 = np.mean([series[5 + d * per_day, 0] for d in (2, 3)])
    assert ha.table[5, 0].item() == pytest.approx(expected_slot5, rel=1e-6)
    assert ha.table[7, 1].item() == pytest.approx(series[7::per_day, 1].mean(), rel=1e-6)
    pred = ha(torch.tensor([0, 300]))  # target steps s + 12, s + 13
    assert pred.shape == (2, 2, N)
    torch.testing.assert_close(pred[1, 0], ha.table[(300 + 12) % per_day])


def test_historical_average_fallbacks():
    series = np.zeros((288, 2), np.float32)
    series[:, 1] = 30.0
    series[3, 1] = 0.0
    ts = 300 * np.arange(288, dtype=np.int64)
    slots, n = slots_of(ts, 300, weekly=False)
    ha = HistoricalAverage(slot_sums(series, slots, n, 0, 288), slots, 1, 1, fallback=55.0)
    assert ha.table[0, 0].item() == 55.0  # sensor never observed: the global fallback
    assert ha.table[3, 1].item() == 30.0  # slot missing: the sensor's mean
