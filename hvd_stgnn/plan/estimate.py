"""Predicted memory of a training job, per node and per rank, before anything is loaded.

Pure arithmetic on the job's shape (T, N, E, world size, ranks per node) and its config,
following what the code actually allocates (docs/PLANNER.md has every formula):

node-shared (once per node)
    series      the raw (T, N) float32 series in MPI shared memory (both data modes: the
                trainer loads it node-shared and the materialized windows are built from it)
    libraries   file-backed pages of the shared libraries (libtorch, MPI, Horovod, ...)
per rank, resident for the whole run
    runtime     the rank's private memory: interpreter, imported modules, torch / MPI /
                Horovod state (calibrated, see RUNTIME_PRIVATE_BYTES)
    data        the rank's data on its device: index + CPU 0 (views of the node copy), index +
                GPU its steps + halo copied, materialized every window of every split
    model state parameters, gradients, Adam's two moments, the best-epoch copy, the
                Horovod allreduce buffer: 6 x params x 4 bytes (+ buffers)
    graph       the graph operators (dense N x N, or CSR)
per rank, transient: only the largest phase counts (they never overlap)
    statistics  the exact z-score sums and the data-health sums (float64 temporaries of
                one chunk of 1,024 steps x N)
    materialize building the windows (the parts and their concatenation coexist)
    step        one training batch: activations (saved bytes x peak factor) + x, y, mask
    baselines   historical-average slot sums: (2, slots, N) float64, twice during the
                allreduce, + one chunk's temporaries

rank (peak) = runtime + data + model state + graph + max(transients)
node total  = series + libraries + ranks_per_node x rank
rank RSS    = rank + libraries + series (the node leader wrote all of the series, so its
              RSS holds it; ru_maxrss counts shared pages in full)

With --device cuda the data, model state, graph and step live on the GPU (plus the CUDA
context) and the host keeps runtime (+ CUDA host libraries), statistics and baselines.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict, dataclass, field

from hvd_stgnn.batching.shards import balanced_range, shard_range
from hvd_stgnn.batching.windows import StartRange, num_windows, split_starts

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
FLOAT = 4  # float32 bytes

# --- calibration (docs/PLANNER.md, "Calibration", has the measurements) ------------------
# Fresh rank after `import torch, mpi4py.MPI, horovod.torch, hvd_stgnn.train` + hvd.init():
# VmRSS 343 MiB = 242 MiB anonymous (private: Python heap, relocated library data) + 100 MiB
# file-backed library pages, 117-119 MiB after an epoch (shared by the ranks of a node:
# counted once, as in PSS). A training rank's private part grows past the import floor
# (torch kernels and thread pool, Horovod's background thread, h5py, tqdm, autograd):
# calibrated as peak RSS of minimal training runs minus every other modelled term (tiny
# preset, hidden 8, B 2, 2 ranks): 246 / 246 / 251 / 258 MiB for the four models.
RUNTIME_IMPORT_PRIVATE_BYTES = 242 * MiB
RUNTIME_PRIVATE_BYTES = 255 * MiB
RUNTIME_SHARED_BYTES = 120 * MiB
# Peak growth of a training step over its activation bytes (activations.activation_profile:
# saved bytes; with checkpointing, stored bytes + one region's recomputation), per host
# allocator and --activation-checkpointing mode ("checkpointed": step or block):
# activations.measure_step_peak in a fresh process, one thread, hidden 64, the step's loss and
# prediction freed before the next forward as in the trainer, last of 4-6 steps (docs/PLANNER.md).
# "glibc" (the default malloc; its dynamic mmap threshold sends tensors below 32 MiB to the
# heap, which keeps freed memory in pieces: what a CPU rank's RSS shows): the largest value
# at (N, B) = (1000, 8) and (11160, 2), the sizes where memory matters; at N = 207 glibc's
# factors run up to 1.6x higher (checkpointed T-GCN 5.4 at B = 8) and are not predicted.
# "jemalloc" (HVD_STGNN_JEMALLOC=1, jobs/common.sh: size classes, freed pages kept; RSS
# follows the live tensor bytes, as the profiler's memory events do): the middle of the
# values at (207, 8), (207, 16), (207, 32), (1000, 8), all within 20% of it but T-GCN's
# checkpointed 2.37 at (207, 8) and 1.56 at (1000, 8).
PEAK_FACTOR = {
    "glibc": {
        "none": {"tgcn": 1.7, "a3tgcn": 2.1, "dcrnn": 2.9, "gwnet": 1.3},
        "checkpointed": {"tgcn": 3.4, "a3tgcn": 3.4, "dcrnn": 16.0, "gwnet": 2.5},
    },
    "jemalloc": {
        "none": {"tgcn": 1.3, "a3tgcn": 1.5, "dcrnn": 1.35, "gwnet": 1.4},
        "checkpointed": {"tgcn": 1.95, "a3tgcn": 2.15, "dcrnn": 1.95, "gwnet": 2.25},
    },
}
ALLOCATORS = tuple(PEAK_FACTOR)
# A GPU: the jemalloc factors stand in for PyTorch's caching allocator (which also keeps freed
# blocks in size classes); NOT measured here (no GPU).
DEVICE_ALLOCATOR = "jemalloc"
DEFAULT_PEAK_FACTOR = 3.6
# Host transients of loading, in chunks of steps (the functions' `chunk` default, 1,024),
# measured as peak RSS growth per reading of one chunk (chunk x N):
# batching/normalize.input_moment_sums: float64 block, valid mask, x, w, w x, w x^2 = 42 B;
# data/health.health_sums: float64 block, valid, values, values^2 = 20 B (the two run one
# after the other: the larger counts); metrics/baselines.slot_sums: 19 B per reading of a
# chunk on top of its (2, slots, N) float64 output, and the allreduce then holds the input
# and the result (2 x 16 B per slot and sensor).
STATS_BYTES_PER_READING = 42
HEALTH_BYTES_PER_READING = 20
BASELINE_BYTES_PER_READING = 19
# CUDA: NOT measured here (no GPU in this environment); typical PyTorch 2.x figures with
# lazy module loading. The device context (kernels, cuBLAS/cuDNN workspaces) and the host
# memory the CUDA libraries add to each rank.
CUDA_CONTEXT_BYTES = 600 * MiB
CUDA_HOST_BYTES = 1024 * MiB
# MaterializedSource builds windows in chunks of this many (sources.py build_batch).
MATERIALIZE_CHUNK = 256


def _chunk_default(fn, name: str = "chunk") -> int:
    """The default of `fn`'s chunk parameter, so the plan follows the code."""
    import inspect

    return int(inspect.signature(fn).parameters[name].default)


