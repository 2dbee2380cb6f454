"""`hvd-stgnn timeline`: parsing Horovod timelines and DDP torch.profiler traces, the reports'
arithmetic, the chart, the CLI.

Real fixtures in tests/data (20 sensors x 600 steps, `--model tgcn --hidden 16 --epochs 1
--threads 1 --no-baselines`, 7 steps/epoch, 2 ranks on 2 cores):
- timeline_tgcn_2rank.json: the whole job, `HOROVOD_TIMELINE=F HOROVOD_TIMELINE_MARK_CYCLES=1`
  (broadcasts, allgathers, negotiation ticks, evaluation allreduces);
- timeline_window_2rank.json + results_window_2rank.json: the trainer's own window,
  `--timeline F --timeline-steps 2:4 --timeline-mark-cycles --results R`.
- ddp_trace_window_2rank.json (+ .rank1) + ddp_results_window_2rank.json: the DDP backend's
  torch.profiler window (torch 2.13 CPU, gloo), 12 sensors x 400 steps, `--model tgcn --hidden 8
  --batch-size 16 --epochs 1 --threads 1 --no-baselines --backend ddp --fusion-threshold-mb 0.0004
  --timeline F --timeline-steps 2:3 --results R`, 2 ranks on 2 busy cores: 3 steps x 2 gradient
  buckets + DDP's buffer broadcast in each forward. Trimmed from 3.1 MB per rank to 62 kB by
  `_trim_torch_trace` below (flow events dropped; cpu_ops nested in another cpu_op or annotation
  dropped unless c10d::* / torch::distributed::* / record_param_comms; of each run of top-level
  autograd::engine::evaluate_function ops only the first, the last and those holding a kept op
  stay): every number of the report is unchanged (test_real_ddp_run_then_report checks this on
  a fresh run). traceName and the results' timeline.file were set to the fixture's path. The run
  predates the backend's exclusion of constant graph operators from DDP's buffer broadcast.
"""

import collections
import gzip
import json
from pathlib import Path

import pytest

from helpers import our_error_lines, run_cli, run_mpi
from hvd_stgnn.errors import DataError
from hvd_stgnn.profiling.horovod_trace import category, parse_events, tensor_bytes
from hvd_stgnn.profiling.report import build_report, load_results
from hvd_stgnn.profiling.report_text import format_report
from hvd_stgnn.profiling.torch_trace import is_torch_trace, op_of, parse_torch_trace
from hvd_stgnn.profiling.trace import HorovodTrace, TorchTrace, merge_intervals, overlap_groups, union_length
from hvd_stgnn.profiling.trace_file import load_timeline, load_trace, read_events
from hvd_stgnn.results import Results

FIXTURE = Path(__file__).parent / "data" / "timeline_tgcn_2rank.json"
WINDOW = Path(__file__).parent / "data" / "timeline_window_2rank.json"
WINDOW_RESULTS = Path(__file__).parent / "data" / "results_window_2rank.json"
DDP = Path(__file__).parent / "data" / "ddp_trace_window_2rank.json"
DDP_RANK1 = Path(__file__).parent / "data" / "ddp_trace_window_2rank.json.rank1"
DDP_RESULTS = Path(__file__).parent / "data" / "ddp_results_window_2rank.json"


# --- interval arithmetic ----------------------------------------------------------------


def test_union_of_overlapping_nested_and_disjoint_intervals():
    assert union_length([]) == 0
    assert union_length([(0, 10), (5, 15)]) == 15  # overlap counted once
    assert union_length([(0, 10), (2, 3)]) == 10  # nested
    assert union_length([(0, 1), (2, 3)]) == 2  # disjoint
    assert union_length([(0, 1), (1, 2)]) == 2  # touching
    assert union_length([(20, 30), (0, 10), (5, 12), (29, 31)]) == 23  # unsorted
    assert merge_intervals([(5, 6), (0, 2), (1, 3)]) == [(0, 3), (5, 6)]


def test_overlap_groups_count_fused_batches():
    assert overlap_groups([]) == 0
    assert overlap_groups([(0, 10), (0, 12), (1, 9)]) == 1  # three tensors in one fused collective
    assert overlap_groups([(0, 10), (10, 20)]) == 2  # back to back: two collectives
    assert overlap_groups([(50, 60), (0, 10), (5, 8)]) == 2


def test_categories_and_tensor_sizes():
    assert category("NEGOTIATE_ALLREDUCE") == "negotiate"
    assert category("WAIT_FOR_DATA") == category("QUEUE") == category("WAIT_FOR_OTHER_TENSOR_DATA") == "wait"
    assert category("MEMCPY_IN_FUSION_BUFFER") == "memcpy_in"
    assert category("MEMCPY_OUT_FUSION_BUFFER") == "memcpy_out"
    assert category("MPI_ALLREDUCE") == category("NCCL_ALLREDUCE") == category("MPI_BCAST") == "collective"
    assert category("INIT_FUSION_BUFFER") == category("ALLOCATE_OUTPUT") == "other"
    assert tensor_bytes("float32", "[12, 16]") == 768
    assert tensor_bytes("float64", "[3]") == 24
    assert tensor_bytes("uint8", "[]") == 1  # a scalar
    assert tensor_bytes("mystery", "[3]") is None


# --- synthetic events: exact numbers ------------------------------------------------------


def _meta(pid, name):
    return [{"name": "process_name", "ph": "M", "pid": pid, "args": {"name": name}},
            {"name": "process_sort_index", "ph": "M", "pid": pid, "args": {"sort_index": pid}}]


def B(pid, name, ts):
    return {"ph": "B", "name": name, "ts": ts, "pid": pid}


def E(pid, ts, **args):
    ev = {"ph": "E", "ts": ts, "pid": pid}
    if args:
        ev["args"] = args
    return ev


def tick(pid, rank, ts):
    return {"ph": "X", "name": str(rank), "ts": ts, "pid": pid, "dur": 0}


def cycle(ts):
    return {"ph": "i", "name": "CYCLE_START", "ts": ts, "s": "g"}


