"""Activation bytes of one training step, measured on a small probe model, then scaled.

Nothing is derived by hand per model: the model is built at a probe size (N_p = min(N, 128)
sensors, a random sparse graph of the real graph's average degree, the real L, H, hidden,
layers, diffusion steps and graph storage), and one forward + backward runs inside
`torch.autograd.graph.saved_tensors_hooks` that add up the bytes of every tensor autograd
saves for the backward pass (each storage counted once, by its data pointer). Parameters,
buffers (the graph operators) and the input batch are excluded: they are terms of their own.

Two probes, B = 1 and B = 2, split the saved bytes into
    per_sample:  the part that grows with the batch, proportional to B x N for all four
                 models at fixed L, H, hidden (every activation is (B, ..., N, ...));
    constant:    what does not grow with B: weight-shaped tensors (DCRNN's power-basis
                 weights, transposed weights) and, for Graph WaveNet with the adaptive
                 adjacency (N <= 2048), the N x N softmax and its relu input, which are
                 counted exactly (tensors of shape (N_p, N_p)) and scaled by (N / N_p)^2.
So  saved(B, N) = per_sample(N_p) * B * N / N_p + nn(N_p) * (N / N_p)^2 + rest.

The peak during a step is larger than the saved bytes (gradients of activations coexist
with not-yet-freed saved tensors, outputs, allocator slack): estimate.py multiplies by a
measured peak factor (docs/PLANNER.md).
"""

from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import dataclass

PROBE_NODES = 128


@dataclass(frozen=True)
class ActivationProfile:
    probe_nodes: int
    per_sample_bytes: int  # saved bytes per window at the probe size (B-linear part / B)
    nn_bytes: int  # bytes of (N_p, N_p) saved tensors (Graph WaveNet's adaptive adjacency)
    constant_bytes: int  # the rest of the B-independent part (weight-shaped), not scaled

    def saved_bytes(self, batch_size: int, num_nodes: int) -> int:
        """Saved-tensor bytes of one training forward at (B, N)."""
        n = num_nodes / self.probe_nodes
        return int(round(self.per_sample_bytes * batch_size * n + self.nn_bytes * n * n + self.constant_bytes))


def _random_graph(num_nodes: int, degree: int, seed: int = 0):
    """Directed edges: each node to `degree` distinct random other nodes, weights in (0.1, 1]."""
    import torch

    g = torch.Generator().manual_seed(seed)
    degree = max(1, min(degree, num_nodes - 1))
    src = torch.arange(num_nodes).repeat_interleave(degree)
    # offsets 1..N-1 without repeats per node: never a self-loop, never a duplicate edge
    offsets = torch.stack([torch.randperm(num_nodes - 1, generator=g)[:degree] + 1 for _ in range(num_nodes)])
    dst = (torch.arange(num_nodes)[:, None] + offsets).reshape(-1) % num_nodes
    weight = 0.1 + 0.9 * torch.rand(src.numel(), generator=g)
    return torch.stack([src, dst]), weight


class SavedTensorCount:
    """Bytes of the tensors one forward pass keeps for the backward pass, each storage once
    (by data pointer), parameters, buffers and `excluded` storages left out.

    `pack` is the saved-tensor hook. With activation checkpointing (models/checkpointing.py,
    `probing`), a checkpointed region's internal saved tensors never reach the hook: what it
    keeps alive for its recomputation are its arguments (torch.utils.checkpoint saves the
    top-level tensors where this hook sees them; `hold` adds the ones nested in tuples,
    DCRNN's per-pass weights). A region run plainly is counted on its own as well (`region`):
    what its recomputation saves during the backward pass (`max_region_bytes`)."""

    def __init__(self, model, *excluded) -> None:
        import torch

        self.excluded = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers(), *excluded)
                         if t.layout == torch.strided}
        self.seen: dict[int, int] = {}
        self.max_region_bytes = 0
        self._region: dict[int, int] | None = None

    def _add(self, t, into: dict) -> None:
        import torch

        if t.layout == torch.strided:  # sparse tensors saved are the graph operators: buffers
            storage = t.untyped_storage()
            ptr = storage.data_ptr()
            if ptr and ptr not in self.excluded:
                into[ptr] = max(into.get(ptr, 0), storage.nbytes())

    def pack(self, t):
        self._add(t, self.seen)
        if self._region is not None:
            self._add(t, self._region)
        return t

    def hold(self, tensors) -> None:
        for t in tensors:
            self._add(t, self.seen)

    @contextlib.contextmanager
    def region(self):
        self._region = {}
        try:
            yield
        finally:
            self.max_region_bytes = max(self.max_region_bytes, sum(self._region.values()))
            self._region = None

    @property
    def stored_bytes(self) -> int:
        return sum(self.seen.values())


