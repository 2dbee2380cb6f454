"""Learning-rate schedule as a pure function of the optimizer step.

factor(step) multiplies the base learning rate: a linear warm-up from 1/10 over
`warmup_steps` (Goyal et al.'s recipe for large global batches, which Horovod's docs
follow), then constant or a cosine decay to 0 at `total_steps`.
"""

from __future__ import annotations

import math

WARMUP_START = 0.1
SCHEDULES = ("constant", "cosine")


def lr_factor(step: int, total_steps: int, warmup_steps: int = 0, schedule: str = "constant") -> float:
    """Multiplier of the base LR for optimizer step `step` (0-based)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES} (got {schedule!r})")
    if step < warmup_steps:
        return WARMUP_START + (1.0 - WARMUP_START) * step / warmup_steps
    if schedule == "constant":
        return 1.0
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return 0.5 * (1.0 + math.cos(math.pi * progress))
