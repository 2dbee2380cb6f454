"""Predicted time of a training job: per step, per epoch and end to end (docs/SCALING.md).

A job of P ranks on K nodes (R = P / K per node), B windows per rank and step:

    contention     c = 1 while R x threads <= cores (and on GPUs: one rank per GPU), else
                   c = R x (threads + s) / cores: ranks time-share the cores, and with Horovod
                   (s = 1) a waiting rank's background thread and MPI progress loop spin and
                   take their share too; DDP's gloo waits block (s = 0)
    allreduce(n)   m x 2 (P-1) alpha + 2 (P-1)/P x n / beta    ring allreduce of n bytes sent as
                   m messages (Horovod's fusion buffers / DDP's buckets); 0 when P = 1
    step           c x (batch + compute) + allreduce(4 x parameters)
                   (no overlap of the allreduce with backward is assumed: an upper bound)
    epoch          steps x (step + c x loop) + validation; loop: the training loop's own work
                   per step besides the step's phases (metric sums, bookkeeping)
                   steps = floor(training windows per rank / B) (every rank the same count)
                   validation = ceil(val windows per rank / B) x c x (batch + forward)
    start-up       startup x max(1, R / cores)           launch, imports, MPI/Horovod init,
                                                         the memory plan: a fixed cost, CPU-bound
    load           T x N x 4 / read  (+ T x N x 4 / bcast to the other node leaders, K > 1)
    prepare        the z-score and data-health sums over the rank's share of the training span
                   (c x bytes / stats); materialized: every window of every split on every
                   rank (c x windows / materialize)
    test           ceil(test windows per rank / B) x c x (batch + forward), + the baselines
                   (one more batch gather each, + the slot sums over the rank's share)
    end to end     start-up + load + prepare + epochs x epoch + test

`Rates` are what one rank does alone: measured on this machine (`measure_rates`, and
`calibrate_startup` with a real minimal job) or given from the user's own cluster
(`bench models --device cuda`, `bench allreduce` under srun, `bench load`). Every rate
carries where it came from, and the report prints them all.
"""

from __future__ import annotations

import math
import time
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


SPINNING_THREADS = {"horovod": 1, "ddp": 0}  # per rank, competing for cores while it waits


def contention(ranks_per_node: int, threads: int, cores: int, device: str = "cpu", backend: str = "ddp") -> float:
    """How much slower CPU work runs when the node's ranks share its cores (module docstring)."""
    if device == "cuda" or ranks_per_node * threads <= cores:
        return 1.0
    return ranks_per_node * (threads + SPINNING_THREADS.get(backend, 0)) / cores


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
    c = contention(ranks_per_node, rates.threads, rates.cores, rates.device, backend)
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
    startup = rates.startup_s * (1.0 if rates.device == "cuda" else max(1.0, ranks_per_node / rates.cores))
    total = startup + load + prepare + epochs * epoch + test
    return TimePlan(
        backend=backend, data_mode=inputs.data_mode, world_size=P, ranks_per_node=ranks_per_node, contention=c,
        steps_per_epoch=steps, step_s=step, step_compute_s=compute, step_allreduce_s=allreduce,
        validation_s=validation, epoch_s=epoch, epochs=epochs, startup_s=startup, load_s=load, prepare_s=prepare,
        test_s=test, total_s=total, samples_per_s=P * B / step if step > 0 else 0.0,
    )


# --- measuring the rates here ----------------------------------------------------------------


def _median_ms(fn, repeats: int, warmup: int = 2) -> float:
    import statistics

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def measure_rates(inputs: PlanInputs, num_nodes: int, threads: int, cores: int, steps: int = 5,
                  compile_model: bool = False) -> Rates:
    """One rank's step (`bench models`' measurement), forward and batch times for `inputs` at
    N = `num_nodes` on this machine's CPU with `threads` threads (the synthetic road graph,
    random inputs), and the rates of the preprocessing passes."""
    import numpy as np
    import torch

    from hvd_stgnn.batching.gather import WindowGather
    from hvd_stgnn.batching.normalize import input_moment_sums
    from hvd_stgnn.bench.models import build_variants, time_variants
    from hvd_stgnn.data.health import health_sums

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        L, H, B, N = inputs.input_steps, inputs.horizon, inputs.batch_size, num_nodes
        (variant,) = build_variants(inputs.model, N, B, L, H, inputs.hidden, inputs.layers, inputs.graph_mode,
                                    compile="on" if compile_model else "off")
        step_ms = time_variants([variant], B, N, L, H, steps)[0]["step_ms"]
        model, x = variant.model, torch.randn(B, L, N, 2)

        def forward() -> None:
            with torch.no_grad():
                model.eval()
                model(x)
                model.train()

        forward_ms = _median_ms(forward, steps)
        T = max(4 * (L + H) * 8, 2048)
        rng = np.random.default_rng(0)
        series = rng.uniform(10, 70, size=(T, N)).astype(np.float32)
        gather = WindowGather(torch.from_numpy(series), 1_704_067_200 + 300 * np.arange(T), L, H, 50.0, 10.0)
        starts = torch.from_numpy(rng.integers(0, T - L - H + 1, size=B))
        batch_ms = _median_ms(lambda: gather(starts), max(steps, 10))
        build = torch.arange(0, min(256, T - L - H))  # MaterializedSource builds 256 windows a call
        build_ms = _median_ms(lambda: gather(build), 3, warmup=1)
        full = StartRange(0, T - L + 1)
        stats_ms = _median_ms(lambda: (input_moment_sums(series, full, L), health_sums(series, 0, T)), 3, warmup=1)
    finally:
        torch.set_num_threads(previous)
    here = f"measured here ({threads} thread(s), N={N}, B={B}; the step: bench models)"
    return Rates(
        step_ms=step_ms, forward_ms=forward_ms, batch_ms=batch_ms, threads=threads, cores=cores,
        stats_bytes_per_s=2 * series.nbytes / (stats_ms / 1e3),
        materialize_windows_per_s=len(build) / (build_ms / 1e3),
        sources={**DEFAULT_SOURCES, "step_ms": here, "forward_ms": here, "batch_ms": here, "stats_bytes_per_s": here,
                 "materialize_windows_per_s": here, "threads": "given", "cores": "this machine (nproc)"},
    )