@dataclass(frozen=True)
class PlanInputs:
    """The config fields that size a run (defaults: the trainer's)."""

    model: str = "tgcn"
    hidden: int = 64
    layers: int = 2
    diffusion_steps: int = 2
    adaptive_adjacency: bool = True
    graph_mode: str = "auto"
    batch_size: int = 32
    input_steps: int = 12
    horizon: int = 12
    split: tuple = (0.7, 0.1, 0.2)
    day_of_week: bool = False
    shuffle: str = "shard"
    data_mode: str = "index"
    device: str = "cpu"  # cpu | cuda
    baselines: bool = True
    interval_s: int = 300
    activation_checkpointing: str = "none"  # none | step | block (models/checkpointing.py)
    precision: str = "fp32"  # fp32 | bf16 | fp16: activations stored in 2 bytes under autocast
    allocator: str = "glibc"  # host malloc: glibc | jemalloc (PEAK_FACTOR)

    @classmethod
    def from_config(cls, cfg, device_type: str = "cpu", interval_s: int = 300) -> "PlanInputs":
        return cls(
            model=cfg.model.name, hidden=cfg.model.hidden, layers=cfg.model.layers,
            diffusion_steps=cfg.model.diffusion_steps, adaptive_adjacency=cfg.model.adaptive_adjacency,
            graph_mode=cfg.model.graph_mode, batch_size=cfg.train.batch_size, input_steps=cfg.data.input_steps,
            horizon=cfg.data.horizon, split=tuple(cfg.data.split), day_of_week=cfg.data.day_of_week,
            shuffle=cfg.data.shuffle, data_mode=cfg.data.data_mode, device=device_type,
            baselines=cfg.train.baselines, interval_s=interval_s,
            activation_checkpointing=cfg.train.activation_checkpointing, precision=cfg.train.precision,
            allocator=preloaded_allocator(),
        )

    @property
    def features(self) -> int:
        """F of x: speed, time of day (, day of week): batching/gather.py."""
        return 3 if self.day_of_week else 2


