"""The memory planner (hvd_stgnn/plan): arithmetic, activations, verdicts, CLI, and
prediction vs measured memory of real 2-rank training runs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from helpers import run_cli, run_mpi
from hvd_stgnn.batching import num_windows, split_starts
from hvd_stgnn.data.synthetic import PRESETS
from hvd_stgnn.errors import ConfigError, DataError
from hvd_stgnn.plan import Plan, PlanInputs, check_fits
from hvd_stgnn.plan.activations import _random_graph, _saved_bytes, activation_profile
from hvd_stgnn.plan.estimate import (
    GiB,
    MiB,
    NODE_MEMORY_ENV,
    RUNTIME_PRIVATE_BYTES,
    RUNTIME_SHARED_BYTES,
    estimate,
    exact_operator_nnz,
    graph_bytes,
    operator_nnz,
)

PEMS = PRESETS["pems"]
PEMS_E = 33_287  # edges of the seed-0 pems road network (build_network)


def _plan(T, N, E=0, np_=2, rpn=None, **kw) -> Plan:
    return estimate(PlanInputs(**kw), T, N, E or 3 * N, np_, rpn or np_)


# --- arithmetic ---------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["tiny", "metr-la", "pems"])
@pytest.mark.parametrize("mode", ["index", "materialized"])
def test_node_shared_series_is_t_n_4_exactly(preset, mode):
    p = PRESETS[preset]
    plan = _plan(p.num_steps, p.num_nodes, np_=4, rpn=2, data_mode=mode, batch_size=2)
    assert plan.shared["series"] == p.num_steps * p.num_nodes * 4
    assert plan.shared["libraries"] == RUNTIME_SHARED_BYTES
    # node total = shared + ranks per node x per-rank peak
    assert plan.node_bytes == plan.shared_bytes + 2 * plan.rank_bytes


def test_index_cpu_holds_no_private_data_and_the_node_total_does_not_grow_with_data():
    small = _plan(4032, 50, batch_size=2, baselines=False)
    assert small.host["data"] == 0  # zero-copy views of the node-shared series
    longer = _plan(8064, 50, batch_size=2, baselines=False)
    # twice the steps: the node-shared series doubles, the rank's resident terms do not
    assert longer.shared["series"] == 2 * small.shared["series"]
    resident = ("runtime", "data", "model_state", "graph", "activations", "gather")
    assert all(longer.host[k] == small.host[k] for k in resident)


def test_data_bytes_equal_bench_memory(small_h5):
    """materialized per rank and index per rank (its device copy on GPU) match
    `hvd-stgnn bench memory`, which builds the real batch sources and sums their tensors."""
    from hvd_stgnn.bench import memory
    from hvd_stgnn.data import read_dataset

    data = read_dataset(small_h5)
    for dow in (False, True):
        bench = memory.run(small_h5, [1, 2, 3], day_of_week=dow)
        for row in bench["rows"]:
            size = row["ranks"]
            mat = estimate(PlanInputs(data_mode="materialized", day_of_week=dow, batch_size=2),
                           data.num_steps, data.num_nodes, data.num_edges, size, size)
            assert mat.host["data"] == row["materialized_rank_bytes"]
            assert mat.shared["series"] == bench["series_bytes"]
            assert mat.shared["series"] + size * mat.host["data"] == row["materialized_node_bytes"]
            gpu = estimate(PlanInputs(device="cuda", day_of_week=dow, batch_size=2),
                           data.num_steps, data.num_nodes, data.num_edges, size, size)
            assert gpu.device["data"] == row["index_rank_bytes_max"]
            assert estimate(PlanInputs(batch_size=2), data.num_steps, data.num_nodes, data.num_edges, size,
                            size).host["data"] == 0


def test_materialized_counts_every_window_of_every_split():
    T, N = 34_272, 207
    plan = _plan(T, N, data_mode="materialized", batch_size=8)
    n = num_windows(T, 12, 12)
    assert sum(plan.windows.values()) == n
    assert plan.windows == {k: r.count for k, r in split_starts(n).as_dict().items()}
    per_window = 12 * N * 2 * 4 + 12 * N * 4 + 12 * N  # x (L, N, F) f32 + y f32 + mask bool
    assert plan.host["data"] == n * per_window
    # the build holds train's parts and their concatenation: 2 x 70% of the windows
    assert plan.host["materialize"] >= (2 * plan.windows["train"] - n) * per_window


def test_gather_buffers_and_features():
    plan = _plan(4032, 50, batch_size=16, day_of_week=True)
    assert plan.host["gather"] == 16 * (12 * 50 * 3 * 4 + 12 * 50 * 4 + 12 * 50)


def test_graph_operators_dense_vs_sparse():
    assert graph_bytes(50, [200])[0] == 50 * 50 * 4 and graph_bytes(50, [200])[1] == "dense"
    b, kind = graph_bytes(11_160, [3 * 11_160])
    assert kind == "sparse" and b == 2 * (3 * 11_160 * 12 + 11_161 * 8)  # the CSR and its transpose's
    assert graph_bytes(3000, [10], "dense")[0] == 3000 * 3000 * 4
    # the estimate from E bounds the exact count on the real graph
    ei, ew = _random_graph(300, 3)
    for model in ("tgcn", "dcrnn"):
        exact = exact_operator_nnz(model, ei, ew, 300)
        assert all(e <= b for e, b in zip(exact, operator_nnz(model, 300, ei.shape[1])))
    assert exact_operator_nnz("dcrnn", ei, ew, 300) == [900, 900]


def test_too_few_windows_for_the_ranks_is_an_error():
    with pytest.raises(ValueError, match="ranks"):
        _plan(40, 10, np_=64)


# --- activations --------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["tgcn", "a3tgcn", "dcrnn", "gwnet"])
def test_activation_profile_matches_a_direct_count_and_is_linear_in_batch(model):
    from hvd_stgnn.models import ModelInputs, build_model

    N, E = 150, 450  # > the 128-node probe: the N scaling is tested too
    prof = activation_profile(model, N, E, 2, 12, 12, 16, 2, 2, True, False)
    saved = [prof.saved_bytes(b, N) for b in (1, 2, 3, 5)]
    assert saved[1] - saved[0] == saved[2] - saved[1] == (saved[3] - saved[2]) // 2 > 0
    torch.manual_seed(0)
    ei, ew = _random_graph(N, 3)
    net = build_model(model, ModelInputs(ei, ew, N, 2, 12, 12, hidden=16, graph_mode="sparse"))
    direct = _saved_bytes(net, torch.randn(3, 12, N, 2), torch.randn(3, 12, N))
    assert prof.saved_bytes(3, N) == pytest.approx(direct, rel=1e-6)


def test_gwnet_adaptive_adjacency_is_n_squared_and_off_above_2048():
    small = activation_profile("gwnet", 300, 900, 2, 12, 12, 64, 2, 2, True, False)
    assert small.nn_bytes == 2 * 128 * 128 * 4  # relu(E1 E2^T) and its softmax, saved
    big = activation_profile("gwnet", 4000, 12_000, 2, 12, 12, 64, 2, 2, True, False)
    assert big.nn_bytes == 0
    off = activation_profile("gwnet", 300, 900, 2, 12, 12, 64, 2, 2, False, False)
    assert off.nn_bytes == 0 and off.per_sample_bytes < small.per_sample_bytes


# --- verdicts -----------------------------------------------------------------------------


def test_pems_on_this_box_materialized_does_not_fit_index_does():
    """PeMS (T=105,120 x N=11,160), T-GCN, 2 ranks on one 24 GiB node (this machine)."""
    def plan(mode, batch_size=8, np_=2, rpn=2):
        inputs = PlanInputs(model="tgcn", batch_size=batch_size, data_mode=mode)
        return estimate(inputs, PEMS.num_steps, PEMS.num_nodes, PEMS_E, np_, rpn)

    mat, idx = plan("materialized"), plan("index")
    # materialized: every window (105,097 x 1.74 MB) on every rank, and 1.4 x that while building
    assert mat.host["data"] == 105_097 * (12 * 11_160 * 2 * 4 + 12 * 11_160 * 5)
    assert mat.node_bytes > 450 * GiB and not mat.fits(24 * GiB)
    assert mat.peak_phase == "materialize" and mat.dominant()[0][0] == "data"
    # index: one 4.37 GiB series per node, nothing private: the node fits in 16 GiB
    assert idx.shared["series"] == PEMS.num_steps * PEMS.num_nodes * 4
    assert idx.host["data"] == 0
    assert idx.node_bytes < 16 * GiB and idx.fits(24 * GiB)
    # the training step is then what grows: B = 32 needs ~16 GiB of activations per rank
    big = plan("index", batch_size=32)
    assert big.peak_phase == "step" and not big.fits(24 * GiB)
    # spread over 4 nodes the materialized baseline still needs > 450 GiB per node
    assert not plan("materialized", np_=8).fits(24 * GiB)


def _cfg(**over):
    from hvd_stgnn.config import Config

    cfg = Config()
    cfg.data.path = "metr-la.h5"
    for key, value in over.items():
        section, name = key.split("__")
        setattr(getattr(cfg, section), name, value)
    return cfg


def test_check_fits_raises_for_all_ranks_with_the_numbers_and_a_hint(monkeypatch):
    T, N, E = PRESETS["metr-la"].num_steps, PRESETS["metr-la"].num_nodes, 1500
    monkeypatch.setenv(NODE_MEMORY_ENV, "2")
    with pytest.raises(ConfigError) as info:
        check_fits(_cfg(data__data_mode="materialized"), T, N, E, 2, 2, "cpu")
    msg = str(info.value)
    assert info.value.all_ranks
    assert "per node" in msg and "2.00 GiB available" in msg and "use --data-mode index" in msg
    assert "\n" not in msg
    plan = check_fits(_cfg(), T, N, E, 2, 2, "cpu")  # index: fits in 2 GiB
    assert plan.node_bytes < 2 * GiB
    with pytest.raises(ConfigError, match="--batch-size"):
        check_fits(_cfg(model__name="dcrnn", train__batch_size=256), T, N, E, 2, 2, "cpu")
    monkeypatch.setenv(NODE_MEMORY_ENV, "lots")
    with pytest.raises(ConfigError, match=NODE_MEMORY_ENV):
        check_fits(_cfg(), T, N, E, 2, 2, "cpu")


def test_check_fits_default_limit_is_mem_available(monkeypatch):
    monkeypatch.delenv(NODE_MEMORY_ENV, raising=False)
    import hvd_stgnn.plan.estimate as est

    monkeypatch.setattr(est, "meminfo", lambda key, path="/proc/meminfo": {"MemAvailable": GiB}[key])
    monkeypatch.setattr(est, "_own_resident", lambda: 0)
    with pytest.raises(ConfigError, match="MemAvailable"):
        check_fits(_cfg(), 34_272, 207, 1500, 4, 4, "cpu")
    assert check_fits(_cfg(), 4032, 50, 150, 1, 1, "cpu", node_memory_bytes=2 * GiB).node_bytes < 2 * GiB


def test_cuda_plan_puts_the_run_on_the_device():
    T, N = PRESETS["metr-la"].num_steps, PRESETS["metr-la"].num_nodes
    plan = _plan(T, N, device="cuda", batch_size=8)
    assert {"data", "model_state", "graph", "activations", "gather", "cuda_context"} <= set(plan.device)
    assert plan.device["data"] > 0 and "activations" not in plan.host
    assert plan.fits(64 * GiB, 80 * GiB) and not plan.fits(64 * GiB, plan.device_bytes - 1)


# --- CLI (in-process: hvd_stgnn/cli.py registers the subcommand) --------------------------


def _run_plan(*argv, capsys):
    from hvd_stgnn.plan.cli import add_parsers

    parser = argparse.ArgumentParser(prog="hvd-stgnn")
    add_parsers(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["plan", *argv])
    rc = args.func(args)
    return rc, capsys.readouterr().out


def test_cli_text_and_json(capsys, small_h5):
    rc, out = _run_plan("--data", str(small_h5), "--np", "2", "--model", "tgcn", "--batch-size", "8",
                        "--node-memory-gb", "24", capsys=capsys)
    assert rc == 0
    assert "index *" in out and "materialized" in out and "node total = shared + 2 x rank" in out
    rc, out = _run_plan("--preset", "pems", "--np", "2", "--batch-size", "4", "--data-mode", "materialized",
                        "--node-memory-gb", "24", "--json", capsys=capsys)
    res = json.loads(out)
    assert rc == 1 and res["selected"] == "materialized"
    assert res["plans"]["index"]["num_edges"] == PEMS_E
    assert res["plans"]["materialized"]["fits"] is False
    assert res["plans"]["index"]["node_shared_bytes"]["series"] == PEMS.num_steps * PEMS.num_nodes * 4


@pytest.mark.parametrize("argv, error, match", [
    (["--np", "2"], ConfigError, "--preset or --data"),
    (["--preset", "tiny", "--data", "x.h5"], ConfigError, "--preset or --data"),
    (["--data", "/nonexistent.h5"], ConfigError, "--data /nonexistent.h5: no such file"),
    (["--preset", "tiny", "--np", "2", "--ranks-per-node", "3"], ConfigError, "--ranks-per-node"),
    (["--preset", "tiny", "--batch-size", "0"], ConfigError, "--batch-size"),
    (["--preset", "tiny", "--device", "cuda"] if not torch.cuda.is_available() else ["--preset", "tiny", "--np", "0"],
     ConfigError, "--device-memory-gb" if not torch.cuda.is_available() else "--np"),
    (["--preset", "tiny", "--np", "100000"], DataError, "--preset tiny"),
])
def test_cli_errors_name_the_flag(argv, error, match, capsys):
    with pytest.raises(error, match=match):
        _run_plan(*argv, capsys=capsys)


# --- prediction vs measurement (real 2-rank Horovod jobs) ---------------------------------
#
# What is compared, and why:
# - node: the predicted node total (series + libraries + 2 x per-rank private peak) against
#   `memory.max_node_pss_peak_bytes`, the sum over the node's ranks of PSS (shared pages
#   split between the processes mapping them, so the series and the libraries count once
#   per node, which is what the node total models). PSS is sampled after loading, after
#   each epoch and at the materialized build's peak, not at the step peak; glibc keeps the
#   freed step memory in the heap, so the samples see it (measured: RSS after a step stays
#   at its peak).
# - rank: the predicted peak RSS of the node leader (private peak + libraries + the whole
#   series, which the leader wrote) against max over ranks of `peak_rss_bytes` (ru_maxrss,
#   which counts every resident shared page in full: the leader's is the largest).


def _measured_vs_predicted(tmp_path, data: Path, model: str, extra: list[str], data_mode: str = "index") -> dict:
    from hvd_stgnn.data.hdf5 import read_metadata

    out = tmp_path / "r.json"
    r = run_mpi(2, "train", "--data", str(data), "--model", model, "--epochs", "1", "--threads", "1",
                "--no-baselines", "--data-mode", data_mode, "--results", str(out), *extra, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    meta = read_metadata(data)
    cfg = res["config"]
    inputs = PlanInputs(model=model, hidden=cfg["model"]["hidden"], batch_size=cfg["train"]["batch_size"],
                        data_mode=data_mode, baselines=False, interval_s=meta.interval_s)
    nnz = exact_operator_nnz(model, meta.edge_index, meta.edge_weight, meta.num_nodes)
    plan = estimate(inputs, meta.num_steps, meta.num_nodes, meta.num_edges, 2, 2, nnz)
    rss = max(rank["peak_rss_bytes"] for rank in res["memory"]["per_rank"])
    pss = res["memory"]["max_node_pss_peak_bytes"]
    return {"node": (plan.node_bytes, pss), "rank": (plan.rank_rss_bytes, rss), "plan": plan}


def _within(pred_meas: tuple[int, int], tol: float = 0.25) -> bool:
    pred, meas = pred_meas
    return abs(pred - meas) <= tol * meas


@pytest.fixture(scope="module")
def tiny_h5(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("plan") / "tiny.h5"
    r = run_cli("data", "synth", "--preset", "tiny", "--out", str(path), "--quiet")
    assert r.returncode == 0, r.stderr
    return path


@pytest.fixture(scope="module")
def metr_la_h5(tmp_path_factory) -> Path:
    cached = Path.home() / ".cache" / "hvd_stgnn" / "data" / "metr-la-seed0.h5"
    if cached.exists():
        return cached
    path = tmp_path_factory.mktemp("plan") / "metr-la.h5"
    r = run_cli("data", "synth", "--preset", "metr-la", "--out", str(path), "--quiet")
    assert r.returncode == 0, r.stderr
    return path


@pytest.mark.mpi
@pytest.mark.slow
def test_prediction_within_25_percent_tiny(tmp_path, tiny_h5):
    got = _measured_vs_predicted(tmp_path, tiny_h5, "tgcn", ["--hidden", "64", "--batch-size", "32",
                                                              "--max-steps-per-epoch", "60"])
    assert _within(got["node"]), f"node: predicted {got['node'][0] / MiB:.0f} vs PSS {got['node'][1] / MiB:.0f} MiB"
    assert _within(got["rank"]), f"rank: predicted {got['rank'][0] / MiB:.0f} vs RSS {got['rank'][1] / MiB:.0f} MiB"


@pytest.mark.mpi
@pytest.mark.slow
@pytest.mark.parametrize("model, data_mode, extra", [
    ("tgcn", "index", ["--hidden", "64", "--batch-size", "32"]),
    ("gwnet", "index", ["--batch-size", "8"]),
    ("tgcn", "materialized", ["--hidden", "16", "--batch-size", "16"]),
])
def test_prediction_within_25_percent_metr_la(tmp_path, metr_la_h5, model, data_mode, extra):
    got = _measured_vs_predicted(tmp_path, metr_la_h5, model,
                                 [*extra, "--max-steps-per-epoch", "25", "--eval-windows", "128"], data_mode)
    assert _within(got["node"]), f"node: predicted {got['node'][0] / MiB:.0f} vs PSS {got['node'][1] / MiB:.0f} MiB"
    assert _within(got["rank"]), f"rank: predicted {got['rank'][0] / MiB:.0f} vs RSS {got['rank'][1] / MiB:.0f} MiB"


def test_runtime_constant_is_at_least_the_import_footprint():
    from hvd_stgnn.plan.estimate import RUNTIME_IMPORT_PRIVATE_BYTES

    assert RUNTIME_PRIVATE_BYTES >= RUNTIME_IMPORT_PRIVATE_BYTES
