"""What the tests share besides fixtures: paths, running the CLI, launching real mpirun jobs.

Imported as `from helpers import ...` (pytest puts tests/ on sys.path); fixtures stay in
conftest.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
LOCAL_LAUNCHER = REPO / "jobs" / "local.sh"


def subprocess_env(gpu: bool = False) -> dict[str, str]:
    """The environment of the suite's jobs. GPUs hidden unless `gpu` (the `gpu` tests): on a
    GPU node every 2-rank job would otherwise put both ranks on cuda:0 (--device auto), and
    the bit-exact comparisons would run in TF32."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    if not gpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    # The launcher puts .venv/bin first; make sure this interpreter's scripts win too.
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def run_cli(*args: str, timeout: float = 300, gpu: bool = False) -> subprocess.CompletedProcess:
    """`hvd-stgnn ARGS` as a single process (no launcher); on the CPU unless `gpu`."""
    return subprocess.run(
        [sys.executable, "-m", "hvd_stgnn", *args],
        capture_output=True, text=True, timeout=timeout, env=subprocess_env(gpu), cwd=REPO,
    )


def run_mpi(np_: int, *args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """`jobs/local.sh -np N python -m hvd_stgnn ARGS`: a real mpirun job (`env`: extra
    variables, exported to every rank)."""
    return subprocess.run(
        ["bash", str(LOCAL_LAUNCHER), "-np", str(np_), sys.executable, "-m", "hvd_stgnn", *args],
        capture_output=True, text=True, timeout=timeout, env={**subprocess_env(), **(env or {})}, cwd=REPO,
    )


def our_error_lines(stderr: str) -> list[str]:
    """Lines our program printed as errors (mpirun adds its own banner around them)."""
    return [line for line in stderr.splitlines() if line.startswith("hvd-stgnn")]


SLURM_LOCAL = REPO / "tools" / "slurm-local.sh"