# Term names, in display order, and what each one is.
RESIDENT = ("runtime", "data", "model_state", "graph")
TRANSIENT = ("statistics", "materialize", "activations", "gather", "baselines")
STEP = ("activations", "gather")  # one phase: the training step
LABELS = {
    "series": "series T x N x 4",
    "libraries": "shared libraries (file-backed pages)",
    "runtime": "runtime (Python, torch, MPI, Horovod)",
    "cuda_host": "CUDA libraries on the host",
    "cuda_context": "CUDA context",
    "data": "data slice held by the rank",
    "model_state": "params + grads + Adam + copies (6 x P x 4)",
    "graph": "graph operators",
    "statistics": "normalization + data-health sums",
    "materialize": "building the windows",
    "activations": "step: activations",
    "gather": "step: batch x, y, mask",
    "baselines": "baselines: slot sums",
}
PHASES = ("statistics", "materialize", "step", "baselines")


@dataclass
class Plan:
    """Predicted bytes of one run. `host` and `device` map term -> bytes per rank."""

    inputs: PlanInputs
    num_steps: int
    num_nodes: int
    num_edges: int
    world_size: int
    ranks_per_node: int
    parameters: int
    windows: dict  # split -> window count
    shared: dict  # node-shared term -> bytes
    host: dict  # per-rank host term -> bytes
    device: dict = field(default_factory=dict)  # per-rank GPU term -> bytes (cuda only)
    activation_saved_bytes: int = 0
    peak_factor: float = 0.0
    graph_storage: str = ""  # dense | sparse

    @staticmethod
    def _phases(terms: dict) -> dict:
        return {"statistics": terms.get("statistics", 0), "materialize": terms.get("materialize", 0),
                "step": sum(terms.get(k, 0) for k in STEP), "baselines": terms.get("baselines", 0)}

    @classmethod
    def _peak(cls, terms: dict) -> int:
        resident = sum(v for k, v in terms.items() if k not in TRANSIENT)
        return resident + max(cls._phases(terms).values())

    @property
    def peak_phase(self) -> str:
        """The transient phase that sets the host peak: statistics, materialize, step or baselines."""
        phases = self._phases(self.host)
        return max(phases, key=phases.get)

    @property
    def shared_bytes(self) -> int:
        return sum(self.shared.values())

    @property
    def rank_bytes(self) -> int:
        """Peak private host bytes of one rank."""
        return self._peak(self.host)

    @property
    def node_bytes(self) -> int:
        """Peak host bytes of a node: node-shared + ranks_per_node x rank."""
        return self.shared_bytes + self.ranks_per_node * self.rank_bytes

    @property
    def rank_rss_bytes(self) -> int:
        """Peak RSS of the node leader: its private bytes + the library pages + the whole
        series it wrote (RSS, unlike PSS, counts shared pages in full in every process)."""
        return self.rank_bytes + self.shared_bytes

    @property
    def device_bytes(self) -> int:
        """Peak GPU bytes of one rank (0 on CPU)."""
        return self._peak(self.device) if self.device else 0

    def fits(self, node_memory: int, device_memory: int | None = None) -> bool:
        ok = self.node_bytes <= node_memory
        if self.device and device_memory is not None:
            ok = ok and self.device_bytes <= device_memory
        return ok

    def dominant(self, where: str = "host", count: int = 3) -> list[tuple[str, int]]:
        """The largest terms that make up the peak, per node (host: shared once, per-rank
        terms x ranks per node; transients only of the phase that sets the peak)."""
        terms = self.device if where == "device" else self.host
        phases = self._phases(terms)
        peak = max(phases, key=phases.get)
        counted = {k: v for k, v in terms.items()
                   if k not in TRANSIENT or k in (STEP if peak == "step" else (peak,))}
        if where == "device":
            items = counted
        else:
            items = {k: v * self.ranks_per_node for k, v in counted.items()}
            items.update(self.shared)
        return sorted(((k, v) for k, v in items.items() if v > 0), key=lambda kv: -kv[1])[:count]

    def to_dict(self) -> dict:
        out = {
            "inputs": asdict(self.inputs), "num_steps": self.num_steps, "num_nodes": self.num_nodes,
            "num_edges": self.num_edges, "world_size": self.world_size, "ranks_per_node": self.ranks_per_node,
            "parameters": self.parameters, "windows": self.windows, "graph_storage": self.graph_storage,
            "activation_saved_bytes": self.activation_saved_bytes, "peak_factor": self.peak_factor,
            "node_shared_bytes": dict(self.shared), "rank_bytes_terms": dict(self.host),
            "rank_bytes": self.rank_bytes, "node_bytes": self.node_bytes, "rank_rss_bytes": self.rank_rss_bytes,
            "peak_phase": self.peak_phase,
        }
        if self.device:
            out["device_bytes_terms"] = dict(self.device)
            out["device_bytes"] = self.device_bytes
        return out


