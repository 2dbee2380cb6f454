"""End-to-end training runs: single process, and real 2- and 4-rank Horovod jobs."""

import json

import pytest

from helpers import SHARED_DATA, run_cli, run_mpi

TRAIN = ["--model", "tgcn", "--hidden", "16", "--batch-size", "16", "--lr", "0.01"]


def _results(path):
    with open(path) as f:
        return json.load(f)


def _check_schema(res, world_size, epochs):
    assert res["model"] == "tgcn" and res["world_size"] == world_size
    assert [e["epoch"] for e in res["epochs"]] == list(range(1, epochs + 1))
    for e in res["epochs"]:
        assert set(e) >= {"epoch", "train_mae", "val_mae", "seconds"}
    for metric in ("mae", "rmse", "mape"):
        assert set(res["test"][metric]) >= {"15min", "30min", "60min"}
        assert all(v > 0 for v in res["test"][metric].values())
    assert res["config"]["train"]["epochs"] == epochs
    assert res["config"]["model"]["name"] == "tgcn"


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["single", "horovod"])
def test_single_process_run(small_h5, tmp_path, backend):
    out = tmp_path / "r.json"
    r = run_cli("train", "--data", str(small_h5), "--backend", backend, "--epochs", "2", *TRAIN, "--results", str(out))
    assert r.returncode == 0, r.stderr
    res = _results(out)
    _check_schema(res, 1, 2)
    assert "60min" in r.stderr or "60min" in r.stdout  # the test table is printed


