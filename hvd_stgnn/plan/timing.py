"""Predicted time of a training job: per step, per epoch and end to end (docs/SCALING.md).

A job of P ranks on K nodes (R = P / K per node), B windows per rank and step:

    contention     c = 1 while R x threads <= cores (and on GPUs: one rank per GPU), else
                   measured (`--calibrate`: a real short job at R ranks, c = its step less the
                   allreduce over the one-rank step), else the model c = R x (threads + s) / cores:
                   ranks time-share the cores, and with Horovod (s = 0.5) a waiting rank's
                   background thread and MPI progress loop spin and take part of a share;
                   DDP's gloo waits block (s = 0). The same T-GCN job, 4 ranks on 2 cores,
                   measured 3.7x the one-rank step on one day and 2.0x to 4.3x from run to run
                   on another: on shared cores, measure it.
    allreduce(n)   m x 2 (P-1) alpha + 2 (P-1)/P x n / beta    ring allreduce of n bytes sent as
                   m messages (Horovod's fusion buffers / DDP's buckets); 0 when P = 1
    step           c x (batch + compute) + allreduce(4 x parameters)
                   (no overlap of the allreduce with backward is assumed: an upper bound)
    epoch          steps x (step + c x loop) + validation; loop: the training loop's own work
                   per step besides the step's phases (metric sums, bookkeeping)
                   steps = floor(training windows per rank / B) (every rank the same count)
                   validation = ceil(val windows per rank / B) x c x (batch + forward)
    start-up       startup x (c1 if R > cores else 1)    launch, imports, MPI/Horovod init,
                                                         the memory plan: a fixed cost, CPU-bound
                                                         with one thread a rank, so c1 is the
                                                         contention of R one-thread ranks
    load           T x N x 4 / read  (+ T x N x 4 / bcast to the other node leaders, K > 1)
    prepare        the z-score and data-health sums over the rank's share of the training span
                   (c x bytes / stats); materialized: every window of every split on every
                   rank (c x windows / materialize)
    test           ceil(test windows per rank / B) x c x (batch + forward), + the baselines
                   (one more batch gather each, + the slot sums over the rank's share)
    end to end     start-up + load + prepare + epochs x epoch + test

`Rates` are what one rank does alone: measured on this machine (plan/calibration.py:
`measure_rates`, and `calibrate` with real short jobs) or given from the user's own cluster
(`bench models --device cuda`, `bench allreduce` under srun, `bench load`). Every rate
carries where it came from, and the report prints them all.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

from hvd_stgnn.batching.shards import balanced_range, shard_range
from hvd_stgnn.batching.windows import StartRange, num_windows, split_starts
from hvd_stgnn.plan.estimate import FLOAT, PlanInputs

# Defaults measured on this project's 2-core development machine (docs/BENCHMARKS.md
# "bench load"; docs/SCALING.md "Calibration"), used when neither a flag nor --calibrate
# gives one. The network figures are assumptions: this machine has no network between nodes.
DEFAULT_READ_BYTES_PER_S = 1.5e9  # rank 0 read_direct into the node-shared window (1.2-2.4 GB/s measured)
DEFAULT_BCAST_BYTES_PER_S = 10e9  # leader broadcast between nodes: ASSUMED (a 100 Gb/s class network)
DEFAULT_ALPHA_S = 20e-6  # allreduce latency per message and ring step: ASSUMED (MPI over a cluster network)
DEFAULT_BETA_BYTES_PER_S = 10e9  # allreduce bandwidth: ASSUMED
DEFAULT_STARTUP_S = 4.0  # a minimal `jobs/local.sh -np 1 hvd-stgnn train` job here (quiet), less its load and work
DEFAULT_SOURCES = {
    "startup_s": "default: measured on the development machine (docs/SCALING.md)",
    "read_bytes_per_s": "default: bench load on the development machine",
    "bcast_bytes_per_s": "ASSUMED (no network here)",
    "alpha_s": "ASSUMED (no network here; bench allreduce measures it)",
    "beta_bytes_per_s": "ASSUMED (no network here; bench allreduce measures it)",
    "stats_bytes_per_s": "default", "materialize_windows_per_s": "default",
}
HOROVOD_FUSION_BYTES = 128 << 20  # Horovod's default fusion threshold (--fusion-threshold-mb -1)
DDP_BUCKET_BYTES = 25 << 20  # torch's default bucket_cap_mb


@dataclass(frozen=True)
class Rates:
    """One rank's speeds, each with where it came from (`sources[field]`)."""

    step_ms: float  # forward + backward + optimizer of one batch of B (alone on `threads` threads)
    forward_ms: float  # forward only (validation / test batch), same B
    batch_ms: float  # building one batch from its start indices (the gather)
    threads: int  # threads per rank those were measured with
    cores: int  # cores of a node the ranks share (for contention)
    loop_ms: float = 0.0  # the training loop's work per step outside the phases (0 unless calibrated)
    startup_s: float = DEFAULT_STARTUP_S
    read_bytes_per_s: float = DEFAULT_READ_BYTES_PER_S
    bcast_bytes_per_s: float = DEFAULT_BCAST_BYTES_PER_S
    stats_bytes_per_s: float = 1e9  # normalization + health sums over the raw series
    materialize_windows_per_s: float = 1e4
    alpha_s: float = DEFAULT_ALPHA_S
    beta_bytes_per_s: float = DEFAULT_BETA_BYTES_PER_S
    device: str = "cpu"
    # Measured contention factors (`calibrate`), keyed "backend:R" (R ranks on a node's cores).
    measured_contention: dict = field(default_factory=dict)
    sources: dict = field(default_factory=lambda: dict(DEFAULT_SOURCES))

    def with_given(self, **given) -> "Rates":
        """These rates with the non-None `given` values replaced and marked as given."""
        given = {k: v for k, v in given.items() if v is not None}
        return replace(self, **given, sources={**self.sources, **{k: "given" for k in given}})


