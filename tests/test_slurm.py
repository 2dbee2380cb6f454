"""Real Slurm: jobs/slurm.sbatch under sbatch, srun inside an allocation, preemption,
the time-limit warning, requeue, failures. The one-node cluster of tools/slurm-local.sh
(2 CPUs here) runs one 2-rank job at a time; every job trains the 12-sensor fixture."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
import torch

from helpers import REPO, run_mpi
from hvd_stgnn.train import checkpoint as ckpt

pytestmark = [pytest.mark.slurm, pytest.mark.mpi]

TINY = ["--model", "tgcn", "--hidden", "8", "--batch-size", "16", "--threads", "1", "--no-baselines"]
SHAPE = ["-N", "1", "--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1"]
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY", "BOOT_FAIL",
                "DEADLINE"}


# --- helpers -----------------------------------------------------------------------------


def _sbatch(env, out: Path, *args: str, extra_env: dict | None = None) -> str:
    r = subprocess.run(["sbatch", "--parsable", *SHAPE, "-o", str(out), *args], capture_output=True, text=True,
                       cwd=REPO, env={**env, **(extra_env or {})}, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip().split(";")[0]


def _job(env, job_id: str) -> dict:
    """scontrol's fields of a job (JobState, ExitCode, Restarts, ...)."""
    r = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, env=env, timeout=30)
    assert r.returncode == 0, r.stderr
    return dict(re.findall(r"(\w+)=(\S*)", r.stdout))


def _wait_end(env, job_id: str, timeout: float) -> dict:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        job = _job(env, job_id)
        if job["JobState"] in FINAL_STATES:
            return job
        time.sleep(0.5)
    subprocess.run(["scancel", job_id], env=env)
    raise AssertionError(f"job {job_id} still {job['JobState']} after {timeout} s")


def _wait_for(predicate, timeout: float, what: str):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _steps_logged(run: Path) -> int:
    """The last global step in RUN_DIR/metrics.jsonl (0 before the first)."""
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    steps = [json.loads(line)["global_step"] for line in lines if '"event": "step"' in line and line.endswith("}")]
    return max(steps, default=0)


def _model(run: Path) -> dict:
    return torch.load(ckpt.checkpoint_path(run), weights_only=False)["model"]


def _assert_same_model(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)


def _train_args(data, run: Path, epochs: int = 3, *extra: str) -> list[str]:
    return ["hvd-stgnn", "train", "--data", str(data), "--epochs", str(epochs), *TINY, "--lr", "0.01",
            "--log-every", "1", "--run-dir", str(run), *extra]


@pytest.fixture(scope="module")
def reference(tiny_h5, tmp_path_factory) -> dict:
    """The uninterrupted 3-epoch run under jobs/local.sh -np 2: its results and final model."""
    run = tmp_path_factory.mktemp("slurm-ref") / "run"
    r = run_mpi(2, *_train_args(tiny_h5, run)[1:])
    assert r.returncode == 0, r.stdout + r.stderr
    return {"results": json.loads((run / "results.json").read_text()), "model": _model(run)}


# --- jobs that run to the end --------------------------------------------------------------


@pytest.mark.parametrize("backend", ["horovod", "ddp"])
def test_sbatch_job_matches_local_mpirun(slurm_env, tiny_h5, tmp_path, reference, backend):
    run, out = tmp_path / "run", tmp_path / "job.out"
    args = _train_args(tiny_h5, run, 3, "--backend", backend)
    r = subprocess.run(["sbatch", "--wait", *SHAPE, "-o", str(out), "jobs/slurm.sbatch", *args], capture_output=True,
                       text=True, cwd=REPO, env=slurm_env, timeout=300)
    log = out.read_text()
    assert r.returncode == 0, r.stderr + log
    assert "lacks support for cpu binding" not in log  # task/affinity: srun --cpu-bind=cores works
    assert "--resume auto: no checkpoint" in log and "starting fresh" in log  # the script's default
    res = json.loads((run / "results.json").read_text())
    launch = res["launch"]
    assert res["world_size"] == 2 and res["backend"] == backend
    assert launch["launcher"] == "srun" and launch["scheduler"] == "slurm" and launch["job_id"].isdigit()
    assert list(launch["ranks_per_node"].values()) == [2] and launch["threads_per_rank"] == 1
    assert all(launch["versions"][k] for k in ("torch", "horovod", "mpi4py", "h5py", "mpi_library"))
    assert "Open MPI" in launch["versions"]["mpi_library"]
    # Same seed, same CPU arithmetic: the same parameters as the local mpirun job, bit for bit.
    assert set(res["param_digests"]) == set(reference["results"]["param_digests"])
    assert reference["results"]["launch"]["launcher"] == "mpirun"


