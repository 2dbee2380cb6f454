"""Per-step phase timings: batch build, forward, backward + allreduce wait, optimizer step.

Each rank accumulates seconds per phase over an epoch; `summarize` turns every rank's
per-step means into min / median / max across ranks (ms).
"""

from __future__ import annotations

import statistics
import time

import torch

PHASES = ("batch", "forward", "backward", "optimizer")


class PhaseTimer:
    """`with timer.phase("forward"): ...` accumulates wall time; on CUDA it synchronizes
    first, so a phase is not charged for kernels queued by the one before."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.reset()

    def reset(self) -> None:
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.steps = 0

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def phase(self, name: str) -> "_Phase":
        return _Phase(self, name)

    def per_step_ms(self) -> dict[str, float]:
        n = max(1, self.steps)
        ms = {f"{p}_ms": 1e3 * self.seconds[p] / n for p in PHASES}
        ms["step_ms"] = sum(ms.values())
        return ms


class _Phase:
    def __init__(self, timer: PhaseTimer, name: str) -> None:
        self.timer, self.name = timer, name

    def __enter__(self) -> None:
        self.timer._sync()
        self.t0 = time.perf_counter()

    def __exit__(self, *exc) -> None:
        self.timer._sync()
        self.timer.seconds[self.name] += time.perf_counter() - self.t0


def summarize(per_rank: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """[{"batch_ms": .., ...} per rank] -> {"batch_ms": {"min", "median", "max"}, ...}."""
    keys = per_rank[0].keys()
    return {
        k: {"min": min(r[k] for r in per_rank), "median": statistics.median(r[k] for r in per_rank),
            "max": max(r[k] for r in per_rank)}
        for k in keys
    }