@dataclass
class TimePlan:
    """Predicted seconds of one job (see the module docstring)."""

    backend: str
    data_mode: str
    world_size: int
    ranks_per_node: int
    contention: float
    steps_per_epoch: int
    step_s: float
    step_compute_s: float
    step_allreduce_s: float
    validation_s: float
    epoch_s: float
    epochs: int
    startup_s: float
    load_s: float
    prepare_s: float
    test_s: float
    total_s: float
    samples_per_s: float  # training windows per second over all ranks

    def to_dict(self) -> dict:
        return asdict(self)


def ring_allreduce_s(nbytes: float, ranks: int, alpha_s: float, beta_bytes_per_s: float, messages: int = 1) -> float:
    """Ring allreduce of `nbytes` over `ranks`, sent as `messages` messages."""
    if ranks <= 1 or nbytes <= 0:
        return 0.0
    return messages * 2 * (ranks - 1) * alpha_s + 2 * (ranks - 1) / ranks * nbytes / beta_bytes_per_s


def gradient_messages(grad_bytes: int, backend: str, fusion_bytes: int | None = None) -> int:
    """Messages one step's gradients are sent as: Horovod fuses tensors into buffers of the
    fusion threshold, DDP into buckets of bucket_cap_mb."""
    size = fusion_bytes or (HOROVOD_FUSION_BYTES if backend == "horovod" else DDP_BUCKET_BYTES)
    return max(1, math.ceil(grad_bytes / size))


# Per rank, the share of a core its waiting threads take. Horovod, the same job (module
# docstring): s = 0.85 one day, 0 to 1.15 from run to run (median ~0.45) another; DDP (gloo
# blocks): assumed 0.
SPINNING_THREADS = {"horovod": 0.5, "ddp": 0.0}


def oversubscribed(ranks_per_node: int, threads: int, cores: int, device: str = "cpu") -> bool:
    """Whether a node's ranks share its cores (CPU training, more threads than cores)."""
    return device != "cuda" and ranks_per_node * threads > cores


def contention_key(backend: str, ranks_per_node: int) -> str:
    return f"{backend}:{ranks_per_node}"


