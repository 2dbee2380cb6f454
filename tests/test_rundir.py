"""Run-directory safety: one job at a time (the lock), no silent replacement of an earlier
run's checkpoints, and `--resume auto` that never picks a broken checkpoint."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest
import torch

from helpers import LOCAL_LAUNCHER, REPO, our_error_lines, run_mpi, subprocess_env
from hvd_stgnn.errors import ConfigError
from hvd_stgnn.train import checkpoint as ckpt
from hvd_stgnn.train.rundir_lock import LOCK_FILE, Holder, RunDirBusy, RunDirLock, pid_start_time, stale_reason

TINY = ["--model", "tgcn", "--hidden", "8", "--batch-size", "16", "--threads", "1", "--no-baselines"]


# --- the lock (pure, one process) ------------------------------------------------------------


def _holder(**kw) -> Holder:
    base = dict(host=socket.gethostname(), pid=os.getpid(), pid_start=pid_start_time(os.getpid()), job_id="",
                started="2026-01-01 00:00:00")
    return Holder(**{**base, **kw})


def test_stale_reasons():
    me = _holder(job_id="77")
    dead = subprocess.Popen(["true"])
    dead.wait()
    assert "is gone" in stale_reason(_holder(pid=dead.pid), 1.0, me, 180)
    assert "another process now" in stale_reason(_holder(pid_start=1), 1.0, me, 180)
    assert stale_reason(_holder(), 1.0, me, 180) is None  # this very process: live
    assert "requeued" in stale_reason(_holder(host="other", job_id="77"), 1.0, me, 180)
    assert stale_reason(_holder(host="other", job_id="78"), 1.0, me, 180) is None  # no squeue here to ask
    assert "no heartbeat" in stale_reason(_holder(host="other"), 500.0, me, 180)


def test_lock_is_exclusive_and_released(tmp_path):
    a = RunDirLock(tmp_path).acquire()
    holder = json.loads((tmp_path / LOCK_FILE).read_text())
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    with pytest.raises(RunDirBusy, match=f"in use by another job \\(host {socket.gethostname()}, pid {os.getpid()}"):
        RunDirLock(tmp_path).acquire()
    a.release()
    a.release()  # twice is fine
    assert not (tmp_path / LOCK_FILE).exists()
    RunDirLock(tmp_path).acquire().release()


def test_a_dead_holders_lock_is_taken_over(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / LOCK_FILE).write_text(json.dumps(_holder(pid=dead.pid).__dict__))
    lock = RunDirLock(tmp_path).acquire()
    assert f"pid {dead.pid}" in lock.took_over and "is gone" in lock.took_over
    lock.release()


# --- choosing the start (pure) ------------------------------------------------------------------


def _fake_checkpoint(run, name, epoch):
    ckpt.save_atomic(ckpt.checkpoint_path(run, name), {"epoch": epoch}, keep_previous=name == ckpt.LAST)


def test_fresh_run_into_a_used_dir_is_refused_unless_overwrite(tmp_path):
    assert ckpt.choose_start(str(tmp_path), "", False) == (None, None, "")
    _fake_checkpoint(tmp_path, ckpt.LAST, 3)
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(ConfigError, match="holds checkpoints of an earlier run \\(last.pt\\).*--resume auto.*--overwrite"):
        ckpt.choose_start(str(tmp_path), "", False)
    path, state, line = ckpt.choose_start(str(tmp_path), "", True)
    assert path is None and "--overwrite: removed" in line
    assert not ckpt.checkpoint_path(tmp_path).exists() and not (tmp_path / "metrics.jsonl").exists()


def test_resume_auto_falls_back_to_the_previous_good_checkpoint(tmp_path):
    path, state, line = ckpt.choose_start(str(tmp_path), "auto", False)
    assert path is None and "no checkpoint" in line and "starting fresh" in line
    _fake_checkpoint(tmp_path, ckpt.LAST, 1)
    _fake_checkpoint(tmp_path, ckpt.LAST, 2)  # epoch 1's becomes prev.pt
    path, state, _ = ckpt.choose_start(str(tmp_path), "auto", False)
    assert path.name == "last.pt" and state["epoch"] == 2
    last = ckpt.checkpoint_path(tmp_path)
    last.write_bytes(last.read_bytes()[:100])  # a partial copy
    path, state, line = ckpt.choose_start(str(tmp_path), "auto", False)
    assert path.name == "prev.pt" and state["epoch"] == 1
    assert "(last.pt: not a readable checkpoint" in line
    prev = ckpt.checkpoint_path(tmp_path, ckpt.PREV)
    prev.write_bytes(b"")
    with pytest.raises(ckpt.CheckpointError, match="no readable checkpoint.*last.pt: .*prev.pt: .*--overwrite"):
        ckpt.choose_start(str(tmp_path), "auto", False)


def test_resume_auto_and_overwrite_flags_are_checked(tiny_h5, tmp_path):
    from helpers import run_cli

    r = run_cli("train", "--data", str(tiny_h5), "--resume", "auto")
    assert r.returncode == 2 and "--resume auto needs --run-dir" in r.stderr
    r = run_cli("train", "--data", str(tiny_h5), "--run-dir", str(tmp_path), "--resume", "auto", "--overwrite")
    assert r.returncode == 2 and "contradict" in r.stderr


# --- real jobs ------------------------------------------------------------------------------------


def _args(data, run, epochs=3, *extra):
    return ["train", "--data", str(data), "--epochs", str(epochs), *TINY, "--lr", "0.01", "--run-dir", str(run), *extra]


@pytest.mark.mpi
def test_two_concurrent_jobs_the_second_is_refused(tiny_h5, tmp_path):
    run = tmp_path / "run"
    first = subprocess.Popen(["bash", str(LOCAL_LAUNCHER), "-np", "2", sys.executable, "-m", "hvd_stgnn",
                              *_args(tiny_h5, run, 3)], cwd=REPO, text=True, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env={**subprocess_env(), "HVD_STGNN_STEP_DELAY_S": "0.3"})
    try:
        t0 = time.monotonic()
        while not (run / LOCK_FILE).exists():
            assert first.poll() is None and time.monotonic() - t0 < 90, "the first job never took the lock"
            time.sleep(0.2)
        holder = json.loads((run / LOCK_FILE).read_text())
        r = run_mpi(2, *_args(tiny_h5, run, 3, "--resume", "auto"), timeout=120)
        lines = our_error_lines(r.stderr)
        assert r.returncode == 2 and len(lines) == 1, r.stderr
        assert "in use by another job" in lines[0] and f"pid {holder['pid']}" in lines[0]
        assert f"host {holder['host']}" in lines[0]
        out, err = first.communicate(timeout=180)
    finally:
        first.kill()
    assert first.returncode == 0, out + err  # the first job was not disturbed
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs if e["event"] == "epoch"] == [1, 2, 3]  # one job's lines only
    assert not (run / LOCK_FILE).exists()


@pytest.mark.mpi
@pytest.mark.slow
def test_stale_lock_after_kill_9_and_auto_resume_from_a_truncated_last(tiny_h5, tmp_path):
    run, full = tmp_path / "run", tmp_path / "full"
    assert run_mpi(2, *_args(tiny_h5, full, 4)).returncode == 0
    # Rank 0 (the lock holder) is killed in epoch 3, after the checkpoints of epochs 1 and 2.
    r = run_mpi(2, *_args(tiny_h5, run, 4), env={"HVD_STGNN_FAULT": "kill:0:22"}, timeout=120)
    assert r.returncode != 0
    assert (run / LOCK_FILE).exists()
    last = ckpt.checkpoint_path(run)
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # as a copy cut short would leave it
    r = run_mpi(2, *_args(tiny_h5, run, 4, "--resume", "auto"), timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "took over a stale lock" in out and "is gone" in out
    assert "resuming from" in out and "prev.pt (last.pt: not a readable checkpoint" in out
    assert "epoch 2, step 0" in out  # prev.pt: the end of epoch 1
    a = torch.load(ckpt.checkpoint_path(full), weights_only=False)["model"]
    b = torch.load(ckpt.checkpoint_path(run), weights_only=False)["model"]
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)


@pytest.mark.mpi
def test_fresh_run_into_a_used_run_dir(tiny_h5, tmp_path):
    run = tmp_path / "run"
    assert run_mpi(2, *_args(tiny_h5, run, 1)).returncode == 0
    before = ckpt.checkpoint_path(run).read_bytes()
    r = run_mpi(2, *_args(tiny_h5, run, 1))
    lines = our_error_lines(r.stderr)
    assert r.returncode == 2 and len(lines) == 1 and "holds checkpoints of an earlier run" in lines[0], r.stderr
    assert ckpt.checkpoint_path(run).read_bytes() == before and not (run / LOCK_FILE).exists()
    r = run_mpi(2, *_args(tiny_h5, run, 1, "--overwrite"))
    assert r.returncode == 0 and "--overwrite: removed" in r.stdout + r.stderr, r.stderr
