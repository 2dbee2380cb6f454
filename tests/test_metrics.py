"""Masked metrics: exact sums and counts, independent of batching and of rank partition."""

import math

import numpy as np
import pytest
import torch

from hvd_stgnn.metrics import HorizonErrorSums, masked_mae_loss


def _case(B=10, H=12, N=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.rand(B, H, N, generator=g) * 50 + 10
    mask = torch.rand(B, H, N, generator=g) > 0.2
    y = torch.where(mask, y, torch.zeros(()))
    pred = y + torch.randn(B, H, N, generator=g) * 3
    return pred, y, mask


def test_matches_numpy_reference_per_horizon():
    pred, y, mask = _case()
    sums = HorizonErrorSums(12)
    sums.update(pred, y, mask)
    table = sums.table(300)
    p, t, m = pred.double().numpy(), y.double().numpy(), mask.numpy()
    for col, step in (("15min", 2), ("30min", 5), ("60min", 11)):
        e = (p[:, step] - t[:, step])[m[:, step]]
        assert table["mae"][col] == pytest.approx(np.abs(e).mean(), rel=1e-12)
        assert table["rmse"][col] == pytest.approx(np.sqrt((e**2).mean()), rel=1e-12)
        assert table["mape"][col] == pytest.approx(100 * np.mean(np.abs(e) / np.abs(t[:, step][m[:, step]])), rel=1e-12)
    e_all = (p - t)[m]
    assert table["mae"]["avg"] == pytest.approx(np.abs(e_all).mean(), rel=1e-12)
    assert sums.mae == table["mae"]["avg"]


def test_independent_of_batching_and_of_partition_across_ranks():
    pred, y, mask = _case(B=17)
    whole = HorizonErrorSums(12)
    whole.update(pred, y, mask)
    # Three "ranks" with uneven shares, batches of different sizes, summed like an allreduce.
    parts = []
    for lo, hi in ((0, 2), (2, 9), (9, 17)):
        s = HorizonErrorSums(12)
        for b in range(lo, hi, 3):
            s.update(pred[b : min(b + 3, hi)], y[b : min(b + 3, hi)], mask[b : min(b + 3, hi)])
        parts.append(s.sums)
    reduced = HorizonErrorSums(12).reduced(lambda t: sum(parts))
    torch.testing.assert_close(reduced.sums, whole.sums, rtol=1e-12, atol=1e-9)


def test_horizon_columns_follow_interval_and_length():
    s = HorizonErrorSums(3)
    s.update(*_case(H=3))
    assert list(s.table(300)["mae"]) == ["15min", "avg"]
    assert list(s.table(900)["mae"]) == ["15min", "30min", "avg"]
    assert list(HorizonErrorSums(12).table(300)["mae"]) == ["15min", "30min", "60min", "avg"]


def test_all_masked_gives_nan_not_an_error():
    s = HorizonErrorSums(2)
    s.update(torch.ones(2, 2, 3), torch.zeros(2, 2, 3), torch.zeros(2, 2, 3, dtype=torch.bool))
    assert math.isnan(s.mae)


def test_masked_mae_loss():
    pred, y, mask = _case()
    expected = (pred - y).abs()[mask].mean()
    torch.testing.assert_close(masked_mae_loss(pred, y, mask), expected)
    assert masked_mae_loss(pred, y, torch.zeros_like(mask)).item() == 0.0
