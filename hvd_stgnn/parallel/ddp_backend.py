"""PyTorch DistributedDataParallel: the baseline we compare Horovod against.

Launch: mpirun / srun / mpiexec (rank and size from MPI, the local rank from MPI's split
of the node; rank 0 picks a free TCP port and MPI broadcasts its address, so no
MASTER_ADDR setup is needed) or torchrun (its env:// rendezvous and LOCAL_RANK; no MPI
there, so every rank reads the data file itself instead of sharing one copy per node).
The process group follows the training device, not the machine: gloo for --device cpu
(also on a GPU node), nccl for a GPU, which is made the current device before the group
is created.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from hvd_stgnn.errors import ConfigError
from hvd_stgnn.parallel.base import Backend
from hvd_stgnn.parallel.launcher import (
    launcher_local_rank, launcher_local_size, launcher_rank, launcher_size, under_torchrun,
)

DDP_DEFAULT_BUCKET_MB = 25.0  # torch's default bucket_cap_mb
MPI_SUM_DTYPES = (torch.float32, torch.float64, torch.int32, torch.int64)  # numpy-backed, MPI-summable


def tensors_to_cpu(obj):
    """A copy of a nested dict / list / tuple with every tensor moved to the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: tensors_to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(tensors_to_cpu(v) for v in obj)
    return obj


def wait_for_gloo_workers(timeout_s: float = 2.0, poll_s: float = 0.01) -> None:
    """Return once no gloo worker thread of this process is runnable (two polls in a row),
    or after `timeout_s`. The GIL is released while waiting, so a worker blocked on it to
    free a collective's tensor can finish. Why: after DDP has wrapped a model,
    destroy_process_group leaves gloo's threads alive (the group outlives it), and a worker
    that frees a Python-owned tensor once the interpreter is finalizing aborts the process
    (std::terminate, SIGABRT; seen in CI at the end of 2-rank mpirun and torchrun runs)."""
    deadline = time.monotonic() + timeout_s
    quiet = 0
    while quiet < 2 and time.monotonic() < deadline:
        time.sleep(poll_s)
        quiet = quiet + 1 if not _runnable_gloo_workers() else 0


def _runnable_gloo_workers() -> bool:
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return False  # no procfs: the sleep above is all there is
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:
            continue  # the thread ended
        name, state = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2]
        if name.startswith("pt_gloo") and state == "R":
            return True
    return False


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


