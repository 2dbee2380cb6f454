"""Running benchmark jobs: real `jobs/local.sh` (mpirun) or `srun` jobs of `hvd-stgnn train`,
one subprocess each, their output kept in a log, a failure reported as one line naming the
job, its command and its log; and the argument checks and dataset resolution every such
benchmark does before its first job. Shared by `bench compare` and `bench scaling`.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from hvd_stgnn.errors import ConfigError, UserError

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


# --- before the first job: arguments and the dataset -----------------------------------------


def check_all(checks: list[tuple[bool, str]]) -> None:
    """(condition, message) pairs: ConfigError with the first message whose condition fails."""
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def check_preset_and_model(args: argparse.Namespace) -> None:
    """--preset (unless --data is given) and --model name a known preset and model."""
    from hvd_stgnn.data.synthetic import PRESETS
    from hvd_stgnn.models import MODELS

    if not args.data and args.preset not in PRESETS:
        raise ConfigError(f"--preset: unknown preset {args.preset!r} (choose from {', '.join(PRESETS)})")
    if args.model not in MODELS:
        raise ConfigError(f"--model: unknown model {args.model!r} (choose from {', '.join(MODELS)})")


def check_train_args(train_args: list[str], controlled: set[str]) -> None:
    """--train-args (already split) may not set a flag the benchmark sets itself."""
    clash = sorted({a.split("=")[0] for a in train_args} & controlled)
    if clash:
        raise ConfigError(f"--train-args: {', '.join(clash)} is set by the benchmark itself (use its own flag)")


def check_out(out: str) -> None:
    """--out is a directory or does not exist yet."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {path}: exists and is not a directory")


def resolve_data(args: argparse.Namespace) -> tuple[Path, str]:
    """(the dataset file, where it comes from for the report): --data as given (it must
    exist; source ""), else --preset generated with --seed into --cache (or found there)."""
    if args.data:
        data = Path(args.data).resolve()
        if not data.exists():
            raise ConfigError(f"--data {args.data}: no such file")
        return data, ""
    from hvd_stgnn.bench import load

    data = load.dataset_for(args.preset, args.seed, Path(args.cache)).resolve()
    return data, f"preset {args.preset} (seed {args.seed})"