def synthetic_events():
    """Two tensors fused into one allreduce, one of them reduced again alone (GPU-style
    activities), and one broadcast. Times in µs; every expected number below follows."""
    return [
        {"name": "process_name", "ph": "M", "pid": 0, "args": {"start_time_since_epoch_in_micros": 1_700_000_000_000_000}},
        {"name": "process_sort_index", "ph": "M", "pid": 0, "args": {"sort_index": 0}},
        *_meta(1, "allreduce.a"), cycle(0),
        B(1, "NEGOTIATE_ALLREDUCE", 0), tick(1, 0, 1),
        *_meta(2, "allreduce.b"),
        B(2, "NEGOTIATE_ALLREDUCE", 10), tick(2, 1, 12), tick(2, 0, 30), E(2, 31),  # rank 0 late by 18
        tick(1, 1, 40), E(1, 41),  # rank 1 late by 39
        cycle(45),
        B(1, "ALLREDUCE", 50), B(2, "ALLREDUCE", 50),
        B(1, "MEMCPY_IN_FUSION_BUFFER", 52), B(2, "MEMCPY_IN_FUSION_BUFFER", 52), E(1, 55), E(2, 56),
        B(1, "MPI_ALLREDUCE", 55), B(2, "MPI_ALLREDUCE", 56), E(1, 75), E(2, 75),
        B(1, "MEMCPY_OUT_FUSION_BUFFER", 75), B(2, "MEMCPY_OUT_FUSION_BUFFER", 75), E(1, 78), E(2, 77),
        E(1, 80, dtype="float32", shape="[4, 8]"), E(2, 82, dtype="float32", shape="[4]"),
        *_meta(3, "broadcast.c"),
        B(3, "NEGOTIATE_BROADCAST", 100), E(3, 110),
        B(3, "BROADCAST", 120), B(3, "MPI_BCAST", 121), E(3, 129), E(3, 130, dtype="int64", shape="[2]"),
        B(1, "NEGOTIATE_ALLREDUCE", 190), E(1, 199),
        B(1, "ALLREDUCE", 200), B(1, "WAIT_FOR_DATA", 200), E(1, 202), B(1, "QUEUE", 202), E(1, 203),
        B(1, "NCCL_ALLREDUCE", 203), E(1, 209), E(1, 210, dtype="float32", shape="[4, 8]"),
    ]


def _by_name(rep, name):
    return next(t for t in rep["tensors"] if t["name"] == name)


def test_report_arithmetic_on_synthetic_events():
    trace = parse_events(synthetic_events(), "syn.json")
    assert trace.tensors == {1: "allreduce.a", 2: "allreduce.b", 3: "broadcast.c"}
    assert trace.start_epoch_us == 1_700_000_000_000_000
    assert trace.unclosed == trace.unmatched_ends == 0
    rep = build_report([trace], top=10)

    c = rep["counts"]
    assert c["allreduce_calls"] == 3 and c["allreduce_tensors"] == 2
    assert c["allreduce_batches"] == 2  # a+b fused, then a alone
    assert c["ops"] == {"ALLREDUCE": 3, "BROADCAST": 1}
    assert c["cycles"] == 2 and c["tensors"] == 3

    acts = {(a["op"], a["name"]): a for a in rep["activities"]}
    assert acts[("ALLREDUCE", "ALLREDUCE")]["sum_ms"] == 0.072  # 30 + 32 + 10 µs
    assert acts[("ALLREDUCE", "ALLREDUCE")]["wall_ms"] == 0.042  # [50, 82] u [200, 210]
    assert acts[("ALLREDUCE", "NEGOTIATE_ALLREDUCE")]["sum_ms"] == 0.071  # 41 + 21 + 9
    assert acts[("ALLREDUCE", "NEGOTIATE_ALLREDUCE")]["wall_ms"] == 0.050  # [0, 41] u [190, 199]
    assert acts[("ALLREDUCE", "MPI_ALLREDUCE")]["sum_ms"] == 0.039
    assert acts[("ALLREDUCE", "MPI_ALLREDUCE")]["wall_ms"] == 0.020
    assert acts[("ALLREDUCE", "MPI_ALLREDUCE")]["level"] == 1
    assert acts[("BROADCAST", "MPI_BCAST")]["count"] == 1
    # Activities are listed under their operation: negotiation, the op, then its activities.
    names = [a["name"] for a in rep["activities"]]
    assert names[:3] == ["NEGOTIATE_ALLREDUCE", "ALLREDUCE", "WAIT_FOR_DATA"]
    assert names.index("MEMCPY_IN_FUSION_BUFFER") < names.index("MPI_ALLREDUCE") < names.index("MEMCPY_OUT_FUSION_BUFFER")
    assert rep["not_recorded"] == ["WAIT_FOR_OTHER_TENSOR_DATA"]

    a, b, bc = _by_name(rep, "allreduce.a"), _by_name(rep, "allreduce.b"), _by_name(rep, "broadcast.c")
    assert [t["name"] for t in rep["tensors"]] == ["allreduce.a", "allreduce.b", "broadcast.c"]  # slowest first
    assert a["calls"] == 2 and a["bytes"] == 128 and a["shape"] == "[4, 8]"
    assert a["total_ms"] == 0.090 and a["negotiate_ms"] == 0.050 and a["processing_ms"] == 0.040
    assert a["categories_ms"] == {"negotiate": 0.050, "wait": 0.003, "memcpy_in": 0.003, "collective": 0.026,
                                  "memcpy_out": 0.003, "other": 0.005}
    assert b["categories_ms"] == {"negotiate": 0.021, "wait": 0.0, "memcpy_in": 0.004, "collective": 0.019,
                                  "memcpy_out": 0.002, "other": 0.007}
    assert bc["op"] == "BROADCAST" and bc["bytes"] == 16 and bc["categories_ms"]["other"] == 0.002
    tt = rep["tensors_total"]
    assert tt["total_ms"] == pytest.approx(0.090 + 0.053 + 0.020)
    assert tt["calls"] == 4

    neg = rep["negotiation"]
    assert neg["negotiations"] == 4 and neg["with_rank_ticks"] == 2 and neg["ranks_seen"] == [0, 1]
    assert neg["last_rank"] == {"1": {"times": 1, "lag_ms_median": 0.039, "lag_ms_max": 0.039},
                                "0": {"times": 1, "lag_ms_median": 0.018, "lag_ms_max": 0.018}}

    comm = rep["comm"]
    assert comm["basis"] == "trace_span" and comm["trace_span_ms"] == 0.210
    assert comm["allreduce_share"] == pytest.approx(42 / 210)
    assert comm["collectives_wall_ms"] == 0.052  # + the broadcast [120, 130]


def test_top_k_limits_the_tensor_list_not_the_totals():
    rep = build_report([parse_events(synthetic_events())], top=1)
    assert [t["name"] for t in rep["tensors"]] == ["allreduce.a"]
    assert rep["tensors_total"]["tensors"] == 3


