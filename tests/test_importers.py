"""Importers (hvd_stgnn/data/importers.py) on the real METR-LA week and on small crafted files."""

from __future__ import annotations

import inspect
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest

from hvd_stgnn.data import read_dataset, write_dataset
from hvd_stgnn.data.importers import (
    IMPORT_OPTIONS,
    IMPORTERS,
    import_dcrnn_h5,
    import_pgt_npy,
    import_tgcn_csv,
    timestamps_from_start,
)
from hvd_stgnn.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "metr-la-week"
MARCH_1_2012 = 1_330_560_000  # 2012-03-01 00:00 UTC
START = "2012-03-01 00:00"


@pytest.fixture(scope="module")
def dcrnn():
    # No skip: if the shared data is missing this must fail loudly.
    return import_dcrnn_h5(speed_path=REAL / "metr-la-week.h5", graph_path=REAL / "adj_mx.pkl")


@pytest.fixture(scope="module")
def tgcn():
    return import_tgcn_csv(speed_path=REAL / "los_speed.csv", adj_path=REAL / "los_adj.csv", start=START)


def load_pickle(path):
    with open(path, "rb") as fh:
        return pickle.load(fh, encoding="latin1")


def edge_set(data):
    return {(data.sensor_ids[s], data.sensor_ids[t], float(w)) for (s, t), w in zip(data.edge_index.T, data.edge_weight)}


def write_pandas_h5(path, values, ids, stamps, kind=b"datetime64", key="df", items=None):
    """The layout pandas' HDFStore (fixed format) writes for a float DataFrame."""
    with h5py.File(path, "w") as f:
        g = f.create_group(key)
        g.attrs["nblocks"] = 1
        g.create_dataset("axis0", data=np.array(ids, dtype="S"))
        ax1 = g.create_dataset("axis1", data=np.asarray(stamps, dtype=np.int64))
        if kind is not None:
            ax1.attrs["kind"] = np.bytes_(kind)
        g.create_dataset("block0_items", data=np.array(ids if items is None else items, dtype="S"))
        g.create_dataset("block0_values", data=np.asarray(values, dtype=np.float64))
    return path


def write_pickle(path, ids, adj, id_to_ind=None):
    with open(path, "wb") as fh:
        pickle.dump((list(ids), id_to_ind or {s: i for i, s in enumerate(ids)}, np.asarray(adj, np.float32)), fh)
    return path


def small_graph(n=3):
    adj = np.eye(n, dtype=np.float32)
    adj[0, 1], adj[1, 2] = 0.5, 0.25
    return adj


def err(fn, name, exc=DataError, **kwargs) -> str:
    """Call fn(**kwargs), expect `exc` with a one-line message naming file `name`; return it."""
    with pytest.raises(exc) as info:
        fn(**kwargs)
    msg = str(info.value)
    assert "\n" not in msg, msg
    assert Path(name).name in msg, msg
    return msg


def abc_graph(tmp_path):
    return write_pickle(tmp_path / "g.pkl", ["a", "b", "c"], small_graph())


def abc_speed(tmp_path, name="s.h5", steps=3, **kwargs):
    return write_pandas_h5(tmp_path / name, np.ones((steps, 3)), ["a", "b", "c"], np.arange(steps) * 300 * 10**9, **kwargs)


# --- real data -------------------------------------------------------------------------------


def test_registry():
    assert {name: imp.function for name, imp in IMPORTERS.items()} == {
        "dcrnn-h5": import_dcrnn_h5, "tgcn-csv": import_tgcn_csv, "pgt-npy": import_pgt_npy}


def test_registry_options_are_parameters_of_their_importer(tgcn):
    for name, imp in IMPORTERS.items():
        params = inspect.signature(imp.function).parameters
        assert set(imp.required) <= set(imp.options), name
        for flag in imp.options:
            assert IMPORT_OPTIONS[flag].keyword in params, (name, flag)
    # An entry is called like its function.
    again = IMPORTERS["tgcn-csv"](REAL / "los_speed.csv", REAL / "los_adj.csv", start=START)
    np.testing.assert_array_equal(again.speed, tgcn.speed)


