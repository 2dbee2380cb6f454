"""Distributed backends. The only package that imports Horovod or torch.distributed."""

from __future__ import annotations

from typing import Callable

from hvd_stgnn.parallel.base import Backend, SingleProcessBackend
from hvd_stgnn.parallel.collective import run_collectively, run_on_root
from hvd_stgnn.parallel.launcher import launcher_local_rank, launcher_rank, launcher_size


def _horovod(parallel=None, timeline: bool = False, device: str = "auto") -> Backend:
    from hvd_stgnn.parallel.horovod_backend import HorovodBackend

    return HorovodBackend(parallel, timeline, device)


def _ddp(parallel=None, timeline: bool = False, device: str = "auto") -> Backend:
    from hvd_stgnn.parallel.ddp_backend import DDPBackend

    return DDPBackend(parallel, timeline, device)


def _single(parallel=None, timeline: bool = False, device: str = "auto") -> Backend:
    return SingleProcessBackend(device)


# name -> builder(parallel: ParallelConfig | None, timeline: bool, device: auto|cpu|cuda) -> Backend
BACKENDS: dict[str, Callable[..., Backend]] = {
    "horovod": _horovod,
    "ddp": _ddp,
    "single": _single,
}


def make_backend(name: str, parallel=None, timeline: bool = False, device: str = "auto") -> Backend:
    """Build the backend `name` (a key of BACKENDS); collective under a launcher.
    `parallel` (a ParallelConfig) carries the backend's knobs; `timeline` prepares a
    windowed timeline recording; `device` (--device) is resolved to this rank's
    `backend.device` before any process group exists (parallel/device.py)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r} (choose from {', '.join(BACKENDS)})")
    return BACKENDS[name](parallel, timeline, device)


__all__ = [
    "BACKENDS",
    "Backend",
    "SingleProcessBackend",
    "launcher_local_rank",
    "launcher_rank",
    "launcher_size",
    "make_backend",
    "run_collectively",
    "run_on_root",
]