def _results(window_seconds=0.000084, active_steps=2, phases=True):
    res = {"model": "tgcn", "timeline": {"file": "syn.json", "first_step": 5, "active_steps": active_steps,
                                         "window_seconds": window_seconds}}
    if phases:
        stat = lambda a, b, c: {"min": a, "median": b, "max": c}  # noqa: E731
        res["phase_timings"] = [
            {"epoch": 1, "steps": 8, "batch_ms": stat(9, 9, 9), "forward_ms": stat(9, 9, 9), "backward_ms": stat(9, 9, 9),
             "optimizer_ms": stat(9, 9, 9), "step_ms": stat(9, 9, 9)},
            {"epoch": 2, "steps": 8, "batch_ms": stat(0.5, 0.6, 0.7), "forward_ms": stat(1.0, 1.5, 2.0),
             "backward_ms": stat(2.0, 2.5, 3.0), "optimizer_ms": stat(0.1, 0.2, 0.3), "step_ms": stat(0.042, 0.084, 0.1)},
        ]
    return res


def test_comm_share_of_the_recorded_window_and_last_epoch_phases():
    rep = build_report([parse_events(synthetic_events(), "syn.json")], results=Results.from_dict(_results()),
                       results_path="r.json")
    comm = rep["comm"]
    assert comm["basis"] == "window" and comm["basis_ms"] == 0.084
    assert comm["allreduce_share"] == pytest.approx(0.5)  # 42 µs of 84 µs
    assert comm["allreduce_ms_per_step"] == 0.021 and comm["allreduce_calls_per_step"] == 1.5
    assert comm["allreduce_share_of_median_step"] == pytest.approx(0.25)  # 0.021 of 0.084 ms
    res = rep["results"]
    assert res["phase_timings"]["epoch"] == 2 and res["timeline"]["first_step"] == 5 and res["note"] is None
    text = format_report(rep)
    assert "window: steps 5..6 of the job (2 steps)" in text and "50.0% of the window" in text
    assert "phase times, epoch 2" in text and "backward (incl. allreduce wait)" in text
    assert "epoch 1" not in text


def test_results_naming_another_timeline_gives_a_note():
    res = _results()
    res["timeline"]["file"] = "/somewhere/else.json"
    rep = build_report([parse_events(synthetic_events(), "syn.json")], results=Results.from_dict(res), results_path="r.json")
    assert "else.json" in rep["results"]["note"]
    assert "note: the results describe timeline /somewhere/else.json" in format_report(rep)


def test_recording_started_or_stopped_mid_operation():
    """DYNAMIC start/stop: an E without its B at the start, a B without its E at the end."""
    events = [*_meta(1, "allreduce.a"), E(1, 5), E(1, 6, dtype="float32", shape="[2]"),
              B(1, "NEGOTIATE_ALLREDUCE", 10), E(1, 20), B(1, "ALLREDUCE", 30), B(1, "MPI_ALLREDUCE", 31)]
    trace = parse_events(events)
    assert trace.unmatched_ends == 2 and trace.unclosed == 2
    rep = build_report([trace])
    assert rep["counts"]["allreduce_calls"] == 0 and rep["tensors"][0]["negotiate_ms"] == 0.010
    assert "skipped" in format_report(rep)


# --- reading files: the real fixture, cut-short files, not-a-timeline files ---------------


def test_real_two_rank_timeline_fixture():
    trace = load_timeline(FIXTURE)
    assert not trace.truncated and trace.unclosed == 0 and trace.unmatched_ends == 0
    assert len(trace.tensors) == 40 and trace.tensors[30] == "allreduce.head.bias"
    rep = build_report([trace], top=5)
    c = rep["counts"]
    assert c["allreduce_calls"] == 46 and c["ops"] == {"ALLREDUCE": 46, "ALLGATHER": 4, "BROADCAST": 26}
    assert c["cycles"] == 82
    # 7 training steps x 6 T-GCN parameter tensors are fused into one collective per step.
    grads = [t for t in build_report([trace], top=100)["tensors"] if t["name"].startswith("allreduce.cell.")]
    assert len(grads) == 4 and all(t["calls"] == 7 for t in grads)
    assert {t["dtype"] for t in grads} == {"float32"}
    names = {a["name"] for a in rep["activities"]}
    assert {"NEGOTIATE_ALLREDUCE", "ALLREDUCE", "MPI_ALLREDUCE", "MEMCPY_IN_FUSION_BUFFER",
            "MEMCPY_OUT_FUSION_BUFFER", "NEGOTIATE_BROADCAST", "MPI_BCAST", "MPI_ALLGATHER"} <= names
    for a in rep["activities"]:
        assert 0 <= a["wall_ms"] <= a["sum_ms"] + 1e-9
    for t in rep["tensors"]:
        assert sum(t["categories_ms"].values()) == pytest.approx(t["total_ms"], abs=0.002)
    assert rep["tensors"] == sorted(rep["tensors"], key=lambda t: -t["total_ms"])
    comm = rep["comm"]
    assert comm["basis"] == "trace_span" and 0 < comm["allreduce_share"] < 1
    assert comm["allreduce_wall_ms"] <= comm["collectives_wall_ms"] <= comm["trace_span_ms"]
    assert rep["negotiation"]["ranks_seen"] == [0, 1]
    text = format_report(rep)
    for needle in ("NEGOTIATE_ALLREDUCE", "MPI_ALLREDUCE", "MEMCPY_IN_FUSION_BUFFER", "slowest 5 of 40 tensors",
                   "46 allreduce calls", "82 cycles marked", "of the span", "not in this trace: WAIT_FOR_DATA"):
        assert needle in text, needle


def test_real_trainer_window_with_its_results():
    results = load_results(WINDOW_RESULTS)
    rep = build_report([load_timeline(WINDOW)], top=10, results=results, results_path=str(WINDOW_RESULTS))
    c = rep["counts"]
    # 4 recorded steps x 6 T-GCN gradients; each step fuses them into 2 collectives (the head's
    # gradients are ready first in backward, the recurrent cell's later).
    assert c["allreduce_calls"] == 24 and c["allreduce_tensors"] == 6 and c["allreduce_batches"] == 8
    assert c["ops"] == {"ALLREDUCE": 24} and c["cycles"] == 27
    assert all(t["calls"] == 4 for t in rep["tensors"])
    window = results.timeline
    assert window.active_steps == 4 and rep["results"]["note"] is None
    comm = rep["comm"]
    assert comm["basis_ms"] == pytest.approx(window.window_seconds * 1000, abs=1e-3)
    assert comm["allreduce_share"] == pytest.approx(comm["allreduce_wall_ms"] / comm["basis_ms"], rel=1e-4)
    assert comm["allreduce_ms_per_step"] == pytest.approx(comm["allreduce_wall_ms"] / 4, abs=1e-3)
    assert comm["allreduce_calls_per_step"] == 6
    step = results.phase_timings[-1].step_ms["median"]
    assert comm["allreduce_share_of_median_step"] == pytest.approx(comm["allreduce_ms_per_step"] / step)
    text = format_report(rep)
    assert "window: steps 2..5 of the job (4 steps)" in text and "phase times, epoch 1 (7 steps/rank" in text