def test_dcrnn_h5_real(dcrnn):
    assert dcrnn.speed.shape == (2016, 207) and dcrnn.speed.dtype == np.float32
    with h5py.File(REAL / "metr-la-week.h5") as f:
        axis0 = [s.decode() for s in f["df/axis0"][...]]
        raw = f["df/block0_values"][...]
    assert dcrnn.sensor_ids[0] == "773869"
    assert dcrnn.sensor_ids == axis0
    np.testing.assert_array_equal(dcrnn.speed, raw.astype(np.float32))
    assert dcrnn.timestamps.dtype == np.int64
    assert dcrnn.timestamps[0] == MARCH_1_2012
    assert np.all(np.diff(dcrnn.timestamps) == 300) and dcrnn.interval_s == 300
    assert dcrnn.timestamps[-1] == MARCH_1_2012 + 7 * 86400 - 300
    # The pickle has 1722 non-zeros including 207 diagonal self-loops, which are dropped.
    assert dcrnn.num_edges == 1722 - 207 == 1515
    assert dcrnn.edge_index.shape == (2, 1515) and dcrnn.edge_index.dtype == np.int64
    assert dcrnn.edge_weight.dtype == np.float32
    assert np.all(dcrnn.edge_index[0] != dcrnn.edge_index[1])
    assert np.all((dcrnn.edge_weight > 0) & (dcrnn.edge_weight <= 1))
    # Same order as the speed file, so edge (i, j) carries adj_mx[i, j] (directed i -> j).
    _, _, adj = load_pickle(REAL / "adj_mx.pkl")
    np.testing.assert_array_equal(dcrnn.edge_weight, adj[dcrnn.edge_index[0], dcrnn.edge_index[1]])
    assert "dcrnn-h5" in dcrnn.source and "metr-la-week.h5" in dcrnn.source and "adj_mx.pkl" in dcrnn.source


def test_tgcn_csv_real(tgcn, dcrnn):
    assert tgcn.speed.shape == (2016, 207) and tgcn.speed.dtype == np.float32
    assert tgcn.sensor_ids == dcrnn.sensor_ids
    # The CSV and the HDF5 hold bit-identical float64 speeds, so float32 casts are equal too.
    np.testing.assert_array_equal(tgcn.speed, dcrnn.speed)
    np.testing.assert_array_equal(tgcn.timestamps, dcrnn.timestamps)
    assert tgcn.interval_s == 300
    assert tgcn.num_edges == 2833 - 207 == 2626
    assert np.all(tgcn.edge_index[0] != tgcn.edge_index[1])
    assert np.all((tgcn.edge_weight > 0) & (tgcn.edge_weight <= 1))
    edges = {(int(s), int(t)): float(w) for (s, t), w in zip(tgcn.edge_index.T, tgcn.edge_weight)}
    assert all(edges.get((t, s)) == w for (s, t), w in edges.items()), "los_adj.csv is symmetric"


def test_round_trip(tmp_path, dcrnn):
    path = tmp_path / "metr-la-week.h5"
    write_dataset(path, dcrnn)
    back = read_dataset(path)
    np.testing.assert_array_equal(back.speed, dcrnn.speed)
    np.testing.assert_array_equal(back.timestamps, dcrnn.timestamps)
    np.testing.assert_array_equal(back.edge_index, dcrnn.edge_index)
    np.testing.assert_array_equal(back.edge_weight, dcrnn.edge_weight)
    assert back.sensor_ids == dcrnn.sensor_ids
    assert back.interval_s == 300 and back.source == dcrnn.source


# --- sensor matching by id -------------------------------------------------------------------


def test_dcrnn_graph_matched_by_id(tmp_path, dcrnn):
    ids, _, adj = load_pickle(REAL / "adj_mx.pkl")
    perm = np.random.default_rng(0).permutation(len(ids))
    shuffled = write_pickle(tmp_path / "shuffled.pkl", [ids[i] for i in perm], adj[np.ix_(perm, perm)])
    got = import_dcrnn_h5(speed_path=REAL / "metr-la-week.h5", graph_path=shuffled)
    assert got.sensor_ids == dcrnn.sensor_ids  # the speed file's column order wins
    assert edge_set(got) == edge_set(dcrnn)
    np.testing.assert_array_equal(got.edge_index, dcrnn.edge_index)  # also same (source, target) order
    np.testing.assert_array_equal(got.edge_weight, dcrnn.edge_weight)


def test_dcrnn_graph_unknown_id(tmp_path):
    ids, _, adj = load_pickle(REAL / "adj_mx.pkl")
    ids = list(ids)
    ids[5] = "999999"
    bad = write_pickle(tmp_path / "renamed.pkl", ids, adj)
    msg = err(import_dcrnn_h5, bad, speed_path=REAL / "metr-la-week.h5", graph_path=bad)
    assert "'999999'" in msg and "'717445'" in msg, msg  # names the stray id on each side


