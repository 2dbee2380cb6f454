"""What the launcher (mpirun, srun, PBS mpiexec, horovodrun, torchrun) tells a process before init.

Used to decide, before any MPI call, which rank prints an error (so that bad input gives
one line from rank 0 rather than one from every rank), which GPU a rank takes, and what
results.json records of the launch.
"""

from __future__ import annotations

import os

# What each launcher sets: (rank, size, local rank, local size) variables, the first present
# wins within a launcher. The launcher that started the process (launcher_name) decides
# which row is read: `srun ... torchrun` sets SLURM_LOCALID (srun's task, the same for
# every rank torchrun starts on a node) beside torchrun's LOCAL_RANK, and only the latter
# is this process's local rank.
LAUNCHER_VARS: dict[str, tuple[tuple[str, ...], ...]] = {
    "torchrun": (("RANK",), ("WORLD_SIZE",), ("LOCAL_RANK",), ("LOCAL_WORLD_SIZE",)),
    "mpirun": (("OMPI_COMM_WORLD_RANK",), ("OMPI_COMM_WORLD_SIZE",), ("OMPI_COMM_WORLD_LOCAL_RANK",),
               ("OMPI_COMM_WORLD_LOCAL_SIZE",)),
    "srun": (("SLURM_PROCID",), ("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS"), ("SLURM_LOCALID",), ()),
    # PBS PALS (Cray MPICH on Polaris) and MPICH's Hydra.
    "mpiexec": (("PALS_RANKID", "PMI_RANK", "PMIX_RANK"), ("PMI_SIZE", "PALS_SIZE"),
                ("PALS_LOCAL_RANKID", "MPI_LOCALRANKID", "PMI_LOCAL_RANK"),
                ("PALS_LOCAL_SIZE", "MPI_LOCALNRANKS", "PMI_LOCAL_SIZE")),
    "none": ((), (), (), ()),
}
# Set by launchers that start MPI processes (torchrun sets none of them).
_MPI_VARS = ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID", "PALS_RANKID")


def _first_int(names: tuple[str, ...], default: int) -> int:
    for name in names:
        value = os.environ.get(name)
        if value is not None and value.strip().isdigit():
            return int(value)
    return default


def _var(column: int, default: int) -> int:
    return _first_int(LAUNCHER_VARS[launcher_name()][column], default)


def launcher_rank() -> int:
    """World rank as set by the launcher; 0 when started without one."""
    return _var(0, 0)


def launcher_size() -> int:
    """World size as set by the launcher; 1 when started without one."""
    return _var(1, 1)


def launcher_local_rank() -> int:
    """This process's rank among the launcher's processes on its node (0 without one)."""
    return _var(2, 0)


def launcher_local_size() -> int:
    """Processes the launcher started on this node (1 without one)."""
    if launcher_name() == "srun":
        return slurm_tasks_on_node(os.environ.get("SLURM_STEP_TASKS_PER_NODE") or os.environ.get("SLURM_TASKS_PER_NODE", ""),
                                   _first_int(("SLURM_NODEID",), 0))
    return _var(3, 1)


def slurm_tasks_on_node(tasks_per_node: str, node_id: int) -> int:
    """Slurm's compressed tasks-per-node list ('2(x3),1': 2 on nodes 0-2, 1 on node 3) ->
    the count on node `node_id` (1 when the list is empty or malformed)."""
    counts: list[int] = []
    for part in filter(None, tasks_per_node.split(",")):
        count, _, repeat = part.partition("(x")
        if not count.isdigit() or (repeat and not repeat.rstrip(")").isdigit()):
            return 1
        counts += [int(count)] * (int(repeat.rstrip(")")) if repeat else 1)
    return counts[node_id] if 0 <= node_id < len(counts) else 1


def under_torchrun() -> bool:
    """Started by torchrun / torch.distributed.run (its env rendezvous, no MPI)."""
    return "TORCHELASTIC_RUN_ID" in os.environ or ("RANK" in os.environ and not any(v in os.environ for v in _MPI_VARS))


def launcher_name() -> str:
    """Which launcher started this process: torchrun, mpirun, mpiexec (PBS PALS / MPICH
    Hydra), srun or none. Read from the environment the launcher gave the process (os.environ
    is Python's copy from start-up; MPI_Init's own settings do not reach it). The innermost
    launcher wins: torchrun under srun is torchrun; Open MPI's mpirun inside a Slurm
    allocation starts its daemons with srun, so its ranks carry SLURM_STEP_ID too, and
    OMPI_COMM_WORLD_RANK (set only by mpirun) is checked before Slurm's variables."""
    env = os.environ
    if under_torchrun():
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
    return {**versions, **gpu_stack_versions()}


def gpu_stack_versions() -> dict:
    """CUDA, cuDNN and NCCL versions torch was built with / loaded (None on a CPU build)."""
    import torch

    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    try:
        nccl = ".".join(map(str, torch.cuda.nccl.version())) if torch.cuda.is_available() else None
    except (AttributeError, RuntimeError):  # a build without NCCL
        nccl = None
    return {"cuda": torch.version.cuda, "cudnn": cudnn, "nccl": nccl}


def launch_record(hosts: list[str], threads_per_rank: int, devices: list[str] | None = None) -> dict:
    """What results.json records of the launch; `hosts`, `devices`: every rank's host name
    and device (parallel/device.py device_description), in rank order."""
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
        "rank_devices": devices or [],
        "versions": library_versions(),
    }