# --- data ---------------------------------------------------------------------------------


def _rows(r: StartRange, L: int, H: int) -> int:
    if r.count == 0:
        return 0
    t0, t1 = r.steps_touched(L, H)
    return t1 - t0


def index_rank_rows(num_steps: int, splits: dict[str, StartRange], rank: int, size: int, L: int, H: int,
                    shuffle: str = "shard") -> int:
    """Raw steps a rank's index sources hold (build_sources): train its shard + halo (or all
    T with global shuffle), val and test their balanced share + halo."""
    rows = 0
    for name, split in splits.items():
        if name == "train" and shuffle == "global":
            rows += num_steps
        else:
            mine = shard_range(split, rank, size) if name == "train" else balanced_range(split, rank, size)
            rows += _rows(mine, L, H)
    return rows


def window_bytes(inputs: PlanInputs, num_nodes: int) -> int:
    """One materialized window: x (L, N, F) float32 + y (H, N) float32 + mask (H, N) bool."""
    L, H, N, F = inputs.input_steps, inputs.horizon, num_nodes, inputs.features
    return L * N * F * FLOAT + H * N * FLOAT + H * N


def materialized_rank_bytes(inputs: PlanInputs, num_nodes: int, windows: dict[str, int]) -> int:
    """Every window of every split, on every rank (= bench/memory's materialized_rank_bytes)."""
    return sum(windows.values()) * window_bytes(inputs, num_nodes)


def materialize_peak_extra(inputs: PlanInputs, num_nodes: int, windows: dict[str, int]) -> int:
    """Bytes beyond the finished windows while MaterializedSource builds them: split k's parts
    and their concatenation coexist (2 x split k) on top of the splits already built, plus one
    chunk's gather (x, y, mask, the (256, L+H, N) window and the input temporaries)."""
    w = window_bytes(inputs, num_nodes)
    built, peak = 0, 0
    for count in windows.values():  # train, val, test: build order
        peak = max(peak, built + 2 * count * w)
        built += count * w
    L, H, N = inputs.input_steps, inputs.horizon, num_nodes
    chunk = MATERIALIZE_CHUNK * ((L + H) * N * FLOAT + 3 * L * N * FLOAT) + MATERIALIZE_CHUNK * w
    return max(0, peak - built) + chunk


def gather_bytes(inputs: PlanInputs, num_nodes: int) -> int:
    """One training batch: x (B, L, N, F) float32, y (B, H, N) float32, mask (B, H, N) bool."""
    return inputs.batch_size * window_bytes(inputs, num_nodes)


# --- graph --------------------------------------------------------------------------------


def operator_nnz(model: str, num_nodes: int, num_edges: int) -> list[int]:
    """Non-zeros of each graph operator the model builds (models/graph.py), from E alone:
    GCN (T-GCN, A3T-GCN): the edges made undirected + one self-loop per node, at most
    2E + N; random-walk (DCRNN, Graph WaveNet): forward and backward, E each. Use
    `exact_operator_nnz` when the edges are at hand."""
    if model in ("tgcn", "a3tgcn"):
        return [min(2 * num_edges + num_nodes, num_nodes * num_nodes)]
    return [num_edges, num_edges]


