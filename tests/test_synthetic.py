"""The synthetic PeMS-like generator: determinism, shapes, and structure a graph model can use."""

import json
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from hvd_stgnn.data import generate, read_dataset
from hvd_stgnn.data.synthetic import PRESETS, SyntheticTraffic, write_synthetic


@pytest.fixture(scope="module")
def week():
    return generate(36, 7 * 288, seed=5)


def test_generator_is_deterministic_per_seed(week):
    again = generate(36, 7 * 288, seed=5)
    np.testing.assert_array_equal(again.speed, week.speed)
    np.testing.assert_array_equal(again.edge_index, week.edge_index)
    assert not np.array_equal(generate(36, 7 * 288, seed=6).speed, week.speed)


def test_generator_shapes_graph_and_missing(week):
    T, N = week.speed.shape
    assert (T, N) == (7 * 288, 36) and week.speed.dtype == np.float32
    assert np.all(np.diff(week.timestamps) == 300)
    src, dst = week.edge_index
    assert src.min() >= 0 and dst.max() < N and not np.any(src == dst)
    assert np.all((week.edge_weight >= 0.1) & (week.edge_weight <= 1.0))
    degree = np.bincount(src, minlength=N) + np.bincount(dst, minlength=N)
    assert degree.min() >= 1 and week.num_edges < 8 * N, "sparse and connected-ish"
    missing = week.speed == 0
    assert 0.005 < missing.mean() < 0.06
    valid = week.speed[~missing]
    assert valid.min() >= 3 and valid.max() <= 85