def count_saved(model, x, teacher, backward: bool = True) -> SavedTensorCount:
    """One training forward (and backward) of `model` on x (B, L, N, F), counted."""
    import torch

    from hvd_stgnn.models.checkpointing import probing

    count = SavedTensorCount(model, x)
    with probing(count), torch.autograd.graph.saved_tensors_hooks(count.pack, lambda t: t):
        out = model(x, teacher)
    if backward:
        out.abs().mean().backward()
    return count


def _saved_bytes(model, x, teacher) -> int:
    """Activation bytes of one training step: what the forward keeps for the backward pass,
    plus, with checkpointing, the largest region's recomputation (measured on a plain run
    of the same model: the same regions, each counted on its own)."""
    stored = count_saved(model, x, teacher).stored_bytes
    return stored + recompute_bytes(model, x, teacher) if getattr(model, "checkpointing", False) else stored


def recompute_bytes(model, x, teacher) -> int:
    """The largest checkpointed region's saved bytes, what one recomputation re-creates in the
    backward pass: counted on a plain forward + backward of `model` (checkpointing on again after)."""
    model.checkpointing = False
    try:
        return count_saved(model, x, teacher).max_region_bytes
    finally:
        model.checkpointing = True


def training_step(net, opt, x, y, teacher) -> None:
    """One step as the trainer takes it (zero_grad, forward, MAE loss, backward, optimizer step);
    the prediction and loss die when it returns, before the next forward."""
    opt.zero_grad()
    pred = net(x, teacher)
    loss = (pred - y).abs().mean()
    loss.backward()
    opt.step()


@functools.lru_cache(maxsize=64)
def activation_profile(model: str, num_nodes: int, num_edges: int, in_features: int, input_steps: int,
                       horizon: int, hidden: int = 64, layers: int = 2, diffusion_steps: int = 2,
                       adaptive_adjacency: bool = True, dense: bool = False,
                       checkpointing: str = "none", precision: str = "fp32") -> ActivationProfile:
    """Probe `model` with graph storage `dense` (what the real model uses at num_nodes) at
    N_p = min(num_nodes, 128): forward + backward at (B, N) = (1, N_p), (2, N_p), (1, N_p / 2),
    one thread; with `checkpointing` (models/checkpointing.py) and under `precision` (bf16 and
    fp16: CPU autocast to bf16, which stores the same 2 bytes per value as fp16 on a GPU).
    The first two give the per-window part, the third separates the B-independent
    part into a * N^2 (Graph WaveNet's adaptive adjacency) and a constant."""
    import torch

    from hvd_stgnn.models import ModelInputs, build_model
    from hvd_stgnn.models.graph import DENSE_MAX_NODES

    probe = min(num_nodes, PROBE_NODES)
    half = max(2, probe // 2)
    degree = max(1, round(num_edges / max(1, num_nodes)))
    # Graph WaveNet's adaptive adjacency exists only for N <= 2048: probe it only if the
    # real model has it (the probe itself is always small enough to have it).
    adaptive = adaptive_adjacency and num_nodes <= DENSE_MAX_NODES
    threads = torch.get_num_threads()
    rng_state = torch.get_rng_state()
    torch.set_num_threads(1)
    try:
        saved = {}
        for b, n in ((1, probe), (2, probe), (1, half)):
            torch.manual_seed(0)
            edge_index, edge_weight = _random_graph(n, degree)
            net = build_model(model, ModelInputs(
                edge_index, edge_weight, n, in_features=in_features, input_steps=input_steps, horizon=horizon,
                hidden=hidden, graph_mode="dense" if dense else "sparse", layers=layers,
                diffusion_steps=diffusion_steps, adaptive_adjacency=adaptive, activation_checkpointing=checkpointing))
            net.train()
            x = torch.randn(b, input_steps, n, in_features)
            teacher = torch.randn(b, horizon, n) if getattr(net, "uses_teacher", False) else None
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision != "fp32"):
                saved[b, n] = _saved_bytes(net, x, teacher)
    finally:
        torch.set_num_threads(threads)
        torch.set_rng_state(rng_state)
    per_sample = saved[2, probe] - saved[1, probe]
    fixed = saved[1, probe] - per_sample  # B-independent part at N_p
    fixed_half = saved[1, half] - per_sample * half / probe
    if half < probe:
        a = max(0.0, (fixed - fixed_half) / (probe * probe - half * half))
    else:
        a = 0.0
    nn = int(round(a * probe * probe))
    return ActivationProfile(probe, per_sample, nn, max(0, fixed - nn))


