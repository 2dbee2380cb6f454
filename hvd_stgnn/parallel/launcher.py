"""What the launcher (mpirun, srun, PBS mpiexec, horovodrun) tells a process before init.

Used to decide, before any MPI call, which rank prints an error, so that bad input gives
one line from rank 0 rather than one from every rank.
"""

from __future__ import annotations

import os

# Most specific first: Open MPI, then PMIx (srun --mpi=pmix, PBS), MPICH/Hydra, Slurm,
# then torchrun (RANK / WORLD_SIZE / LOCAL_RANK, no MPI at all).
_RANK_VARS = ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID", "RANK")
_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS", "WORLD_SIZE")
_LOCAL_RANK_VARS = ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "PMI_LOCAL_RANK", "PALS_LOCAL_RANKID",
                    "SLURM_LOCALID", "LOCAL_RANK")
_LOCAL_SIZE_VARS = ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "PMI_LOCAL_SIZE", "LOCAL_WORLD_SIZE")
# Set by launchers that start MPI processes (torchrun sets none of them).
_MPI_VARS = ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID")


def _first_int(names: tuple[str, ...], default: int) -> int:
    for name in names:
        value = os.environ.get(name)
        if value is not None and value.strip().isdigit():
            return int(value)
    return default


def launcher_rank() -> int:
    """World rank as set by the launcher; 0 when started without one."""
    return _first_int(_RANK_VARS, 0)


def launcher_size() -> int:
    """World size as set by the launcher; 1 when started without one."""
    return _first_int(_SIZE_VARS, 1)


def launcher_local_rank() -> int:
    return _first_int(_LOCAL_RANK_VARS, 0)


def launcher_local_size() -> int:
    return _first_int(_LOCAL_SIZE_VARS, 1)


def under_torchrun() -> bool:
    """Started by torchrun / torch.distributed.run (its env rendezvous, no MPI)."""
    return "TORCHELASTIC_RUN_ID" in os.environ or ("RANK" in os.environ and not any(v in os.environ for v in _MPI_VARS))


def launcher_name() -> str:
    """Which launcher started this process: srun, mpirun, mpiexec (PBS PALS / MPICH Hydra),
    torchrun or none. Read from the environment the launcher gave the process (os.environ
    is Python's copy from start-up; MPI_Init's own settings do not reach it). Open MPI's
    mpirun inside a Slurm allocation starts its daemons with srun, so its ranks carry
    SLURM_STEP_ID too: OMPI_COMM_WORLD_RANK (set only by mpirun) is checked first."""
    env = os.environ
    if "TORCHELASTIC_RUN_ID" in env or under_torchrun():
        return "torchrun"
    if "OMPI_COMM_WORLD_RANK" in env:
        return "mpirun"
    if "PALS_RANKID" in env:
        return "mpiexec"
    if "SLURM_STEP_ID" in env and "SLURM_PROCID" in env:
        return "srun"
    if "PMI_RANK" in env or "PMIX_RANK" in env:
        return "mpiexec"
    return "none"


def scheduler_job() -> dict:
    """{"scheduler": "slurm"|"pbs"|"none", "job_id": ..., "restart_count": Slurm requeues}."""
    env = os.environ
    if "SLURM_JOB_ID" in env:
        return {"scheduler": "slurm", "job_id": env["SLURM_JOB_ID"],
                "restart_count": int(env.get("SLURM_RESTART_COUNT", "0") or 0)}
    if "PBS_JOBID" in env:
        return {"scheduler": "pbs", "job_id": env["PBS_JOBID"], "restart_count": 0}
    return {"scheduler": "none", "job_id": "", "restart_count": 0}


def library_versions() -> dict:
    """Versions of what a run depends on (None where a library is not installed)."""
    from importlib import metadata

    versions: dict = {}
    for name in ("torch", "horovod", "mpi4py", "h5py", "torch_geometric", "numpy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    try:
        from mpi4py import MPI

        versions["mpi_library"] = MPI.Get_library_version().replace("\x00", "").strip().splitlines()[0].strip()
    except Exception:  # noqa: BLE001  (no MPI at all: --backend single without mpi4py)
        versions["mpi_library"] = None
    return versions


def launch_record(hosts: list[str], threads_per_rank: int) -> dict:
    """What results.json records of the launch; `hosts`: every rank's host name, in rank order."""
    per_node: dict[str, int] = {}
    for host in hosts:
        per_node[host] = per_node.get(host, 0) + 1
    return {
        "launcher": launcher_name(),
        **scheduler_job(),
        "nodes": sorted(per_node),
        "ranks_per_node": per_node,
        "rank_hosts": hosts,
        "threads_per_rank": threads_per_rank,
        "versions": library_versions(),
    }
