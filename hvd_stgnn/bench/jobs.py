"""Running benchmark jobs: real `jobs/local.sh` (mpirun) or `srun` jobs of `hvd-stgnn train`,
one subprocess each, their output kept in a log, a failure reported as one line naming the
job, its command and its log. Shared by `bench compare` and `bench scaling`.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from hvd_stgnn.errors import UserError

REPO = Path(__file__).resolve().parents[2]
LAUNCHER = REPO / "jobs" / "local.sh"


def available_cores() -> int:
    """What `nproc` prints (the CPUs this process may run on)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def train_executable() -> list[str]:
    """`hvd-stgnn` of this interpreter's environment (or `python -m hvd_stgnn`)."""
    script = Path(sys.executable).parent / "hvd-stgnn"
    return [str(script)] if script.exists() else [sys.executable, "-m", "hvd_stgnn"]


def job_environment(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(threads)
    env["PYTHONUNBUFFERED"] = "1"
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def _tail(text: str, lines: int = 20) -> list[str]:
    return [line for line in text.splitlines() if line.strip()][-lines:]


def _error_line(stderr: str) -> str:
    """The line that says what went wrong: our own error line if there is one."""
    lines = _tail(stderr, 200)
    ours = [line for line in lines if line.startswith("hvd-stgnn")]
    if ours:
        return ours[-1]
    errors = [line for line in lines if "Error" in line or "error" in line]
    return (errors or lines or ["(no stderr)"])[-1].strip()


def _stop(proc: subprocess.Popen) -> None:
    """End a job we started: SIGTERM to its process group (mpirun forwards it), then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_job(cmd: list[str], env: dict, label: str, log: Path, timeout: float = 0) -> float:
    """Run one mpirun job; stdout/stderr go to `log`. Returns its wall-clock seconds.
    Raises UserError naming the job when it fails or runs past `timeout` (0: no limit)."""
    out_path, err_path = log.with_suffix(".stdout.tmp"), log.with_suffix(".stderr.tmp")
    status: int | str
    with open(out_path, "w") as out, open(err_path, "w") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=REPO, start_new_session=True)
        try:
            status = proc.wait(timeout or None)
        except subprocess.TimeoutExpired:
            _stop(proc)
            status = f"timed out after {timeout:g} s"
        except BaseException:  # Ctrl-C: do not leave the ranks running
            _stop(proc)
            raise
        seconds = time.perf_counter() - t0
    stdout, stderr = out_path.read_text(errors="replace"), err_path.read_text(errors="replace")
    log.write_text(f"# job: {label}\n# command: {shlex.join(cmd)}\n# OMP_NUM_THREADS={env.get('OMP_NUM_THREADS')}\n"
                   f"# exit status: {status}; wall clock {seconds:.2f} s\n"
                   f"## stdout\n{stdout}\n## stderr\n{stderr}")
    out_path.unlink()
    err_path.unlink()
    if status != 0:
        how = status if isinstance(status, str) else f"exit status {status}"
        raise UserError(f"job {label} failed ({how}): {_error_line(stderr)} | command: {shlex.join(cmd)} "
                        f"| full stdout/stderr: {log}")
    return seconds


def warm_page_cache(path: Path) -> None:
    """Read a data file once, so the first job does not pay for the disk alone."""
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass
