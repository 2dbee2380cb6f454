"""The training loop: index-batched data, one model, a backend for everything distributed.

Every rank: loads the series, computes the exact normalization statistics from sums over
its share of the training starts (one allreduce), trains on its own contiguous shard of
training starts (same number of steps on every rank), and evaluates its balanced share of
validation/test windows; metrics are reduced as sums and counts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from hvd_stgnn.batching import (
    StartRange,
    StartSplit,
    WindowGather,
    balanced_range,
    epoch_order,
    input_moment_sums,
    num_batches,
    num_windows,
    shard_range,
    split_starts,
    stats_from_sums,
)
from hvd_stgnn.config import Config
from hvd_stgnn.data.loader import LoadReport, load_local, load_node_shared
from hvd_stgnn.errors import ConfigError, DataError
from hvd_stgnn.metrics import HorizonErrorSums, masked_mae_loss
from hvd_stgnn.models import ModelInputs, build_model
from hvd_stgnn.parallel import Backend
from hvd_stgnn.train.results import format_test_table, write_json_atomic


def _log(backend: Backend, message: str) -> None:
    if backend.is_root:
        tqdm.write(message)


def threads_per_rank(requested: int, local_size: int) -> int:
    if requested > 0:
        return requested
    return max(1, (os.cpu_count() or 1) // max(1, local_size))


def param_digest(model: torch.nn.Module) -> str:
    """SHA-256 of every parameter's bytes, in state_dict order (to compare ranks)."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@dataclass
class _Setup:
    gather: WindowGather
    splits: dict[str, StartRange]
    mean: float
    std: float
    interval_s: int
    load: LoadReport


def plan_splits(cfg: Config, num_steps: int, world_size: int) -> StartSplit:
    """Train/val/test starts; a UserError when the series cannot feed `world_size` ranks."""
    try:
        split = split_starts(num_windows(num_steps, cfg.data.input_steps, cfg.data.horizon), cfg.data.split)
        shard_range(split.train, 0, world_size)
    except ValueError as exc:
        raise DataError(f"{cfg.data.path}: {exc}", all_ranks=True) from None
    return split


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


def _load(cfg: Config, backend: Backend):
    """(data, handle to free at the end or None, LoadReport): node-shared under MPI."""
    if backend.comm is None:
        data, report = load_local(cfg.data.path)
        return data, None, report
    from hvd_stgnn.data.shared import ranks_per_node_override  # imports mpi4py: MPI runs only

    data, shared, report = load_node_shared(cfg.data.path, backend.comm, ranks_per_node_override())
    return data, shared, report


def _prepare_data(cfg: Config, backend: Backend):
    data, shared, report = _load(cfg, backend)
    _log(
        backend,
        f"load: rank 0 read {report.data_bytes / 1e6:.1f} MB in {report.read_seconds:.2f} s "
        f"({report.read_mb_per_s:.0f} MB/s), broadcast to {report.num_nodes} node(s) in "
        f"{report.broadcast_seconds:.2f} s; one copy per node ({report.ranks_on_node} rank(s) on this node)"
        + (f"; {report.nonfinite_readings} NaN/inf readings treated as missing" if report.nonfinite_readings else ""),
    )
    L, H = cfg.data.input_steps, cfg.data.horizon
    split = plan_splits(cfg, data.num_steps, backend.size)
    # Exact training-input statistics: each rank sums its share, one allreduce.
    mine = balanced_range(split.train, backend.rank, backend.size)
    sums = backend.allreduce_sum(torch.from_numpy(input_moment_sums(data.speed, mine, L)))
    try:
        mean, std = stats_from_sums(sums.numpy())
    except ValueError as exc:
        raise DataError(f"{cfg.data.path}: {exc}", all_ranks=True) from None
    with warnings.catch_warnings():
        # The node-shared series is read-only on purpose; torch warns it cannot write it.
        warnings.simplefilter("ignore", UserWarning)
        series = torch.from_numpy(data.speed)  # a view, not a copy
    gather = WindowGather(series, data.timestamps, L, H, mean, std)
    return _Setup(gather, split.as_dict(), mean, std, data.interval_s, report), data, shared


def evaluate(model, gather: WindowGather, split: StartRange, backend: Backend, batch_size: int, mean: float, std: float) -> HorizonErrorSums:
    """Metrics over every window of `split` (each rank its balanced share); collective."""
    mine = balanced_range(split, backend.rank, backend.size)
    sums = HorizonErrorSums(gather.horizon)
    model.eval()
    with torch.no_grad():
        for lo in range(mine.start, mine.stop, batch_size):
            starts = torch.arange(lo, min(lo + batch_size, mine.stop))
            batch = gather(starts)
            pred = model(batch.x) * std + mean
            sums.update(pred, batch.y, batch.mask)
    model.train()
    return sums.reduced(backend.allreduce_sum)