def exact_operator_nnz(model: str, edge_index, edge_weight, num_nodes: int) -> list[int]:
    """The same, counted on the real edges with the models' own preprocessing."""
    import torch
    from torch_geometric.utils import add_remaining_self_loops, coalesce, remove_self_loops, to_undirected

    ei = torch.as_tensor(edge_index, dtype=torch.long)
    ew = torch.as_tensor(edge_weight, dtype=torch.float32)
    ei, ew = remove_self_loops(ei, ew)
    if model in ("tgcn", "a3tgcn"):
        ei, ew = to_undirected(ei, ew, num_nodes=num_nodes, reduce="max")
        ei, ew = add_remaining_self_loops(ei, ew, 1.0, num_nodes)
        return [int(coalesce(ei, num_nodes=num_nodes).shape[1])]
    n = int(coalesce(ei, num_nodes=num_nodes).shape[1])
    return [n, n]


def graph_bytes(num_nodes: int, nnz: list[int], graph_mode: str = "auto", device: str = "cpu") -> tuple[int, str]:
    """(bytes, "dense" | "sparse"): dense N x N float32, or CSR (values float32, column
    indices and row pointers int64) twice, the matrix and its transpose for the backward, as
    models/graph.py SparseMatrix stores it. (DCRNN also stacks its two directions: a few MB
    more at PeMS scale, left out.)"""
    from hvd_stgnn.models.graph import prefer_dense

    total, kinds = 0, set()
    for z in nnz:
        dense = graph_mode == "dense" or (graph_mode == "auto" and prefer_dense(num_nodes, z, device))
        kinds.add("dense" if dense else "sparse")
        total += num_nodes * num_nodes * FLOAT if dense else 2 * (z * (FLOAT + 8) + (num_nodes + 1) * 8)
    return total, "/".join(sorted(kinds))


# --- the estimate -------------------------------------------------------------------------


def peak_factor(model: str, checkpointing: str = "none", device: str = "cpu", allocator: str = "glibc") -> float:
    """Peak over activation bytes of `model`'s step: on the host with `allocator`, or a GPU."""
    by_mode = PEAK_FACTOR[DEVICE_ALLOCATOR if device == "cuda" else allocator]
    return by_mode["none" if checkpointing == "none" else "checkpointed"].get(model, DEFAULT_PEAK_FACTOR)


def preloaded_allocator(env: dict | None = None) -> str:
    """The allocator of this process as the planner names it: jemalloc when LD_PRELOADed
    (HVD_STGNN_JEMALLOC=1), else glibc."""
    env = os.environ if env is None else env
    return "jemalloc" if "jemalloc" in env.get("LD_PRELOAD", "") else "glibc"


