"""HDF5 format round trip and validation; the synthetic generator's structure."""

import h5py
import numpy as np
import pytest

from bad_files import EDITS, write_bad, write_good
from hvd_stgnn.data import generate, read_dataset, validate_file, write_dataset
from hvd_stgnn.data.hdf5 import read_speed_into
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


@pytest.mark.parametrize("case", sorted(EDITS))
def test_invalid_files_name_the_file_and_the_problem(tmp_path, case):
    path, fragment = write_bad(tmp_path / f"{case}.h5", case)
    with pytest.raises(DataError) as info:
        read_dataset(path)
    message = str(info.value)
    assert fragment in message and str(path) in message
    assert "\n" not in message


def test_nan_and_inf_speeds_are_missing_readings_not_errors(tmp_path):
    path = write_good(tmp_path / "nan.h5")
    with h5py.File(path, "a") as f:
        f["speed"][10:20, 2] = np.nan
        f["speed"][30, 0] = np.inf
    data = read_dataset(path)
    assert data.attrs["nonfinite_readings"] == 11


def test_slab_reads_equal_one_read(tmp_path, week):
    path = tmp_path / "d.h5"
    write_dataset(path, week)
    out = np.empty_like(week.speed)
    assert read_speed_into(path, out, slab_bytes=1000) == 0  # 6-step slabs
    np.testing.assert_array_equal(out, week.speed)


def test_not_hdf5_and_missing_file(tmp_path):
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5 at all")
    with pytest.raises(DataError, match="not a readable HDF5 file"):
        validate_file(junk)
    with pytest.raises(DataError, match="no such file"):
        validate_file(tmp_path / "nope.h5")
    with pytest.raises(DataError, match="is a directory"):
        validate_file(tmp_path)


def test_count_nonfinite_over_several_chunks():
    """Counted chunk by chunk; the pems-scale bug counted the whole array once per chunk."""
    from hvd_stgnn.data.hdf5 import count_nonfinite

    block = np.ones((50, 41), dtype=np.float32)
    block[3, :5] = np.nan
    block[40, 7] = np.inf
    block[-1, -1] = -np.inf
    assert count_nonfinite(block, step=100) == 7
    assert count_nonfinite(block, step=1 << 20) == 7