def test_dcrnn_small_permuted_graph(tmp_path):
    speed = abc_speed(tmp_path)
    # Graph file lists c, a, b: edges a->b (0.5) and b->c (0.25) written in that order.
    adj = np.zeros((3, 3), np.float32)
    adj[1, 2], adj[2, 0], adj[0, 0] = 0.5, 0.25, 1.0
    got = import_dcrnn_h5(speed_path=speed, graph_path=write_pickle(tmp_path / "g.pkl", ["c", "a", "b"], adj))
    assert got.edge_index.tolist() == [[0, 1], [1, 2]]
    assert got.edge_weight.tolist() == [0.5, 0.25]


# --- axis1 units and keys --------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, per_second",
    [
        (b"datetime64", 10**9),  # classic pandas / DCRNN files: nanoseconds
        (b"datetime64[ns]", 10**9),
        (b"datetime64[us]", 10**6),  # what the METR-LA week sample holds
        (b"datetime64[ms]", 10**3),
        (b"datetime64[s]", 1),
        (None, 10**9),  # no `kind` attribute at all
    ],
)
def test_axis1_units(tmp_path, kind, per_second):
    stamps = (MARCH_1_2012 + np.arange(5) * 600) * per_second
    speed = write_pandas_h5(tmp_path / "s.h5", np.full((5, 3), 50.0), ["a", "b", "c"], stamps, kind=kind)
    got = import_dcrnn_h5(speed_path=speed, graph_path=abc_graph(tmp_path))
    np.testing.assert_array_equal(got.timestamps, MARCH_1_2012 + np.arange(5) * 600)
    assert got.interval_s == 600
    assert got.edge_index.tolist() == [[0, 1], [1, 2]]


def test_key_speed_and_explicit_key(tmp_path):
    graph, speed = abc_graph(tmp_path), abc_speed(tmp_path, key="speed")
    assert import_dcrnn_h5(speed_path=speed, graph_path=graph).num_steps == 3
    assert import_dcrnn_h5(speed_path=speed, graph_path=graph, key="speed").num_steps == 3
    assert "'df'" in err(import_dcrnn_h5, speed, speed_path=speed, graph_path=graph, key="df")


def test_nan_speeds_kept(tmp_path):
    values = np.full((3, 3), 60.0)
    values[1, 2] = np.nan
    speed = write_pandas_h5(tmp_path / "s.h5", values, ["a", "b", "c"], np.arange(3) * 300 * 10**9)
    got = import_dcrnn_h5(speed_path=speed, graph_path=abc_graph(tmp_path))
    assert np.isnan(got.speed[1, 2]) and np.isfinite(got.speed).sum() == 8


# --- pgt-npy ---------------------------------------------------------------------------------


def npy_pair(tmp_path, values, adj):
    np.save(tmp_path / "v.npy", values)
    np.save(tmp_path / "a.npy", adj)
    return {"values_path": tmp_path / "v.npy", "adj_path": tmp_path / "a.npy"}


def test_pgt_npy_three_dims(tmp_path):
    values = np.random.default_rng(1).uniform(0, 70, size=(6, 3, 2))
    files = npy_pair(tmp_path, values, small_graph())
    got = import_pgt_npy(**files, start=START)
    np.testing.assert_array_equal(got.speed, values[:, :, 0].astype(np.float32))
    assert got.sensor_ids == ["0", "1", "2"]
    np.testing.assert_array_equal(got.timestamps, MARCH_1_2012 + np.arange(6) * 300)
    assert got.edge_index.tolist() == [[0, 1], [1, 2]] and got.edge_weight.tolist() == [0.5, 0.25]
    other = import_pgt_npy(**files, start="2012-03-01T00:00:00", interval_s=60, feature=1)
    np.testing.assert_array_equal(other.speed, values[:, :, 1].astype(np.float32))
    np.testing.assert_array_equal(other.timestamps, MARCH_1_2012 + np.arange(6) * 60)
    assert other.interval_s == 60
    err(import_pgt_npy, "v.npy", exc=ConfigError, **files, start=START, feature=2)


def test_pgt_npy_two_dims(tmp_path):
    values = np.arange(12, dtype=np.float64).reshape(4, 3)
    got = import_pgt_npy(**npy_pair(tmp_path, values, small_graph()), start="2017-01-01 00:00")
    np.testing.assert_array_equal(got.speed, values.astype(np.float32))
    assert got.timestamps[0] == 1_483_228_800 and got.num_edges == 2


