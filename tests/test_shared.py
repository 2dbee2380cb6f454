"""Rank-0 read, once-per-node broadcast, node-shared memory; bad input under mpirun."""

import hashlib
import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from bad_files import EDITS, write_bad, write_good
from helpers import LOCAL_LAUNCHER, our_error_lines, run_cli, run_mpi
from hvd_stgnn.data import generate, write_dataset

pytestmark = pytest.mark.mpi


@pytest.fixture(scope="module")
def mid_h5(tmp_path_factory):
    """~4.8 MB of float32: large enough that page accounting is unambiguous."""
    path = tmp_path_factory.mktemp("shared") / "mid.h5"
    write_dataset(path, generate(100, 12_000, seed=2))
    return path


# Open MPI between real nodes: TCP (or a fabric), never shared memory. `tcp` forces that
# path between the processes of one machine too.
TRANSPORTS = {"default": {}, "tcp": {"MPIRUN_ARGS": "--mca btl self,tcp"}}


def _load(np_, path, tmp_path, ranks_per_node=None, max_message_bytes=None, transport="default"):
    out = tmp_path / f"load-{np_}-{ranks_per_node}.json"
    env = {**os.environ, **TRANSPORTS[transport]}
    env.pop("HVD_STGNN_RANKS_PER_NODE", None)
    if ranks_per_node:
        env["HVD_STGNN_RANKS_PER_NODE"] = str(ranks_per_node)
    args = [sys.executable, "-m", "hvd_stgnn.bench.load", "--worker", str(path), str(out), "--digest"]
    if max_message_bytes:
        args += ["--max-message-bytes", str(max_message_bytes)]
    r = subprocess.run(["bash", str(LOCAL_LAUNCHER), "-np", str(np_), *args], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(out.read_text())


def _file_digest(path):
    with h5py.File(path) as f:
        return hashlib.sha256(np.ascontiguousarray(f["speed"][...]).tobytes()).hexdigest()


def test_two_ranks_on_a_node_share_one_copy(mid_h5, tmp_path):
    res = _load(2, mid_h5, tmp_path)
    assert res["num_nodes"] == 1
    assert {row["digest"] for row in res["ranks"]} == {_file_digest(mid_h5)}
    assert not any(row["writable"] for row in res["ranks"]), "ranks must get a read-only view"
    for row in res["ranks"]:
        # Each rank maps (and has touched) the whole array...
        assert row["mapping_size"] >= res["data_bytes"] and row["mapping_rss"] >= res["data_bytes"]
    # ...but the node holds it once: the PSS of the two mappings adds up to one copy.
    (copies,) = res["data_copies_per_node"].values()
    assert copies == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("transport", sorted(TRANSPORTS))
def test_leader_broadcast_across_pretend_nodes_in_small_messages(mid_h5, tmp_path, transport):
    # 4 ranks as 2 nodes of 2; 100 kB messages force ~48 broadcast chunks.
    res = _load(4, mid_h5, tmp_path, ranks_per_node=2, max_message_bytes=100_000, transport=transport)
    assert res["num_nodes"] == 2
    assert sorted(row["node"] for row in res["ranks"]) == [0, 0, 2, 2]
    assert [row["is_leader"] for row in res["ranks"]] == [True, False, True, False]
    assert {row["digest"] for row in res["ranks"]} == {_file_digest(mid_h5)}
    for node, copies in res["data_copies_per_node"].items():
        assert copies == pytest.approx(1.0, abs=0.01), f"node {node}"


@pytest.mark.parametrize("case", sorted(EDITS))
def test_bad_file_one_line_every_rank_exits(tmp_path, case):
    path, fragment = write_bad(tmp_path / f"{case}.h5", case)
    r = run_mpi(2, "train", "--data", str(path), "--epochs", "1", timeout=60)
    assert r.returncode != 0
    lines = our_error_lines(r.stderr)
    assert len(lines) == 1, r.stderr
    assert fragment in lines[0] and str(path) in lines[0]
    assert "Traceback" not in r.stderr and "MPI_ABORT" not in r.stderr


def test_not_hdf5_and_too_short_under_mpirun(tmp_path):
    junk = tmp_path / "junk.h5"
    junk.write_text("speed\n1\n")
    short = tmp_path / "short.h5"
    write_dataset(short, generate(4, 20, seed=0))  # 20 steps < L + H = 24
    for path, fragment in ((junk, "not a readable HDF5 file"), (short, "too short for one window")):
        r = run_mpi(2, "train", "--data", str(path), timeout=60)
        lines = our_error_lines(r.stderr)
        assert r.returncode != 0 and len(lines) == 1 and fragment in lines[0], r.stderr


def test_nan_storm_trains_and_the_log_counts_it(tmp_path):
    path = write_good(tmp_path / "nan.h5")
    with h5py.File(path, "a") as f:
        speed = f["speed"][...]
        speed[40:60, :3] = np.nan
        speed[70, 1] = np.inf
        f["speed"][...] = speed
    r = run_mpi(2, "train", "--data", str(path), "--epochs", "1", "--hidden", "4", "--batch-size", "8", timeout=120)
    assert r.returncode == 0, r.stderr
    assert "61 NaN/inf readings treated as missing" in r.stdout + r.stderr


def test_bench_load_reports_one_copy_per_node(mid_h5, tmp_path):
    out = tmp_path / "load.json"
    r = run_cli("bench", "load", "--data", str(mid_h5), "--np", "2", "--out", str(out), timeout=180)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    runs = {(x["np"], x["mode"]): x for x in res["runs"]}
    assert set(runs) == {(1, "node-shared"), (2, "node-shared"), (2, "per-rank")}
    assert sum(runs[2, "node-shared"]["data_copies_per_node"].values()) == pytest.approx(1.0, abs=0.02)
    assert sum(runs[2, "per-rank"]["data_copies_per_node"].values()) == pytest.approx(2.0, abs=0.04)
    assert runs[2, "node-shared"]["read_mb_per_s"] > 0