def train(cfg: Config, backend: Backend) -> dict:
    """Run the whole job; returns the results dict (rank 0 also writes it to cfg.train.results)."""
    t_start = time.perf_counter()
    torch.set_num_threads(threads_per_rank(cfg.train.threads, backend.local_size))
    torch.manual_seed(cfg.train.seed)

    setup, data, shared = _prepare_data(cfg, backend)
    gather, splits = setup.gather, setup.splits
    shard = shard_range(splits["train"], backend.rank, backend.size)
    steps_per_epoch = num_batches(shard.count, cfg.train.batch_size)
    _log(
        backend,
        f"data: {cfg.data.path}  T={data.num_steps} N={data.num_nodes} E={data.num_edges}  "
        f"windows train/val/test={splits['train'].count}/{splits['val'].count}/{splits['test'].count}  "
        f"mean={setup.mean:.3f} std={setup.std:.3f}",
    )
    _log(
        backend,
        f"ranks: {backend.size} ({backend.name})  shard per rank: {shard.count} windows, "
        f"{steps_per_epoch} steps/epoch; dropped {splits['train'].count - shard.count * backend.size} "
        f"tail training window(s)  threads/rank: {torch.get_num_threads()}",
    )

    model = build_model(
        cfg.model.name,
        ModelInputs(
            edge_index=torch.from_numpy(data.edge_index),
            edge_weight=torch.from_numpy(data.edge_weight),
            num_nodes=data.num_nodes,
            in_features=gather.num_features,
            input_steps=cfg.data.input_steps,
            horizon=cfg.data.horizon,
            hidden=cfg.model.hidden,
            graph_mode=cfg.model.graph_mode,
        ),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    backend.broadcast_state(model, optimizer)
    optimizer = backend.wrap_optimizer(optimizer, model)
    n_params = sum(p.numel() for p in model.parameters())
    _log(backend, f"model: {cfg.model.name}  {n_params:,} parameters")

    epochs = []
    for epoch in range(1, cfg.train.epochs + 1):
        t0 = time.perf_counter()
        order = torch.from_numpy(epoch_order(shard, cfg.train.seed, epoch, backend.rank))
        train_sums = HorizonErrorSums(cfg.data.horizon)
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"epoch {epoch}/{cfg.train.epochs}",
            disable=not backend.is_root,
            leave=False,
            dynamic_ncols=True,
            mininterval=0.5,
        )
        for step in bar:
            batch = gather(order[step * cfg.train.batch_size : (step + 1) * cfg.train.batch_size])
            pred = model(batch.x) * setup.std + setup.mean
            loss = masked_mae_loss(pred, batch.y, batch.mask)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            train_sums.update(pred.detach(), batch.y, batch.mask)
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        bar.close()
        train_mae = train_sums.reduced(backend.allreduce_sum).mae
        val_mae = evaluate(model, gather, splits["val"], backend, cfg.train.batch_size, setup.mean, setup.std).mae
        seconds = time.perf_counter() - t0
        epochs.append({"epoch": epoch, "train_mae": train_mae, "val_mae": val_mae, "seconds": seconds})
        _log(backend, f"epoch {epoch:3d}/{cfg.train.epochs}  train MAE {train_mae:7.4f}  val MAE {val_mae:7.4f}  ({seconds:.1f} s)")

    test = evaluate(model, gather, splits["test"], backend, cfg.train.batch_size, setup.mean, setup.std)
    test_table = test.table(setup.interval_s)
    digests = backend.allgather_object(param_digest(model))
    results = {
        "model": cfg.model.name,
        "world_size": backend.size,
        "backend": backend.name,
        "epochs": epochs,
        "test": test_table,
        "test_windows": splits["test"].count,
        "normalization": {"mean": setup.mean, "std": setup.std},
        "load": {**dataclasses.asdict(setup.load), "read_mb_per_s": setup.load.read_mb_per_s},
        "param_digests": digests,
        "total_seconds": time.perf_counter() - t_start,
        "config": cfg.to_dict(),
    }
    _log(backend, format_test_table(test_table, backend.size, splits["test"].count))
    if len(set(digests)) != 1:
        raise RuntimeError(f"ranks ended with different parameters: {digests}")
    if backend.is_root and cfg.train.results:
        write_json_atomic(cfg.train.results, results)
        _log(backend, f"results: {cfg.train.results}")
    del gather, setup
    if shared is not None:
        shared.free()
    return results