@pytest.mark.mpi
@pytest.mark.slow
def test_two_rank_horovod_run_learns_and_keeps_ranks_in_sync(small_h5, tmp_path):
    out = tmp_path / "r.json"
    r = run_mpi(2, "train", "--data", str(small_h5), "--epochs", "4", *TRAIN, "--results", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    res = _results(out)
    _check_schema(res, 2, 4)
    assert res["backend"] == "horovod"
    assert res["epochs"][-1]["val_mae"] < res["epochs"][0]["val_mae"]
    # Every rank hashed its final parameters; all identical.
    assert len(res["param_digests"]) == 2 and len(set(res["param_digests"])) == 1
    # ...although each rank held only its own time slice of the training series.
    (a0, a1), (b0, b1) = res["batching"]["train_steps_held_per_rank"]
    assert res["batching"]["kind"] == "index/shard" and res["batching"]["shares_node_memory"]
    assert a0 == 0 and b0 > 0 and a1 < b1 and b0 > a0 and a1 - b0 == 12 + 12 - 1  # the halo overlaps
    # Rank 0 alone prints: one config line, one line per epoch.
    assert r.stdout.count("config: ") == 1
    assert sum("epoch   " in line and "val MAE" in line for line in (r.stdout + r.stderr).splitlines()) == 4


@pytest.mark.mpi
@pytest.mark.slow
@pytest.mark.parametrize("layout", ["one-node", "two-pretend-nodes-tcp"])
def test_four_ranks_oversubscribed(small_h5, tmp_path, layout):
    """`two-pretend-nodes-tcp`: 2 nodes of 2 ranks (two node leaders, a leader broadcast) with
    Open MPI restricted to TCP between processes, the path between real nodes."""
    out = tmp_path / "r.json"
    env = {"HVD_STGNN_RANKS_PER_NODE": "2", "MPIRUN_ARGS": "--mca btl self,tcp"} if layout != "one-node" else {}
    r = run_mpi(4, "train", "--data", str(small_h5), "--epochs", "1", *TRAIN, "--results", str(out), env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    res = _results(out)
    assert res["world_size"] == 4
    assert len(res["param_digests"]) == 4 and len(set(res["param_digests"])) == 1
    assert res["load"]["num_nodes"] == (2 if env else 1)


@pytest.mark.mpi
def test_too_many_ranks_for_the_data_is_a_clear_error(tmp_path):
    data = tmp_path / "short.h5"
    # 30 steps -> 7 windows -> 4 training windows: fewer than 6 ranks.
    assert run_cli("data", "synth", "--nodes", "4", "--steps", "30", "--out", str(data)).returncode == 0
    r = run_mpi(6, "train", "--data", str(data), "--epochs", "1", timeout=120)
    assert r.returncode != 0
    lines = [line for line in r.stderr.splitlines() if line.startswith("hvd-stgnn")]
    assert len(lines) == 1 and "each of 6 ranks" in lines[0], r.stderr


@pytest.mark.mpi
@pytest.mark.slow
def test_two_ranks_train_on_the_real_metr_la_week(tmp_path):
    from hvd_stgnn.data import write_dataset
    from hvd_stgnn.data.importers import import_dcrnn_h5

    week = SHARED_DATA / "metr-la-week"
    data = tmp_path / "metr-la-week.h5"
    write_dataset(data, import_dcrnn_h5(week / "metr-la-week.h5", week / "adj_mx.pkl"))
    out = tmp_path / "r.json"
    r = run_mpi(2, "train", "--data", str(data), "--epochs", "2", *TRAIN, "--results", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    res = _results(out)
    _check_schema(res, 2, 2)
    assert res["load"]["num_nodes"] == 1 and res["load"]["data_bytes"] == 2016 * 207 * 4
    assert res["epochs"][-1]["val_mae"] < res["epochs"][0]["val_mae"]


@pytest.mark.mpi
@pytest.mark.slow
@pytest.mark.parametrize("flags,kind", [(["--shuffle", "global"], "index/global"),
                                        (["--data-mode", "materialized"], "materialized")])
def test_two_rank_comparison_modes_learn(small_h5, tmp_path, flags, kind):
    out = tmp_path / "r.json"
    r = run_mpi(2, "train", "--data", str(small_h5), "--epochs", "3", *TRAIN, *flags, "--results", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    res = _results(out)
    assert res["batching"]["kind"] == kind
    assert res["epochs"][-1]["val_mae"] < res["epochs"][0]["val_mae"]
    assert len(set(res["param_digests"])) == 1


@pytest.fixture(scope="module")
def ten_sensors(tmp_path_factory):
    from hvd_stgnn.data import generate, write_dataset

    path = tmp_path_factory.mktemp("ten") / "ten.h5"
    write_dataset(path, generate(10, 600, seed=3))
    return path


@pytest.mark.mpi
@pytest.mark.slow
@pytest.mark.parametrize("model", ["tgcn", "a3tgcn", "dcrnn", "gwnet"])
def test_every_model_trains_through_the_engine_on_two_ranks(ten_sensors, tmp_path, model):
    out = tmp_path / "r.json"
    extra = ["--hidden", "8", "--teacher-decay", "100"] if model == "dcrnn" else ["--hidden", "8"]
    r = run_mpi(2, "train", "--data", str(ten_sensors), "--model", model, "--epochs", "1", "--batch-size", "16",
                *extra, "--results", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    res = _results(out)
    assert res["model"] == model and len(set(res["param_digests"])) == 1
    assert all(v > 0 for v in res["test"]["mae"].values())


@pytest.mark.mpi
@pytest.mark.slow
def test_metrics_reduced_over_two_ranks_equal_one_process(ten_sensors, tmp_path):
    # The baselines do not depend on training: their test metrics from 2 ranks (each
    # evaluating half of the windows, sums and counts allreduced) must equal 1 process.
    tables = []
    for np_ in (1, 2):
        out = tmp_path / f"r{np_}.json"
        r = run_mpi(np_, "train", "--data", str(ten_sensors), "--epochs", "1", "--hidden", "4", "--results", str(out))
        assert r.returncode == 0, r.stdout + r.stderr
        tables.append(_results(out)["baselines"])
    one, two = tables
    for name in ("persistence", "historical_average"):
        for metric, columns in one[name].items():
            for col, value in columns.items():
                assert two[name][metric][col] == pytest.approx(value, rel=1e-12), (name, metric, col)
