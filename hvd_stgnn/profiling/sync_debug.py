"""`--sync-debug`: find the host-device synchronizations in the training steps.

A synchronization stalls the CPU until the GPU has drained its queue, so the next kernels
start late and the GPU idles. torch can warn at every synchronizing call
(torch.cuda.set_sync_debug_mode("warn")); this collects those warnings over the watched
steps and names where each comes from (the first frame in this package), for one line per
epoch on rank 0. The first steps are not watched: they allocate, and DDP / Horovod set up.
"""

from __future__ import annotations

import contextlib
import traceback
import warnings
from collections import Counter
from pathlib import Path

PACKAGE = str(Path(__file__).resolve().parents[1])


class SyncDebug:
    def __init__(self, enabled: bool, device, after_steps: int) -> None:
        self.active = enabled and device.type == "cuda"
        self.enabled, self.after_steps = enabled, after_steps
        self.where: Counter[str] = Counter()
        self.steps = 0

    @contextlib.contextmanager
    def watch(self, job_step: int):
        """Around one training step (job_step: the job's steps done before it)."""
        if not self.active or job_step < self.after_steps:
            yield
            return
        import torch

        def record(message, category, filename, lineno, file=None, line=None):
            if "synchroniz" in str(message):  # called while the warning is raised: the stack is the caller's
                self.where[_our_frame(filename, lineno)] += 1

        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = record
            torch.cuda.set_sync_debug_mode("warn")
            try:
                yield
            finally:
                torch.cuda.set_sync_debug_mode("default")
        self.steps += 1

    def summary(self) -> str:
        """One line for the log ("" when --sync-debug is off)."""
        if not self.enabled:
            return ""
        if not self.active:
            return "sync debug: not training on a GPU, nothing to watch"
        places = "; ".join(f"{n}x {place}" for place, n in self.where.most_common(5))
        return (f"sync debug: {sum(self.where.values())} host-device synchronization(s) in {self.steps} step(s)"
                + (f": {places}" if places else ""))


def _our_frame(filename: str, lineno: int) -> str:
    """file:line of the innermost frame of this package on the current stack (the code that
    made the call), else where the warning points."""
    for frame in reversed(traceback.extract_stack()):
        if frame.filename.startswith(PACKAGE) and not frame.filename.endswith("sync_debug.py"):
            return f"{Path(frame.filename).relative_to(Path(PACKAGE).parent)}:{frame.lineno}"
    return f"{filename}:{lineno}"
