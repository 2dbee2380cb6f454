"""Which device a rank trains on, decided once, before the process group is made.

`choose_device` is pure (the GPU count and CUDA's start-up problem are passed in), so every
rule is tested on machines without a GPU; `resolve_device` asks torch and applies it.
Rules:
- `--device cpu`: the CPU, whatever the node has (DDP then uses gloo, never nccl).
- `--device cuda`: GPU `local rank` (modulo the GPUs this process sees: with per-task GPU
  binding, e.g. `srun --gpus-per-task=1`, each rank sees one GPU, its own); one clear line
  when CUDA is missing or failed to start. Once every rank has chosen, `gpu_sharing`
  compares the GPUs' UUIDs across ranks: two ranks on one GPU (more ranks per node than
  GPUs) make NCCL fail later with an opaque error or silently halve the speed, so the job
  stops at start with one line instead.
- `--device auto`: the GPU as above when CUDA works; otherwise the CPU, with a note when a
  GPU is there but CUDA failed to start (a driver / toolkit mismatch is worth knowing).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from hvd_stgnn.errors import ConfigError


@dataclass(frozen=True)
class DeviceChoice:
    type: str  # "cpu" | "cuda"
    index: int | None = None  # the GPU of this rank on its node
    note: str = ""  # one line to print (rank 0), or ""

    @property
    def name(self) -> str:
        return self.type if self.index is None else f"{self.type}:{self.index}"


def choose_device(requested: str, local_rank: int, gpus: int, cuda_problem: str = "") -> DeviceChoice:
    """requested: auto | cpu | cuda; gpus: GPUs this process can see (0 without CUDA);
    cuda_problem: why CUDA is unusable although present (torch's warning), or ""."""
    if requested == "cpu":
        return DeviceChoice("cpu")
    if gpus == 0:
        if requested == "cuda":
            why = f"CUDA failed to initialise ({cuda_problem})" if cuda_problem else "no CUDA device is available"
            raise ConfigError(f"--device cuda: {why}")
        note = f"--device auto: CUDA failed to initialise ({cuda_problem}); training on the CPU" if cuda_problem else ""
        return DeviceChoice("cpu", note=note)
    return DeviceChoice("cuda", local_rank % gpus)


def gpu_sharing(gpus_of_ranks: list[tuple[str, str]]) -> str:
    """[(host, GPU uuid) of every rank, in rank order] -> one line naming the ranks that
    share a GPU, or "" when every rank has its own."""
    owners: dict[tuple[str, str], list[int]] = {}
    for rank, key in enumerate(gpus_of_ranks):
        owners.setdefault(key, []).append(rank)
    shared = {key: ranks for key, ranks in owners.items() if len(ranks) > 1}
    if not shared:
        return ""
    (host, _), ranks = next(iter(shared.items()))
    per_node = max(sum(1 for h, _ in gpus_of_ranks if h == node) for node, _ in shared)
    gpus = len({key for key in owners if key[0] == host})
    return (f"--device cuda: ranks {', '.join(map(str, ranks))} on {host} share one GPU ({per_node} ranks on a node, "
            f"{gpus} GPU(s) among them): start at most one rank per GPU (e.g. srun --ntasks-per-node=GPUS), "
            "or train on the CPU with --device cpu")


def gpu_identity(device) -> str:
    """A name of the physical GPU that is the same in every process (the UUID; CUDA device
    indices depend on CUDA_VISIBLE_DEVICES)."""
    import torch

    props = torch.cuda.get_device_properties(device)
    return str(getattr(props, "uuid", "") or f"{props.name}@pci{getattr(props, 'pci_bus_id', device.index)}")


def cuda_state() -> tuple[int, str]:
    """(GPUs torch can use, why CUDA failed to start when a GPU seems present, else "")."""
    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    if available:
        return torch.cuda.device_count(), ""
    problems = [str(w.message).splitlines()[0] for w in caught if "CUDA" in str(w.message)]
    return 0, problems[0] if problems else ""


def resolve_device(requested: str, local_rank: int):
    """The torch.device of this rank (cuda: also made the current device), and the note."""
    import torch

    gpus, problem = cuda_state() if requested != "cpu" else (0, "")
    choice = choose_device(requested, local_rank, gpus, problem)
    if choice.type == "cuda":
        torch.cuda.set_device(choice.index)
    return torch.device(choice.name), choice.note


def device_description(device) -> str:
    """"cpu", or "cuda:0 (NVIDIA H200)": what results.json records of each rank's device."""
    if device.type != "cuda":
        return str(device)
    import torch

    return f"{device} ({torch.cuda.get_device_name(device)})"
