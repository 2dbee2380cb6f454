"""The training loop: one model, batch sources per split, a backend for everything distributed.

Data preparation (load, split, statistics, sources) is in data_setup.py. Every rank runs
the same number of steps per epoch; validation/test metrics are sums and counts, reduced.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time

import torch
from tqdm import tqdm

from hvd_stgnn.batching import StartRange, balanced_range, num_batches
from hvd_stgnn.batching.sources import BatchSource
from hvd_stgnn.config import Config
from hvd_stgnn.metrics import HistoricalAverage, HorizonErrorSums, masked_mae_loss, persistence, slot_sums, slots_of
from hvd_stgnn.models import ModelInputs, build_model
from hvd_stgnn.parallel import Backend
from hvd_stgnn.train.data_setup import RankData, prepare, resolve_device
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


def evaluate(model, source: BatchSource, backend: Backend, batch_size: int, mean: float, std: float) -> HorizonErrorSums:
    """Metrics over every window of the split (each rank its balanced share); collective."""
    backend.average_buffers(model)
    starts = source.eval_starts()
    sums = HorizonErrorSums(source.gather.horizon)
    model.eval()
    with torch.no_grad():
        for lo in range(0, len(starts), batch_size):
            batch = source(starts[lo : lo + batch_size])
            sums.update(model(batch.x) * std + mean, batch.y, batch.mask)
    model.train()
    return sums.reduced(backend.allreduce_sum)


def evaluate_baselines(rd: RankData, cfg: Config, backend: Backend) -> dict:
    """Persistence and historical average on the test windows, same metrics; collective."""
    L, H = cfg.data.input_steps, cfg.data.horizon
    data, source = rd.data, rd.sources["test"]
    # Historical-average table from the raw steps the training windows touch, each rank
    # summing a balanced share, one allreduce.
    # Never past the first test target, even when val holds fewer than H windows.
    span = StartRange(0, min(rd.splits["train"].steps_touched(L, H)[1], rd.splits["test"].start + L))
    weekly = span.count * data.interval_s >= 14 * 86_400
    slots, num_slots = slots_of(data.timestamps, data.interval_s, weekly)
    mine = balanced_range(span, backend.rank, backend.size)
    sums = backend.allreduce_sum(torch.from_numpy(slot_sums(data.speed, slots, num_slots, mine.start, mine.stop)))
    history = HistoricalAverage(sums.numpy(), slots, L, H, rd.mean)
    persist_sums, history_sums = HorizonErrorSums(H), HorizonErrorSums(H)
    starts = source.eval_starts()
    with torch.no_grad():
        for lo in range(0, len(starts), cfg.train.batch_size):
            chunk = starts[lo : lo + cfg.train.batch_size]
            batch = source(chunk)
            persist_sums.update(persistence(source.gather.raw_inputs(chunk), H, rd.mean), batch.y, batch.mask)
            history_sums.update(history(chunk).to(batch.y.device), batch.y, batch.mask)
    return {
        "persistence": persist_sums.reduced(backend.allreduce_sum).table(data.interval_s),
        "historical_average": history_sums.reduced(backend.allreduce_sum).table(data.interval_s),
        "historical_average_slots": "time-of-week" if weekly else "time-of-day",
    }


def _batching_summary(rd: RankData, backend: Backend, device: torch.device) -> dict:
    """What each rank holds, gathered to every rank (small)."""
    train = rd.sources["train"]
    mine = {
        "device_bytes": sum(src.device_bytes for src in rd.sources.values()),
        "train_steps_held": [train.gather.step_offset, train.gather.step_offset + train.gather.series.shape[0]],
    }
    ranks = backend.allgather_object(mine)
    return {
        "kind": train.kind,
        "device": str(device),
        "shares_node_memory": train.shares_node_memory,
        "device_bytes_per_rank": [r["device_bytes"] for r in ranks],
        "train_steps_held_per_rank": [r["train_steps_held"] for r in ranks],
    }


def train(cfg: Config, backend: Backend) -> dict:
    """Run the whole job; returns the results dict (rank 0 also writes it to cfg.train.results)."""
    t_start = time.perf_counter()
    log = lambda message: _log(backend, message)  # noqa: E731
    torch.set_num_threads(threads_per_rank(cfg.train.threads, backend.local_size))
    torch.manual_seed(cfg.train.seed)
    device = resolve_device(cfg.train.device, backend.local_rank)

    rd = prepare(cfg, backend, device, log)
    data, splits, sources = rd.data, rd.splits, rd.sources
    train_source = sources["train"]
    per_rank = len(train_source.epoch_starts(1))
    steps_per_epoch = num_batches(per_rank, cfg.train.batch_size)
    batching = _batching_summary(rd, backend, device)
    log(
        f"data: {cfg.data.path}  T={data.num_steps} N={data.num_nodes} E={data.num_edges}  "
        f"windows train/val/test={splits['train'].count}/{splits['val'].count}/{splits['test'].count}  "
        f"mean={rd.mean:.3f} std={rd.std:.3f}"
    )
    where = "views of node-shared memory" if batching["shares_node_memory"] else f"private on {device}"
    log(
        f"batching: {train_source.kind}  {per_rank} training windows/rank, {steps_per_epoch} steps/epoch "
        f"(ranks: {backend.size}, {backend.name}; {splits['train'].count - per_rank * backend.size} tail window(s) "
        f"{'dropped' if per_rank * backend.size <= splits['train'].count else 'repeated'}); data held per rank: "
        f"max {max(batching['device_bytes_per_rank']) / 1e6:.2f} MB ({where}); threads/rank: {torch.get_num_threads()}"
    )

    model = build_model(
        cfg.model.name,
        ModelInputs(
            edge_index=torch.from_numpy(data.edge_index),
            edge_weight=torch.from_numpy(data.edge_weight),
            num_nodes=data.num_nodes,
            in_features=train_source.num_features,
            input_steps=cfg.data.input_steps,
            horizon=cfg.data.horizon,
            hidden=cfg.model.hidden,
            graph_mode=cfg.model.graph_mode,
            layers=cfg.model.layers,
            diffusion_steps=cfg.model.diffusion_steps,
            teacher_decay=cfg.model.teacher_decay,
            adaptive_adjacency=cfg.model.adaptive_adjacency,
        ),
    ).to(device)
    uses_teacher = getattr(model, "uses_teacher", False)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    backend.broadcast_state(model, optimizer)
    optimizer = backend.wrap_optimizer(optimizer, model)
    log(f"model: {cfg.model.name}  {sum(p.numel() for p in model.parameters()):,} parameters on {device}")

    epochs = []
    B = cfg.train.batch_size
    for epoch in range(1, cfg.train.epochs + 1):
        t0 = time.perf_counter()
        order = train_source.epoch_starts(epoch)
        train_sums = HorizonErrorSums(cfg.data.horizon)
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch}/{cfg.train.epochs}", disable=not backend.is_root,
                   leave=False, dynamic_ncols=True, mininterval=0.5)
        for step in bar:
            batch = train_source(order[step * B : (step + 1) * B])
            teacher = ((batch.y - rd.mean) / rd.std).masked_fill(~batch.mask, 0.0) if uses_teacher else None
            pred = model(batch.x, teacher) * rd.std + rd.mean
            loss = masked_mae_loss(pred, batch.y, batch.mask)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            train_sums.update(pred.detach(), batch.y, batch.mask)
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        bar.close()
        train_mae = train_sums.reduced(backend.allreduce_sum).mae
        val_mae = evaluate(model, sources["val"], backend, B, rd.mean, rd.std).mae
        seconds = time.perf_counter() - t0
        epochs.append({"epoch": epoch, "train_mae": train_mae, "val_mae": val_mae, "seconds": seconds})
        log(f"epoch {epoch:3d}/{cfg.train.epochs}  train MAE {train_mae:7.4f}  val MAE {val_mae:7.4f}  ({seconds:.1f} s)")

    test = evaluate(model, sources["test"], backend, B, rd.mean, rd.std)
    test_table = test.table(data.interval_s)
    baselines = evaluate_baselines(rd, cfg, backend) if cfg.train.baselines else {}
    digests = backend.allgather_object(param_digest(model))
    results = {
        "model": cfg.model.name,
        "world_size": backend.size,
        "backend": backend.name,
        "epochs": epochs,
        "test": test_table,
        "test_windows": splits["test"].count,
        "baselines": baselines,
        "normalization": {"mean": rd.mean, "std": rd.std},
        "load": {**dataclasses.asdict(rd.load), "read_mb_per_s": rd.load.read_mb_per_s},
        "batching": batching,
        "param_digests": digests,
        "total_seconds": time.perf_counter() - t_start,
        "config": cfg.to_dict(),
    }
    log(format_test_table(test_table, backend.size, splits["test"].count, baselines))
    if len(set(digests)) != 1:
        raise RuntimeError(f"ranks ended with different parameters: {digests}")
    if backend.is_root and cfg.train.results:
        write_json_atomic(cfg.train.results, results)
        log(f"results: {cfg.train.results}")
    rd.free()
    return results
