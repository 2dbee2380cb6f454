"""HDF5 format round trip and validation; the synthetic generator's structure."""

import h5py
import numpy as np
import pytest

from hvd_stgnn.data import generate, read_dataset, validate_file, write_dataset
from hvd_stgnn.errors import DataError


@pytest.fixture(scope="module")
def week():
    return generate(36, 7 * 288, seed=5)


def test_round_trip(tmp_path, week):
    path = tmp_path / "d.h5"
    write_dataset(path, week)
    back = read_dataset(path)
    np.testing.assert_array_equal(back.speed, week.speed)
    np.testing.assert_array_equal(back.timestamps, week.timestamps)
    np.testing.assert_array_equal(back.edge_index, week.edge_index)
    np.testing.assert_array_equal(back.edge_weight, week.edge_weight)
    assert back.sensor_ids == week.sensor_ids
    assert back.interval_s == 300
    assert validate_file(path) == (7 * 288, 36)
    with h5py.File(path) as f:
        assert f["speed"].dtype == np.float32
        assert f["speed"].chunks == (288, 36), "chunks must be time-major: a day of steps x all sensors"
        assert f["timestamps"].dtype == np.int64
        assert f.attrs["missing_value"] == 0.0
    assert not list(tmp_path.glob(".*tmp*")), "no temp file left behind"


def _corrupt(path, week, edit):
    write_dataset(path, week)
    with h5py.File(path, "a") as f:
        edit(f)
    return path


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda f: f.__delitem__("timestamps"), "missing dataset /timestamps"),
        (lambda f: f.__delitem__("graph/edge_weight"), "missing dataset /graph/edge_weight"),
        (lambda f: f.attrs.__setitem__("schema_version", 99), "schema_version 99"),
        (lambda f: (f.__delitem__("speed"), f.create_dataset("speed", data=np.zeros((7 * 288, 36)))), "float32"),
        (
            lambda f: (f.__delitem__("timestamps"), f.create_dataset("timestamps", data=np.arange(5))),
            "/timestamps has shape",
        ),
        (lambda f: f["timestamps"].__setitem__(3, 0), "must increase by interval_seconds=300"),
        (lambda f: f["graph/edge_index"].__setitem__((0, 0), 36), "outside 0..35"),
    ],
)
def test_invalid_files_name_the_file_and_the_problem(tmp_path, week, edit, message):
    path = _corrupt(tmp_path / "bad.h5", week, edit)
    with pytest.raises(DataError, match=message) as info:
        read_dataset(path)
    assert str(path) in str(info.value)


def test_not_hdf5_and_missing_file(tmp_path):
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5 at all")
    with pytest.raises(DataError, match="not a readable HDF5 file"):
        validate_file(junk)
    with pytest.raises(DataError, match="no such file"):
        validate_file(tmp_path / "nope.h5")
    with pytest.raises(DataError, match="is a directory"):
        validate_file(tmp_path)


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
