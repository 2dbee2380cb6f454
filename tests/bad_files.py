"""Broken dataset files, one per kind of bad input; each with the message it must produce."""

from __future__ import annotations

import h5py
import numpy as np

from hvd_stgnn.data import generate, write_dataset

GOOD = dict(num_nodes=6, num_steps=120, seed=4)


def _rewrite(f, name, data):
    del f[name]
    f.create_dataset(name, data=data)


# name -> (edit of a good file, fragment of the error line)
EDITS = {
    "missing-dataset": (lambda f: f.__delitem__("timestamps"), "missing dataset /timestamps"),
    "missing-graph": (lambda f: f.__delitem__("graph/edge_weight"), "missing dataset /graph/edge_weight"),
    "wrong-dtype": (lambda f: _rewrite(f, "speed", np.zeros((120, 6))), "/speed must be float32"),
    "int-speed": (lambda f: _rewrite(f, "speed", np.zeros((120, 6), np.int32)), "/speed must be float"),
    "wrong-rank": (lambda f: _rewrite(f, "speed", np.zeros((120, 6, 2), np.float32)), "/speed must have 2 dimension(s)"),
    "timestamps-shape": (lambda f: _rewrite(f, "timestamps", np.arange(5)), "/timestamps has shape (5,)"),
    "timestamps-not-increasing": (lambda f: f["timestamps"].__setitem__(3, 0), "must strictly increase by interval_seconds=300"),
    "timestamps-irregular": (
        lambda f: f["timestamps"].__setitem__(slice(50, None), f["timestamps"][50:] + 60),
        "must increase by interval_seconds=300; step 49 -> 50 changes by 360 s",
    ),
    "edge-out-of-range": (lambda f: f["graph/edge_index"].__setitem__((1, 0), 6), "outside 0..5"),
    "negative-weight": (lambda f: f["graph/edge_weight"].__setitem__(0, -0.5), "1 negative weight(s)"),
    "nan-weight": (lambda f: f["graph/edge_weight"].__setitem__(1, np.nan), "1 NaN/inf weight(s)"),
    "duplicate-sensor": (
        lambda f: _rewrite(f, "sensor_ids", np.array(["a", "a", "b", "c", "d", "e"], dtype=object).astype(h5py.string_dtype())),
        "duplicates, e.g. ['a']",
    ),
    "schema-version": (lambda f: f.attrs.__setitem__("schema_version", 99), "schema_version 99"),
}


def write_good(path):
    write_dataset(path, generate(**GOOD))
    return path


def write_bad(path, case: str):
    """A file broken as EDITS[case] says; returns (path, expected message fragment)."""
    edit, fragment = EDITS[case]
    write_good(path)
    with h5py.File(path, "a") as f:
        edit(f)
    return path, fragment
