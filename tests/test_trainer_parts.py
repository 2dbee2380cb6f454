"""The trainer's parts, each on its own: TrainState, the metrics sinks (JSONL, TensorBoard
read back from its event file), the step tracker, the results schema, the scaler a batch
carries, and the job-wide agreement helpers (rank 0's verdict, the failure policy)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from helpers import REPO, run_cli, run_mpi
from hvd_stgnn.batching import Scaler, WindowGather
from hvd_stgnn.errors import ConfigError, DataError, UserError, root_verdict
from hvd_stgnn.parallel.collective import run_collectively
from hvd_stgnn.results import EpochPhases, EpochRecord, Memory, RankMemory, Results, ResultsFileError, TimelineInfo
from hvd_stgnn.train.metrics_log import MetricsLogger, flat_scalars
from hvd_stgnn.train.phases import WARMUP_STEPS, StepTracker
from hvd_stgnn.train.state import TrainState


def _scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the TensorBoard event files in `logdir`: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {tag: [(s.step, s.value) for s in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


# --- TrainState ---------------------------------------------------------------------------


def test_train_state_keeps_the_best_epoch_and_round_trips():
    model = torch.nn.Linear(2, 1)
    state = TrainState()
    state.finish_step()
    assert (state.epoch, state.step, state.global_step) == (1, 1, 1)
    assert state.finish_epoch(EpochRecord(1, 5.0, 4.0, 1.0), model)
    with torch.no_grad():
        model.weight.add_(1.0)
    assert not state.finish_epoch(EpochRecord(2, 4.0, 4.5, 1.0), model)  # worse: the best stays epoch 1
    assert (state.epoch, state.step, state.best_epoch, state.best_val_mae) == (3, 0, 1, 4.0)
    assert not torch.equal(state.best_params["weight"], model.weight)

    saved = state.state_dict()
    assert set(saved) == {"epoch", "step", "global_step", "history", "best"}  # the checkpoint's keys
    assert saved["history"][1] == {"epoch": 2, "train_mae": 4.0, "val_mae": 4.5, "seconds": 1.0}
    again = TrainState()
    again.load_state_dict(saved)
    assert again.state_dict()["history"] == saved["history"] and again.best_epoch == 1
    assert again.history == state.history and again.global_step == 1


# --- metrics sinks ------------------------------------------------------------------------


def test_flat_scalars_flattens_tables_and_leaves_out_positions():
    fields = {"epoch": 3, "loss": 1.5, "phases": {"step_ms": 2.0}, "name": "x", "bad": math.nan, "ok": True}
    assert dict(flat_scalars(fields)) == {"loss": 1.5, "phases/step_ms": 2.0}


def test_jsonl_and_tensorboard_sinks_get_the_same_records(tmp_path):
    logger = MetricsLogger.for_run(tmp_path, str(tmp_path / "tb"), t_start=0.0)
    logger.log("step", 10, epoch=1, step=10, global_step=10, loss=2.5, lr=1e-3)
    logger.log("epoch", 20, epoch=1, train_mae=3.0, val_mae=2.0, phases={"step_ms": 7.0},
               val_mae_by_horizon={"15min": 1.5}, memory={"host": "h", "pss_bytes": 100})
    logger.close()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["event"] for r in records] == ["step", "epoch"] and records[0]["loss"] == 2.5
    assert records[1]["phases"] == {"step_ms": 7.0} and "time" in records[1]
    scalars = _scalars(tmp_path / "tb")
    assert scalars["step/loss"] == [(10, 2.5)] and scalars["step/lr"] == [(10, pytest.approx(1e-3))]
    assert scalars["epoch/phases/step_ms"] == [(20, 7.0)] and scalars["epoch/val_mae_by_horizon/15min"] == [(20, 1.5)]
    assert scalars["epoch/memory/pss_bytes"] == [(20, 100.0)]
    assert "epoch/epoch" not in scalars and "step/global_step" not in scalars


def test_a_logger_without_sinks_writes_nothing(tmp_path):
    logger = MetricsLogger()  # what ranks other than 0 hold
    logger.log("step", 1, loss=1.0)
    logger.close()
    assert list(tmp_path.iterdir()) == []


def test_unwritable_tensorboard_dir_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"^--tensorboard .*file/tb: cannot write"):
        MetricsLogger.for_run(None, str(tmp_path / "file" / "tb"), 0.0)


# --- step tracker -------------------------------------------------------------------------


def test_step_tracker_leaves_the_warm_up_steps_out_of_throughput():
    tracker = StepTracker(torch.device("cpu"), samples_per_step=8)
    tracker.start_epoch()
    for _ in range(WARMUP_STEPS + 3):
        with tracker.phase("forward"):
            pass
        tracker.step_done()
    tracker.end_epoch()
    phases = tracker.epoch_phases(1, lambda obj: [obj, obj])
    assert phases.epoch == 1 and phases.steps == WARMUP_STEPS + 3 and set(phases.step_ms) == {"min", "median", "max"}
    assert 0 < phases.loop_seconds == tracker.loop_seconds  # this epoch's loop (plan --calibrate reads it)
    timing = tracker.timing(prepare_seconds=1.5, epoch_seconds=[2.0, 4.0, 9.0])
    assert timing.samples_per_second_excludes_steps == WARMUP_STEPS
    assert timing.prepare_seconds == 1.5 and timing.epoch_seconds_median == 4.0
    assert tracker.samples == (WARMUP_STEPS + 3) * 8 and tracker.job_steps == WARMUP_STEPS + 3
    assert timing.samples_per_second > 0


def test_step_tracker_with_only_warm_up_steps_uses_all_of_them():
    tracker = StepTracker(torch.device("cpu"), samples_per_step=4)
    tracker.start_epoch()
    tracker.step_done()
    tracker.end_epoch()
    timing = tracker.timing(0.0, [])
    assert timing.samples_per_second_excludes_steps == 0 and timing.samples_per_second > 0
    assert timing.epoch_seconds_median == 0.0


# --- results schema -----------------------------------------------------------------------


def _written_back(doc, out) -> bool:
    """True if `out` holds every entry of `doc` with the same value (dicts: recursively)."""
    if isinstance(doc, dict):
        return isinstance(out, dict) and all(k in out and _written_back(v, out[k]) for k, v in doc.items())
    if isinstance(doc, list):
        return isinstance(out, list) and len(doc) == len(out) and all(map(_written_back, doc, out))
    return doc == out


@pytest.mark.parametrize("name", ["results_window_2rank.json", "ddp_results_window_2rank.json"])
def test_real_results_files_round_trip(name):
    doc = json.loads((REPO / "tests" / "data" / name).read_text())
    res = Results.read(REPO / "tests" / "data" / name)
    assert isinstance(res.timeline, TimelineInfo) and res.timeline.window_seconds > 0
    assert isinstance(res.phase_timings[-1], EpochPhases) and res.last_phases.median("step_ms") > 0
    assert isinstance(res.epochs[0], EpochRecord)
    assert "memory" not in doc or isinstance(res.memory.per_rank[0], RankMemory)  # an older file has none
    assert _written_back(doc, res.to_dict())  # every entry comes back unchanged (newer ones are added)


def test_results_leave_out_what_a_stopped_run_does_not_have():
    res = Results(model="tgcn", stopped_after_epoch=2)
    out = res.to_dict()
    assert out["stopped_after_epoch"] == 2 and "test" not in out and "timeline" not in out
    assert "data_health" in out  # None is a value there, not an absent entry
    assert Results.from_dict(json.loads(json.dumps(out))) == res


def test_memory_totals_per_node():
    mem = Memory.from_ranks([RankMemory("a", 10, 7, 0), RankMemory("a", 30, 6, 5), RankMemory("b", 1, 2, 0)])
    assert mem.node_pss_peak_bytes == {"a": 13, "b": 2} and mem.max_node_pss_peak_bytes == 13


@pytest.mark.parametrize("content,problem", [
    ("{", "not valid JSON (invalid JSON at line 1"),
    ("[1]", "expected a JSON object (got list)"),
    ('{"timeline": {"file": "t.json", "first_step": 2, "active_steps": 3}}',
     '"timeline".window_seconds must be a number > 0 (got nothing)'),
    ('{"epochs": [1]}', '"epochs" must be a list of objects'),
    ('{"timing": {"prepare_seconds": "x"}}', '"timing".prepare_seconds must be a number (got \'x\')'),
    ('{"world_size": 1.5}', '"world_size" must be an integer'),
    ('{"timeline": {"window_seconds": -1}}', '"timeline".window_seconds must be a number > 0'),
])
def test_bad_results_files_are_one_line(tmp_path, content, problem):
    path = tmp_path / "r.json"
    path.write_text(content)
    with pytest.raises(ResultsFileError) as err:
        Results.read(path)
    assert str(err.value).startswith(f"{path}: ") and problem in err.value.problem and "\n" not in str(err.value)
    assert isinstance(err.value, DataError)
    with pytest.raises(ResultsFileError, match="no such file"):
        Results.read(tmp_path / "absent.json")


# --- the scaler a batch carries -------------------------------------------------------------


def test_batches_carry_their_scaler():
    speed = torch.rand(60, 5) * 30 + 40
    gather = WindowGather(speed, torch.arange(60).numpy() * 300, 4, 3, mean=55.0, std=6.0)
    batch = gather(torch.tensor([0, 10]))
    assert batch.scaler == Scaler(55.0, 6.0)
    assert torch.equal(batch.x[..., 0], (speed[[*range(0, 4), *range(10, 14)]].view(2, 4, 5) - 55.0) * (1 / 6.0))
    assert torch.allclose(batch.scaler.inverse(batch.scaler.transform(batch.y)), batch.y)
    batch.mask[0, 0, 0] = False
    teacher = batch.normalized_targets()
    assert teacher[0, 0, 0] == 0 and torch.equal(teacher[1], (batch.y[1] - 55.0) * (1 / 6.0))


# --- agreement ----------------------------------------------------------------------------


def test_root_verdict_gives_every_rank_the_same_error():
    sent = []

    def broadcast(obj):  # rank 0 sends, the others receive what it sent
        sent.append(obj)
        return sent[0]

    def fail():
        raise ConfigError("--run-dir x: busy")

    with pytest.raises(ConfigError, match="busy") as err:
        root_verdict(fail, True, broadcast)
    assert err.value.all_ranks
    with pytest.raises(ConfigError, match="busy") as err:  # a non-root rank: fn never runs there
        root_verdict(lambda: pytest.fail("ran on a non-root rank"), False, broadcast)
    assert err.value.all_ranks
    assert root_verdict(lambda: 7, True, lambda obj: obj) == 7


class _FakeBackend:
    def __init__(self, size: int = 2, rank: int = 0) -> None:
        self.size, self.rank, self.calls = size, rank, []

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def shutdown(self) -> None:
        self.calls.append("shutdown")

    def abort(self, code: int = 1) -> None:
        self.calls.append(("abort", code))
        raise SystemExit(code)


def _raise(exc):
    raise exc


def test_run_collectively_shuts_down_or_aborts(capsys):
    ok = _FakeBackend()
    assert run_collectively(ok, lambda: 5, "prog") == 5 and ok.calls == ["shutdown"]

    agreed = _FakeBackend()  # every rank raised it: clean end, the caller prints one line
    with pytest.raises(ConfigError):
        run_collectively(agreed, lambda: _raise(ConfigError("bad", all_ranks=True)), "prog")
    assert agreed.calls == ["shutdown"]

    alone = _FakeBackend()  # only this rank saw it: peers may wait in a collective -> abort
    with pytest.raises(SystemExit):
        run_collectively(alone, lambda: _raise(ConfigError("only me")), "prog")
    assert alone.calls == [("abort", 2)] and capsys.readouterr().err == "prog: error: only me\n"

    crash = _FakeBackend(rank=1)
    with pytest.raises(SystemExit):
        run_collectively(crash, lambda: _raise(RuntimeError("boom")), "prog")
    err = capsys.readouterr().err
    assert crash.calls == [("abort", 1)] and "[rank 1] RuntimeError: boom" in err and "Traceback" in err

    single = _FakeBackend(size=1)  # one process: the error goes to the caller as it is
    with pytest.raises(UserError):
        run_collectively(single, lambda: _raise(ConfigError("x")), "prog")
    assert single.calls == []


# --- end to end: --tensorboard ----------------------------------------------------------


@pytest.mark.slow
def test_train_tensorboard_single_process(tiny_h5, tmp_path):
    tb, run = tmp_path / "tb", tmp_path / "run"
    r = run_cli("train", "--data", str(tiny_h5), "--backend", "single", "--epochs", "2", "--batch-size", "16",
                "--hidden", "8", "--threads", "1", "--log-every", "5", "--run-dir", str(run), "--tensorboard", str(tb))
    assert r.returncode == 0, r.stderr
    scalars = _scalars(tb)
    steps_per_epoch = 17
    assert [s for s, _ in scalars["step/loss"]] == list(range(5, 2 * steps_per_epoch + 1, 5))
    assert [s for s, _ in scalars["epoch/val_mae"]] == [steps_per_epoch, 2 * steps_per_epoch]
    for tag in ("step/lr", "epoch/phases/step_ms", "epoch/val_mae_by_horizon/60min", "epoch/memory/pss_bytes",
                "test/mae/15min", "test/rmse/avg"):
        assert tag in scalars, tag
    results = Results.read(run / "results.json")
    assert scalars["test/mae/15min"][0][1] == pytest.approx(results.test["mae"]["15min"], rel=1e-6)
    assert scalars["epoch/val_mae"][-1][1] == pytest.approx(results.epochs[-1].val_mae, rel=1e-6)


@pytest.mark.mpi
def test_train_tensorboard_is_written_by_rank_0_only(tiny_h5, tmp_path):
    tb = tmp_path / "tb"
    r = run_mpi(2, "train", "--data", str(tiny_h5), "--epochs", "1", "--batch-size", "16", "--hidden", "8",
                "--tensorboard", str(tb), timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(list(tb.iterdir())) == 1  # one event file: rank 0's
    assert len(_scalars(tb)["epoch/val_mae"]) == 1
