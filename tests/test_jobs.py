"""Launch scripts: DRY_RUN prints the launch line that would run."""

import os
import subprocess

from conftest import REPO


def _dry(script, *args, **env):
    full = {**os.environ, "DRY_RUN": "1", **env}
    r = subprocess.run(["bash", str(REPO / "jobs" / script), *args], capture_output=True, text=True, env=full)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_local_adds_oversubscribe_only_past_the_core_count():
    cores = len(os.sched_getaffinity(0))  # what `nproc` counts
    assert _dry("local.sh", "-np", str(cores), "hvd-stgnn", "train") == f"mpirun -np {cores} hvd-stgnn train"
    assert "--oversubscribe" in _dry("local.sh", "-np", str(cores + 1), "hvd-stgnn", "train")


def test_local_rejects_a_bad_rank_count():
    r = subprocess.run(["bash", str(REPO / "jobs" / "local.sh"), "-np", "two", "true"], capture_output=True, text=True)
    assert r.returncode == 2 and "-np must be a positive integer" in r.stderr


def test_cluster_scripts():
    assert _dry("slurm.sbatch", "--data", "x.h5", SLURM_CPUS_PER_TASK="8", OMP_NUM_THREADS="8") == (
        "srun --mpi=pmix --cpu-bind=cores hvd-stgnn train --threads 8 --data x.h5"
    )
    line = _dry("pbs.sh", RANKS_PER_NODE="4", DEPTH="16", OMP_NUM_THREADS="16", ARGS="--data x.h5")
    assert line == "mpiexec -n 4 --ppn 4 --depth 16 --cpu-bind depth hvd-stgnn train --threads 16 --data x.h5"
