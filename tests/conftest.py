"""Fixtures: small datasets and the local Slurm (plain helpers are in helpers.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

from helpers import SLURM_LOCAL, subprocess_env

# One thread for in-process tests: with OpenMP spin-waiting, 2 threads on a 2-core machine
# where anything else holds a core run ~30x slower (the mpirun tests use 1 per rank anyway).
torch.set_num_threads(1)
# In-process tests pick their devices explicitly (the `gpu` ones CUDA); where they do, the
# comparisons are exact fp32, never TF32. Jobs the suite starts see no GPU (helpers.py).
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


@pytest.fixture(scope="session")
def small_h5(tmp_path_factory) -> Path:
    """20 sensors x 4 days: small enough for seconds-long training runs."""
    from hvd_stgnn.data import generate, write_dataset

    path = tmp_path_factory.mktemp("data") / "small.h5"
    write_dataset(path, generate(20, 4 * 288, seed=1))
    return path


@pytest.fixture(scope="session")
def tiny_h5(tmp_path_factory) -> Path:
    """12 sensors x 400 steps: 264 training windows, 9 steps/epoch/rank at B = 16 on 2 ranks
    (17 on one process); a 2-rank job trains, checkpoints and tests in a few seconds."""
    from hvd_stgnn.data import generate, write_dataset

    path = tmp_path_factory.mktemp("tiny12") / "tiny.h5"
    write_dataset(path, generate(12, 400, seed=3))
    return path


# --- the local Slurm (tests marked `slurm`) ---------------------------------------------


@pytest.fixture(scope="session")
def slurm_env() -> dict[str, str]:
    """Start the one-node Slurm of tools/slurm-local.sh (installing it if needed) and return
    the environment for sbatch/srun/squeue; stopped at the end of the session unless it was
    running before. A cluster that does not come up fails the tests, never skips them."""
    was_running = subprocess.run(["bash", str(SLURM_LOCAL), "status"], capture_output=True).returncode == 0
    r = subprocess.run(["bash", str(SLURM_LOCAL), "start"], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"tools/slurm-local.sh start failed:\n{r.stdout}{r.stderr}"
    conf = subprocess.run(["bash", str(SLURM_LOCAL), "env"], capture_output=True, text=True, check=True).stdout
    env = {**subprocess_env(), "SLURM_CONF": conf.strip().split("=", 1)[1]}
    # What a user's shell would not have: variables of an enclosing job or of these tests' own launches.
    for name in list(env):
        if name.startswith(("SLURM_", "SRUN_", "SBATCH_", "SALLOC_", "OMPI_", "PMIX_", "HVD_STGNN_")) and name != "SLURM_CONF":
            env.pop(name)
    yield env
    if not was_running:
        subprocess.run(["bash", str(SLURM_LOCAL), "stop"], capture_output=True, timeout=120)
