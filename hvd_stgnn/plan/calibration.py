"""The rates of plan/timing.py measured on this machine, for `hvd-stgnn plan --time`.

- `measure_rates`: one rank's step, forward and batch times on the spot (`bench models`'
  measurement: the model at N and B, random inputs), and the preprocessing passes' rates.
- `calibrate` (`--calibrate`): real short training jobs through jobs/local.sh instead. An
  np = 1 job gives the step, batch, evaluation, loop and start-up times as the trainer
  recorded them; for every rank count of the plan that oversubscribes this node's cores, an
  np = R job gives the contention factor c_R, measured rather than modelled (on shared
  cores the same job measured 2.0x to 4.3x from run to run one day, 3.7x another). With
  `--calibrate-repeats K` every job runs K times, interleaved (np = 1, np = R, np = 1, ...),
  and each figure is the median: one run on a shared machine can be a neighbour's.
- `allreduce_fit`: alpha and beta from `bench allreduce`'s allreduce.json.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import replace

from hvd_stgnn.batching.windows import StartRange
from hvd_stgnn.plan.estimate import FLOAT, PlanInputs
from hvd_stgnn.plan.timing import (
    DEFAULT_SOURCES, Rates, contention_key, gradient_messages, predict, ring_allreduce_s,
)


def _median_ms(fn, repeats: int, warmup: int = 2) -> float:
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
# Two epochs: the first one's steps carry the job's warm-up (allocator growth, Horovod's first
# negotiations; 16 steps of 4 ranks on 2 cores measured 74 ms a step in a first epoch against
# 47 ms later), which the start-up absorbs; the second epoch's are the steady state.
CALIBRATION_EPOCHS = 2


def _calibration_job(data, inputs: PlanInputs, rates: Rates, backend: str, ranks: int, out_dir, tag: str,
                     compile_model: bool = False):
    """One real job of CALIBRATION_EPOCHS epochs of up to CALIBRATION_STEPS steps, each with a
    validation pass over 4 batches, no baselines: (its wall-clock seconds, its Results)."""
    from hvd_stgnn.bench.jobs import LAUNCHER, job_environment, run_job, train_executable
    from hvd_stgnn.results import Results

    results = out_dir / f"{tag}.json"
    cmd = ["bash", str(LAUNCHER), "-np", str(ranks), *train_executable(), "train", "--data", str(data),
           "--model", inputs.model, "--hidden", str(inputs.hidden), "--layers", str(inputs.layers),
           "--graph-mode", inputs.graph_mode, "--batch-size", str(inputs.batch_size),
           "--input-steps", str(inputs.input_steps), "--horizon", str(inputs.horizon),
           "--diffusion-steps", str(inputs.diffusion_steps), "--compile" if compile_model else "--no-compile",
           "--day-of-week" if inputs.day_of_week else "--no-day-of-week",
           "--epochs", str(CALIBRATION_EPOCHS),
           "--max-steps-per-epoch", str(CALIBRATION_STEPS), "--eval-windows", str(4 * inputs.batch_size),
           "--no-baselines", "--threads", str(rates.threads), "--data-mode", "index", "--device", rates.device,
           "--backend", backend, "--results", str(results)]
    wall = run_job(cmd, job_environment(rates.threads), f"calibration (np={ranks})", out_dir / f"{tag}.log")
    return wall, Results.read(results)


def _one_rank_figures(wall: float, res, windows: int, batch_size: int) -> dict:
    """What an np = 1 job's results say of one rank in its last epoch (the steady state): its
    step (batch excluded), batch, forward and loop ms (the loop's own work per step besides
    the phases), its phase step and its wall clock."""
    phases = res.last_phases
    batch_ms, phase_ms = phases.median("batch_ms"), phases.median("step_ms")
    # The epoch's seconds are its training loop, then one validation pass. (The job is this
    # trainer's own, so its results always carry the epoch's loop_seconds.)
    validation_s = max(0.0, res.epochs[-1].seconds - phases.loop_seconds)
    loop_ms = 1e3 * phases.loop_seconds / phases.steps
    return {"step_ms": phase_ms - batch_ms, "batch_ms": batch_ms, "phase_ms": phase_ms, "wall": wall,
            "loop_ms": max(0.0, loop_ms - phase_ms),
            "forward_ms": max(0.0, 1e3 * validation_s / -(-windows // batch_size) - batch_ms)}


def calibrate(data, inputs: PlanInputs, rates: Rates, num_steps: int, num_nodes: int, out_dir,
              parameters: int, backend: str = "horovod", repeats: int = 1, oversubscribed: tuple = (),
              fusion_bytes: int | None = None, compile_model: bool = False, say=None) -> Rates:
    """`rates` with one rank's step, batch, evaluation, loop and start-up times taken from real
    np = 1 jobs here (the phase times include the backend's per-step work and the loop's
    bookkeeping; start-up is the wall clock less the predicted work, the first epoch's
    warm-up included), and, for every R in `oversubscribed` (ranks per node beyond this
    node's cores), the contention factor of R ranks: an np = R job's phase step, less the
    predicted allreduce, over the np = 1 job's.
    The allreduce is the one `predict` adds back: `rates`' alpha and beta, `fusion_bytes`.
    Every job runs `repeats` times, interleaved; each figure is the median over the runs."""
    from pathlib import Path

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    B, windows = inputs.batch_size, 4 * inputs.batch_size
    ones, ratios = [], {R: [] for R in oversubscribed}
    grad_bytes = parameters * FLOAT
    for i in range(repeats):
        suffix = f"-{i + 1}" if repeats > 1 else ""
        if say:
            say(f"calibration {i + 1}/{repeats}: np=1" + "".join(f", np={R}" for R in oversubscribed))
        one = _one_rank_figures(*_calibration_job(data, inputs, rates, backend, 1, out_dir, f"calibration{suffix}",
                                                  compile_model), windows, B)
        ones.append(one)
        for R in oversubscribed:
            _, res = _calibration_job(data, inputs, rates, backend, R, out_dir, f"calibration-np{R}{suffix}",
                                      compile_model)
            allreduce_ms = 1e3 * ring_allreduce_s(grad_bytes, R, rates.alpha_s, rates.beta_bytes_per_s,
                                                  gradient_messages(grad_bytes, backend, fusion_bytes))
            ratios[R].append(max(1.0, (res.last_phases.median("step_ms") - allreduce_ms) / one["phase_ms"]))
    fig = {key: statistics.median(o[key] for o in ones) for key in ones[0]}
    runs = f"{repeats} runs, median" if repeats > 1 else "1 run"
    here = (f"measured here: real np=1 {backend} jobs, the last of {CALIBRATION_EPOCHS} epochs of {CALIBRATION_STEPS} "
            f"steps ({runs}; logs in {out_dir})")
    sources = {**rates.sources, "step_ms": here, "batch_ms": here, "forward_ms": here, "loop_ms": here}
    if ratios:
        sources["contention"] = (f"measured here: np={'/'.join(map(str, ratios))} {backend} jobs, their step less "
                                 f"the allreduce over the np=1 job's ({runs})")
    measured = {contention_key(backend, R): statistics.median(r) for R, r in ratios.items()}
    rates = replace(rates, step_ms=fig["step_ms"], batch_ms=fig["batch_ms"], forward_ms=fig["forward_ms"],
                    loop_ms=fig["loop_ms"], startup_s=0.0, sources=sources,
                    measured_contention={**rates.measured_contention, **measured})
    minimal = replace(inputs, data_mode="index", baselines=False)
    work = predict(minimal, num_steps, num_nodes, 1, 1, CALIBRATION_EPOCHS, rates, parameters, backend,
                   eval_windows=windows, max_steps_per_epoch=CALIBRATION_STEPS)
    startup = max(0.0, fig["wall"] - work.total_s)
    return replace(rates, startup_s=startup, sources={**rates.sources, "startup_s": (
        f"measured here: the np=1 job took {fig['wall']:.1f} s ({runs}), less {work.total_s:.1f} s of predicted work "
        f"(its warm-up included)")})