def test_weekday_rush_hour_is_slower_than_night(week):
    tod_hour = (week.timestamps % 86_400) / 3600
    weekday = ((week.timestamps // 86_400 + 3) % 7) < 5
    speed = np.where(week.speed == 0, np.nan, week.speed)
    rush = np.nanmean(speed[weekday & (tod_hour >= 17) & (tod_hour < 18.5)])
    night = np.nanmean(speed[(tod_hour >= 1) & (tod_hour < 4)])
    weekend_rush = np.nanmean(speed[~weekday & (tod_hour >= 17) & (tod_hour < 18.5)])
    assert rush < night - 5
    assert weekend_rush > rush + 2


def test_congestion_reaches_upstream_sensors_later(week):
    # An edge points downstream (source upstream of target): the upstream sensor's
    # speed follows its downstream neighbour with a positive lag.
    speed = np.where(week.speed == 0, np.nan, week.speed).astype(np.float64)
    src, dst = week.edge_index
    lags = []
    for u, d in zip(src, dst):
        a, b = speed[:, u], speed[:, d]
        best = max(range(0, 7), key=lambda k: _corr(a[k:], b[: len(b) - k]))
        lags.append(best)
    assert np.mean(lags) > 0.5


def _corr(a, b):
    ok = np.isfinite(a) & np.isfinite(b)
    return np.corrcoef(a[ok], b[ok])[0, 1]


# --- streaming: chunking independence, presets, scale, memory -------------------------------

def test_speed_does_not_depend_on_how_the_range_is_chunked():
    T = 3 * 288 + 50  # a short last block too
    whole = SyntheticTraffic(30, T, seed=3).speed(0, T)
    traffic = SyntheticTraffic(30, T, seed=3)
    parts = [traffic.speed(a, b) for a, b in [(0, 100), (100, 700), (700, 701), (701, T)]]
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    # Out of order, block-aligned and not, through the one-block cache and around it.
    fresh = SyntheticTraffic(30, T, seed=3)
    np.testing.assert_array_equal(fresh.speed(576, 864), whole[576:864])
    np.testing.assert_array_equal(fresh.speed(290, 577), whole[290:577])
    np.testing.assert_array_equal(fresh.speed(5, 6), whole[5:6])
    np.testing.assert_array_equal(fresh.speed(864, T), whole[864:])
    assert fresh.speed(7, 7).shape == (0, 30)
    np.testing.assert_array_equal(generate(30, T, seed=3).speed, whole)
    # Missing runs are drawn per block but may run on into the next one.
    gappy = SyntheticTraffic(30, 2 * 288, seed=3, missing_rate=0.2).speed(0, 2 * 288)
    assert np.any((gappy[287] == 0) & (gappy[288] == 0))
    with pytest.raises(ValueError):
        traffic.speed(0, T + 1)


def test_write_synthetic_streams_the_same_data_as_generate(tmp_path):
    T, N = 2 * 288 + 17, 25
    path = tmp_path / "s.h5"
    summary = write_synthetic(path, N, T, seed=9, progress=False, chunk_steps=100, preset="custom")
    expected = generate(N, T, seed=9)
    got = read_dataset(path)
    np.testing.assert_array_equal(got.speed, expected.speed)
    np.testing.assert_array_equal(got.timestamps, expected.timestamps)
    np.testing.assert_array_equal(got.edge_index, expected.edge_index)
    np.testing.assert_array_equal(got.edge_weight, expected.edge_weight)
    assert got.sensor_ids == expected.sensor_ids and got.source == expected.source
    with h5py.File(path, "r") as f:
        assert f.attrs["synthetic_seed"] == 9 and f.attrs["synthetic_preset"] == "custom"
        assert (f.attrs["synthetic_num_nodes"], f.attrs["synthetic_num_steps"]) == (N, T)
        assert f["speed"].chunks == (288, N)
    assert (summary.num_steps, summary.num_nodes, summary.num_edges) == (T, N, expected.num_edges)
    assert summary.missing_share == pytest.approx(float((expected.speed == 0).mean()))
    assert not list(tmp_path.glob(".*tmp*")), "no temp file left behind"


def test_presets_have_the_real_shapes():
    shapes = {name: (p.num_nodes, p.num_steps) for name, p in PRESETS.items()}
    assert shapes == {
        "tiny": (50, 4_032),
        "metr-la": (207, 34_272),
        "pems-bay": (325, 52_116),
        "pems-all-la": (2_716, 105_120),
        "pems": (11_160, 105_120),
    }
    assert PRESETS["pems"].num_nodes * PRESETS["pems"].num_steps * 4 == pytest.approx(4.7e9, rel=0.01)


def test_pems_width_network_is_sparse_and_a_day_computes():
    N = PRESETS["pems"].num_nodes
    t = time.perf_counter()
    traffic = SyntheticTraffic(N, PRESETS["pems"].num_steps, seed=0)
    assert time.perf_counter() - t < 5, "the network and parameters build in seconds"
    src, dst = traffic.network.edge_index
    assert traffic.num_edges < 10 * N, "O(N) edges"
    assert src.min() >= 0 and dst.max() < N and not np.any(src == dst)
    degree = np.bincount(src, minlength=N) + np.bincount(dst, minlength=N)
    assert degree.min() >= 1, "every sensor has an edge"
    w = traffic.network.edge_weight
    assert np.all((w >= 0.1) & (w <= 1.0))
    day = traffic.speed(0, 288)
    assert day.shape == (288, N) and day.dtype == np.float32
    missing = day == 0
    assert 0.005 < missing.mean() < 0.06
    valid = day[~missing]
    assert valid.min() >= 3 and valid.max() <= 85 and 50 < valid.mean() < 70


_MEMORY_SCRIPT = """
import json, resource, sys
from hvd_stgnn.data.synthetic import write_synthetic
out, N = sys.argv[1], int(sys.argv[2])
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
write_synthetic(out, N, 2 * 288, seed=0, progress=False)
warm = rss()
write_synthetic(out, N, 10 * 288, seed=0, progress=False)
print(json.dumps({"warm": warm, "peak": rss()}))
"""


def test_streaming_write_keeps_memory_bounded(tmp_path):
    # Peak RSS is a high-water mark, so the fixed overhead (interpreter, numpy/h5py, HDF5's
    # chunk buffers and free lists, the generator's one-day working set at this width) is
    # measured by a 2-day write of the same width first. Writing 10 days must then add less
    # than half of the 10-day array (22 MB): a generator holding the array would add at least
    # the 8 extra days (0.8 x 22 MB), while streaming adds only allocator / HDF5 free-list
    # noise (~5 MB measured), whatever the length.
    N, days = 2000, 10
    array_bytes = N * days * 288 * 4
    proc = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, str(tmp_path / "m.h5"), str(N)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    rss = json.loads(proc.stdout.strip().splitlines()[-1])
    assert rss["peak"] - rss["warm"] < array_bytes / 2, rss
