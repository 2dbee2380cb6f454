"""compile_model: torch.compile where it helps these models (`train --compile`, `bench models --compile`).

Each model class names what to compile in `compile_targets`:

- T-GCN (`cell`) and DCRNN (`encoder`, `decoder`: every DCGRU cell): the recurrent cell, the
  per-step function, not the unrolled loop. A step is many small operations (two graph
  products, two GEMMs, a dozen pointwise ones) that inductor fuses into a few loops; the same
  compiled graph then serves all L (and H) steps, so compiling takes seconds, not the minute
  a 24-step unrolled DCRNN takes (measured: 52 s at hidden 2, for ~15% over per-cell). The
  Python loop, scheduled sampling (its coins stay in eager mode: compiled RNG would differ)
  and the `batches_seen` counter stay outside.
- A3T-GCN (`step`, `attend`): the cell together with the attention score of the state it
  makes, and the softmax-weighted context over the L states.
- Graph WaveNet (`self`): the whole forward; it has no recurrence (8 gated layers).

A model may also have `before_compile(device)`, called first: DCRNN turns to a channel-major
layout there when its cells are thin (models/dcrnn.py, CHANNEL_MAJOR_MAX_WIDTH).

Sparse graph products are the custom op `hvd_stgnn::csr_matmul` (models/graph.py): opaque to
inductor, no graph break. Modules are compiled in place (nn.Module.compile), so parameter
names, state_dict keys, hooks and the model object the trainer holds are unchanged; methods
(`step`, `attend`) are replaced by their compiled versions on the instance. The first training
steps compile (forward, then backward; a first step whose state needs no gradient and eval
mode compile once more); later batch sizes compile one shape-generic version.
"""

from __future__ import annotations

import torch
from torch import nn


# Distinct graphs one model may need: shapes are compiled static (dynamic=False: fixed loop
# bounds vectorize best), one graph per cell shape, grad mode and batch size (DCRNN, 2
# layers: 3 cell shapes x train/eval, x 2-3 batch sizes with a last partial batch); past
# dynamo's default limit of 8 per function it would silently run the rest in eager mode.
RECOMPILE_LIMIT = 32


def compile_model(model: nn.Module) -> nn.Module:
    """`model` with the parts its class lists in `compile_targets` compiled in place; a model
    without that attribute is compiled whole. Returns the same object."""
    import torch._dynamo

    config = torch._dynamo.config
    if getattr(config, "recompile_limit", RECOMPILE_LIMIT) < RECOMPILE_LIMIT:
        config.recompile_limit = RECOMPILE_LIMIT
    before = getattr(model, "before_compile", None)  # a layout that suits the compiled code (DCRNN)
    devices = {p.device for p in model.parameters()}
    if before is not None and len(devices) == 1:
        before(devices.pop())
    for name in getattr(model, "compile_targets", ("self",)):
        if name == "self":
            model.compile(dynamic=False)
            continue
        target = getattr(model, name)
        for module in target if isinstance(target, nn.ModuleList) else [target]:
            if isinstance(module, nn.Module):
                module.forward = _grad_uniform(torch.compile(module.forward, dynamic=False))
            else:  # a bound method
                setattr(model, name, _grad_uniform(torch.compile(module, dynamic=False)))
    return model


def _grad_uniform(step):
    """A compiled per-step function whose tensor arguments all require grad in training.

    A recurrence calls its step with arguments that need no gradient at first (the zero
    state, the input) and do later; dynamo compiles one graph per pattern, per cell. Marking
    them (detached views) keeps one graph per cell shape; their gradients are a few tiny
    extra sums, and the graph products' backward computes the whole concatenated input's
    gradient anyway."""

    def call(*args):
        if torch.is_grad_enabled():
            args = tuple(a.detach().requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point()
                         and not a.requires_grad else a for a in args)
        return step(*args)

    return call


def prefers_cudnn_benchmark(model: nn.Module) -> bool:
    """Whether `torch.backends.cudnn.benchmark` pays off for `model` on CUDA: models with
    fixed-shape convolutions say so with `cudnn_benchmark = True` (Graph WaveNet: its
    dilated temporal Conv2d layers see the same shapes every step, so cuDNN's one-off
    algorithm search is amortized); recurrent models have no convolutions. Not measured here
    (no GPU); the trainer sets the flag from this."""
    return bool(getattr(model, "cudnn_benchmark", False))