@pytest.mark.parametrize("cut", ["drop_bracket", "mid_event", "after_comma", "mid_args"])
def test_cut_short_files_are_read_up_to_the_last_whole_event(tmp_path, cut):
    text = FIXTURE.read_text()
    complete = json.loads(text)
    body = text.rstrip()
    assert body.endswith("}]")
    if cut == "drop_bracket":
        cut_text, expect = body[:-1], len(complete)
    elif cut == "after_comma":
        at = body.rindex("},{") + 2
        cut_text, expect = body[:at], len(complete) - 1
    elif cut == "mid_event":
        at = body.rindex('{"ph": "B"')
        cut_text = body[:at + 14]
        expect = len(json.loads(body[:at].rstrip(",") + "]"))
    else:  # inside the args of the last event
        at = body.rindex('"shape"')
        cut_text = body[:at + 10]
        expect = len(complete) - 1
    path = tmp_path / "cut.json"
    path.write_text(cut_text)
    events, truncated = read_events(path)
    assert truncated and len(events) == expect
    assert events == complete[:expect]
    trace = load_timeline(path)
    assert trace.truncated
    assert "cut short" in format_report(build_report([trace]))


def test_a_complete_file_is_not_reported_as_cut_short():
    events, truncated = read_events(FIXTURE)
    assert not truncated and len(events) == 880


