"""Horovod over MPI: gradient allreduce through `hvd.DistributedOptimizer`."""

from __future__ import annotations

import os

import torch

from hvd_stgnn.errors import ConfigError
from hvd_stgnn.parallel.base import Backend, apply_step

MIB = 1024 * 1024


def horovod_env(parallel, timeline: bool) -> dict[str, str]:
    """Environment Horovod reads at hvd.init() for the given ParallelConfig (only what the
    flags set; values already in the environment win when a flag is left at -1)."""
    env = {}
    if parallel.fusion_threshold_mb >= 0:
        env["HOROVOD_FUSION_THRESHOLD"] = str(int(parallel.fusion_threshold_mb * MIB))
    if parallel.cycle_time_ms >= 0:
        env["HOROVOD_CYCLE_TIME"] = f"{parallel.cycle_time_ms:g}"
    if parallel.autotune:
        env["HOROVOD_AUTOTUNE"] = "1"
    if timeline:
        # DYNAMIC: no file at init; hvd.start_timeline/stop_timeline record a window.
        env["HOROVOD_TIMELINE"] = "DYNAMIC"
    return env


class HorovodBackend(Backend):
    name = "horovod"

    def __init__(self, parallel=None, timeline: bool = False, device: str = "auto") -> None:
        if timeline and os.environ.get("HOROVOD_TIMELINE", "DYNAMIC") != "DYNAMIC":
            raise ConfigError(
                f"--timeline and HOROVOD_TIMELINE={os.environ['HOROVOD_TIMELINE']} both set: use one "
                "(HOROVOD_TIMELINE records the whole run, --timeline a window of steps)"
            )
        self.parallel = parallel
        if parallel is not None:
            os.environ.update(horovod_env(parallel, timeline))
        # mpi4py first: Horovod then reuses the MPI library state mpi4py initialised
        # (MPI_THREAD_MULTIPLE), and the communicator is shared with our own MPI code.
        from mpi4py import MPI
        import horovod.torch as hvd

        hvd.init(comm=MPI.COMM_WORLD)
        if not hvd.mpi_enabled():
            raise RuntimeError("Horovod was initialised without MPI; rebuild it with HOROVOD_WITH_MPI=1 (tools/setup.sh)")
        self._hvd = hvd
        self._mpi = MPI
        self._comm = MPI.COMM_WORLD
        self.rank = hvd.rank()
        self.size = hvd.size()
        self.local_rank = hvd.local_rank()
        self.local_size = hvd.local_size()
        self._choose_device(device)
        if self.device.type == "cuda" and not (hvd.nccl_built() and hvd.cuda_built()):
            # Every rank sees the same build: the same error everywhere, a clean end.
            raise ConfigError("--backend horovod on a GPU: this Horovod was built without NCCL/CUDA "
                              "(hvd.nccl_built() is false); rebuild it with HOROVOD_GPU_OPERATIONS=NCCL make setup "
                              "(docs/GPU.md), or train with --backend ddp, or on the CPU with --device cpu",
                              all_ranks=True)

    def allreduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return self._hvd.allreduce(tensor, op=self._hvd.Sum, name=None)

    def broadcast_state(self, model, optimizer) -> None:
        self._hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        self._hvd.broadcast_optimizer_state(optimizer, root_rank=0)

    def wrap_optimizer(self, optimizer, model):
        hvd, p = self._hvd, self.parallel
        compression = hvd.Compression.fp16 if p is not None and p.compression == "fp16" else hvd.Compression.none
        op = hvd.Adasum if p is not None and p.reduce_op == "adasum" else hvd.Average
        return hvd.DistributedOptimizer(
            optimizer,
            named_parameters=model.named_parameters(),
            compression=compression,
            op=op,
            backward_passes_per_step=p.backward_passes_per_step if p is not None else 1,
        )

    @property
    def _adasum(self) -> bool:
        return self.parallel is not None and self.parallel.reduce_op == "adasum"

    def finish_gradients(self, optimizer) -> None:
        # Adasum reduces each rank's parameter *update* inside step(), not the gradients.
        if not self._adasum:
            optimizer.synchronize()

    def step(self, optimizer, model, max_norm: float, scaler=None) -> None:
        # Clipping: averaged gradients; with Adasum each rank's own, before its local update.
        if self._adasum:
            apply_step(optimizer, model, max_norm, scaler, optimizer.step)
            return
        # Gradients were averaged in finish_gradients: step without a second
        # synchronization (Horovod's documented pattern for clipping and for AMP).
        with optimizer.skip_synchronize():
            apply_step(optimizer, model, max_norm, scaler, optimizer.step)

    def any_rank(self, flag: bool) -> bool:
        # Plain MPI on our communicator: microseconds, no Horovod negotiation cycle.
        return bool(self._comm.allreduce(int(flag), op=self._mpi.MAX))

    # A fixed name: Horovod names these collectives after type(obj) by default, and ranks
    # passing different types (rank 0 a checkpoint, the others None) then never match up.
    def broadcast_object(self, obj):
        return self._hvd.broadcast_object(obj, root_rank=0, name="hvd_stgnn.broadcast_object")

    def allgather_object(self, obj):
        return self._hvd.allgather_object(obj, name="hvd_stgnn.allgather_object")

    def start_timeline(self, path: str, mark_cycles: bool) -> None:
        self._hvd.start_timeline(path, mark_cycles=mark_cycles)

    def stop_timeline(self) -> None:
        self._hvd.stop_timeline()

    def abort(self, code: int = 1) -> None:
        self._comm.Abort(code)

    def shutdown(self) -> None:
        self._hvd.shutdown()
