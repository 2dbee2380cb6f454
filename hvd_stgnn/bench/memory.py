"""`hvd-stgnn bench memory`: resident data bytes per rank and per node, index vs materialized.

Builds, in one process, the exact batch sources each rank of a W-rank job would hold
(batching/sources.py) and adds up the bytes of their tensors:
- index (shard): each rank's slices are views of the node's one shared copy on CPU, or a
  private device copy of only its steps on GPU; the node holds the series once;
- materialized: every rank holds every window of every split, x (S, L, N, F),
  y (S, H, N), mask (S, H, N), plus the node's shared series it was built from.
"""

from __future__ import annotations

from hvd_stgnn.batching import num_windows, split_starts
from hvd_stgnn.batching.sources import BatchingSpec, build_sources
from hvd_stgnn.data import read_dataset


def run(path, world_sizes: list[int], input_steps: int = 12, horizon: int = 12, day_of_week: bool = False) -> dict:
    data = read_dataset(path)
    splits = split_starts(num_windows(data.num_steps, input_steps, horizon)).as_dict()
    spec = BatchingSpec(input_steps, horizon, 50.0, 10.0, day_of_week)
    series_bytes = data.speed.nbytes
    build = lambda rank, size, mode: build_sources(  # noqa: E731
        data.speed, data.timestamps, splits, spec, rank, size, seed=0, data_mode=mode)
    # Every rank of a materialized job holds the same full set: build it once.
    materialized = build(0, 1, "materialized")
    mat_rank = sum(src.device_bytes for src in materialized.values())
    features = materialized["train"].x.shape[-1]
    del materialized
    rows = []
    for size in world_sizes:
        index_ranks = [sum(src.device_bytes for src in build(r, size, "index").values()) for r in range(size)]
        rows.append({
            "ranks": size,
            "index_rank_bytes_max": max(index_ranks),  # device bytes (CPU: views of the node copy)
            "index_node_bytes": series_bytes,  # one shared copy, whatever the ranks
            "materialized_rank_bytes": mat_rank,
            "materialized_node_bytes": series_bytes + size * mat_rank,
            "node_ratio": (series_bytes + size * mat_rank) / series_bytes,
            "rank_ratio": mat_rank / max(index_ranks),
        })
    return {
        "file": str(path),
        "steps": data.num_steps,
        "nodes": data.num_nodes,
        "input_steps": input_steps,
        "horizon": horizon,
        "features": features,
        "series_bytes": series_bytes,
        "windows": sum(s.count for s in splits.values()),
        "rows": rows,
    }