@pytest.mark.parametrize("content,message", [
    (b"", "empty: no events were written"),
    (b"   \n", "empty: no events were written"),
    (b"hello world\n", "not a Horovod timeline (not JSON"),
    (b'{"model": "tgcn", "epochs": []}', "a JSON object, expected an array of trace events; it looks like a results file"),
    (b'{"traceEvents": []}', "a JSON object, expected an array of trace events)"),
    (b"[1, 2, 3]", "element 0 is not a trace event"),
    (b'"x"', "a JSON str"),
    (b'[{"ph": "B", "name": "A", "ts": 1, "pid": 1},{"ph": "E" oops, "ts": 2},{"ph": "E", "ts": 3, "pid": 1}]',
     "invalid JSON at line 1"),
    (b'[{"ph": "B", "name": "NEGOTIATE_ALLREDUCE", "ts": 1, "pid": 1}] trailing', "unexpected text after the closing"),
    (b'[{"ph": "C", "name": "counter", "ts": 1, "pid": 1, "args": {"v": 1}}]', "no Horovod header"),
    (b'[{"name": "process_name", "ph": "M", "pid": 1, "args": {"name": "python3"}},'
     b'{"ph": "B", "name": "forward", "ts": 1, "pid": 1},{"ph": "E", "ts": 2, "pid": 1}]', "no Horovod header"),
    (b'[{"ph": "B", "name": "ALLREDUCE", "ts": "soon", "pid": 1}]', "non-numeric 'ts'"),
    (b"\x89HDF\r\n\x1a\n\x00\x00\xff\xfe", "not UTF-8 text"),
])
def test_not_a_timeline_is_one_clear_error(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        load_timeline(path)
    text = str(err.value)
    assert "\n" not in text and text.startswith(str(path)) and message in text, text


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_timeline(tmp_path / "nope.json")
    with pytest.raises(DataError, match="is a directory"):
        load_timeline(tmp_path)


@pytest.mark.parametrize("content,message", [
    ("{}", 'no "timeline" entry'),
    ('{"timeline": {"window_seconds": 0}}', "window_seconds must be a number > 0"),
    ('{"timeline": {"window_seconds": "1"}}', "window_seconds must be a number > 0"),
    ('{"timeline": {"first_step": 2}}', "window_seconds must be a number > 0"),  # absent
    ('{"timeline": {"window_seconds": 1}, "phase_timings": {}}', '"phase_timings" must be a list'),
    ("[1]", "expected a JSON object"),
    ("{not json", "invalid JSON at line 1"),
])
def test_bad_results_file(tmp_path, content, message):
    path = tmp_path / "r.json"
    path.write_text(content)
    with pytest.raises(DataError) as err:
        load_results(path)
    assert message in str(err.value) and str(path) in str(err.value)
    with pytest.raises(DataError, match="no such file"):
        load_results(tmp_path / "missing.json")


def test_results_without_phase_timings(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(_results(phases=False)))
    rep = build_report([parse_events(synthetic_events(), "syn.json")], results=load_results(path), results_path=str(path))
    assert rep["results"]["phase_timings"] is None
    assert "no phase_timings" in format_report(rep)


# --- chart ------------------------------------------------------------------------------


def test_png_chart(tmp_path):
    pytest.importorskip("matplotlib")
    from hvd_stgnn.errors import ConfigError
    from hvd_stgnn.profiling.report_plot import plot_report

    out = plot_report(build_report([load_timeline(FIXTURE)], top=5), tmp_path / "chart.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    with pytest.raises(ConfigError, match="does not exist"):
        plot_report(build_report([load_timeline(FIXTURE)]), tmp_path / "no" / "dir" / "chart.png")


# --- CLI (`hvd-stgnn timeline`) ------------------------------------------------------------


def test_cli_text_report():
    r = run_cli("timeline", str(FIXTURE), "--top", "3")
    assert r.returncode == 0, r.stderr
    assert "slowest 3 of 40 tensors" in r.stdout and "NEGOTIATE_ALLREDUCE" in r.stdout
    assert "communication share" in r.stdout


def test_cli_with_the_real_results_file():
    r = run_cli("timeline", str(WINDOW), "--results", str(WINDOW_RESULTS))
    assert r.returncode == 0, r.stderr
    assert "of the window" in r.stdout and "backward (incl. allreduce wait)" in r.stdout


def test_cli_json_png_and_results(tmp_path):
    results = tmp_path / "results.json"
    res = _results(window_seconds=0.5, active_steps=7)
    res["timeline"]["file"] = str(FIXTURE)
    results.write_text(json.dumps(res))
    png = tmp_path / "t.png"
    r = run_cli("timeline", str(FIXTURE), "--json", "--top", "4", "--png", str(png), "--results", str(results))
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)  # stdout is pure JSON
    assert len(rep["tensors"]) == 4 and rep["png"] == str(png) and png.exists()
    assert rep["comm"]["basis"] == "window" and rep["comm"]["basis_ms"] == 500.0
    assert rep["comm"]["allreduce_share"] == pytest.approx(rep["comm"]["allreduce_wall_ms"] / 500.0)
    assert rep["results"]["phase_timings"]["epoch"] == 2


@pytest.mark.parametrize("args,message", [
    (["{tmp}/missing.json"], "missing.json: no such file"),
    (["{tmp}/bad.json"], "bad.json: not a Horovod timeline"),
    ([str(FIXTURE), "--results", "{tmp}/bad.json"], "bad.json: not a results file"),
    ([str(FIXTURE), "--top", "0"], "--top must be >= 1"),
])
def test_cli_errors_are_one_line_exit_2(tmp_path, args, message):
    (tmp_path / "bad.json").write_text("no json here")
    r = run_cli("timeline", *[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert r.returncode == 2
    lines = our_error_lines(r.stderr)
    assert len(lines) == 1 and lines[0].startswith("hvd-stgnn timeline: error: ") and message in lines[0], r.stderr
    assert "Traceback" not in r.stderr


# --- a real 2-rank run --------------------------------------------------------------------


@pytest.fixture(scope="module")
def short_h5(tmp_path_factory):
    from hvd_stgnn.data import generate, write_dataset

    path = tmp_path_factory.mktemp("tl") / "short.h5"
    write_dataset(path, generate(12, 400, seed=2))
    return path


TRAIN = ["--model", "tgcn", "--hidden", "8", "--batch-size", "16", "--epochs", "1", "--threads", "1", "--no-baselines"]


def _train_with_window(h5, tmp_path, *flags):
    """A 2-rank run recording steps 3-5 (`--timeline-steps 2:3`): (trace, results) paths."""
    trace, results = tmp_path / "trace.json", tmp_path / "r.json"
    r = run_mpi(2, "train", "--data", str(h5), *TRAIN, *flags, "--timeline", str(trace), "--timeline-steps", "2:3",
                "--results", str(results), timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    return trace, results


def _cli_report(*args) -> dict:
    """`hvd-stgnn timeline ARGS --json`, which must succeed."""
    r = run_cli("timeline", *map(str, args), "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.mpi
def test_real_two_rank_run_then_report(short_h5, tmp_path, monkeypatch):
    timeline = tmp_path / "timeline.json"
    monkeypatch.setenv("HOROVOD_TIMELINE", str(timeline))
    monkeypatch.setenv("HOROVOD_TIMELINE_MARK_CYCLES", "1")
    r = run_mpi(2, "train", "--data", str(short_h5), *TRAIN, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    assert timeline.exists()
    rep = _cli_report(timeline)
    c = rep["counts"]
    # T-GCN has 6 parameter tensors; every training step reduces each gradient once.
    cell = [t for t in rep["tensors"] if t["name"].startswith("allreduce.cell.") or t["name"].startswith("allreduce.head.")]
    assert len(cell) == 6 and len({t["calls"] for t in cell}) == 1 and cell[0]["calls"] >= 1
    assert c["allreduce_calls"] >= 6 * cell[0]["calls"] and c["cycles"]
    assert c["ops"].get("BROADCAST", 0) >= 6  # the initial parameter broadcast
    assert rep["negotiation"]["ranks_seen"] == [0, 1]
    assert 0 < rep["comm"]["allreduce_share"] < 1
    assert not rep["truncated"]


@pytest.mark.mpi
def test_trainer_window_then_report_with_results(short_h5, tmp_path):
    """`train --timeline F --timeline-steps 2:3` records steps 3-5 and writes results.timeline."""
    timeline, results = _train_with_window(short_h5, tmp_path, "--timeline-mark-cycles")
    rep = _cli_report(timeline, "--results", results)
    assert rep["comm"]["basis"] == "window" and rep["results"]["timeline"]["active_steps"] == 3
    assert rep["counts"]["allreduce_calls"] >= 3 * 6
    assert 0 < rep["comm"]["allreduce_share"] <= 1
    assert rep["results"]["phase_timings"] is not None
    text = run_cli("timeline", str(timeline), "--results", str(results)).stdout
    assert "phase times, epoch 1" in text and "of the window" in text


def test_fixtures_are_small():
    assert sum(p.stat().st_size for p in (FIXTURE, WINDOW, WINDOW_RESULTS)) < 200_000


@pytest.mark.parametrize("kind", ["horovod", "ddp"])
def test_json_output_is_serializable(kind):
    """--json prints the report dict as is: it must be strict JSON (no NaN / Infinity tokens)
    and read back equal, its numbers included."""
    if kind == "horovod":
        rep = build_report([load_timeline(FIXTURE)], results=Results.from_dict(_results()), results_path="r.json")
    else:
        rep = build_report([load_trace(DDP), load_trace(DDP_RANK1)], results=load_results(DDP_RESULTS),
                           results_path=str(DDP_RESULTS))
    text = json.dumps(rep, indent=2, allow_nan=False)  # raises ValueError on NaN / Infinity
    back = json.loads(text)
    assert back == rep
    assert back["comm"]["allreduce_wall_ms"] == rep["comm"]["allreduce_wall_ms"] > 0
    assert back["comm"]["allreduce_share"] == rep["comm"]["allreduce_share"] > 0
    assert back["counts"]["allreduce_calls"] == (46 if kind == "horovod" else 6)
    assert back["tensors_total"] == rep["tensors_total"] and back["tensors_total"]["total_ms"] > 0
    assert back["results"]["phase_timings"]["step_ms"]["median"] == rep["results"]["phase_timings"]["step_ms"]["median"]


# --- DDP: torch.profiler traces -------------------------------------------------------------


def _trim_torch_trace(doc: dict) -> dict:
    """How the DDP fixtures were cut down (see the module docstring)."""
    keep_nested = ("c10d::", "torch::distributed::", "record_param_comms")
    ev = doc["traceEvents"]
    by_thread = collections.defaultdict(list)
    for i, e in enumerate(ev):
        if e.get("ph") == "X" and e.get("cat") in ("cpu_op", "user_annotation"):
            by_thread[(e.get("pid"), e.get("tid"))].append(i)
    drop, parent = set(), {}
    for idx in by_thread.values():
        idx.sort(key=lambda i: (ev[i]["ts"], -ev[i].get("dur", 0)))
        stack = []
        for i in idx:
            while stack and ev[stack[-1]]["ts"] + ev[stack[-1]]["dur"] <= ev[i]["ts"]:
                stack.pop()
            if stack:
                parent[i] = stack[-1]
                if ev[i]["cat"] == "cpu_op" and not ev[i]["name"].startswith(keep_nested):
                    drop.add(i)
            stack.append(i)
    holders = {parent[i] for i in parent if i not in drop}
    for idx in by_thread.values():
        runs, cur = [], []
        for i in idx:
            if i in parent or ev[i]["cat"] != "cpu_op":
                continue
            if ev[i]["name"].startswith("autograd::engine::evaluate_function"):
                cur.append(i)
            elif cur:
                runs.append(cur)
                cur = []
        runs.append(cur)
        for run in runs:
            drop.update(i for i in run[1:-1] if i not in holders)
    return {**doc, "traceEvents": [e for i, e in enumerate(ev) if i not in drop and e.get("ph") not in ("s", "f")]}


def X(name, ts, dur, tid=1, cat="cpu_op", **args):
    return {"ph": "X", "cat": cat, "name": name, "pid": 7, "tid": tid, "ts": ts, "dur": dur, "args": args}


def A(name, ts, dur, tid=1):
    return X(name, ts, dur, tid=tid, cat="user_annotation")


def torch_doc(rank=0, shift=0.0):
    """Two optimizer steps of DDP on gloo, training thread 1, gloo threads 2 and 3 (µs). Step 0:
    buffer broadcast in forward, two buckets; backward ends at 160, finalize waits (idle 160-210),
    views bucket 0, waits (212-262), views bucket 1: finalize ends at 263. Step 1: one bucket
    whose range was closed late (900): cut at the end of finalize (602). Then a forward cut by the
    end of the recording, with its broadcast. `shift` delays this rank's collectives."""
    g = shift
    ev = [
        {"ph": "M", "name": "thread_name", "pid": 7, "tid": 2, "args": {"name": "thread 2 (pt_gloo_runloop)"}},
        {"ph": "X", "cat": "Trace", "name": "PyTorch Profiler (0)", "pid": "Spans", "tid": "PyTorch Profiler",
         "ts": 0, "dur": 1000},
        A("Optimizer.zero_grad#SGD.zero_grad", 5, 5),
        A("DistributedDataParallel.forward", 10, 90), X("c10d::broadcast_", 12, 8),
        A("gloo:broadcast", 14 + g, 10, tid=2),
        X("aten::mse_loss", 102, 10),
        X("autograd::engine::evaluate_function: MseLossBackward0", 120, 9),
        X("autograd::engine::evaluate_function: torch::autograd::AccumulateGrad", 130, 10),
        X("torch::distributed::reducer::mul_out", 131, 2), X("c10d::allreduce_", 134, 4),
        A("gloo:all_reduce", 136 + g, 64, tid=2),
        X("autograd::engine::evaluate_function: torch::autograd::AccumulateGrad", 141, 19),
        X("torch::distributed::reducer::mul_out", 142, 2), X("c10d::allreduce_", 150, 5),
        A("gloo:all_reduce", 152 + g, 108, tid=3),
        X("aten::as_strided", 210, 2), X("aten::as_strided", 262, 1),
        X("aten::sub", 270, 10),
        A("Optimizer.step#SGD.step", 300, 50),
        A("DistributedDataParallel.forward", 400, 80),
        X("autograd::engine::evaluate_function: torch::autograd::AccumulateGrad", 500, 20),
        X("torch::distributed::reducer::mul_out", 505, 2), X("c10d::allreduce_", 510, 5),
        A("gloo:all_reduce", 512 + g, 388, tid=2),
        X("aten::as_strided", 600, 2),
        A("Optimizer.step#SGD.step", 700, 50),
        A("DistributedDataParallel.forward", 790, 60), A("gloo:broadcast", 800 + g, 10, tid=3),
    ]
    return {"schemaVersion": 1, "deviceProperties": [], "baseTimeNanoseconds": 1_700_000_000_000_000_000,
            "distributedInfo": {"backend": "gloo", "rank": rank, "world_size": 2}, "traceEvents": ev}


def test_ddp_training_thread_is_a_cpu_thread_on_gpu_traces():
    """On a GPU the profiler repeats DDP's forward annotation on every CUDA stream as
    gpu_user_annotation: more of them than on the CPU thread, and never the training thread."""
    doc = torch_doc()
    gpu = [{"ph": "X", "cat": "gpu_user_annotation", "name": "DistributedDataParallel.forward", "pid": 0,
            "tid": stream, "ts": ts, "dur": 50} for stream in (7, 13, 21) for ts in (15, 200, 405, 795)]
    doc["traceEvents"] += gpu
    tr = parse_torch_trace(doc, "syn.json")
    assert tr.main_thread == (7, 1) and len(tr.steps) == 2


def test_ddp_parsing_and_arithmetic_on_synthetic_events():
    tr = parse_torch_trace(torch_doc(), "syn.json")
    assert tr.rank == 0 and tr.world_size == 2 and tr.pg_backend == "gloo" and tr.source == "cpu"
    assert tr.main_thread == (7, 1) and tr.step_mode == "optimizer" and len(tr.steps) == 2
    assert tr.profiler_span == (0, 1000) and tr.partial_calls == 1 and tr.clamped == 1
    s0, s1 = tr.steps
    assert (s0.backward_start, s0.backward_end, s0.finalize_end) == (120, 160, 263)
    assert s0.idle == [(160, 210), (212, 262)] and s0.blocked_us == 98  # (160, 210) + (212, 260)
    assert s1.finalize_end == 602 and s1.idle == [(520, 600)] and s1.blocked_us == 80
    assert (s0.forward_us, s1.forward_us, s0.optimizer_us, s1.span_us) == (90, 80, 50, 400)
    rows = {c.key: c for c in tr.calls}
    b0 = rows[(0, "ALLREDUCE", "backward", 0)]
    assert b0.row == "bucket 0" and b0.blocked_us == 40 and b0.fill_us == 2
    assert rows[(0, "ALLREDUCE", "backward", 1)].blocked_us == 98
    late = rows[(1, "ALLREDUCE", "backward", 0)]
    assert late.recorded_end == 900 and late.end == 602 and late.clamped
    assert rows[(0, "BROADCAST", "forward", 0)].row == "broadcast 0 (forward: buffers)"

    rep = build_report([tr])
    c = rep["counts"]
    assert c["allreduce_calls"] == 3 and c["ops"] == {"ALLREDUCE": 3, "BROADCAST": 2} and c["steps"] == 2
    assert c["buckets_per_step"] == [1, 2] and c["forward_broadcasts"] == 2 and c["clamped_ends"] == 1
    t = {r["name"]: r for r in rep["tensors"]}
    assert list(t) == ["bucket 0", "bucket 1", "broadcast 0 (forward: buffers)"]  # slowest first
    assert t["bucket 0"]["calls"] == 2 and t["bucket 0"]["total_ms"] == 0.158  # 64 + 90 µs + fills 2 + 2
    assert t["bucket 0"]["categories_ms"] == {"negotiate": None, "wait": None, "memcpy_in": 0.004,
                                              "collective": 0.154, "memcpy_out": None, "other": None}
    assert t["bucket 0"]["blocked_ms"] == 0.120 and t["bucket 1"]["total_ms"] == 0.110
    assert t["broadcast 0 (forward: buffers)"]["categories_ms"]["memcpy_in"] is None
    comm = rep["comm"]
    assert comm["basis"] == "profiler_span" and comm["basis_ms"] == 1.0
    assert comm["allreduce_wall_ms"] == 0.214 and comm["allreduce_share"] == pytest.approx(0.214)  # [136, 260] u [512, 602]
    assert comm["collectives_wall_ms"] == 0.234 and comm["negotiate_allreduce_wall_ms"] is None
    assert comm["blocked_wall_ms"] == 0.178 and comm["allreduce_calls_per_step"] == 1.5
    assert comm["allreduce_ms_per_step"] == 0.107 and comm["blocked_ms_per_step"] == 0.089
    acts = {a["name"]: a for a in rep["activities"]}
    assert acts["gloo:all_reduce"]["count"] == 3 and acts["torch::distributed::reducer::mul_out"]["sum_ms"] == 0.006
    assert acts["blocked after backward"]["sum_ms"] == 0.218 and acts["blocked after backward"]["wall_ms"] == 0.178
    assert acts["c10d::allreduce_"]["count"] == 3 and acts["c10d::broadcast_"]["count"] == 1
    assert "NEGOTIATE_ALLREDUCE" in rep["not_applicable"] and "MEMCPY_IN_FUSION_BUFFER" not in rep["not_applicable"]
    assert rep["phases"] == {"steps": 2, "forward_ms": 0.085, "backward_ms": 0.03, "blocked_ms": 0.089,
                             "optimizer_ms": 0.05, "step_ms": 0.4}
    text = format_report(rep)
    assert "n/a (DDP)" in text and "bucket 1" in text and "3 allreduce calls in 2 steps (1-2 buckets per step)" in text
    assert "1 collective end(s) recorded after" in text and "pass them all" in text


def test_ddp_ranks_waits_and_stragglers():
    r0, r1 = parse_torch_trace(torch_doc(0), "a.json"), parse_torch_trace(torch_doc(1, shift=30), "a.json.rank1")
    rep = build_report([r1, r0])  # sorted by rank: rank 0's rows
    assert rep["file"] == "a.json" and [p["rank"] for p in rep["ranks"]] == [0, 1]
    rs = rep["ranks_summary"]
    assert rs["matched_calls"] == 5 and rs["last_rank"] == {"1": {"times": 5, "lag_ms_median": 0.03, "lag_ms_max": 0.03}}
    assert rep["ranks"][0]["wait_ms"] == 0.11 and rep["ranks"][1]["wait_ms"] == 0
    b0 = next(t for t in rep["tensors"] if t["name"] == "bucket 0")
    assert b0["categories_ms"]["wait"] == 0.06 and b0["categories_ms"]["collective"] == 0.094  # 154 - 60 µs
    assert rep["tensors_total"]["categories_ms"]["wait"] == 0.11  # broadcasts: at most their 10 µs
    text = format_report(rep)
    assert "last to enter a collective (5 matched calls): rank 1 5x" in text and "ranks (each rank's trace" in text
    with pytest.raises(DataError, match="rank 0 is given twice"):
        build_report([r0, parse_torch_trace(torch_doc(0), "b.json")])


def test_ddp_profiler_steps_and_python_frames_do_not_hide_the_wait():
    """With a schedule, ProfilerStep#N ranges (and with with_stack, Python frames) enclose every
    operator: the finalize's idle time is still found among the operators."""
    doc = torch_doc()
    doc["traceEvents"] += [A("ProfilerStep#4", 1, 355), A("ProfilerStep#5", 356, 400),
                           X("train.py(12): step", 2, 350, cat="python_function")]
    tr = parse_torch_trace(doc)
    assert tr.step_mode == "profiler_step" and [st.span_us for st in tr.steps] == [355, 400]
    assert [st.blocked_us for st in tr.steps] == [98, 80] and tr.partial_calls == 0
    assert tr.calls[-1].step == 1 and tr.calls[-1].row == "broadcast 0 (forward: buffers)"  # within step 1


def test_ddp_steps_without_optimizer_or_forward_markers():
    doc = torch_doc()
    doc["traceEvents"] = [e for e in doc["traceEvents"] if not e["name"].startswith("Optimizer.")]
    tr = parse_torch_trace(doc)
    assert tr.step_mode == "forward" and len(tr.steps) == 3 and tr.partial_calls == 0
    doc["traceEvents"] = [e for e in doc["traceEvents"] if e["name"].startswith(("gloo:", "PyTorch"))]
    tr = parse_torch_trace(doc)
    assert tr.step_mode == "none" and [c.row for c in tr.calls] == ["broadcast 0", "allreduce 0", "allreduce 1",
                                                                     "allreduce 2", "broadcast 1"]
    rep = build_report([tr])
    assert "no step markers" in format_report(rep) and rep["comm"]["blocked_wall_ms"] is None


def test_ddp_format_facts_and_sizes():
    assert op_of("all_reduce") == op_of("allreduce") == op_of("AllReduce") == "ALLREDUCE"
    assert op_of("_reduce_scatter_base") == "REDUCESCATTER" and op_of("all_gather_into_tensor") == "ALLGATHER"
    assert is_torch_trace(json.loads(DDP.read_text()))
    assert not is_torch_trace({"traceEvents": []}) and not is_torch_trace([{"ph": "X"}])
    doc = torch_doc()
    doc["traceEvents"].append(A("gloo:all_reduce", 950, 5, tid=2))
    doc["traceEvents"][-1]["args"] = {"Input Dims": [[372]], "Input type": ["float"]}
    doc["traceEvents"].append(X("record_param_comms", 940, 1, **{"Collective name": "broadcast", "In msg nelems": 3,
                                                                 "dtype": "Long"}))
    tr = parse_torch_trace(doc)
    assert tr.calls[-1].nbytes == 372 * 4
    # One record_param_comms for the two broadcasts: not one per call, so not used.
    assert [c.nbytes for c in tr.calls if c.op == "BROADCAST"] == [None, None]
    # NCCL kernels on the GPU are the collectives when recorded.
    doc = torch_doc()
    doc["traceEvents"].append(X("ncclDevKernel_AllReduce_Sum_f32_RING_LL(ncclDevKernelArgsStorage<4096ul>)", 140, 30,
                                tid=9, cat="kernel"))
    tr = parse_torch_trace(doc)
    assert tr.source == "gpu" and [(c.op, c.phase) for c in tr.calls] == [("ALLREDUCE", "backward")]
    assert build_report([tr])["tensors"][0]["blocked_ms"] is None


def test_real_ddp_trace_fixture():
    tr = load_trace(DDP)
    assert isinstance(tr, TorchTrace) and tr.rank == 0 and tr.world_size == 2 and tr.pg_backend == "gloo"
    assert len(tr.steps) == 3 and tr.step_mode == "optimizer"
    results = load_results(DDP_RESULTS)
    rep = build_report([tr], top=10, results=results, results_path=str(DDP_RESULTS))
    c = rep["counts"]
    # 3 recorded steps x 2 gradient buckets (372 parameters, 0.0004 MiB buckets), and DDP's
    # broadcast of the graph operator buffer in every forward.
    assert c["allreduce_calls"] == 6 and c["buckets_per_step"] == [2] and c["ops"] == {"ALLREDUCE": 6, "BROADCAST": 3}
    assert c["forward_broadcasts"] == 3 and c["steps"] == results.timeline.active_steps == 3
    assert {t["name"] for t in rep["tensors"]} == {"bucket 0", "bucket 1", "broadcast 0 (forward: buffers)"}
    for t in rep["tensors"]:
        assert t["calls"] == 3
        cats = t["categories_ms"]
        assert cats["negotiate"] is cats["memcpy_out"] is cats["other"] is cats["wait"] is None
        assert t["total_ms"] == pytest.approx(cats["collective"] + (cats["memcpy_in"] or 0), abs=0.002)
    comm = rep["comm"]
    assert comm["basis"] == "profiler_span" and 0 < comm["allreduce_share"] < 1
    assert comm["allreduce_wall_ms"] <= comm["collectives_wall_ms"] <= comm["profiler_span_ms"]
    assert 0 <= comm["blocked_wall_ms"] <= comm["allreduce_wall_ms"]
    assert comm["allreduce_calls_per_step"] == 2 and rep["results"]["note"] is None
    assert any("differs from the profiler's span" in n for n in rep["notes"])
    assert rep["phases"]["steps"] == 3 and rep["phases"]["forward_ms"] > 0 and rep["phases"]["backward_ms"] > 0
    text = format_report(rep)
    for needle in ("torch.profiler, DDP, rank 0 of 2", "gloo:all_reduce", "torch::distributed::reducer::mul_out",
                   "blocked after backward", "NEGOTIATE_ALLREDUCE", "n/a (DDP)", "phase times, epoch 1",
                   "6 allreduce calls in 3 steps (2 buckets per step)", "window: steps 2..4 of the job (3 steps)"):
        assert needle in text, needle


def test_real_ddp_traces_of_both_ranks():
    rep = build_report([load_trace(DDP_RANK1), load_trace(DDP)])
    assert rep["file"] == str(DDP) and [p["rank"] for p in rep["ranks"]] == [0, 1]
    assert rep["ranks_summary"]["matched_calls"] == 9
    assert sum(v["times"] for v in rep["ranks_summary"]["last_rank"].values()) == 9
    for t in rep["tensors"]:
        cats = t["categories_ms"]
        assert cats["wait"] is not None and 0 <= cats["wait"] <= t["total_ms"]
    st = rep["ranks_summary"]["collective_ms_per_step"]
    assert st["min"] <= st["median"] <= st["max"]


def test_torch_traces_are_told_apart_from_horovod_timelines(tmp_path):
    assert isinstance(load_trace(WINDOW), HorovodTrace)
    with pytest.raises(DataError, match="a torch.profiler trace"):
        load_timeline(DDP)
    gz = tmp_path / "t.json.gz"
    gz.write_bytes(gzip.compress(DDP.read_bytes()))
    assert len(load_trace(gz).calls) == 9
    cut = tmp_path / "cut.json"
    cut.write_text(DDP.read_text()[:5000])
    with pytest.raises(DataError, match="torch.profiler trace that is not valid JSON"):
        load_trace(cut)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schemaVersion": 1, "traceEvents": [{"ph": "X", "ts": "soon", "dur": 1}]}))
    with pytest.raises(DataError, match="non-numeric 'ts'"):
        load_trace(bad)


def test_ddp_png_chart(tmp_path):
    pytest.importorskip("matplotlib")
    from hvd_stgnn.profiling.report_plot import plot_report

    out = plot_report(build_report([load_trace(DDP), load_trace(DDP_RANK1)]), tmp_path / "ddp.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_ddp_report_json_png_and_ranks(tmp_path):
    png = tmp_path / "ddp.png"
    r = run_cli("timeline", str(DDP), str(DDP_RANK1), "--results", str(DDP_RESULTS), "--json", "--png", str(png))
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["format"] == "torch.profiler" and len(rep["ranks"]) == 2 and png.exists()
    assert rep["results"]["phase_timings"]["epoch"] == 1
    r = run_cli("timeline", str(DDP), "--top", "1")
    assert r.returncode == 0, r.stderr
    assert "slowest 1 of 3 collectives" in r.stdout and "n/a (DDP)" in r.stdout


@pytest.mark.parametrize("files,message", [
    ([WINDOW, DDP], "a Horovod timeline and a torch.profiler trace given"),
    ([WINDOW, FIXTURE], "several Horovod timelines given"),
    ([DDP, DDP], "is given twice"),
])
def test_cli_refuses_mixed_or_repeated_files(files, message):
    r = run_cli("timeline", *map(str, files))
    assert r.returncode == 2
    lines = our_error_lines(r.stderr)
    assert len(lines) == 1 and message in lines[0], r.stderr


def test_ddp_fixtures_are_small():
    assert sum(p.stat().st_size for p in (DDP, DDP_RANK1, DDP_RESULTS)) < 300_000


@pytest.mark.mpi
@pytest.mark.slow
def test_real_ddp_run_then_report(short_h5, tmp_path):
    """`train --backend ddp --timeline F --timeline-steps 2:3`: torch.profiler traces per rank."""
    trace, results = _train_with_window(short_h5, tmp_path, "--backend", "ddp", "--fusion-threshold-mb", "0.0004")
    rank1 = Path(f"{trace}.rank1")
    assert trace.exists() and rank1.exists()
    rep = _cli_report(trace, rank1, "--results", results)
    c = rep["counts"]
    assert c["steps"] == rep["results"]["timeline"]["active_steps"] == 3
    assert len(c["buckets_per_step"]) == 1 and c["buckets_per_step"][0] >= 1
    assert c["allreduce_calls"] == c["steps"] * c["buckets_per_step"][0]
    assert 0 < rep["comm"]["allreduce_share"] < 1 and rep["ranks_summary"]["matched_calls"] >= c["allreduce_calls"]
    # The fixtures' trimming keeps every number of the report.
    for path in (trace, rank1):
        trimmed = tmp_path / ("trimmed_" + path.name)
        trimmed.write_text(json.dumps(_trim_torch_trace(json.loads(path.read_text()))))
        full, cut = build_report([load_trace(path)]), build_report([load_trace(trimmed)])
        for key in ("counts", "activities", "tensors", "tensors_total", "comm", "phases"):
            assert full[key] == cut[key], key
