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


def under_launcher() -> bool:
    """True when started by an MPI/Slurm launcher (even with a single rank)."""
    return any(name in os.environ for name in _RANK_VARS)
