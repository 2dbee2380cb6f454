"""CLI: subcommands work; bad input gives one clear line and a non-zero exit."""

import json

import numpy as np
import pytest

from conftest import SHARED_DATA, our_error_lines, run_cli, run_mpi


def test_data_synth_and_info(tmp_path):
    out = tmp_path / "d.h5"
    r = run_cli("data", "synth", "--preset", "tiny", "--nodes", "8", "--steps", "600", "--seed", "3", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "T=600 N=8" in r.stdout
    r = run_cli("data", "info", str(out), "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert (info["steps"], info["sensors"], info["interval_s"]) == (600, 8, 300)
    assert info["start"] == "2024-01-01 00:00"


def _assert_one_line(r, *fragments):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in r.stderr


def test_missing_data_file(tmp_path):
    missing = tmp_path / "nope.h5"
    _assert_one_line(run_cli("train", "--data", str(missing)), str(missing), "no such file")


def test_unknown_model(small_h5):
    _assert_one_line(run_cli("train", "--data", str(small_h5), "--model", "gcnn"), "--model", "invalid choice: 'gcnn'")


@pytest.mark.parametrize(
    "flags,fragment",
    [
        (["--epochs", "0"], "--epochs must be >= 1"),
        (["--batch-size", "x"], "--batch-size"),
        (["--split", "0.5,0.5"], "--split"),
        (["--backend", "nccl"], "--backend"),
    ],
)
def test_bad_flags(small_h5, flags, fragment):
    _assert_one_line(run_cli("train", "--data", str(small_h5), *flags), fragment)


def test_data_not_hdf5(tmp_path):
    bad = tmp_path / "speed.csv"
    bad.write_text("a,b\n1,2\n")
    _assert_one_line(run_cli("train", "--data", str(bad)), str(bad), "not a readable HDF5 file")


def test_series_too_short_for_a_split(tmp_path):
    out = tmp_path / "short.h5"
    assert run_cli("data", "synth", "--nodes", "4", "--steps", "25", "--out", str(out)).returncode == 0
    _assert_one_line(run_cli("train", "--data", str(out), "--backend", "single"), str(out), "cannot be split")


@pytest.mark.mpi
@pytest.mark.parametrize("flags,fragment", [(["--model", "gcnn"], "invalid choice"), ([], "no such file")])
def test_bad_input_under_mpirun_prints_once_and_every_rank_fails(tmp_path, flags, fragment):
    r = run_mpi(2, "train", "--data", str(tmp_path / "nope.h5"), *flags, timeout=60)
    assert r.returncode != 0
    lines = our_error_lines(r.stderr)
    assert len(lines) == 1 and fragment in lines[0], r.stderr
    assert "Traceback" not in r.stderr


METR_LA_WEEK = SHARED_DATA / "metr-la-week"


def test_data_import_both_real_formats_give_the_same_speeds(tmp_path):
    a, b = tmp_path / "dcrnn.h5", tmp_path / "tgcn.h5"
    r = run_cli("data", "import", "--format", "dcrnn-h5", "--speed", str(METR_LA_WEEK / "metr-la-week.h5"),
                "--graph", str(METR_LA_WEEK / "adj_mx.pkl"), "--out", str(a))
    assert r.returncode == 0, r.stderr
    assert "T=2016 N=207 E=1515" in r.stdout
    r = run_cli("data", "import", "--format", "tgcn-csv", "--speed", str(METR_LA_WEEK / "los_speed.csv"),
                "--graph", str(METR_LA_WEEK / "los_adj.csv"), "--start", "2012-03-01 00:00", "--out", str(b))
    assert r.returncode == 0, r.stderr
    from hvd_stgnn.data import read_dataset

    da, db = read_dataset(a), read_dataset(b)
    assert da.sensor_ids == db.sensor_ids and da.sensor_ids[0] == "773869"
    np.testing.assert_array_equal(da.speed, db.speed)
    np.testing.assert_array_equal(da.timestamps, db.timestamps)
    info = json.loads(run_cli("data", "info", str(a), "--json").stdout)
    assert (info["start"], info["end"], info["interval_s"]) == ("2012-03-01 00:00", "2012-03-07 23:55", 300)


def test_data_import_needs_start_for_csv(tmp_path):
    _assert_one_line(
        run_cli("data", "import", "--format", "tgcn-csv", "--speed", str(METR_LA_WEEK / "los_speed.csv"),
                "--graph", str(METR_LA_WEEK / "los_adj.csv"), "--out", str(tmp_path / "x.h5")),
        "--start is required",
    )
    assert not (tmp_path / "x.h5").exists()


def test_data_import_mismatched_sensors_is_one_line(tmp_path):
    import pickle

    ids, id_map, adj = pickle.load(open(METR_LA_WEEK / "adj_mx.pkl", "rb"), encoding="latin1")
    ids = ["999999", *ids[1:]]
    bad = tmp_path / "adj.pkl"
    bad.write_bytes(pickle.dumps((ids, {s: i for i, s in enumerate(ids)}, adj)))
    r = run_cli("data", "import", "--format", "dcrnn-h5", "--speed", str(METR_LA_WEEK / "metr-la-week.h5"),
                "--graph", str(bad), "--out", str(tmp_path / "x.h5"))
    _assert_one_line(r, "sensor ids differ", "999999")
    assert not (tmp_path / "x.h5").exists()


def test_data_info_counts_nan_as_missing(tmp_path):
    import h5py

    out = tmp_path / "d.h5"
    assert run_cli("data", "synth", "--nodes", "5", "--steps", "100", "--out", str(out), "--quiet").returncode == 0
    with h5py.File(out, "a") as f:
        f["speed"][0:10, 0] = np.nan
    info = json.loads(run_cli("data", "info", str(out), "--json").stdout)
    assert info["nonfinite_readings"] == 10 and info["missing_share"] >= 10 / 500


def test_bench_batching_and_memory_print_their_figures(small_h5):
    r = run_cli("bench", "batching", "--nodes", "30", "--repeats", "5", "--json")
    assert r.returncode == 0, r.stderr
    (row,) = json.loads(r.stdout)
    assert row["nodes"] == 30 and row["memcpy_ms"] > 0 and row["gather_over_memcpy"] > 0
    r = run_cli("bench", "memory", "--data", str(small_h5), "--np", "1,2", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    one, two = res["rows"]
    assert one["index_node_bytes"] == two["index_node_bytes"] == res["series_bytes"]
    assert two["index_rank_bytes_max"] < one["index_rank_bytes_max"]
    assert two["materialized_node_bytes"] > one["materialized_node_bytes"] > 30 * one["index_node_bytes"]