def estimate(inputs: PlanInputs, num_steps: int, num_nodes: int, num_edges: int, world_size: int,
             ranks_per_node: int, nnz: list[int] | None = None) -> Plan:
    """Predicted bytes of `inputs` on a (T, N, E) dataset with `world_size` ranks,
    `ranks_per_node` of them per node. ValueError if the series cannot feed the ranks.
    `nnz`: the operators' non-zeros (exact_operator_nnz); default from E (operator_nnz)."""
    from hvd_stgnn.plan.activations import activation_profile, parameter_count

    if world_size < 1 or not 1 <= ranks_per_node <= world_size:
        raise ValueError(f"need 1 <= ranks per node ({ranks_per_node}) <= world size ({world_size})")
    if inputs.device not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda (got {inputs.device!r})")
    if inputs.data_mode not in ("index", "materialized"):
        raise ValueError(f"data mode must be index or materialized (got {inputs.data_mode!r})")
    L, H, N, B = inputs.input_steps, inputs.horizon, num_nodes, inputs.batch_size
    split = split_starts(num_windows(num_steps, L, H), inputs.split)
    shard_range(split.train, 0, world_size)  # raises when a rank would get no training window
    splits = split.as_dict()
    windows = {k: r.count for k, r in splits.items()}
    cuda = inputs.device == "cuda"

    # Data on the device (worst rank).
    if inputs.data_mode == "materialized":
        data = materialized_rank_bytes(inputs, N, windows)
        if cuda:  # the split's steps are copied to the GPU to gather from, and kept
            data += sum(_rows(r, L, H) for r in splits.values()) * N * FLOAT
        build = materialize_peak_extra(inputs, N, windows)
    else:
        rows = max(index_rank_rows(num_steps, splits, r, world_size, L, H, inputs.shuffle)
                   for r in range(world_size))
        data = rows * N * FLOAT if cuda else 0  # CPU: views of the node-shared series
        build = 0

    # Model: parameters (only Graph WaveNet's embeddings depend on N), state, graph.
    params, buffer_bytes = parameter_count(inputs.model, N, inputs.features, L, H, inputs.hidden, inputs.layers,
                                           inputs.diffusion_steps, inputs.adaptive_adjacency)
    model_state = 6 * params * FLOAT + 2 * buffer_bytes
    nnz = list(nnz) if nnz is not None else operator_nnz(inputs.model, N, num_edges)
    graph, storage = graph_bytes(N, nnz, inputs.graph_mode, inputs.device)
    profile = activation_profile(inputs.model, N, num_edges, inputs.features, L, H, inputs.hidden, inputs.layers,
                                 inputs.diffusion_steps, inputs.adaptive_adjacency, storage == "dense",
                                 inputs.activation_checkpointing, inputs.precision)
    saved = profile.saved_bytes(B, N)
    factor = peak_factor(inputs.model, inputs.activation_checkpointing, inputs.device, inputs.allocator)
    activations = int(saved * factor)

    # Host transients of every mode, chunked over steps: the z-score sums over the rank's
    # balanced share of the training starts (+ L - 1 steps), the data-health sums over its
    # share of the training span, and (if evaluated) the baselines' slot sums.
    from hvd_stgnn.batching.normalize import input_moment_sums
    from hvd_stgnn.data.health import health_sums
    from hvd_stgnn.metrics.baselines import slot_sums

    stat_rows = max(balanced_range(split.train, r, world_size).count for r in range(world_size)) + L - 1
    lo, hi = split.train.steps_touched(L, H)
    health_rows = max(balanced_range(StartRange(lo, hi), r, world_size).count for r in range(world_size))
    statistics = max(STATS_BYTES_PER_READING * min(stat_rows, _chunk_default(input_moment_sums)) * N,
                     HEALTH_BYTES_PER_READING * min(health_rows, _chunk_default(health_sums)) * N)
    baselines = 0
    if inputs.baselines:
        span = StartRange(0, min(split.train.steps_touched(L, H)[1], split.test.start + L))
        weekly = span.count * inputs.interval_s >= 14 * 86_400
        slots = (7 if weekly else 1) * (86_400 // inputs.interval_s)
        span_rows = max(balanced_range(span, r, world_size).count for r in range(world_size))
        table = 2 * slots * N * 8  # (2, slots, N) float64 sums and counts
        baselines = max(table + BASELINE_BYTES_PER_READING * min(span_rows, _chunk_default(slot_sums)) * N,
                        2 * table)

    shared = {"series": num_steps * N * FLOAT, "libraries": RUNTIME_SHARED_BYTES}
    step = {"activations": activations, "gather": gather_bytes(inputs, N)}
    if cuda:
        host = {"runtime": RUNTIME_PRIVATE_BYTES, "cuda_host": CUDA_HOST_BYTES, "statistics": statistics,
                "baselines": baselines}
        device = {"cuda_context": CUDA_CONTEXT_BYTES, "data": data, "model_state": model_state, "graph": graph,
                  "materialize": build, **step}
    else:
        host = {"runtime": RUNTIME_PRIVATE_BYTES, "data": data, "model_state": model_state, "graph": graph,
                "statistics": statistics, "materialize": build, **step, "baselines": baselines}
        device = {}
    return Plan(inputs, num_steps, N, num_edges, world_size, ranks_per_node, params, windows, shared, host, device,
                activation_saved_bytes=saved, peak_factor=factor, graph_storage=storage)


# --- limits and the trainer's check -------------------------------------------------------

NODE_MEMORY_ENV = "HVD_STGNN_NODE_MEMORY_GB"
DEVICE_MEMORY_ENV = "HVD_STGNN_DEVICE_MEMORY_GB"


def meminfo(key: str, path: str = "/proc/meminfo") -> int:
    """A /proc/meminfo field in bytes (MemTotal, MemAvailable, ...)."""
    with open(path) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * KiB
    raise LookupError(f"{path}: no {key} line")


def _env_gb(name: str) -> int | None:
    from hvd_stgnn.errors import ConfigError

    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise ConfigError(f"{name}={text!r}: must be a positive number of GiB", all_ranks=True)
    return int(value * GiB)


def _own_resident() -> int:
    """Private + file-backed resident bytes of this process (already counted as used in
    MemAvailable when the check runs)."""
    out = 0
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("RssAnon:", "RssFile:")):
                    out += int(line.split()[1]) * KiB
    except OSError:
        return 0
    return out


