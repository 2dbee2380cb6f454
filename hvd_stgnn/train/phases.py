"""Per-step phase timings (batch build, forward, backward + allreduce wait, optimizer step)
and throughput.

Each rank accumulates seconds per phase over an epoch; `summarize` turns every rank's
per-step means into min / median / max across ranks (ms). `StepTracker` is what the trainer
calls: phases per epoch, the job's step count, and samples/s after the warm-up steps.
"""

from __future__ import annotations

import contextlib
import statistics
import time

import torch

from hvd_stgnn.results import EpochPhases, Timing

PHASES = ("batch", "forward", "backward", "optimizer")


class PhaseTimer:
    """`with timer.phase("forward"): ...` accumulates the phase's time.

    CPU: wall time. GPU: by default a pair of CUDA events per phase, read once per epoch
    (`per_step_ms` synchronizes then), so timing adds no host-device synchronization to the
    steps; the events measure when the GPU reached each boundary, which charges a phase
    for the kernels it queued, not those of the phase before. `sync=True` (--sync-timings)
    synchronizes around every phase instead: exact wall time per phase, slower steps.
    """

    def __init__(self, device: torch.device, sync: bool = False) -> None:
        cuda = device.type == "cuda"
        self.use_events, self.sync = cuda and not sync, cuda and sync
        self.reset()

    def reset(self) -> None:
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.steps = 0
        self._events: list[tuple[str, object, object]] = []  # (phase, start, end) not read yet

    @contextlib.contextmanager
    def phase(self, name: str):
        if self.use_events:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self._events.append((name, start, end))
            return
        if self.sync:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        yield
        if self.sync:
            torch.cuda.synchronize()
        self.seconds[name] += time.perf_counter() - t0

    def _read_events(self) -> None:
        if self._events:
            torch.cuda.synchronize()
            for name, start, end in self._events:
                self.seconds[name] += start.elapsed_time(end) / 1e3
            self._events = []

    def per_step_ms(self) -> dict[str, float]:
        self._read_events()
        n = max(1, self.steps)
        ms = {f"{p}_ms": 1e3 * self.seconds[p] / n for p in PHASES}
        ms["step_ms"] = sum(ms.values())
        return ms


def summarize(per_rank: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """[{"batch_ms": .., ...} per rank] -> {"batch_ms": {"min", "median", "max"}, ...}."""
    keys = per_rank[0].keys()
    return {
        k: {"min": min(r[k] for r in per_rank), "median": statistics.median(r[k] for r in per_rank),
            "max": max(r[k] for r in per_rank)}
        for k in keys
    }


# Throughput leaves out the job's first WARMUP_STEPS steps (allocator growth, Horovod's first
# negotiations, DDP's bucket rebuild), unless there are no others.
WARMUP_STEPS = 2


class StepTracker:
    """Phase times of the current epoch, and the whole job's step count and throughput."""

    def __init__(self, device: torch.device, samples_per_step: int, sync_timings: bool = False) -> None:
        self.timer = PhaseTimer(device, sync_timings)
        self.samples_per_step = samples_per_step  # windows per optimizer step over all ranks
        self.job_steps = 0  # optimizer steps run by this job (a resumed job starts at 0)
        self.loop_seconds = 0.0  # in training steps, validation excluded
        self.samples = 0
        self._epoch_t0 = 0.0
        self._epoch_loop_seconds = 0.0
        self._warm_t0: float | None = None  # when the warm-up steps ended
        self._warm_steps = 0
        self._warm_seconds = 0.0

    def phase(self, name: str):
        return self.timer.phase(name)

    def start_epoch(self) -> None:
        self.timer.reset()
        self._epoch_t0 = time.perf_counter()

    def step_done(self) -> None:
        self.timer.steps += 1
        self.job_steps += 1
        if self.job_steps == WARMUP_STEPS:
            self._warm_t0, self._warm_steps = time.perf_counter(), 0
        elif self._warm_t0 is not None:
            self._warm_steps += 1

    def end_epoch(self) -> None:
        """The epoch's training steps are done (before validation, which is not training time)."""
        now = time.perf_counter()
        self._epoch_loop_seconds = now - self._epoch_t0
        self.loop_seconds += self._epoch_loop_seconds
        if self._warm_t0 is not None:
            self._warm_seconds += now - max(self._warm_t0, self._epoch_t0)
        self.samples += self.timer.steps * self.samples_per_step

    def epoch_phases(self, epoch: int, allgather) -> EpochPhases:
        """Collective (`allgather`: every rank's object, in rank order): this epoch's phases."""
        return EpochPhases(epoch=epoch, steps=self.timer.steps, loop_seconds=self._epoch_loop_seconds,
                           **summarize(allgather(self.timer.per_step_ms())))

    def timing(self, prepare_seconds: float, epoch_seconds: list[float]) -> Timing:
        if self._warm_steps:
            rate = self._warm_steps * self.samples_per_step / self._warm_seconds
        else:
            rate = self.samples / self.loop_seconds if self.loop_seconds else 0.0
        return Timing(
            prepare_seconds=prepare_seconds,
            train_loop_seconds=self.loop_seconds,
            epoch_seconds_median=statistics.median(epoch_seconds) if epoch_seconds else 0.0,
            samples_per_second=rate,
            samples_per_second_excludes_steps=WARMUP_STEPS if self._warm_steps else 0,
        )
