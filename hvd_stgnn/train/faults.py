"""Stopping on a scheduler's signal, and test-only fault injection.

SIGTERM (Slurm/PBS at the time limit, `scancel`, mpirun forwarding) only sets a flag; the
trainer checks it between optimizer steps, agrees across ranks (one rank may get the
signal a step later than another), writes a checkpoint and ends the job.

HVD_STGNN_FAULT=KIND:RANK:STEP (tests only) makes rank RANK, just before global optimizer
step STEP of this job, `raise` an exception, `kill` itself with SIGKILL, or send itself
`sigterm`. HVD_STGNN_STEP_DELAY_S=SECONDS (tests only) sleeps before every step, so that a
test can signal a job mid-epoch.
"""

from __future__ import annotations

import os
import signal
import time

FAULT_ENV = "HVD_STGNN_FAULT"
DELAY_ENV = "HVD_STGNN_STEP_DELAY_S"


class StopSignal:
    SIGNALS = (signal.SIGTERM,)

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        self.requested = signal.Signals(signum).name

    def __enter__(self) -> "StopSignal":
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def parse_fault(text: str) -> tuple[str, int, int] | None:
    if not text:
        return None
    kind, rank, step = text.split(":")
    if kind not in ("raise", "kill", "sigterm"):
        raise ValueError(f"{FAULT_ENV}: unknown kind {kind!r}")
    return kind, int(rank), int(step)


class FaultInjector:
    def __init__(self, rank: int) -> None:
        fault = parse_fault(os.environ.get(FAULT_ENV, ""))
        self.fault = fault if fault and fault[1] == rank else None
        self.delay_s = float(os.environ.get(DELAY_ENV, "0") or 0)

    def before_step(self, step: int) -> None:
        if self.delay_s > 0:
            time.sleep(self.delay_s)
        if self.fault is None or self.fault[2] != step:
            return
        kind = self.fault[0]
        self.fault = None
        if kind == "raise":
            raise RuntimeError(f"injected fault ({FAULT_ENV}) before step {step}")
        os.kill(os.getpid(), signal.SIGKILL if kind == "kill" else signal.SIGTERM)
