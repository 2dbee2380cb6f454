"""`hvd-stgnn bench load`: seconds to read and broadcast a dataset, and node memory.

The parent runs one real mpirun job per rank count (jobs/local.sh); each job runs the
worker below (`python -m hvd_stgnn.bench.load --worker ...`), which loads the file the way
training does (rank 0 reads, node-shared window, leader broadcast) and reports per rank the
RSS/PSS of the window mapping and the process PSS. Summing PSS over a node's ranks counts
shared pages once, so `data_copies_on_node` = (sum of window PSS) / data bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _worker(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="hvd_stgnn.bench.load --worker")
    parser.add_argument("data")
    parser.add_argument("out")
    parser.add_argument("--digest", action="store_true", help="hash each rank's view (tests)")
    parser.add_argument("--max-message-bytes", type=int, default=0)
    parser.add_argument("--per-rank", action="store_true",
                        help="baseline: every rank reads its own private copy (PGT's distributed-index-batching)")
    args = parser.parse_args(argv)

    from mpi4py import MPI

    from hvd_stgnn.data import shared as shared_mod
    from hvd_stgnn.data.loader import load_local, load_node_shared
    from hvd_stgnn.errors import UserError
    from hvd_stgnn.profiling.memory import memory_of_range, process_pss_bytes

    comm = MPI.COMM_WORLD
    if args.max_message_bytes:
        shared_mod.MAX_MESSAGE_BYTES = args.max_message_bytes
    try:
        if args.per_rank:
            data, report = load_local(args.data)
            shared = _PrivateCopy(comm)
        else:
            data, shared, report = load_node_shared(args.data, comm, shared_mod.ranks_per_node_override())
    except UserError as exc:
        if comm.rank == 0:
            print(f"error: {exc}", file=sys.stderr)
        return 2
    speed = data.speed
    # Touch every page (a training run reads them all), then measure once all ranks have.
    digest = hashlib.sha256(speed.tobytes()).hexdigest() if args.digest else None
    if not args.digest:
        float(speed.sum(dtype="float64"))
    comm.Barrier()
    mapping = memory_of_range(speed.ctypes.data, speed.nbytes)
    row = {
        "rank": comm.rank,
        "node": shared.node_comm.bcast(comm.rank, root=0),
        "node_size": shared.node_comm.size,
        "is_leader": shared.is_leader,
        "writable": bool(speed.flags.writeable),
        "digest": digest,
        "mapping_size": mapping.size_bytes,
        "mapping_rss": mapping.rss_bytes,
        "mapping_pss": mapping.pss_bytes,
        "process_pss": process_pss_bytes(),
    }
    rows = comm.gather(row, root=0)
    if comm.rank == 0:
        nodes: dict[int, int] = {}
        for r in rows:
            nodes[r["node"]] = nodes.get(r["node"], 0) + r["mapping_pss"]
        result = {
            "np": comm.size,
            "mode": "per-rank" if args.per_rank else "node-shared",
            "num_nodes": report.num_nodes,
            "data_bytes": report.data_bytes,
            "nonfinite": report.nonfinite_readings,
            "read_seconds": report.read_seconds,
            "read_mb_per_s": report.read_mb_per_s,
            "broadcast_seconds": report.broadcast_seconds,
            "load_seconds": report.total_seconds,
            "data_copies_per_node": {str(n): pss / report.data_bytes for n, pss in nodes.items()},
            "node_pss_bytes": sum(r["process_pss"] for r in rows),
            "ranks": rows,
        }
        Path(args.out).write_text(json.dumps(result, indent=1))
    del speed, data
    shared.free()
    return 0


class _PrivateCopy:
    """Stands in for NodeSharedArray when every rank holds its own copy."""

    def __init__(self, comm) -> None:
        from hvd_stgnn.data.shared import node_communicator, ranks_per_node_override

        self.node_comm = node_communicator(comm, ranks_per_node_override())
        self.is_leader = self.node_comm.rank == 0

    def free(self) -> None:
        self.node_comm.Free()


def dataset_for(preset: str, seed: int, cache: Path) -> Path:
    """The preset's file in the cache, generated on first use."""
    from hvd_stgnn.data.synthetic import PRESETS, write_synthetic

    path = cache / f"{preset}-seed{seed}.h5"
    if not path.exists():
        p = PRESETS[preset]
        print(f"generating {path} ({p.num_nodes} x {p.num_steps})", file=sys.stderr)
        write_synthetic(path, p.num_nodes, p.num_steps, seed)
    return path


def run(data: Path, nps: list[int], ranks_per_node: int | None = None) -> dict:
    """One mpirun job per rank count and mode; returns the combined JSON-able summary."""
    runs = []
    for np_, per_rank in [(n, False) for n in nps] + [(n, True) for n in nps if n > 1]:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "load.json"
            env = dict(os.environ)
            if ranks_per_node:
                env["HVD_STGNN_RANKS_PER_NODE"] = str(ranks_per_node)
            cmd = ["bash", str(REPO / "jobs" / "local.sh"), "-np", str(np_), sys.executable, "-m",
                   "hvd_stgnn.bench.load", "--worker", str(data), str(out)] + (["--per-rank"] if per_rank else [])
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                raise RuntimeError(f"load job with -np {np_} failed:\n{proc.stderr[-2000:]}")
            res = json.loads(out.read_text())
            res["job_seconds"] = time.perf_counter() - t0
            res.pop("ranks")
            runs.append(res)
    data_bytes = runs[0]["data_bytes"]
    return {"file": str(data), "file_bytes": data.stat().st_size, "data_mb": data_bytes / 1e6, "runs": runs}


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        sys.exit(_worker(sys.argv[2:]))
    sys.exit("usage: python -m hvd_stgnn.bench.load --worker DATA OUT [--digest] [--max-message-bytes N]")