class DDPBackend(Backend):
    name = "ddp"

    def __init__(self, parallel=None, timeline: bool = False, device: str = "auto") -> None:
        if parallel is not None and parallel.reduce_op == "adasum":
            raise ConfigError("--reduce-op adasum: Horovod only (--backend horovod)")
        self.parallel = parallel
        timeout = datetime.timedelta(seconds=parallel.ddp_timeout_s if parallel is not None else 600.0)
        if under_torchrun():
            self.rank, self.size = launcher_rank(), launcher_size()
            self.local_rank, self.local_size = launcher_local_rank(), launcher_local_size()
            self._choose_device(device)
            dist.init_process_group(self.process_group_backend, timeout=timeout)  # env:// from torchrun
        else:
            from mpi4py import MPI

            self._comm = MPI.COMM_WORLD
            self._mpi = MPI
            self.rank, self.size = self._comm.rank, self._comm.size
            node = self._comm.Split_type(MPI.COMM_TYPE_SHARED)  # this node's ranks, whatever the launcher
            self.local_rank, self.local_size = node.rank, node.size
            node.Free()
            self._choose_device(device)
            addr = None
            if self.rank == 0:
                addr = (os.environ.get("MASTER_ADDR") or socket.gethostname(), int(os.environ.get("MASTER_PORT") or _free_port()))
            host, port = self._comm.bcast(addr, root=0)
            dist.init_process_group(self.process_group_backend, init_method=f"tcp://{host}:{port}", rank=self.rank,
                                    world_size=self.size, timeout=timeout)
        self.rank, self.size = dist.get_rank(), dist.get_world_size()
        # Small CPU things (metric sums, pickled objects, the stop flag) go over gloo: with an
        # nccl group they would be copied to the GPU and back, a synchronization each time.
        self._cpu_group = dist.new_group(backend="gloo") if self.process_group_backend != "gloo" else None
        self._profiler = None
        self._profile_path = ""

    @property
    def process_group_backend(self) -> str:
        return "nccl" if self.device.type == "cuda" else "gloo"

    # --- collectives -----------------------------------------------------------------

    def _to_comm_device(self, tensor: torch.Tensor) -> torch.Tensor:
        """A new tensor on the device the process group reduces on: collectives work in
        place, and callers' inputs must stay as they were (a CUDA input too)."""
        return tensor.to(self.device, copy=True)

    # Small CPU collectives (metric sums, pickled objects) go over MPI where the job has it.
    # Over gloo, a worker thread can still hold a collective's tensor after the call returns,
    # and hold it last (torch's *_object functions drop theirs at once); if that was the job's
    # last collective, the thread frees it while the interpreter shuts down: std::terminate,
    # SIGABRT (seen once in CI, the end of a 2-rank run). destroy_process_group cannot join
    # those threads once DDP has wrapped a model (the group outlives it), so the race is
    # avoided here. Gradients stay on the process group: that is what DDP is measured on.

    def allreduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.device.type == "cpu":
            if self._comm is not None and tensor.dtype in MPI_SUM_DTYPES:
                out = tensor.detach().clone(memory_format=torch.contiguous_format)  # a buffer MPI can read
                self._comm.Allreduce(self._mpi.IN_PLACE, out.numpy(), op=self._mpi.SUM)
            else:
                out = tensor.clone()
                dist.all_reduce(out, op=dist.ReduceOp.SUM, group=self._cpu_group)
            return out
        out = self._to_comm_device(tensor)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out.to(tensor.device)

    def broadcast_object(self, obj):
        if self._comm is not None:
            return self._comm.bcast(obj, root=0)
        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self._cpu_group)
        return box[0]

    def allgather_object(self, obj):
        if self._comm is not None:
            return self._comm.allgather(obj)
        out = [None] * self.size
        dist.all_gather_object(out, obj, group=self._cpu_group)
        return out

    def any_rank(self, flag: bool) -> bool:
        if self._comm is not None:
            return bool(self._comm.allreduce(int(flag), op=self._mpi.MAX))
        return super().any_rank(flag)

    # --- model and optimizer ---------------------------------------------------------

    def broadcast_state(self, model, optimizer) -> None:
        # DDP broadcasts parameters and buffers when it wraps the model; this covers a
        # resume (optimizer state) and any call before wrapping.
        with torch.no_grad():
            for tensor in model.state_dict().values():
                buf = self._to_comm_device(tensor)
                dist.broadcast(buf, src=0)
                tensor.copy_(buf.to(tensor.device))
        # Pickled on CPU: CUDA tensors would be unpickled onto rank 0's GPU on every rank;
        # load_state_dict moves the state to each parameter's device.
        state = self.broadcast_object(tensors_to_cpu(optimizer.state_dict()) if self.rank == 0 else None)
        optimizer.load_state_dict(state)

    def wrap_model(self, model):
        p = self.parallel
        bucket_mb = p.fusion_threshold_mb if p is not None and p.fusion_threshold_mb >= 0 else DDP_DEFAULT_BUCKET_MB
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        # Graph operators are non-persistent buffers, built identically on every rank from
        # the same file; DDP would broadcast them (and cannot: sparse CSR has no strides).
        persistent = set(model.state_dict())
        constants = [name for name, _ in model.named_buffers() if name not in persistent]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, constants)
        wrapped = DistributedDataParallel(model, device_ids=device_ids, bucket_cap_mb=bucket_mb,
                                          gradient_as_bucket_view=True)
        if p is not None and p.compression == "fp16":
            from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

            wrapped.register_comm_hook(None, default_hooks.fp16_compress_hook)
        self.bucket_mb = bucket_mb
        return wrapped

    def wrap_optimizer(self, optimizer, model):
        return optimizer  # DDP averages gradients during backward

    def accumulate(self, train_model, last: bool):
        """Skip the gradient allreduce for all but the last of K accumulated batches."""
        return contextlib.nullcontext() if last else train_model.no_sync()

    # --- profiling: torch.profiler's Chrome trace, one file per rank ------------------

    def start_timeline(self, path: str, mark_cycles: bool) -> None:
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self._profile_path = path
        self._profiler = torch.profiler.profile(activities=activities)
        self._profiler.__enter__()

    def stop_timeline(self) -> None:
        if self._profiler is None:
            return
        self._profiler.__exit__(None, None, None)
        path = self._profile_path if self.rank == 0 else f"{self._profile_path}.rank{self.rank}"
        self._profiler.export_chrome_trace(path)
        self._profiler = None

    def abort(self, code: int = 1) -> None:
        if self._comm is not None:
            self._comm.Abort(code)
        os._exit(code)

    def shutdown(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
            wait_for_gloo_workers()
