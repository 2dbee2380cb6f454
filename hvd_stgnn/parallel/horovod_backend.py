"""Horovod over MPI: gradient allreduce through `hvd.DistributedOptimizer`."""

from __future__ import annotations

import torch

from hvd_stgnn.parallel.base import Backend


class HorovodBackend(Backend):
    name = "horovod"

    def __init__(self) -> None:
        # mpi4py first: Horovod then reuses the MPI library state mpi4py initialised
        # (MPI_THREAD_MULTIPLE), and the communicator is shared with our own MPI code.
        from mpi4py import MPI
        import horovod.torch as hvd

        hvd.init(comm=MPI.COMM_WORLD)
        if not hvd.mpi_enabled():
            raise RuntimeError("Horovod was initialised without MPI; rebuild it with HOROVOD_WITH_MPI=1 (tools/setup.sh)")
        self._hvd = hvd
        self.comm = MPI.COMM_WORLD
        self.rank = hvd.rank()
        self.size = hvd.size()
        self.local_rank = hvd.local_rank()
        self.local_size = hvd.local_size()

    def allreduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return self._hvd.allreduce(tensor, op=self._hvd.Sum, name=None)

    def broadcast_state(self, model, optimizer) -> None:
        self._hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        self._hvd.broadcast_optimizer_state(optimizer, root_rank=0)

    def wrap_optimizer(self, optimizer, model):
        return self._hvd.DistributedOptimizer(
            optimizer,
            named_parameters=model.named_parameters(),
            op=self._hvd.Average,
        )

    def allgather_object(self, obj):
        return self._hvd.allgather_object(obj)

    def abort(self, code: int = 1) -> None:
        self.comm.Abort(code)

    def shutdown(self) -> None:
        self._hvd.shutdown()