def test_srun_inside_an_allocation(slurm_env, tiny_h5, tmp_path):
    results = tmp_path / "r.json"
    r = subprocess.run(["salloc", "-N", "1", "-n", "2", "--cpus-per-task=1", "srun", "--mpi=pmix", "-n", "2",
                        "hvd-stgnn", "train", "--data", str(tiny_h5), "--epochs", "1", *TINY, "--results", str(results)],
                       capture_output=True, text=True, cwd=REPO, env=slurm_env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(results.read_text())
    assert res["world_size"] == 2 and res["launch"]["launcher"] == "srun" and res["launch"]["job_id"]


# --- stopping early ------------------------------------------------------------------------

SLOW = {"HVD_STGNN_STEP_DELAY_S": "0.25"}  # 27 steps take ~7 s: time to signal mid-epoch


@pytest.mark.parametrize("how", ["steps", "full"])
def test_scancel_term_mid_epoch_then_a_dependent_job_finishes(slurm_env, tiny_h5, tmp_path, reference, how):
    """`scancel --signal=TERM JOB` signals the ranks: they stop at the step boundary and rank 0
    checkpoints that step. With --full srun gets the signal too, and srun turns a SIGTERM into
    SIGKILL of its tasks (docs/LAUNCHING.md): the job still ends in seconds and the next job
    continues from the last epoch's checkpoint. Either way the chained job ends where an
    uninterrupted run does."""
    run = tmp_path / "run"
    first = _sbatch(slurm_env, tmp_path / "first.out", "jobs/slurm.sbatch", *_train_args(tiny_h5, run), extra_env=SLOW)
    second = _sbatch(slurm_env, tmp_path / "second.out", f"--dependency=afterany:{first}", "jobs/slurm.sbatch",
                     *_train_args(tiny_h5, run))
    _wait_for(lambda: _steps_logged(run) >= 12, 120, "epoch 2 to start")  # 9 steps per epoch
    t0 = time.monotonic()
    subprocess.run(["scancel", "--signal=TERM", *(["--full"] if how == "full" else []), first], env=slurm_env,
                   check=True)
    job = _wait_end(slurm_env, first, 60)
    assert time.monotonic() - t0 < 30
    assert job["JobState"] == "FAILED" and job["ExitCode"] != "0:0", job
    state = torch.load(ckpt.checkpoint_path(run), weights_only=False)
    log = (tmp_path / "first.out").read_text()
    if how == "steps":
        assert "stopped by SIGTERM" in log and "--resume" in log, log
        assert state["epoch"] == 2 and 3 <= state["step"] < 9  # a mid-epoch step, not an epoch boundary
        assert job["ExitCode"] == "143:0"
    else:
        assert (state["epoch"], state["step"]) == (2, 0)  # epoch 1's checkpoint
    job = _wait_end(slurm_env, second, 180)
    log2 = (tmp_path / "second.out").read_text()
    assert job["JobState"] == "COMPLETED", log2
    assert "--resume auto: resuming from" in log2
    # The first job's rank 0 released its lock on the way out, unless srun SIGKILLed it.
    assert ("took over a stale lock" in log2) == (how == "full"), log2
    _assert_same_model(_model(run), reference["model"])


def test_usr1_warning_makes_the_batch_script_stop_the_step(slurm_env, tiny_h5, tmp_path):
    """What `#SBATCH --signal=B:USR1@120` sends before the time limit, sent now."""
    run, out = tmp_path / "run", tmp_path / "job.out"
    job_id = _sbatch(slurm_env, out, "jobs/slurm.sbatch", *_train_args(tiny_h5, run), extra_env=SLOW)
    _wait_for(lambda: _steps_logged(run) >= 12, 120, "epoch 2 to start")
    subprocess.run(["scancel", "--batch", "--signal=USR1", job_id], env=slurm_env, check=True)
    t0 = time.monotonic()
    job = _wait_end(slurm_env, job_id, 60)
    assert time.monotonic() - t0 < 30
    log = out.read_text()
    assert job["JobState"] == "FAILED" and job["ExitCode"] == "143:0", log
    assert "SIGUSR1 (time limit near)" in log and "stopped by SIGTERM" in log
    state = torch.load(ckpt.checkpoint_path(run), weights_only=False)
    assert state["epoch"] == 2 and 3 <= state["step"] < 9
    assert not (run / "lock.json").exists()  # released on the way out


def test_requeue_resumes_and_finishes(slurm_env, tiny_h5, tmp_path, reference):
    run, out = tmp_path / "run", tmp_path / "job.out"
    job_id = _sbatch(slurm_env, out, "--requeue", "jobs/slurm.sbatch", *_train_args(tiny_h5, run), extra_env=SLOW)
    _wait_for(lambda: ckpt.checkpoint_path(run).exists() and _steps_logged(run) >= 12, 120, "epoch 1's checkpoint")
    subprocess.run(["scontrol", "requeue", job_id], env=slurm_env, check=True)
    job = _wait_end(slurm_env, job_id, 240)
    log = out.read_text()
    assert job["JobState"] == "COMPLETED" and job["Restarts"] == "1", log
    assert "--resume auto: resuming from" in log  # the requeued run, appended to the same log
    _assert_same_model(_model(run), reference["model"])


# --- failures end the job --------------------------------------------------------------------


def test_bad_input_fails_the_job_with_one_line(slurm_env, tmp_path):
    out = tmp_path / "job.out"
    t0 = time.monotonic()
    job_id = _sbatch(slurm_env, out, "jobs/slurm.sbatch", "hvd-stgnn", "train", "--data", str(tmp_path / "nope.h5"))
    job = _wait_end(slurm_env, job_id, 60)
    assert time.monotonic() - t0 < 30
    assert job["JobState"] == "FAILED" and job["ExitCode"] == "2:0", job
    lines = [line for line in out.read_text().splitlines() if line.startswith("hvd-stgnn")]
    assert len(lines) == 1 and "nope.h5" in lines[0], out.read_text()
    squeue = subprocess.run(["squeue", "-h", "-t", "all", "-j", job_id, "-O", "State,exit_code"], capture_output=True,
                            text=True, env=slurm_env).stdout.split()
    assert squeue[0] == "FAILED" and int(squeue[1]) >> 8 == 2  # squeue shows the wait status


def test_kill_9_of_one_task_ends_the_step(slurm_env, tiny_h5, tmp_path):
    """Rank 1 dies by SIGKILL before step 15; rank 0 would wait in the allreduce forever
    without SLURM_KILL_BAD_EXIT=1 (set by the script)."""
    run, out = tmp_path / "run", tmp_path / "job.out"
    job_id = _sbatch(slurm_env, out, "jobs/slurm.sbatch", *_train_args(tiny_h5, run, 20),
                     extra_env={"HVD_STGNN_FAULT": "kill:1:15"})
    ended = lambda: _job(slurm_env, job_id)["JobState"] in FINAL_STATES  # noqa: E731
    _wait_for(lambda: _steps_logged(run) >= 14 or ended(), 120, "step 14")
    t0 = time.monotonic()  # within a step of the kill
    job = _wait_end(slurm_env, job_id, 90)
    assert time.monotonic() - t0 < 30
    assert job["JobState"] == "FAILED" and job["ExitCode"] != "0:0", (job, out.read_text())
    assert _steps_logged(run) < 20