def test_timestamps_from_start():
    np.testing.assert_array_equal(timestamps_from_start(START, 3, 300), MARCH_1_2012 + np.array([0, 300, 600]))
    # An explicit offset is honoured: 01:00+01:00 is 00:00 UTC.
    assert timestamps_from_start("2012-03-01T01:00+01:00", 1, 300)[0] == MARCH_1_2012
    with pytest.raises(ConfigError, match="--start"):
        timestamps_from_start("March 1st", 3, 300)
    with pytest.raises(ConfigError, match="--interval"):
        timestamps_from_start(START, 3, 0)


# --- bad inputs: one-line DataError naming the file ------------------------------------------


def csv_pair(tmp_path, speed_text, adj):
    (tmp_path / "s.csv").write_text(speed_text)
    np.savetxt(tmp_path / "adj.csv", adj, delimiter=",")
    return {"speed_path": tmp_path / "s.csv", "adj_path": tmp_path / "adj.csv", "start": START}


def test_missing_files(tmp_path):
    real_h5, real_pkl = REAL / "metr-la-week.h5", REAL / "adj_mx.pkl"
    err(import_dcrnn_h5, "nope.h5", speed_path=tmp_path / "nope.h5", graph_path=real_pkl)
    err(import_dcrnn_h5, "nope.pkl", speed_path=real_h5, graph_path=tmp_path / "nope.pkl")
    err(import_tgcn_csv, "nope.csv", speed_path=tmp_path / "nope.csv", adj_path=REAL / "los_adj.csv", start=START)
    err(import_tgcn_csv, "nope.csv", speed_path=REAL / "los_speed.csv", adj_path=tmp_path / "nope.csv", start=START)
    err(import_pgt_npy, "nope.npy", values_path=tmp_path / "nope.npy", adj_path=tmp_path / "a.npy", start=START)
    err(import_dcrnn_h5, tmp_path.name, speed_path=tmp_path, graph_path=real_pkl)  # a directory


def test_wrong_adjacency_shape(tmp_path):
    msg = err(import_tgcn_csv, "adj.csv", **csv_pair(tmp_path, "a,b,c\n1,2,3\n4,5,6\n", np.eye(2)))
    assert "(2, 2)" in msg and "(3, 3)" in msg
    err(import_pgt_npy, "a.npy", **npy_pair(tmp_path, np.ones((4, 3, 2)), np.ones((3, 4))), start=START)
    with open(tmp_path / "g.pkl", "wb") as fh:
        pickle.dump((["a", "b", "c"], {"a": 0, "b": 1, "c": 2}, np.ones((3, 2))), fh)
    err(import_dcrnn_h5, "g.pkl", speed_path=abc_speed(tmp_path), graph_path=tmp_path / "g.pkl")


@pytest.mark.parametrize("bad", [-0.5, np.nan, np.inf])
def test_bad_weights(tmp_path, bad):
    adj = small_graph()
    adj[2, 0] = bad
    assert "row 2, column 0" in err(import_tgcn_csv, "adj.csv", **csv_pair(tmp_path, "a,b,c\n1,2,3\n", adj))
    err(import_pgt_npy, "a.npy", **npy_pair(tmp_path, np.ones((2, 3)), adj), start=START)
    graph = write_pickle(tmp_path / "g.pkl", ["a", "b", "c"], adj)
    err(import_dcrnn_h5, "g.pkl", speed_path=abc_speed(tmp_path), graph_path=graph)


@pytest.mark.parametrize("stamps", [[0, 300, 900, 1200], [0, 300, 300, 600], [900, 600, 300, 0], [0]])
def test_irregular_timestamps(tmp_path, stamps):
    speed = write_pandas_h5(tmp_path / "s.h5", np.ones((len(stamps), 3)), ["a", "b", "c"], np.array(stamps) * 10**9)
    err(import_dcrnn_h5, "s.h5", speed_path=speed, graph_path=abc_graph(tmp_path))


@pytest.mark.parametrize(
    "kind, stamps",
    [(b"datetime64[m]", [0, 5, 10]), (b"integer", [0, 1, 2]), (b"datetime64[ms]", [0, 300_500, 601_000])],
)
def test_bad_axis1(tmp_path, kind, stamps):
    speed = write_pandas_h5(tmp_path / "s.h5", np.ones((3, 3)), ["a", "b", "c"], stamps, kind=kind)
    err(import_dcrnn_h5, "s.h5", speed_path=speed, graph_path=abc_graph(tmp_path))


