"""Evaluation: model metrics and baselines over whole splits, as reduced sums and counts."""

from __future__ import annotations

import hashlib

import torch

from hvd_stgnn.batching import StartRange, balanced_range
from hvd_stgnn.batching.sources import BatchSource
from hvd_stgnn.config import Config
from hvd_stgnn.metrics import HistoricalAverage, HorizonErrorSums, persistence, slot_sums, slots_of
from hvd_stgnn.parallel import Backend
from hvd_stgnn.results import Batching
from hvd_stgnn.train.data_setup import RankData
from hvd_stgnn.train.precision import Precision


def param_digest(model: torch.nn.Module) -> str:
    """SHA-256 of every parameter's bytes, in state_dict order (to compare ranks)."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def sample_starts(starts: torch.Tensor, max_windows: int, world_size: int) -> torch.Tensor:
    """At most ~max_windows over all ranks: each rank keeps an evenly spaced subset of its
    share (0: all). Deterministic, so every evaluation sees the same windows."""
    if max_windows <= 0 or len(starts) * world_size <= max_windows:
        return starts
    keep = max(1, -(-max_windows // world_size))
    return starts[torch.linspace(0, len(starts) - 1, keep).round().long().unique()]


def evaluate(model, source: BatchSource, backend: Backend, batch_size: int, max_windows: int = 0,
             precision: Precision | None = None) -> HorizonErrorSums:
    """Metrics over every window of the split (each rank its balanced share), or an evenly
    spaced sample of `max_windows`; collective."""
    backend.average_buffers(model)
    starts = sample_starts(source.eval_starts(), max_windows, backend.size)
    sums = HorizonErrorSums(source.gather.horizon)
    model.eval()
    with torch.no_grad():
        for lo in range(0, len(starts), batch_size):
            batch = source(starts[lo : lo + batch_size])
            out = precision.forward(model, batch.x) if precision is not None else model(batch.x)
            sums.update(batch.scaler.inverse(out), batch.y, batch.mask)
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
    mean = source.scaler.mean  # where a sensor has no reading to go by
    history = HistoricalAverage(sums.numpy(), slots, L, H, mean, device=source.gather.device)
    persist_sums, history_sums = HorizonErrorSums(H), HorizonErrorSums(H)
    starts = sample_starts(source.eval_starts(), cfg.train.eval_windows, backend.size)
    with torch.no_grad():
        for lo in range(0, len(starts), cfg.train.batch_size):
            chunk = starts[lo : lo + cfg.train.batch_size]
            batch = source(chunk)
            persist_sums.update(persistence(source.gather.raw_inputs(chunk), H, mean), batch.y, batch.mask)
            history_sums.update(history(chunk), batch.y, batch.mask)
    return {
        "persistence": persist_sums.reduced(backend.allreduce_sum).table(data.interval_s),
        "historical_average": history_sums.reduced(backend.allreduce_sum).table(data.interval_s),
        "historical_average_slots": "time-of-week" if weekly else "time-of-day",
    }


def batching_summary(rd: RankData, backend: Backend, device: torch.device) -> Batching:
    """What each rank holds, gathered to every rank (small)."""
    train = rd.sources["train"]
    mine = {
        "device_bytes": sum(src.device_bytes for src in rd.sources.values()),
        "train_steps_held": [train.gather.step_offset, train.gather.step_offset + train.gather.series.shape[0]],
    }
    ranks = backend.allgather_object(mine)
    return Batching(
        kind=train.kind,
        device=str(device),
        shares_node_memory=train.shares_node_memory,
        device_bytes_per_rank=[r["device_bytes"] for r in ranks],
        train_steps_held_per_rank=[r["train_steps_held"] for r in ranks],
    )
