"""Load a dataset for a job: world rank 0 reads and validates, every node gets one copy.

Protocol (collective over the communicator):
1. rank 0 validates the file and reads the metadata; the verdict (metadata or the error
   line) is broadcast, so every rank raises the same DataError on bad input: no hang;
2. a node-shared window of (T, N) float32 per node; rank 0 reads /speed into its node's
   window in large time slabs (read_direct, no intermediate copy), counting NaN/inf;
3. rank 0 broadcasts the array to the other node leaders in messages < 2 GiB;
4. every rank gets a read-only numpy view of its node's copy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from hvd_stgnn.data.dataset import TrafficData
from hvd_stgnn.data.hdf5 import read_dataset, read_metadata, read_speed_into
from hvd_stgnn.errors import DataError, root_verdict


@dataclass
class LoadReport:
    read_seconds: float = 0.0  # rank 0: file -> memory
    broadcast_seconds: float = 0.0  # leaders: rank 0 -> other nodes
    total_seconds: float = 0.0
    data_bytes: int = 0
    nonfinite_readings: int = 0  # NaN/inf speeds, treated as missing
    num_nodes: int = 1
    ranks_on_node: int = 1

    @property
    def read_mb_per_s(self) -> float:
        return self.data_bytes / 1e6 / self.read_seconds if self.read_seconds > 0 else float("nan")


def _agree(comm, work):
    """`work()` on rank 0, its result or its DataError on every rank (errors.root_verdict)."""
    return root_verdict(work, comm.rank == 0, lambda obj: comm.bcast(obj, root=0))


def load_local(path) -> tuple[TrafficData, LoadReport]:
    """Single process: read the whole file into process memory."""
    t0 = time.perf_counter()
    data = read_dataset(path)
    seconds = time.perf_counter() - t0
    report = LoadReport(seconds, 0.0, seconds, data.speed.nbytes, int(data.attrs.get("nonfinite_readings", 0)))
    return data, report


def load_node_shared(path, comm, ranks_per_node: int | None = None):
    """Returns (data with speed = read-only node-shared view, NodeSharedArray, LoadReport).

    The caller frees the NodeSharedArray (collectively) when done with `data.speed`.
    """
    from hvd_stgnn.data.shared import NodeSharedArray

    t_start = time.perf_counter()
    meta = _agree(comm, lambda: read_metadata(path))
    shared = NodeSharedArray(comm, (meta.num_steps, meta.num_nodes), np.float32, ranks_per_node)

    def read():
        t0 = time.perf_counter()
        return read_speed_into(path, shared.array), time.perf_counter() - t0

    try:
        nonfinite, read_seconds = _agree(comm, read)
    except DataError:
        shared.free()
        raise
    t0 = time.perf_counter()
    shared.broadcast_from_root()
    report = LoadReport(
        read_seconds=read_seconds,
        broadcast_seconds=time.perf_counter() - t0,
        total_seconds=time.perf_counter() - t_start,
        data_bytes=shared.nbytes,
        nonfinite_readings=nonfinite,
        num_nodes=shared.num_nodes,
        ranks_on_node=shared.node_comm.size,
    )
    meta.speed = shared.freeze()
    return meta, shared, report
