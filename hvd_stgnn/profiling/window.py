"""A bounded profiling window: record steps [warmup, warmup + active) of this job only.

Skipping the first steps keeps start-up (data load, first-touch allocations, Horovod's
first negotiations) out of the file, and a bounded window keeps it small at scale.
"""

from __future__ import annotations

import time

from hvd_stgnn.results import TimelineInfo


class TimelineWindow:
    def __init__(self, backend, path: str, warmup: int, active: int, mark_cycles: bool) -> None:
        self.backend, self.path = backend, path
        self.first, self.active, self.mark_cycles = warmup, active, mark_cycles
        self.recording = False
        self.t0 = 0.0
        self.info: TimelineInfo | None = None  # once the window has been recorded

    def before_step(self, job_step: int) -> None:
        if self.path and job_step == self.first and self.info is None:
            self.backend.start_timeline(self.path, self.mark_cycles)
            self.recording, self.t0 = True, time.perf_counter()

    def after_step(self, job_step: int) -> None:
        if self.recording and job_step >= self.first + self.active:
            self.stop(job_step)

    def stop(self, job_step: int) -> None:
        """End the recording (also on errors and Ctrl-C, so the file is closed cleanly)."""
        if not self.recording:
            return
        seconds = time.perf_counter() - self.t0  # before stopping: DDP's trace export is not step time
        self.backend.stop_timeline()
        self.recording = False
        self.info = TimelineInfo(file=self.path, first_step=self.first, active_steps=job_step - self.first,
                                 window_seconds=seconds)
