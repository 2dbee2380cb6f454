"""How jobs fail, each case launched with real mpirun (docs/RELIABILITY.md has the table)."""

from __future__ import annotations

import json
import subprocess
import time

import numpy as np
import pytest
import torch

from helpers import our_error_lines, run_mpi
from hvd_stgnn.data import generate, write_dataset
from hvd_stgnn.data.health import STORM_SHARE, health_sums, summarize_health
from hvd_stgnn.train import checkpoint as ckpt

TINY = ["--model", "tgcn", "--hidden", "8", "--batch-size", "16", "--threads", "1", "--no-baselines"]


# --- data health (pure) ----------------------------------------------------------------


def test_health_finds_dead_constant_sensors_and_storms():
    rng = np.random.default_rng(0)
    speed = rng.uniform(30, 70, size=(100, 6)).astype(np.float32)
    speed[:, 2] = 0.0  # never reports
    speed[:, 4] = 55.0  # stuck
    speed[20:35, :] = np.nan  # storm: every sensor, 15 steps
    speed[50:53, :4] = 0.0  # 4 of 6 > 50%: 3 more storm steps
    speed[60, :2] = np.nan  # 3 of 6 missing (with sensor 2): not > 50%
    halves = [health_sums(speed, 0, 40), health_sums(speed, 40, 100)]
    per_sensor = halves[0][0] + halves[1][0]
    h = summarize_health(per_sensor, np.concatenate([halves[0][1], halves[1][1]]))
    assert h.all_missing_sensors == [2] and h.constant_sensors == [4]
    assert h.storm_steps == 18 and h.longest_storm == (20, 15)
    expected_missing = 100 + 15 * 5 + 3 * 3 + 2
    assert h.missing_share == pytest.approx(expected_missing / 600)
    text = h.summary()
    assert "1 sensor(s) never report" in text and "1 sensor(s) constant" in text
    assert f"18 step(s) with > {STORM_SHARE:.0%}" in text and "longest run: 15 steps from step 20" in text


# --- bad data under mpirun ---------------------------------------------------------------


@pytest.mark.mpi
@pytest.mark.slow
def test_dead_constant_sensors_and_a_nan_storm_train_and_are_reported(tmp_path):
    data = generate(12, 400, seed=8)
    data.speed[:, 3] = np.nan  # a sensor that never reports
    data.speed[:, 7] = 61.0  # a stuck sensor
    data.speed[100:140, :] = np.nan  # a storm: every sensor for 40 steps (3 h 20 min)
    path = tmp_path / "sick.h5"
    write_dataset(path, data)
    out = tmp_path / "r.json"
    r = run_mpi(2, "train", "--data", str(path), "--epochs", "2", *TINY[:-1], "--results", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(out.read_text())
    assert all(np.isfinite(e["train_mae"]) and np.isfinite(e["val_mae"]) for e in res["epochs"])
    assert all(np.isfinite(v) for v in res["test"]["mae"].values())
    assert all(np.isfinite(v) for v in res["baselines"]["historical_average"]["mae"].values())
    health = res["data_health"]
    assert health["all_missing_sensors"] == [3] and health["constant_sensors"] == [7]
    assert health["longest_storm"] == [100, 40]
    log = r.stdout + r.stderr
    assert "1 sensor(s) never report" in log and "1 sensor(s) constant" in log and "40 steps from step 100" in log


@pytest.mark.mpi
def test_truncated_hdf5_is_one_line(tiny_h5, tmp_path):
    cut = tmp_path / "cut.h5"
    blob = tiny_h5.read_bytes()
    cut.write_bytes(blob[: len(blob) // 2])
    r = run_mpi(2, "train", "--data", str(cut), "--epochs", "1", timeout=60)
    lines = our_error_lines(r.stderr)
    assert r.returncode != 0 and len(lines) == 1 and str(cut) in lines[0], r.stderr
    assert "Traceback" not in r.stderr


# --- a rank dies ------------------------------------------------------------------------


@pytest.mark.mpi
@pytest.mark.slow
def test_kill_9_mid_epoch_exits_promptly_and_resume_matches(tiny_h5, tmp_path):
    args = ["train", "--data", str(tiny_h5), "--epochs", "4", *TINY, "--lr", "0.01"]
    full, crashed = tmp_path / "full", tmp_path / "crashed"
    assert run_mpi(2, *args, "--run-dir", str(full)).returncode == 0
    # 9 steps per epoch: rank 1 is killed before step 22, in epoch 3, after epoch 2's checkpoint.
    t0 = time.monotonic()
    r = run_mpi(2, *args, "--run-dir", str(crashed), env={"HVD_STGNN_FAULT": "kill:1:22"}, timeout=120)
    elapsed = time.monotonic() - t0
    assert r.returncode != 0 and elapsed < 30, (r.returncode, elapsed)
    assert torch.load(ckpt.checkpoint_path(crashed), weights_only=False)["epoch"] == 3  # epochs 1-2 done
    r = run_mpi(2, *args, "--run-dir", str(crashed), "--resume", str(crashed))
    assert r.returncode == 0, r.stdout + r.stderr
    a = torch.load(ckpt.checkpoint_path(full), weights_only=False)["model"]
    b = torch.load(ckpt.checkpoint_path(crashed), weights_only=False)["model"]
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)


# --- the checkpoint cannot be written ------------------------------------------------------


@pytest.mark.mpi
@pytest.mark.slow
def test_unwritable_checkpoint_directory_is_clear_and_keeps_the_previous(tiny_h5, tmp_path):
    """`chattr +i` makes the checkpoint directory immutable, for root too (plain permission
    bits do not stop root): no file can be created or renamed in it, as on a read-only or
    full file system."""
    run = tmp_path / "run"
    args = ["train", "--data", str(tiny_h5), "--epochs", "3", *TINY, "--run-dir", str(run)]
    assert run_mpi(2, *args, "--stop-after-epochs", "1").returncode == 0
    last = ckpt.checkpoint_path(run)
    before = last.read_bytes()
    subprocess.run(["chattr", "+i", str(last.parent)], check=True)
    try:
        t0 = time.monotonic()
        r = run_mpi(2, *args, "--resume", str(run), timeout=120)
        assert r.returncode != 0 and time.monotonic() - t0 < 60
    finally:
        subprocess.run(["chattr", "-i", str(last.parent)], check=True)
    lines = our_error_lines(r.stderr)
    assert len(lines) == 1 and "cannot write checkpoint" in lines[0] and str(last) in lines[0], r.stderr
    assert "Operation not permitted" in lines[0]
    assert last.read_bytes() == before  # the previous checkpoint, intact
    assert [p.name for p in last.parent.iterdir()] == ["last.pt"]  # no temp file left


@pytest.mark.mpi
def test_a_run_that_cannot_fit_is_refused_with_the_numbers(tiny_h5):
    """The planner runs before loading; the limit comes from the env here (a 0.3 GiB node)."""
    t0 = time.monotonic()
    r = run_mpi(2, "train", "--data", str(tiny_h5), "--epochs", "1", *TINY, "--data-mode", "materialized",
                env={"HVD_STGNN_NODE_MEMORY_GB": "0.3"}, timeout=120)
    assert r.returncode == 2 and time.monotonic() - t0 < 60
    lines = our_error_lines(r.stderr)
    assert len(lines) == 1 and "memory: predicted" in lines[0] and "307.2 MiB available" in lines[0], r.stderr
    assert "load:" not in r.stdout + r.stderr  # refused before reading the data
