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


# Thin products, a handful of input and output columns over N * B rows (DCRNN's diffusion
# convolutions at small hidden sizes: (13,248 x 4) @ (4 x 20) at hidden 2), cost MKL 60-300 us
# each whatever their few flops. Inductor's decompose_mm_pass rewrites such a product as a
# multiply-and-sum that fuses into the neighbouring loops; on the CPU it only takes
# vector-matrix products unless told otherwise. Widened here to any row count with a second
# matrix of at most THIN_PRODUCT_COLUMNS x THIN_PRODUCT_COLUMNS (mm and addmm; never bmm, which
# the pass would take at any size on the CPU). Measured (bench models, DCRNN hidden 2, 1 layer,
# N = 207, B = 64, 1 thread, compiled): 93.6 -> 72.1 ms a step. CPU models only, through the
# compile's own options: a CUDA model compiled in the same process is not affected.
THIN_PRODUCT_COLUMNS = 20
_THRESHOLDS = {"cpu_max_first_dimension_decomposition": 1 << 62,
               "cpu_max_other_dimension_decomposition": THIN_PRODUCT_COLUMNS}


def thin_product_options() -> dict | None:
    """torch.compile options that decompose thin CPU products, or None where this torch's
    pass differs from the one measured (torch 2.13: its thresholds are module globals)."""
    from torch._inductor.fx_passes import decompose_mem_bound_mm as pass_module

    if not all(hasattr(pass_module, name) for name in (*_THRESHOLDS, "should_decompose_bmm")):
        return None
    # The pass reads its thresholds when first imported (the first compilation of the
    # process), so they are set on the module: the same result whatever compiled before.
    for name, value in _THRESHOLDS.items():
        setattr(pass_module, name, value)
    if not getattr(pass_module.should_decompose_bmm, "keeps_cpu_bmm", False):
        pass_module.should_decompose_bmm = _keep_cpu_bmm(pass_module.should_decompose_bmm)
    # "keep_cpu_bmm" is read by nobody: it puts the bmm rule into inductor's cache key, which
    # holds the config but not the module's globals (a graph compiled without the rule, cached
    # on disk, would otherwise come back).
    return {"post_grad_fusion_options": {"decompose_mm_pass": {**_THRESHOLDS, "keep_cpu_bmm": True}}}


def _keep_cpu_bmm(should_decompose_bmm):
    """The pass's bmm test, never true for CPU tensors (its CPU rule is the batch size alone)."""

    def test(mat1, mat2) -> bool:
        val = getattr(mat1, "meta", {}).get("val")
        if val is not None and val.device.type == "cpu":
            return False
        return should_decompose_bmm(mat1, mat2)

    test.keeps_cpu_bmm = True
    return test


def compile_model(model: nn.Module) -> nn.Module:
    """`model` with the parts its class lists in `compile_targets` compiled in place; a model
    without that attribute is compiled whole. Returns the same object."""
    import torch._dynamo

    config = torch._dynamo.config
    if getattr(config, "recompile_limit", RECOMPILE_LIMIT) < RECOMPILE_LIMIT:
        config.recompile_limit = RECOMPILE_LIMIT
    options = thin_product_options() if all(p.device.type == "cpu" for p in model.parameters()) else None
    for name in getattr(model, "compile_targets", ("self",)):
        if name == "self":
            model.compile(dynamic=False, options=options)
            continue
        target = getattr(model, name)
        for module in target if isinstance(target, nn.ModuleList) else [target]:
            if isinstance(module, nn.Module):
                module.forward = _grad_uniform(torch.compile(module.forward, dynamic=False, options=options))
            else:  # a bound method
                setattr(model, name, _grad_uniform(torch.compile(module, dynamic=False, options=options)))
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