def contention(ranks_per_node: int, threads: int, cores: int, device: str = "cpu", backend: str = "ddp",
               measured: dict | None = None) -> float:
    """How much slower CPU work runs when the node's ranks share its cores (module docstring);
    `measured`: Rates.measured_contention, which wins over the model where it has the case."""
    if not oversubscribed(ranks_per_node, threads, cores, device):
        return 1.0
    key = contention_key(backend, ranks_per_node)
    if measured and key in measured:
        return float(measured[key])
    return ranks_per_node * (threads + SPINNING_THREADS.get(backend, 0.0)) / cores


def predict(inputs: PlanInputs, num_steps: int, num_nodes: int, world_size: int, ranks_per_node: int, epochs: int,
            rates: Rates, parameters: int, backend: str = "horovod", fusion_bytes: int | None = None,
            eval_windows: int = 0, max_steps_per_epoch: int = 0) -> TimePlan:
    """Predicted seconds of `inputs` on a (T, N) dataset with `world_size` ranks,
    `ranks_per_node` per node. ValueError if the series cannot feed the ranks."""
    L, H, B, N, P = inputs.input_steps, inputs.horizon, inputs.batch_size, num_nodes, world_size
    split = split_starts(num_windows(num_steps, L, H), inputs.split)
    per_rank = shard_range(split.train, 0, P).count  # every rank has the same count (shards.py)
    steps = per_rank // B
    if max_steps_per_epoch:
        steps = min(steps, max_steps_per_epoch)
    c = contention(ranks_per_node, rates.threads, rates.cores, rates.device, backend, rates.measured_contention)
    nodes = -(-P // ranks_per_node)

    grad_bytes = parameters * FLOAT
    allreduce = ring_allreduce_s(grad_bytes, P, rates.alpha_s, rates.beta_bytes_per_s,
                                 gradient_messages(grad_bytes, backend, fusion_bytes))
    compute = c * (rates.batch_ms + rates.step_ms) / 1e3
    step = compute + allreduce

    def eval_s(r: StartRange, extra_batch: bool = False) -> float:
        count = balanced_range(r, 0, P).count  # rank 0 holds the largest balanced share
        if eval_windows and count * P > eval_windows:
            count = max(1, -(-eval_windows // P))
        per_batch = rates.batch_ms * (2 if extra_batch else 1) + rates.forward_ms
        return math.ceil(count / B) * c * per_batch / 1e3

    validation = eval_s(split.val)
    epoch = steps * (step + c * rates.loop_ms / 1e3) + validation

    series_bytes = num_steps * N * FLOAT
    load = series_bytes / rates.read_bytes_per_s + (series_bytes / rates.bcast_bytes_per_s if nodes > 1 else 0.0)
    lo, hi = split.train.steps_touched(L, H)
    share = -(-(hi - lo) // P) * N * FLOAT
    prepare = c * 2 * share / rates.stats_bytes_per_s  # z-score sums and data-health sums: two passes
    if inputs.data_mode == "materialized":
        prepare += c * (split.train.count + split.val.count + split.test.count) / rates.materialize_windows_per_s
    test = eval_s(split.test, extra_batch=inputs.baselines)
    if inputs.baselines:
        test += c * share / rates.stats_bytes_per_s  # the historical average's slot sums
    shared = rates.device != "cuda" and ranks_per_node > rates.cores
    # One thread a rank at start-up: the contention of R single-threaded ranks (a measured
    # factor only if it was measured with one thread).
    measured = rates.measured_contention if rates.threads == 1 else None
    startup = rates.startup_s * (contention(ranks_per_node, 1, rates.cores, rates.device, backend, measured)
                                 if shared else 1.0)
    total = startup + load + prepare + epochs * epoch + test
    return TimePlan(
        backend=backend, data_mode=inputs.data_mode, world_size=P, ranks_per_node=ranks_per_node, contention=c,
        steps_per_epoch=steps, step_s=step, step_compute_s=compute, step_allreduce_s=allreduce,
        validation_s=validation, epoch_s=epoch, epochs=epochs, startup_s=startup, load_s=load, prepare_s=prepare,
        test_s=test, total_s=total, samples_per_s=P * B / step if step > 0 else 0.0,
    )
