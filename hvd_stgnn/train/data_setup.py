"""Everything a rank does before its first step: load, split, normalize, build sources.

1. the series (Backend.load_dataset): node-shared under MPI (rank 0 reads, one copy per
   node), this process's own copy otherwise;
2. train/val/test starts, checked against the world size (every rank alike);
3. exact z-score statistics of the training inputs: each rank sums its balanced share of
   the training starts, one allreduce of three numbers;
4. one BatchSource per split (batching/sources.py): index (shard or global) or materialized.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hvd_stgnn.batching import StartRange, StartSplit, balanced_range, input_moment_sums, num_windows, shard_range
from hvd_stgnn.batching import Scaler, split_starts, stats_from_sums
from hvd_stgnn.batching.sources import BatchingSpec, BatchSource, build_sources
from hvd_stgnn.config import Config
from hvd_stgnn.data.dataset import TrafficData
from hvd_stgnn.data.health import Health, health_sums, summarize_health
from hvd_stgnn.data.loader import LoadReport
from hvd_stgnn.errors import ConfigError, DataError
from hvd_stgnn.parallel import Backend


@dataclass
class RankData:
    data: TrafficData  # speed: the node-shared (or local) raw series
    splits: dict[str, StartRange]
    sources: dict[str, BatchSource]
    scaler: Scaler  # z-score of the training inputs; the sources' batches carry it
    load: LoadReport
    shared: object | None  # NodeSharedArray to free at the end, or None
    health: Health | None = None  # what the training span hides (data/health.py)

    def free(self) -> None:
        """Release the node-shared window (collective). The sources are unusable after."""
        self.sources.clear()
        self.data.speed = None
        if self.shared is not None:
            self.shared.free()
            self.shared = None


def preflight(cfg: Config) -> None:
    """Checks of the config alone, before any MPI call. The data file is checked after,
    by rank 0 alone, with the verdict broadcast (data/loader.py)."""
    if not cfg.data.path:
        raise ConfigError("--data is required")
    if cfg.train.results:
        parent = Path(cfg.train.results).resolve().parent
        existing = next((p for p in [parent, *parent.parents] if p.exists()), None)
        if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK):
            raise ConfigError(f"--results {cfg.train.results}: directory {existing} is not writable")


def memory_plan(cfg: Config, backend: Backend, device: torch.device) -> str:
    """Rank 0, before anything is loaded: this run's memory per node and rank (hvd_stgnn/plan)
    as one line; a ConfigError with the numbers when it cannot fit."""
    from hvd_stgnn.data.hdf5 import read_metadata
    from hvd_stgnn.plan import check_fits
    from hvd_stgnn.plan.estimate import fmt_bytes

    meta = read_metadata(cfg.data.path)
    plan = check_fits(cfg, meta.num_steps, meta.num_nodes, meta.num_edges, backend.size, backend.local_size,
                      device.type, interval_s=meta.interval_s)
    return f"node {fmt_bytes(plan.node_bytes)} predicted ({backend.local_size} rank(s) per node; --no-memory-check to skip)"


def plan_splits(cfg: Config, num_steps: int, world_size: int) -> StartSplit:
    """Train/val/test starts; a UserError when the series cannot feed `world_size` ranks."""
    try:
        split = split_starts(num_windows(num_steps, cfg.data.input_steps, cfg.data.horizon), cfg.data.split)
        shard_range(split.train, 0, world_size)
    except ValueError as exc:
        raise DataError(f"{cfg.data.path}: {exc}", all_ranks=True) from None
    return split


def prepare(cfg: Config, backend: Backend, device: torch.device, log) -> RankData:
    data, shared, report = backend.load_dataset(cfg.data.path)
    log(
        f"load: rank 0 read {report.data_bytes / 1e6:.1f} MB in {report.read_seconds:.2f} s "
        f"({report.read_mb_per_s:.0f} MB/s), broadcast to {report.num_nodes} node(s) in "
        f"{report.broadcast_seconds:.2f} s; one copy per node ({report.ranks_on_node} rank(s) on this node)"
        + (f"; {report.nonfinite_readings} NaN/inf readings treated as missing" if report.nonfinite_readings else "")
    )
    L, H = cfg.data.input_steps, cfg.data.horizon
    split = plan_splits(cfg, data.num_steps, backend.size)
    mine = balanced_range(split.train, backend.rank, backend.size)
    sums = backend.allreduce_sum(torch.from_numpy(input_moment_sums(data.speed, mine, L)))
    try:
        mean, std = stats_from_sums(sums.numpy())
    except ValueError as exc:
        raise DataError(f"{cfg.data.path}: {exc}", all_ranks=True) from None
    health = _health(data.speed, split, L, H, backend)
    log(f"data health (training span, steps {health.steps}): {health.summary()}")
    spec = BatchingSpec(L, H, mean, std, cfg.data.day_of_week)
    sources = build_sources(
        data.speed, data.timestamps, split.as_dict(), spec, backend.rank, backend.size, cfg.train.seed,
        shuffle=cfg.data.shuffle, data_mode=cfg.data.data_mode, device=device,
    )
    return RankData(data, split.as_dict(), sources, Scaler(mean, std), report, shared, health)


def _health(speed, split, L: int, H: int, backend: Backend) -> Health:
    """Missing/constant sensors and NaN storms over the steps training reads; each rank
    scans a balanced share, one allreduce of sums."""
    lo, hi = split.train.steps_touched(L, H)
    mine = balanced_range(StartRange(lo, hi), backend.rank, backend.size)
    per_sensor, missing = health_sums(speed, mine.start, mine.stop)
    steps = np.zeros(hi - lo)
    steps[mine.start - lo : mine.stop - lo] = missing
    both = backend.allreduce_sum(torch.from_numpy(np.concatenate([per_sensor.reshape(-1), steps]))).numpy()
    return summarize_health(both[: per_sensor.size].reshape(per_sensor.shape), both[per_sensor.size :])
