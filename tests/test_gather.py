"""One-gather batches == windows cut out one by one (the materialized way), bit for bit."""

import numpy as np
import torch

from hvd_stgnn.batching import WindowGather, time_of_day


def _data(T=200, N=6, seed=0):
    rng = np.random.default_rng(seed)
    speed = rng.uniform(20, 70, size=(T, N)).astype(np.float32)
    speed[rng.random((T, N)) < 0.1] = 0.0
    speed[5:9, 2] = np.nan
    timestamps = 1_704_067_200 + 300 * np.arange(T, dtype=np.int64) + 3600
    return speed, timestamps


def _materialized(speed, timestamps, starts, L, H, mean, std):
    xs, ys, ms = [], [], []
    tod = time_of_day(timestamps)
    for s in starts:
        inp = speed[s : s + L]
        present = np.isfinite(inp) & (inp != 0)
        norm = np.where(present, (inp - np.float32(mean)) * np.float32(1.0 / std), np.float32(0))
        feat = np.stack([norm, np.broadcast_to(tod[s : s + L, None], inp.shape)], axis=-1)
        tgt = speed[s + L : s + L + H]
        m = np.isfinite(tgt) & (tgt != 0)
        xs.append(feat), ys.append(np.where(m, tgt, 0)), ms.append(m)
    return np.stack(xs), np.stack(ys), np.stack(ms)


def test_gather_equals_materialized_windows():
    speed, ts = _data()
    L, H, mean, std = 12, 5, 45.0, 12.5
    gather = WindowGather(torch.from_numpy(speed), ts, L, H, mean, std)
    starts = np.array([0, 3, 3, 50, 200 - L - H])
    batch = gather(starts)
    x, y, m = _materialized(speed, ts, starts, L, H, mean, std)
    assert batch.x.shape == (5, L, 6, 2) and batch.y.shape == (5, H, 6) and batch.mask.dtype == torch.bool
    np.testing.assert_array_equal(batch.x.numpy(), x)
    np.testing.assert_array_equal(batch.y.numpy(), y)
    np.testing.assert_array_equal(batch.mask.numpy(), m)
    assert not torch.isnan(batch.x).any() and not torch.isnan(batch.y).any()


def test_gather_on_a_local_slice_with_step_offset():
    speed, ts = _data()
    L, H = 4, 3
    full = WindowGather(torch.from_numpy(speed), ts, L, H, 40.0, 10.0)
    offset = 60
    local = WindowGather(torch.from_numpy(speed[offset:120]), ts[offset:120], L, H, 40.0, 10.0, step_offset=offset)
    starts = torch.tensor([60, 75, 120 - L - H])
    a, b = full(starts), local(starts)
    for name in ("x", "y", "mask"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=0, atol=0)


def test_gather_does_not_copy_the_series():
    speed, ts = _data()
    series = torch.from_numpy(speed)
    gather = WindowGather(series, ts, 12, 12, 0.0, 1.0)
    assert gather.series.data_ptr() == speed.ctypes.data


def test_time_of_day():
    ts = np.array([0, 300, 43_200, 86_100, 86_400], dtype=np.int64)
    np.testing.assert_allclose(time_of_day(ts), [0, 300 / 86_400, 0.5, 86_100 / 86_400, 0], rtol=1e-6)
