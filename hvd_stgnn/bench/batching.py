"""`hvd-stgnn bench batching`: milliseconds per batch against the memcpy bound.

For B starts, L+H steps and N sensors a batch gathers B*(L+H) rows of N float32. The bound
is one contiguous copy of the same bytes into a new tensor (`clone`, which allocates as
`index_select` does) on the same device. Reported as medians over repeats:
- gather: the one `index_select` of the rows (what index-batching adds over a copy);
- batch: the whole WindowGather call (gather + normalization + time features + mask).
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from hvd_stgnn.batching.gather import WindowGather


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_ms(fn, device, repeats: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def bench_one(num_nodes: int, batch_size: int = 64, input_steps: int = 12, horizon: int = 12,
              num_steps: int = 4032, device: str = "cpu", repeats: int = 50, seed: int = 0) -> dict:
    dev = torch.device(device)
    rng = np.random.default_rng(seed)
    speed = rng.uniform(10, 70, size=(num_steps, num_nodes)).astype(np.float32)
    timestamps = 1_704_067_200 + 300 * np.arange(num_steps, dtype=np.int64)
    gather = WindowGather(torch.from_numpy(speed).to(dev), timestamps, input_steps, horizon, 50.0, 10.0)
    span = input_steps + horizon
    starts = torch.from_numpy(rng.integers(0, num_steps - span + 1, size=batch_size)).to(dev)
    steps = (starts[:, None] + torch.arange(span, device=dev)).reshape(-1)
    rows = batch_size * span
    contiguous = gather.series[:rows].contiguous() if rows <= num_steps else torch.empty(rows, num_nodes, device=dev)

    copy_ms = _median_ms(lambda: contiguous.clone(), dev, repeats)
    gather_ms = _median_ms(lambda: gather.series.index_select(0, steps), dev, repeats)
    batch_ms = _median_ms(lambda: gather(starts), dev, repeats)
    nbytes = rows * num_nodes * 4
    return {
        "device": str(dev),
        "nodes": num_nodes,
        "batch_size": batch_size,
        "input_steps": input_steps,
        "horizon": horizon,
        "gathered_mb": nbytes / 1e6,
        "memcpy_ms": copy_ms,
        "gather_ms": gather_ms,
        "batch_ms": batch_ms,
        "gather_over_memcpy": gather_ms / copy_ms,
        "batch_over_memcpy": batch_ms / copy_ms,
        "memcpy_gb_per_s": nbytes / 1e9 / (copy_ms / 1e3),
        "threads": torch.get_num_threads(),
    }


def run(nodes: list[int], batch_size: int, device: str, repeats: int) -> list[dict]:
    return [bench_one(n, batch_size=batch_size, device=device, repeats=repeats) for n in nodes]
