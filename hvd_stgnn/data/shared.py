"""One copy per node: an array in an MPI shared-memory window, read-only to every rank.

Ranks are grouped by node with `Split_type(COMM_TYPE_SHARED)`; the node leader (lowest
world rank of the node) allocates the window with `Win.Allocate_shared`, the other ranks
map the same memory with `Shared_query`. The node holds the bytes once whatever its rank
count; each rank sees them as a numpy array, made read-only once filled.

`ranks_per_node` (tests only, or env HVD_STGNN_RANKS_PER_NODE) groups consecutive world
ranks into pretend nodes, so a multi-node layout (several leaders) runs on one machine.
"""

from __future__ import annotations

import os

import numpy as np
from mpi4py import MPI

RANKS_PER_NODE_ENV = "HVD_STGNN_RANKS_PER_NODE"
# MPI counts are C ints: keep every message well under 2 GiB.
MAX_MESSAGE_BYTES = 1 << 30


def ranks_per_node_override() -> int | None:
    value = os.environ.get(RANKS_PER_NODE_ENV, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{RANKS_PER_NODE_ENV}={value!r}: must be a positive integer")
    return int(value)


def node_communicator(comm: MPI.Comm, ranks_per_node: int | None = None) -> MPI.Comm:
    """Ranks that share memory (a node), ordered by world rank."""
    if ranks_per_node:
        return comm.Split(color=comm.rank // ranks_per_node, key=comm.rank)
    return comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.rank)


class NodeSharedArray:
    """An array of `shape`/`dtype` allocated once per node. Collective over `comm`.

    Attributes: array (np.ndarray, the node's memory; only the leader writes, before
    `broadcast_from_root`), node_comm, leader_comm (COMM_NULL on non-leaders), is_leader,
    num_nodes. Views handed out by `freeze` are invalid after `free`.
    """

    def __init__(self, comm: MPI.Comm, shape: tuple[int, ...], dtype, ranks_per_node: int | None = None) -> None:
        self.comm = comm
        self.dtype = np.dtype(dtype)
        self.shape = tuple(int(s) for s in shape)
        self.node_comm = node_communicator(comm, ranks_per_node)
        self.is_leader = self.node_comm.rank == 0
        self.leader_comm = comm.Split(0 if self.is_leader else MPI.UNDEFINED, key=comm.rank)
        nbytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        self.nbytes = nbytes
        self.win = MPI.Win.Allocate_shared(nbytes if self.is_leader else 0, self.dtype.itemsize, comm=self.node_comm)
        buf, _ = self.win.Shared_query(0)
        self.array = np.ndarray(self.shape, dtype=self.dtype, buffer=buf) if nbytes else np.empty(self.shape, self.dtype)
        self.num_nodes = comm.allreduce(1 if self.is_leader else 0)
        self._freed = False
        self.win.Fence()  # open the first access epoch for the fill

    def broadcast_from_root(self, max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        """World rank 0 (a leader) has filled its node's array: copy it to every other node.

        Leaders receive in row slabs of < max_message_bytes; then each node synchronizes
        so no rank reads before its leader has written. Collective over `comm`.
        """
        if self.leader_comm != MPI.COMM_NULL and self.leader_comm.size > 1 and self.nbytes:
            flat = self.array.reshape(self.shape[0], -1) if self.array.ndim > 1 else self.array.reshape(-1, 1)
            row_bytes = max(1, flat.shape[1] * self.dtype.itemsize)
            rows = max(1, max_message_bytes // row_bytes)
            for r0 in range(0, flat.shape[0], rows):
                self.leader_comm.Bcast(flat[r0 : r0 + rows], root=0)
        # A fence over the node orders the leader's stores before every rank's loads.
        self.win.Fence()

    def freeze(self) -> np.ndarray:
        """A read-only view of the filled array (the writable one stays private)."""
        view = self.array.view()
        view.flags.writeable = False
        return view

    def free(self) -> None:
        """Release the window (collective over the node). Safe to call twice."""
        if self._freed:
            return
        self._freed = True
        self.array = None  # drop our reference to the window memory before freeing it
        self.win.Free()
        if self.leader_comm != MPI.COMM_NULL:
            self.leader_comm.Free()
        self.node_comm.Free()

    def __enter__(self) -> "NodeSharedArray":
        return self

    def __exit__(self, *exc) -> None:
        self.free()
