"""Activation checkpointing (`--activation-checkpointing none|step|block`): recompute, don't store.

A recurrent model (T-GCN, A3T-GCN, DCRNN's encoder and decoder) checkpoints each time step's
cell: the forward pass keeps only what enters a step (its input and the hidden states it
reads, (N, B, C) each) instead of every intermediate of the step, and the backward pass
recomputes one step at a time. Graph WaveNet checkpoints each residual block (gated temporal
convolution, skip and graph convolution); its batch norm stays outside the region, so the
recomputation never updates the running statistics a second time.

Non-reentrant `torch.utils.checkpoint` (works with any argument structure and with
`torch.autograd.grad`); RNG state is saved and restored around the recomputation, so
dropout draws the same masks, and DCRNN's scheduled-sampling coins are drawn outside the
cells, once per forward. Gradients equal those of the stored pass (tests/test_checkpointing.py).
Outside training (no gradient), a region runs as a plain call.

`probing` lets the planner (plan/activations.py) count what the regions keep, which
saved-tensor hooks do not see, and what one region's recomputation saves.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

MODES = ("none", "step", "block")
# What each mode checkpoints; CHECKPOINT_UNITS says which a model has.
UNITS = {"step": "each time step's recurrent cell", "block": "each residual block"}

_probes: list = []  # plan/activations.SavedTensorCount while it measures a step


def region(fn: Callable, *args, enabled: bool):
    """fn(*args), checkpointed when `enabled` and gradients are on."""
    if not torch.is_grad_enabled():
        return fn(*args)
    probe = _probes[-1] if _probes else None
    if not enabled:
        if probe is None:
            return fn(*args)
        with probe.region():  # what one recomputation would save
            return fn(*args)
    if probe is not None:  # what the recomputation keeps alive until the backward pass
        probe.hold(_tensors(args))
    return checkpoint(fn, *args, use_reentrant=False)


def _tensors(args):
    for a in args:
        if isinstance(a, torch.Tensor):
            yield a
        elif isinstance(a, (tuple, list)):
            yield from _tensors(a)


@contextlib.contextmanager
def probing(probe):
    """Within the block, every region reports to `probe`: `probe.hold(tensors)` with a
    checkpointed region's tensor arguments (saved-tensor hooks do not see them), and a plain
    region runs inside `probe.region()`."""
    _probes.append(probe)
    try:
        yield probe
    finally:
        _probes.remove(probe)


# What each registered model (models/__init__.py MODELS) checkpoints: its one non-"none" mode.
CHECKPOINT_UNITS = {"tgcn": "step", "a3tgcn": "step", "dcrnn": "step", "gwnet": "block"}


def checkpointing_error(model_name: str, mode: str) -> str | None:
    """Why `mode` does not apply to `model_name`, or None when it does."""
    if mode not in MODES:
        return f"--activation-checkpointing must be one of {', '.join(MODES)} (got {mode!r})"
    unit = CHECKPOINT_UNITS.get(model_name)
    if mode != "none" and mode != unit:
        return (f"--activation-checkpointing {mode} does not apply to --model {model_name}: it checkpoints "
                + (f"{UNITS[unit]} (use {unit})" if unit else "nothing"))
    return None


def set_activation_checkpointing(model: nn.Module, model_name: str, mode: str) -> nn.Module:
    """Switch checkpointing of `model` (registered as `model_name`) on or off ("none"); the
    model reads `model.checkpointing`. ValueError when `mode` does not apply. Returns `model`."""
    error = checkpointing_error(model_name, mode)
    if error:
        raise ValueError(error)
    model.checkpointing = mode != "none"
    return model
