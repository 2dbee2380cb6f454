"""`hvd-stgnn plan --time` (plan/timing.py, plan/calibration.py): the arithmetic, and the
prediction against real jobs on this machine: step time and end to end within 20% at np = 1,
2 and 4 where the ranks fit the cores; where they oversubscribe them (4 ranks of one thread
on the 2-core development machine) within the contention model's bounds, R / cores to
2 R / cores times the one-rank step. Not within 20% there: identical 4-rank jobs on 2 cores
measure 2.0x to 4.3x from run to run and epoch to epoch (docs/SCALING.md)."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from dataclasses import replace

import pytest

from helpers import LOCAL_LAUNCHER, REPO, our_error_lines, run_cli, subprocess_env
from hvd_stgnn.plan.estimate import PlanInputs
from hvd_stgnn.plan.timing import Rates, contention, gradient_messages, oversubscribed, predict, ring_allreduce_s
from hvd_stgnn.results import Results

RATES = Rates(step_ms=50.0, forward_ms=20.0, batch_ms=1.0, threads=1, cores=2, startup_s=8.0,
              read_bytes_per_s=1e9, bcast_bytes_per_s=1e9, stats_bytes_per_s=1e9, materialize_windows_per_s=1e4,
              alpha_s=10e-6, beta_bytes_per_s=1e9)


def test_ring_allreduce_and_messages():
    assert ring_allreduce_s(1e6, 1, 1e-5, 1e9) == 0.0
    assert ring_allreduce_s(1e6, 2, 1e-5, 1e9) == pytest.approx(2 * 1e-5 + 1e-3)
    assert ring_allreduce_s(1e6, 4, 1e-5, 1e9, messages=3) == pytest.approx(3 * 6 * 1e-5 + 1.5e-3)
    assert gradient_messages(100, "horovod") == 1 and gradient_messages(300 << 20, "horovod") == 3
    assert gradient_messages(30 << 20, "ddp") == 2 and gradient_messages(30 << 20, "ddp", 10 << 20) == 3


def test_contention_counts_threads_on_shared_cores():
    assert contention(2, 1, 2) == 1.0 and contention(4, 1, 2) == 2.0 and contention(2, 2, 2) == 2.0
    assert contention(2, 1, 2, backend="horovod") == 1.0  # fits the cores: nobody waits spinning
    assert contention(4, 1, 2, backend="horovod") == 3.0  # + part of a share per rank: spinning waits
    assert contention(8, 4, 2, device="cuda") == 1.0
    measured = {"horovod:4": 2.5}
    assert contention(4, 1, 2, backend="horovod", measured=measured) == 2.5  # a measurement wins
    assert contention(4, 1, 2, backend="ddp", measured=measured) == 2.0  # ...for its own backend
    assert contention(8, 1, 2, backend="horovod", measured=measured) == 6.0  # ...and rank count
    assert contention(2, 1, 2, backend="horovod", measured={"horovod:2": 2.5}) == 1.0  # no sharing: none
    assert oversubscribed(3, 1, 2) and not oversubscribed(2, 1, 2) and not oversubscribed(8, 1, 2, "cuda")


def test_predict_terms():
    inputs = PlanInputs(model="tgcn", batch_size=10, baselines=False)
    one = predict(inputs, 1000, 10, 1, 1, 2, RATES, parameters=1000)
    two = predict(inputs, 1000, 10, 2, 2, 2, RATES, parameters=1000)
    four = predict(inputs, 1000, 10, 4, 4, 2, RATES, parameters=1000)
    windows = 977  # T - L - H + 1
    train = int(0.7 * windows)
    assert one.steps_per_epoch == train // 10 and two.steps_per_epoch == (train // 2) // 10
    assert one.step_s == pytest.approx(0.051) and one.step_allreduce_s == 0.0
    assert two.step_allreduce_s == pytest.approx(ring_allreduce_s(4000, 2, 10e-6, 1e9)) and two.contention == 1.0
    assert four.contention == 3.0 and four.step_compute_s == pytest.approx(3 * 0.051)  # horovod, oversubscribed
    assert four.startup_s == 3 * RATES.startup_s  # start-up is CPU-bound too
    measured = predict(inputs, 1000, 10, 4, 4, 2, replace(RATES, measured_contention={"horovod:4": 2.5}),
                       parameters=1000)
    assert measured.contention == 2.5 and measured.startup_s == 2.5 * RATES.startup_s
    assert one.total_s == pytest.approx(one.startup_s + one.load_s + one.prepare_s + 2 * one.epoch_s + one.test_s)
    assert one.load_s == pytest.approx(1000 * 10 * 4 / 1e9)
    materialized = predict(PlanInputs(model="tgcn", batch_size=10, baselines=False, data_mode="materialized"),
                           1000, 10, 1, 1, 2, RATES, parameters=1000)
    assert materialized.prepare_s == pytest.approx(one.prepare_s + windows / 1e4, rel=1e-3)
    two_nodes = predict(inputs, 1000, 10, 2, 1, 2, RATES, parameters=1000)
    assert two_nodes.load_s == pytest.approx(2 * one.load_s)  # + the broadcast to the second node
    capped = predict(inputs, 1000, 10, 1, 1, 1, RATES, parameters=1000, max_steps_per_epoch=5, eval_windows=10)
    assert capped.steps_per_epoch == 5 and capped.validation_s == pytest.approx(1 * (1.0 + 20.0) / 1e3)


def test_plan_time_cli_prints_rates_and_refuses_what_does_not_fit():
    r = run_cli("plan", "--time", "--preset", "pems", "--model", "dcrnn", "--hidden", "2", "--layers", "1",
                "--batch-size", "64", "--np", "4,128", "--ranks-per-node", "4", "--device", "cuda",
                "--device-memory-gb", "80", "--node-memory-gb", "512", "--step-ms", "100", "--forward-ms", "30",
                "--batch-ms", "2", "--epochs", "30", "--backends", "ddp")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "ddp      index" in out and "does not fit" in out  # materialized PeMS: not on a node
    assert "step_ms" in out and "given" in out and "ASSUMED" in out
    r = run_cli("plan", "--time", "--preset", "tiny", "--np", "1,4", "--cores", "2", "--step-ms", "10", "--forward-ms",
                "3", "--batch-ms", "1", "--backends", "horovod")
    assert r.returncode == 0, r.stderr
    assert "contention horovod:4" in r.stdout and "3 x         the model R (threads + s) / cores" in r.stdout
    r = run_cli("plan", "--time", "--preset", "tiny", "--device", "cuda")
    assert r.returncode == 2 and our_error_lines(r.stderr) == [
        "hvd-stgnn plan: error: --time --device cuda: give --step-ms, --forward-ms and --batch-ms (measure them on "
        "the GPU with `hvd-stgnn bench models --device cuda` and `bench batching --device cuda`)"]
    r = run_cli("plan", "--preset", "tiny", "--np", "1,2")
    assert r.returncode == 2 and "one rank count for a memory plan" in r.stderr


# --- against real jobs ----------------------------------------------------------------------------

FLAGS = ["--model", "tgcn", "--hidden", "16", "--batch-size", "32", "--max-steps-per-epoch", "30", "--eval-windows", "64",
         "--no-baselines"]
EPOCHS = 3  # the calibration jobs run 2 (plan/calibration.py): the prediction extrapolates
REPEATS = 3  # each job, and each calibration job; the medians are compared


def _job(data, np_: int, out) -> tuple[float, float]:
    """One real job: (its wall clock s, its median phase step ms)."""
    cmd = ["bash", str(LOCAL_LAUNCHER), "-np", str(np_), sys.executable, "-m", "hvd_stgnn", "train", "--data",
           str(data), *FLAGS, "--epochs", str(EPOCHS), "--threads", "1", "--results", str(out)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**subprocess_env(), "OMP_NUM_THREADS": "1"},
                       cwd=REPO)
    wall = time.perf_counter() - t0
    assert r.returncode == 0, r.stdout + r.stderr
    return wall, Results.read(out).last_phases.median("step_ms")


@pytest.mark.mpi
@pytest.mark.slow
def test_prediction_within_20_percent_of_real_jobs(tmp_path):
    from hvd_stgnn.data import generate, write_dataset

    data = tmp_path / "d.h5"
    write_dataset(data, generate(100, 3000, seed=4))
    # A shared 2-core machine: one run slowed by a neighbour measures the neighbour, not the
    # model (identical np = 1 runs here differ by up to 25%). So the calibration runs its jobs
    # REPEATS times, each validated job runs REPEATS times, and the medians are compared; a
    # round that still misses is repeated once, and its verdict stands.
    reports = []
    for attempt in range(2):
        misses, report = _round(data, tmp_path / f"round{attempt}")
        reports.append(report)
        if not misses:
            return
    pytest.fail("\n".join(reports))


def _round(data, tmp_path):
    from hvd_stgnn.bench.jobs import available_cores

    tmp_path.mkdir()
    cores = available_cores()
    shared = {np_ for np_ in (1, 2, 4) if oversubscribed(np_, 1, cores)}  # one thread a rank
    r = run_cli("plan", "--time", "--data", str(data), "--np", "1,2,4", "--threads", "1", "--cores", str(cores), *FLAGS,
                "--epochs", str(EPOCHS), "--backends", "horovod", "--calibrate", "--calibrate-repeats", str(REPEATS),
                "--calibrate-dir", str(tmp_path / "cal"), "--json", timeout=900)
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    measured_contention = plan["rates"]["measured_contention"]
    assert {f"horovod:{np_}" for np_ in shared} == set(measured_contention)  # measured, not modelled
    predicted = {row["world_size"]: row for row in plan["rows"] if row["data_mode"] == "index"}
    runs = {np_: [] for np_ in (1, 2, 4)}
    for i in range(REPEATS):  # interleaved, so that a slow spell does not land on one rank count
        for np_ in runs:
            runs[np_].append(_job(data, np_, tmp_path / f"np{np_}-{i}.json"))
    misses, lines = 0, []
    one_rank_ms = 1e3 * predicted[1]["step_s"]
    for np_, measured in runs.items():
        wall, step_ms = statistics.median(w for w, _ in measured), statistics.median(s for _, s in measured)
        pred = predicted[np_]
        line = (f"np={np_}: step predicted {1e3 * pred['step_s']:.1f} ms, measured {step_ms:.1f} ms "
                f"({step_ms / one_rank_ms:.2f}x the one-rank step); end to end predicted {pred['total_s']:.1f} s, "
                f"measured {wall:.1f} s (medians of {REPEATS})")
        print(line)
        lines.append(line)
        if np_ not in shared:
            misses += abs(1e3 * pred["step_s"] - step_ms) > 0.2 * step_ms or abs(pred["total_s"] - wall) > 0.2 * wall
        else:  # fair shares of the cores (c = R / cores) up to a full spinning share per rank (2 R / cores), +-20%
            misses += not 0.8 * np_ / cores * one_rank_ms <= step_ms <= 1.2 * 2 * np_ / cores * one_rank_ms
    return misses, "; ".join(lines)