def fmt_bytes(n: float) -> str:
    if abs(n) >= 0.5 * GiB:
        return f"{n / GiB:.2f} GiB"
    if abs(n) >= 1000 * KiB:
        return f"{n / MiB:.1f} MiB"
    return f"{n / KiB:.1f} KiB" if n else "0"


def check_fits(cfg, num_steps: int, num_nodes: int, num_edges: int, world_size: int, ranks_per_node: int,
               device_type: str, *, interval_s: int = 300, node_memory_bytes: int | None = None,
               device_memory_bytes: int | None = None) -> Plan:
    """The plan of `cfg` on this dataset and job; ConfigError(all_ranks=True) if it cannot fit.

    Node limit: `node_memory_bytes`, else $HVD_STGNN_NODE_MEMORY_GB (GiB, the memory the job
    may use on a node: compared with the whole node total), else MemAvailable of this node
    plus what this node's ranks already hold (ranks_per_node x this process's resident
    bytes, counted as used in MemAvailable). Device limit (cuda): `device_memory_bytes`,
    else $HVD_STGNN_DEVICE_MEMORY_GB, else the device's total memory.
    MemAvailable differs between nodes and moments: to get the same verdict on every rank,
    pass `node_memory_bytes` agreed across ranks (e.g. the minimum, allreduced).
    """
    from hvd_stgnn.errors import ConfigError

    device_type = "cuda" if str(device_type).startswith("cuda") else "cpu"
    inputs = PlanInputs.from_config(cfg, device_type, interval_s)
    try:
        plan = estimate(inputs, num_steps, num_nodes, num_edges, world_size, ranks_per_node)
    except ValueError as exc:
        raise ConfigError(f"{cfg.data.path}: {exc}", all_ranks=True) from None

    need = plan.node_bytes
    if node_memory_bytes is None:
        node_memory_bytes = _env_gb(NODE_MEMORY_ENV)
        where = f"${NODE_MEMORY_ENV}"
        if node_memory_bytes is None:
            held = ranks_per_node * _own_resident()
            node_memory_bytes = meminfo("MemAvailable") + held
            where = f"MemAvailable + {fmt_bytes(held)} this node's ranks already hold"
    else:
        where = "given"
    problems = []
    if need > node_memory_bytes:
        top = ", ".join(f"{LABELS.get(k, k).split(' (')[0]} {fmt_bytes(v)}" for k, v in plan.dominant("host"))
        problems.append(
            f"predicted {fmt_bytes(need)} per node ({ranks_per_node} rank(s) x {fmt_bytes(plan.rank_bytes)} + "
            f"{fmt_bytes(plan.shared_bytes)} shared) > {fmt_bytes(node_memory_bytes)} available ({where}); "
            f"largest per node: {top}"
        )
    if plan.device:
        if device_memory_bytes is None:
            device_memory_bytes = _env_gb(DEVICE_MEMORY_ENV)
        if device_memory_bytes is None:
            device_memory_bytes = _cuda_total_memory()
        if device_memory_bytes is not None and plan.device_bytes > device_memory_bytes:
            top = ", ".join(f"{LABELS.get(k, k).split(' (')[0]} {fmt_bytes(v)}" for k, v in plan.dominant("device"))
            problems.append(f"predicted {fmt_bytes(plan.device_bytes)} per GPU > {fmt_bytes(device_memory_bytes)}; "
                            f"largest: {top}")
    if problems:
        by_mode = max_batch_by_mode(inputs, num_steps, num_nodes, num_edges, world_size, ranks_per_node,
                                    node_memory_bytes, device_memory_bytes if plan.device else None)
        note = f"; {max_batch_note(by_mode)}"
        raise ConfigError(f"memory: {'; '.join(problems)}; {hint(plan)}{note} (hvd-stgnn plan shows every term)",
                          all_ranks=True)
    return plan


