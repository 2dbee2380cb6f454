"""The training engine: schedule, TOML config, checkpoints, resume, signals, faults, knobs."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch

from helpers import our_error_lines, run_cli, run_mpi
from hvd_stgnn.errors import ConfigError
from hvd_stgnn.train import checkpoint as ckpt
from hvd_stgnn.train.phases import summarize
from hvd_stgnn.train.schedule import lr_factor

TINY = ["--model", "tgcn", "--hidden", "8", "--batch-size", "16", "--threads", "1", "--no-baselines"]


# --- pure functions ------------------------------------------------------------------


def test_lr_factor_warmup_then_cosine():
    total, warm = 100, 10
    assert lr_factor(0, total, warm, "cosine") == pytest.approx(0.1)
    assert lr_factor(5, total, warm, "cosine") == pytest.approx(0.55)
    assert lr_factor(10, total, warm, "cosine") == pytest.approx(1.0)
    assert lr_factor(55, total, warm, "cosine") == pytest.approx(0.5)
    assert lr_factor(100, total, warm, "cosine") == pytest.approx(0.0, abs=1e-12)
    factors = [lr_factor(s, total, warm, "cosine") for s in range(warm, total + 1)]
    assert all(a >= b for a, b in zip(factors, factors[1:]))  # monotone decay
    assert [lr_factor(s, total, 0, "constant") for s in (0, 50, 100)] == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError):
        lr_factor(0, 10, 0, "linear")


def test_phase_summary_is_min_median_max_across_ranks():
    ranks = [{"step_ms": 10.0, "batch_ms": 1.0}, {"step_ms": 30.0, "batch_ms": 3.0}, {"step_ms": 20.0, "batch_ms": 2.0}]
    s = summarize(ranks)
    assert s["step_ms"] == {"min": 10.0, "median": 20.0, "max": 30.0}
    assert s["batch_ms"] == {"min": 1.0, "median": 2.0, "max": 3.0}


def _parse_with_toml(tmp_path, toml_text, *flags):
    from hvd_stgnn.cli import build_parser
    from hvd_stgnn.config import config_from_args

    path = tmp_path / "c.toml"
    path.write_text(toml_text)
    parser = build_parser()
    argv = ["train", "--config", str(path), *flags]
    args = parser.parse_args(argv)
    return config_from_args(args.reparse(parser, argv, args))


def test_toml_config_with_cli_overrides(tmp_path):
    cfg = _parse_with_toml(tmp_path, '[model]\nname = "dcrnn"\nhidden = 16\n[train]\nepochs = 7\nlr = 1\n'
                           '[data]\nsplit = [0.6, 0.2, 0.2]\n[parallel]\ncompression = "fp16"\n', "--epochs", "3")
    assert (cfg.model.name, cfg.model.hidden, cfg.train.epochs, cfg.train.lr) == ("dcrnn", 16, 3, 1.0)
    assert cfg.data.split == (0.6, 0.2, 0.2) and cfg.parallel.compression == "fp16"


@pytest.mark.parametrize("text, words", [
    ("[train]\nepoch = 3\n", ["unknown key", "epoch"]),
    ("[optim]\nlr = 1\n", ["unknown table", "optim"]),
    ("[train]\nepochs = \"three\"\n", ["epochs", "int"]),
    ("[model]\nname = \"lstm\"\n", ["--model", "lstm"]),
    ("[train\n", ["not a valid TOML"]),
])
def test_bad_toml_is_one_clear_error(tmp_path, text, words):
    with pytest.raises(ConfigError) as err:
        _parse_with_toml(tmp_path, text)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_config_written_to_run_dir_round_trips(tmp_path):
    from hvd_stgnn.config import Config, config_to_toml

    cfg = Config()
    cfg.model.name, cfg.train.epochs = "gwnet", 9
    (tmp_path / "config.toml").write_text(config_to_toml(cfg))
    again = _parse_with_toml(tmp_path, (tmp_path / "config.toml").read_text())
    assert again.to_dict() == cfg.to_dict()


def test_horovod_env_from_flags():
    from hvd_stgnn.config import ParallelConfig
    from hvd_stgnn.parallel.horovod_backend import horovod_env

    assert horovod_env(ParallelConfig(), timeline=False) == {}
    env = horovod_env(ParallelConfig(fusion_threshold_mb=32, cycle_time_ms=2.5, autotune=True), timeline=True)
    assert env == {"HOROVOD_FUSION_THRESHOLD": str(32 * 1024 * 1024), "HOROVOD_CYCLE_TIME": "2.5",
                   "HOROVOD_AUTOTUNE": "1", "HOROVOD_TIMELINE": "DYNAMIC"}


def test_checkpoint_round_trip(tmp_path):
    path = tmp_path / "checkpoints" / "last.pt"
    ckpt.save_atomic(path, {"value": torch.arange(3)})
    assert torch.equal(ckpt.load(path)["value"], torch.arange(3))


def test_checkpoint_failed_write_keeps_previous(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.pt"
    ckpt.save_atomic(path, {"value": 1})
    real_save = torch.save

    def disk_full(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(ckpt.CheckpointError, match="No space left on device") as err:
        ckpt.save_atomic(path, {"value": 2})
    assert str(path) in str(err.value)
    monkeypatch.undo()
    assert ckpt.load(path)["value"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp file left


def test_corrupt_checkpoint_is_one_clear_error(tmp_path):
    bad = tmp_path / "last.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ckpt.CheckpointError, match="not a readable checkpoint"):
        ckpt.load(bad)
    with pytest.raises(ConfigError, match="no checkpoint"):
        ckpt.resolve_resume(str(tmp_path / "nowhere"))


# --- single process ------------------------------------------------------------------


@pytest.mark.slow
def test_run_dir_contents_and_plot(tiny_h5, tmp_path):
    run = tmp_path / "run"
    r = run_cli("train", "--data", str(tiny_h5), "--backend", "single", "--epochs", "2", *TINY,
                "--log-every", "3", "--run-dir", str(run))
    assert r.returncode == 0, r.stderr
    assert {p.name for p in run.iterdir()} >= {"config.toml", "metrics.jsonl", "results.json", "checkpoints"}
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["event"] == "epoch"] == [1, 2]
    res = json.loads((run / "results.json").read_text())
    steps = res["phase_timings"][0]["steps"]  # 264 windows / 16 per batch: 17 steps per epoch
    assert steps == 17
    assert [r["global_step"] for r in records if r["event"] == "step"] == list(range(3, 2 * steps + 1, 3))
    assert [p["epoch"] for p in res["phase_timings"]] == [1, 2]
    timing = res["phase_timings"][0]
    assert set(timing) >= {"batch_ms", "forward_ms", "backward_ms", "optimizer_ms", "step_ms"}
    assert timing["step_ms"]["median"] == pytest.approx(
        sum(timing[f"{p}_ms"]["median"] for p in ("batch", "forward", "backward", "optimizer")))
    assert {p.name for p in (run / "checkpoints").iterdir()} == {"last.pt", "prev.pt", "best.pt"}  # the last two + best
    r = run_cli("plot", str(run))
    assert r.returncode == 0, r.stderr
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- real mpirun jobs ----------------------------------------------------------------


def _last_model(run: Path) -> dict:
    return torch.load(ckpt.checkpoint_path(run), weights_only=False)["model"]


@pytest.mark.mpi
@pytest.mark.slow
def test_stop_after_two_epochs_and_resume_equals_uninterrupted(tiny_h5, tmp_path):
    args = ["train", "--data", str(tiny_h5), "--epochs", "4", *TINY, "--lr", "0.01", "--lr-schedule", "cosine"]
    full, part = tmp_path / "full", tmp_path / "part"
    r = run_mpi(2, *args, "--run-dir", str(full))
    assert r.returncode == 0, r.stdout + r.stderr
    r = run_mpi(2, *args, "--run-dir", str(part), "--stop-after-epochs", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert torch.load(ckpt.checkpoint_path(part), weights_only=False)["epoch"] == 3
    r = run_mpi(2, *args, "--run-dir", str(part), "--resume", str(part))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "resumed from" in r.stdout + r.stderr
    a, b = _last_model(full), _last_model(part)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (full, part))
    assert [e["epoch"] for e in rb["epochs"]] == [1, 2, 3, 4]  # the history survives the restart
    assert ra["test"]["mae"] == pytest.approx(rb["test"]["mae"], abs=1e-6)


@pytest.mark.mpi
@pytest.mark.slow
def test_sigterm_on_one_rank_checkpoints_and_stops_every_rank(tiny_h5, tmp_path):
    run = tmp_path / "run"
    args = ["train", "--data", str(tiny_h5), "--epochs", "3", *TINY, "--run-dir", str(run)]
    # Rank 1 gets SIGTERM before its 13th step (epoch 2, step 4 of 9); rank 0 never does.
    t0 = time.monotonic()
    r = run_mpi(2, *args, env={"HVD_STGNN_FAULT": "sigterm:1:12"}, timeout=120)
    assert r.returncode != 0 and time.monotonic() - t0 < 60
    lines = our_error_lines(r.stderr)
    assert len(lines) == 1 and "stopped by" in lines[0] and "--resume" in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    state = torch.load(ckpt.checkpoint_path(run), weights_only=False)
    assert (state["epoch"], state["step"], state["global_step"]) == (2, 4, 13)
    r = run_mpi(2, *args, "--resume", str(run))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "epoch 2, step 4 of 9" in r.stdout + r.stderr


@pytest.mark.mpi
@pytest.mark.parametrize("kind", ["raise", "kill"])
def test_a_failing_rank_ends_the_job_promptly(tiny_h5, tmp_path, kind):
    t0 = time.monotonic()
    r = run_mpi(2, "train", "--data", str(tiny_h5), "--epochs", "3", *TINY,
                env={"HVD_STGNN_FAULT": f"{kind}:1:5"}, timeout=90)
    assert r.returncode != 0
    assert time.monotonic() - t0 < 60
    if kind == "raise":  # that rank's traceback, once, labelled; no other rank's
        assert r.stderr.count("[rank 1] RuntimeError: injected fault") == 1
        assert "[rank 0] Traceback" not in r.stderr


@pytest.mark.mpi
def test_resume_refuses_changed_data(tiny_h5, tmp_path):
    data = tmp_path / "d.h5"
    data.write_bytes(tiny_h5.read_bytes())
    run = tmp_path / "run"
    args = ["train", "--data", str(data), "--epochs", "2", *TINY, "--run-dir", str(run)]
    assert run_mpi(2, *args, "--stop-after-epochs", "1").returncode == 0
    data.write_bytes(data.read_bytes())  # same bytes, rewritten: a different mtime
    r = run_mpi(2, *args, "--resume", str(run))
    lines = our_error_lines(r.stderr)
    assert r.returncode == 2 and len(lines) == 1 and "changed since the checkpoint" in lines[0], r.stderr


@pytest.mark.mpi
@pytest.mark.slow
@pytest.mark.parametrize("flags", [
    ["--compression", "fp16"],
    ["--reduce-op", "adasum"],
    ["--backward-passes-per-step", "2"],
    ["--fusion-threshold-mb", "1", "--cycle-time-ms", "2", "--scale-lr", "--warmup-epochs", "0.5"],
])
def test_horovod_knobs_train_and_keep_ranks_identical(tiny_h5, tmp_path, flags):
    out = tmp_path / "r.json"
    r = run_mpi(2, "train", "--data", str(tiny_h5), "--epochs", "2", *TINY, *flags, "--results", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(out.read_text())
    assert len(set(res["param_digests"])) == 1
    assert math.isfinite(res["test"]["mae"]["avg"])
    if "--backward-passes-per-step" in flags:
        assert "steps/epoch of 2 x 16" in r.stdout + r.stderr


@pytest.mark.mpi
@pytest.mark.slow
def test_timeline_records_a_bounded_window(tiny_h5, tmp_path):
    timeline, out = tmp_path / "tl.json", tmp_path / "r.json"
    r = run_mpi(2, "train", "--data", str(tiny_h5), "--epochs", "2", *TINY, "--timeline", str(timeline),
                "--timeline-steps", "3:5", "--results", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(out.read_text())
    assert res["timeline"]["first_step"] == 3 and res["timeline"]["active_steps"] == 5
    assert res["timeline"]["window_seconds"] > 0
    text = timeline.read_text()
    assert "ALLREDUCE" in text and "head.weight" in text
    r = run_cli("timeline", str(timeline), "--results", str(out), "--json")
    assert r.returncode == 0, r.stderr


def test_timeline_needs_horovod_backend(tmp_path, tiny_h5):
    r = run_cli("train", "--data", str(tiny_h5), "--backend", "single", "--timeline", str(tmp_path / "t.json"))
    assert r.returncode == 2 and our_error_lines(r.stderr) == [
        "hvd-stgnn train: error: --timeline: not supported with --backend single (use horovod or ddp)"]


def test_sample_starts_is_even_and_bounded():
    from hvd_stgnn.train.evaluate import sample_starts

    starts = torch.arange(100, 200)
    assert torch.equal(sample_starts(starts, 0, 2), starts)
    assert torch.equal(sample_starts(starts, 500, 2), starts)  # 200 windows in all <= 500
    picked = sample_starts(starts, 20, 2)  # ~10 per rank
    assert len(picked) == 10 and picked[0] == 100 and picked[-1] == 199
    assert torch.all(picked[1:] > picked[:-1])