def test_bad_pandas_layout(tmp_path):
    graph = abc_graph(tmp_path)
    items = abc_speed(tmp_path, "items.h5", items=["b", "a", "c"])
    assert "block0_items" in err(import_dcrnn_h5, "items.h5", speed_path=items, graph_path=graph)
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.create_group("data")
    msg = err(import_dcrnn_h5, "other.h5", speed_path=tmp_path / "other.h5", graph_path=graph)
    assert "'df'" in msg and "'speed'" in msg
    shape = write_pandas_h5(tmp_path / "shape.h5", np.ones((3, 2)), ["a", "b", "c"], np.arange(3) * 300 * 10**9)
    err(import_dcrnn_h5, "shape.h5", speed_path=shape, graph_path=graph)
    (tmp_path / "text.h5").write_text("not hdf5")
    err(import_dcrnn_h5, "text.h5", speed_path=tmp_path / "text.h5", graph_path=graph)
    dup = write_pandas_h5(tmp_path / "dup.h5", np.ones((3, 3)), ["a", "a", "c"], np.arange(3) * 300 * 10**9)
    err(import_dcrnn_h5, "dup.h5", speed_path=dup, graph_path=graph)
    (tmp_path / "text.pkl").write_text("not a pickle")
    err(import_dcrnn_h5, "text.pkl", speed_path=abc_speed(tmp_path), graph_path=tmp_path / "text.pkl")


@pytest.mark.parametrize(
    "text, expect",
    [
        ("a,b,c\n1,2,3\n4,5\n", "line 3 has 2 values"),
        ("a,b,c\n1,2\n4,5\n", "header names 3 sensors"),
        ("a,b,c\n", "no data rows"),
        ("a,b,c\n1,x,3\n", "line 2, column 2"),
        ("a,a,c\n1,2,3\n", "'a' appears more than once"),
    ],
)
def test_bad_csv_speeds(tmp_path, text, expect):
    assert expect in err(import_tgcn_csv, "s.csv", **csv_pair(tmp_path, text, small_graph()))


def test_bad_npy_values(tmp_path):
    err(import_pgt_npy, "v.npy", **npy_pair(tmp_path, np.ones(5), small_graph()), start=START)
    (tmp_path / "junk.npy").write_bytes(b"junk")
    err(import_pgt_npy, "junk.npy", values_path=tmp_path / "junk.npy", adj_path=tmp_path / "a.npy", start=START)


def test_fill_gaps_dst_jump(tmp_path):
    # PEMS-BAY's index (local time) jumps 01:55 -> 03:00 on 2017-03-12: 12 steps are absent.
    t0 = 1_489_276_800  # 2017-03-12 00:00 as UTC wall-clock
    stamps = np.concatenate([t0 + np.arange(24) * 300, t0 + 3 * 3600 + np.arange(12) * 300])
    values = np.arange(36 * 3, dtype=np.float64).reshape(36, 3)
    speed = write_pandas_h5(tmp_path / "bay.h5", values, ["a", "b", "c"], stamps * 10**9, key="speed")
    graph = abc_graph(tmp_path)
    assert "--fill-gaps" in err(import_dcrnn_h5, "bay.h5", speed_path=speed, graph_path=graph)
    got = import_dcrnn_h5(speed_path=speed, graph_path=graph, fill_gaps=True)
    assert got.num_steps == 48 and got.interval_s == 300
    np.testing.assert_array_equal(got.timestamps, t0 + np.arange(48) * 300)
    assert np.isnan(got.speed[24:36]).all()  # 02:00 .. 02:55: no reading
    np.testing.assert_array_equal(got.speed[:24], values[:24].astype(np.float32))
    np.testing.assert_array_equal(got.speed[36:], values[24:].astype(np.float32))
    assert "12 missing steps" in got.source
    # A gap that is not a whole number of steps cannot be filled.
    odd = write_pandas_h5(tmp_path / "odd.h5", np.ones((4, 3)), ["a", "b", "c"], np.array([0, 300, 600, 1000]) * 10**9)
    err(import_dcrnn_h5, "odd.h5", speed_path=odd, graph_path=graph, fill_gaps=True)


def test_pickle_with_crlf_line_ends(tmp_path):
    # A protocol-0 (text) pickle, as Python 2 wrote by default, after a CRLF checkout.
    text = pickle.dumps((["a", "b", "c"], {"a": 0, "b": 1, "c": 2}, small_graph()), protocol=0)
    (tmp_path / "crlf.pkl").write_bytes(text.replace(b"\n", b"\r\n"))
    got = import_dcrnn_h5(speed_path=abc_speed(tmp_path), graph_path=tmp_path / "crlf.pkl")
    assert got.edge_index.tolist() == [[0, 1], [1, 2]] and got.edge_weight.tolist() == [0.5, 0.25]