MAX_BATCH_LIMIT = 1 << 20


def max_batch(inputs: PlanInputs, num_steps: int, num_nodes: int, num_edges: int, world_size: int,
              ranks_per_node: int, node_memory: int, device_memory: int | None = None,
              nnz: list[int] | None = None) -> int:
    """The largest per-rank --batch-size with which `inputs` fits (0: not even 1), by
    bisection: every term grows with B or stays (activations, gather, materialize)."""
    def fits(b: int) -> bool:
        plan = estimate(dataclasses.replace(inputs, batch_size=b), num_steps, num_nodes, num_edges, world_size,
                        ranks_per_node, nnz)
        return plan.fits(node_memory, device_memory)

    if not fits(1):
        return 0
    lo, hi = 1, 2
    while hi <= MAX_BATCH_LIMIT and fits(hi):
        lo, hi = hi, hi * 2
    if hi > MAX_BATCH_LIMIT:
        return lo
    while hi - lo > 1:  # fits(lo), not fits(hi)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def max_batch_by_mode(inputs: PlanInputs, num_steps: int, num_nodes: int, num_edges: int, world_size: int,
                      ranks_per_node: int, node_memory: int, device_memory: int | None = None,
                      nnz: list[int] | None = None) -> dict[str, int]:
    """max_batch for --activation-checkpointing none and the model's own mode (step or block)."""
    from hvd_stgnn.models.checkpointing import CHECKPOINT_UNITS

    modes = ["none", CHECKPOINT_UNITS[inputs.model]]
    return {m: max_batch(dataclasses.replace(inputs, activation_checkpointing=m), num_steps, num_nodes, num_edges,
                         world_size, ranks_per_node, node_memory, device_memory, nnz) for m in modes}


def max_batch_note(by_mode: dict[str, int]) -> str:
    """'largest --batch-size that fits: 12 (--activation-checkpointing none), 60 (... step)'."""
    return "largest --batch-size that fits: " + ", ".join(
        f"{b} (--activation-checkpointing {m})" for m, b in by_mode.items())


def _cuda_total_memory() -> int | None:
    try:
        import torch

        if torch.cuda.is_available():
            return int(torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory)
    except Exception:  # noqa: BLE001 - no usable CUDA: no device limit
        return None
    return None


def hint(plan: Plan) -> str:
    """What to change, from the largest term."""
    terms = plan.dominant("device" if plan.device and plan.device_bytes else "host", 1)
    top = terms[0][0] if terms else ""
    if plan.inputs.data_mode == "materialized" and top in ("data", "materialize"):
        return "use --data-mode index"
    if top in ("activations", "gather"):
        fix = f"use a smaller --batch-size (now {plan.inputs.batch_size}) or --hidden, or fewer ranks per node"
        if plan.inputs.activation_checkpointing == "none":
            from hvd_stgnn.models.checkpointing import CHECKPOINT_UNITS

            fix += f", or --activation-checkpointing {CHECKPOINT_UNITS[plan.inputs.model]}"
        return fix
    if top in ("statistics", "baselines", "series"):
        extra = " or --no-baselines" if top == "baselines" else ""
        return f"use more nodes (fewer ranks per node){extra}"
    if top == "data" and plan.inputs.shuffle == "global":
        return "use --shuffle shard"
    return "use fewer ranks per node, a smaller --batch-size, or more nodes"