def parameter_count(model: str, num_nodes: int, in_features: int, input_steps: int, horizon: int, hidden: int = 64,
                    layers: int = 2, diffusion_steps: int = 2, adaptive_adjacency: bool = True) -> tuple[int, int]:
    """(parameters, bytes of the non-operator buffers) of `model` at num_nodes, from a tiny build:
    only Graph WaveNet's node embeddings (2 x N x 10, N <= 2048) depend on N."""

    from hvd_stgnn.models import ModelInputs, build_model
    from hvd_stgnn.models.graph import DENSE_MAX_NODES, PropagationMatrix
    from hvd_stgnn.models.gwnet import EMBED_DIM

    probe = 4
    edge_index, edge_weight = _random_graph(probe, 1)
    adaptive = adaptive_adjacency and num_nodes <= DENSE_MAX_NODES
    net = build_model(model, ModelInputs(
        edge_index, edge_weight, probe, in_features=in_features, input_steps=input_steps, horizon=horizon,
        hidden=hidden, graph_mode="dense", layers=layers, diffusion_steps=diffusion_steps,
        adaptive_adjacency=adaptive))
    params = sum(p.numel() for p in net.parameters())
    if model == "gwnet" and adaptive:
        params += 2 * EMBED_DIM * (num_nodes - probe)
    operators = {id(b) for m in net.modules() if isinstance(m, PropagationMatrix) for b in m.buffers(recurse=False)}
    buffers = sum(b.numel() * b.element_size() for b in net.buffers() if id(b) not in operators)
    return params, buffers


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise LookupError(key)


def measure_step_peak(model: str, num_nodes: int, batch_size: int, steps: int = 8, hidden: int = 64,
                      degree: int = 3, input_steps: int = 12, horizon: int = 12, checkpointing: str = "none",
                      layers: int = 2) -> dict:
    """Calibration of estimate.PEAK_FACTOR (Linux; run in a FRESH process, one thread):
    peak RSS growth over `steps` training steps (forward, backward, Adam) relative to RSS
    before the first, divided by the activation bytes the profile predicts (`_saved_bytes`:
    with `checkpointing`, the stored bytes plus one region's recomputation). The kernel's
    peak (VmHWM) is reset first through /proc/self/clear_refs.

    As in the trainer, the step's prediction and loss are freed before the next forward (kept
    alive, their autograd graph's buffers raised the steady peak with glibc malloc: DCRNN at
    N = 207, B = 8, 2.9 x saved instead of 1.7 x)."""
    import torch

    from hvd_stgnn.models import ModelInputs, build_model
    from hvd_stgnn.models.graph import prefer_dense

    torch.set_num_threads(1)
    torch.manual_seed(0)
    edge_index, edge_weight = _random_graph(num_nodes, degree)
    dense = prefer_dense(num_nodes, num_nodes * degree)
    net = build_model(model, ModelInputs(edge_index, edge_weight, num_nodes, 2, input_steps, horizon, hidden=hidden,
                                         layers=layers, activation_checkpointing=checkpointing))
    opt = torch.optim.Adam(net.parameters())
    x = torch.randn(batch_size, input_steps, num_nodes, 2)
    y = torch.randn(batch_size, horizon, num_nodes)
    teacher = y if getattr(net, "uses_teacher", False) else None
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    base = _status_bytes("VmRSS")
    peaks, seconds = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        training_step(net, opt, x, y, teacher)
        seconds.append(time.perf_counter() - t0)
        peaks.append(_status_bytes("VmHWM") - base)
    # Probed after the steps: memory the probe freed and the allocator kept would be reused.
    prof = activation_profile(model, num_nodes, num_nodes * degree, 2, input_steps, horizon, hidden, layers, 2, True,
                              dense, checkpointing)
    saved = prof.saved_bytes(batch_size, num_nodes)
    return {"model": model, "nodes": num_nodes, "batch_size": batch_size, "checkpointing": checkpointing,
            "saved_bytes": saved, "peak_growth_bytes": peaks, "step_seconds": seconds,
            "factor": [round(p / saved, 3) for p in peaks]}