def allreduce_fit(path: str, backend: str) -> tuple[float, float]:
    """(alpha_s, beta_bytes_per_s) of `backend` from `hvd-stgnn bench allreduce`'s allreduce.json."""
    import json

    from hvd_stgnn.errors import ConfigError

    try:
        with open(path) as f:
            fit = json.load(f)["fits"][backend]
        return float(fit["alpha_s"]), float(fit["beta_bytes_per_s"])
    except FileNotFoundError:
        raise ConfigError(f"--allreduce {path}: no such file") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"--allreduce {path}: no {backend} fit in it (expected bench allreduce's allreduce.json: "
                          f"{type(exc).__name__}: {exc})") from None


CALIBRATION_STEPS = 30


def calibrate(data, inputs: PlanInputs, rates: Rates, num_steps: int, num_nodes: int, out_dir,
              parameters: int, backend: str = "horovod") -> Rates:
    """Measure one rank here with a real short job (`jobs/local.sh -np 1 hvd-stgnn train`,
    CALIBRATION_STEPS steps, one validation pass over 4 batches, no baselines) and take its
    step, batch and evaluation times from what the trainer recorded (results.json: the phase
    times include the backend's per-step work, the loop's bookkeeping), and the job's fixed
    cost: its wall clock less the predicted load, preparation, steps and evaluation."""
    from pathlib import Path

    from hvd_stgnn.bench.jobs import LAUNCHER, job_environment, run_job, train_executable
    from hvd_stgnn.results import Results

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    B, windows = inputs.batch_size, 4 * inputs.batch_size
    results = out_dir / "calibration.json"
    cmd = ["bash", str(LAUNCHER), "-np", "1", *train_executable(), "train", "--data", str(data),
           "--model", inputs.model, "--hidden", str(inputs.hidden), "--layers", str(inputs.layers),
           "--graph-mode", inputs.graph_mode, "--batch-size", str(B), "--epochs", "1",
           "--max-steps-per-epoch", str(CALIBRATION_STEPS), "--eval-windows", str(windows), "--no-baselines",
           "--threads", str(rates.threads), "--data-mode", "index", "--device", rates.device, "--backend", backend,
           "--results", str(results)]
    wall = run_job(cmd, job_environment(rates.threads), "calibration (np=1)", out_dir / "calibration.log")
    res = Results.read(results)
    phases, steps = res.last_phases, res.last_phases.steps
    batch_ms, phase_ms = phases.median("batch_ms"), phases.median("step_ms")
    loop_ms = 1e3 * res.timing.train_loop_seconds / steps  # the phases + the loop's own work per step
    validation_s = res.epochs[-1].seconds - res.timing.train_loop_seconds
    forward_ms = max(0.0, 1e3 * validation_s / -(-windows // B) - batch_ms)
    here = f"measured here: a real np=1 {backend} job of {steps} steps ({out_dir / 'calibration.log'})"
    rates = replace(rates, step_ms=phase_ms - batch_ms, batch_ms=batch_ms, forward_ms=forward_ms,
                    loop_ms=max(0.0, loop_ms - phase_ms), startup_s=0.0,
                    sources={**rates.sources, "step_ms": here, "batch_ms": here, "forward_ms": here, "loop_ms": here})
    minimal = replace(inputs, data_mode="index", baselines=False)
    work = predict(minimal, num_steps, num_nodes, 1, 1, 1, rates, parameters, backend, eval_windows=windows,
                   max_steps_per_epoch=CALIBRATION_STEPS)
    startup = max(0.0, wall - work.total_s)
    return replace(rates, startup_s=startup, sources={**rates.sources, "startup_s": (
        f"measured here: the np=1 job took {wall:.1f} s, less {work.total_s:.1f} s of predicted work")})
