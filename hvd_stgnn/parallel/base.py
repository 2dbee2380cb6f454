"""The small interface the trainer uses for everything distributed.

The trainer never imports Horovod, torch.distributed or mpi4py; it holds a `Backend` and
calls: rank/size/local_rank/local_size, `load_dataset`, `allreduce_sum`, `broadcast_state`,
`broadcast_object`, `allgather_object`, `wrap_model`, `wrap_optimizer`, `accumulate`,
`finish_gradients` + `step`, `any_rank`, `start_timeline`/`stop_timeline`, `abort`,
`shutdown`. Implementations: `SingleProcessBackend` (here), `HorovodBackend`
(horovod_backend.py) and `DDPBackend` (ddp_backend.py). collective.py builds the job-wide
agreement helpers on top of this interface.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import torch

from hvd_stgnn.parallel.device import resolve_device


class Backend:
    """Interface; every method is collective where it says so (all ranks must call it)."""

    name = "abstract"
    _comm = None  # the mpi4py world communicator (MPI launches only); stays inside parallel/
    rank = 0
    size = 1
    local_rank = 0
    local_size = 1
    device = torch.device("cpu")  # this rank's device (parallel/device.py), set at construction
    device_note = ""  # a line to print once about the device choice, or ""

    def _choose_device(self, requested: str) -> None:
        """Set `device` for --device `requested` from this rank's local rank (and make a GPU
        the current CUDA device): before any process group, which NCCL needs."""
        self.device, self.device_note = resolve_device(requested, self.local_rank)

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def load_dataset(self, path):
        """Collective: (TrafficData, NodeSharedArray or None, LoadReport) for the HDF5 file.

        Under MPI, world rank 0 reads the file once and every node holds one shared copy
        (data/loader.py); the NodeSharedArray is freed collectively when done. Without MPI
        (one process, or torchrun) this process reads the file itself.
        """
        from hvd_stgnn.data.loader import load_local, load_node_shared

        if self._comm is None:
            data, report = load_local(path)
            return data, None, report
        from hvd_stgnn.data.shared import ranks_per_node_override

        return load_node_shared(path, self._comm, ranks_per_node_override())

    def allreduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Collective: element-wise sum over ranks (returns a new tensor)."""
        raise NotImplementedError

    def broadcast_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Collective: make parameters and optimizer state equal to rank 0's."""
        raise NotImplementedError

    def wrap_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module to call in training (DDP: its wrapper, whose backward allreduces)."""
        return model

    def accumulate(self, train_model: torch.nn.Module, last: bool):
        """Context for one of K accumulated backward passes; `last` is the one that syncs."""
        return contextlib.nullcontext()

    def wrap_optimizer(self, optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> torch.optim.Optimizer:
        """Return an optimizer whose step() uses gradients averaged over ranks."""
        raise NotImplementedError

    def average_buffers(self, model: torch.nn.Module) -> None:
        """Collective: replace floating-point buffers (batch-norm running statistics) by
        their mean over ranks, so every rank evaluates, and checkpoints, the same model.
        Each rank's statistics come from its own batches; gradients alone do not sync them."""
        if self.size == 1:
            return
        params = {name for name, _ in model.named_parameters()}
        with torch.no_grad():
            # state_dict: persistent buffers only (graph operators are constant, not saved).
            for name, buf in model.state_dict().items():
                if name not in params and buf.is_floating_point():
                    buf.copy_(self.allreduce_sum(buf.cpu()).to(buf.device) / self.size)

    def finish_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        """Collective: return once every gradient is averaged over ranks (Horovod: wait for
        the allreduces started during backward; DDP does this inside backward)."""
        return None

    def step(self, optimizer: torch.optim.Optimizer, model: torch.nn.Module, max_norm: float, scaler=None) -> None:
        """optimizer.step() on the finished gradients, their global norm clipped to
        max_norm first (0: off). Clipping the averaged gradients keeps ranks identical.
        `scaler` (fp16's GradScaler): unscale before clipping, step through it."""
        apply_step(optimizer, model, max_norm, scaler, optimizer.step)

    def broadcast_object(self, obj: Any) -> Any:
        """Collective: rank 0's `obj` on every rank (pickled; for small things)."""
        raise NotImplementedError

    def any_rank(self, flag: bool) -> bool:
        """Collective: True on every rank if `flag` is True on any (e.g. a SIGTERM seen)."""
        return bool(self.allreduce_sum(torch.tensor([float(flag)])).item() > 0)

    def start_timeline(self, path: str, mark_cycles: bool) -> None:
        raise NotImplementedError(f"--timeline is not supported by the {self.name} backend")

    def stop_timeline(self) -> None:
        return None

    def allgather_object(self, obj: Any) -> list[Any]:
        """Collective: list of every rank's `obj`, in rank order."""
        raise NotImplementedError

    def abort(self, code: int = 1) -> None:
        """End every rank of the job now (used when one rank fails)."""
        sys.exit(code)

    def shutdown(self) -> None:
        pass


def apply_step(optimizer, model, max_norm: float, scaler, step) -> None:
    """Clip (after unscaling fp16 gradients), then `step()` (the optimizer's step, or a
    backend's variant of it) through the scaler when there is one."""
    if scaler is not None:
        scaler.unscale_(optimizer)
    if max_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    if scaler is None:
        step()
        return
    scaler.step(optimizer)  # skips the step when fp16 gradients overflowed
    scaler.update()


class SingleProcessBackend(Backend):
    """One process, no communication: what `hvd-stgnn train` uses without a launcher."""

    name = "single"

    def __init__(self, device: str = "auto") -> None:
        self._choose_device(device)

    def allreduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.clone()

    def broadcast_state(self, model, optimizer) -> None:
        return None

    def wrap_optimizer(self, optimizer, model):
        return optimizer

    def allgather_object(self, obj):
        return [obj]

    def broadcast_object(self, obj):
        return obj

    def any_rank(self, flag: bool) -> bool:
        return bool(flag)
