"""`hvd-stgnn plan --time`: predicted seconds per step, per epoch and end to end, for each
rank count of `--np`, index vs materialized and Horovod vs DDP (the model: plan/timing.py).

    hvd-stgnn plan --time --preset metr-la --np 1,2,4 --threads 1 --epochs 5
    hvd-stgnn plan --time --data D.h5 --np 1,2 --threads 1 --calibrate --calibrate-dir runs/cal
    hvd-stgnn plan --time --preset pems --model dcrnn --hidden 2 --layers 1 --batch-size 64 \\
        --np 4,8,16,32,64,128 --ranks-per-node 4 --device cuda --step-ms S --forward-ms F --batch-ms G \\
        --allreduce runs/ar/allreduce.json --epochs 30

A run the memory planner says cannot fit gets "does not fit" instead of a time. Every rate
the prediction uses is printed with where it came from (measured here, given, assumed).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from dataclasses import replace

from hvd_stgnn.errors import ConfigError, DataError
from hvd_stgnn.plan.estimate import GiB, PlanInputs, estimate, fmt_bytes, meminfo
from hvd_stgnn.plan.calibration import allreduce_fit, calibrate, measure_rates
from hvd_stgnn.plan.timing import Rates, contention, contention_key, oversubscribed, predict

BACKENDS = ("horovod", "ddp")
MAX_CALIBRATION_RANKS_PER_CORE = 4  # --calibrate runs no np = R job with more ranks than this per core
DATA_MODES = ("index", "materialized")


def add_time_arguments(p: argparse.ArgumentParser) -> None:
    t = p.add_argument_group("time (--time)")
    t.add_argument("--time", action="store_true", help="predict seconds per step, epoch and job instead of memory")
    t.add_argument("--epochs", type=int, default=1, help="epochs of the job (default: 1)")
    t.add_argument("--threads", type=int, default=1, help="torch threads per rank (default: 1)")
    t.add_argument("--cores", type=int, default=0, help="cores per node the ranks share (default: this machine's)")
    t.add_argument("--backends", default="horovod,ddp", help="horovod, ddp or both (default: both)")
    t.add_argument("--eval-windows", type=int, default=0, help="as train --eval-windows (default: 0, all)")
    t.add_argument("--max-steps-per-epoch", type=int, default=0, help="as train (default: 0, all)")
    t.add_argument("--fusion-threshold-mb", type=float, default=-1.0,
                   help="gradient message size (default: Horovod's 128 MiB, DDP's 25 MiB)")
    t.add_argument("--step-ms", type=float, default=None, help="one rank's training step at B (default: measured here)")
    t.add_argument("--forward-ms", type=float, default=None, help="one rank's forward pass at B (default: measured here)")
    t.add_argument("--batch-ms", type=float, default=None, help="building one batch (default: measured here)")
    t.add_argument("--startup-s", type=float, default=None, help="a job's fixed cost (default: docs/SCALING.md)")
    t.add_argument("--read-gbs", type=float, default=None, help="rank 0's HDF5 read, GB/s")
    t.add_argument("--bcast-gbs", type=float, default=None, help="leader broadcast between nodes, GB/s")
    t.add_argument("--allreduce", default="", metavar="FILE", help="bench allreduce's allreduce.json: alpha/beta")
    t.add_argument("--alpha-us", type=float, default=None, help="allreduce latency per message and ring step, us")
    t.add_argument("--beta-gbs", type=float, default=None, help="allreduce bandwidth, GB/s")
    t.add_argument("--calibrate", action="store_true",
                   help="measure one rank here with real short np=1 training jobs (step, batch, evaluation and "
                        "start-up times) instead of the model alone, and, for rank counts that oversubscribe this "
                        "node's cores, their contention with real np=R jobs")
    t.add_argument("--calibrate-repeats", type=int, default=1, metavar="K",
                   help="run every calibration job K times, interleaved, and take the medians (default: 1)")
    t.add_argument("--calibrate-dir", default="", help="where the calibration jobs write (default: a temp dir)")
    t.add_argument("--compile", action="store_true", help="measure the step with torch.compile (as train --compile)")


def _rates(args: argparse.Namespace, inputs: PlanInputs, N: int, cores: int) -> Rates:
    given = {"step_ms": args.step_ms, "forward_ms": args.forward_ms, "batch_ms": args.batch_ms}
    if all(v is not None for v in given.values()):
        rates = Rates(args.step_ms, args.forward_ms, args.batch_ms, args.threads, cores, device=args.device)
        rates = replace(rates, sources={**rates.sources, "threads": "given",
                                        "cores": "given" if args.cores else "this machine (nproc)"})
    elif args.device == "cuda":
        raise ConfigError("--time --device cuda: give --step-ms, --forward-ms and --batch-ms (measure them on the GPU "
                          "with `hvd-stgnn bench models --device cuda` and `bench batching --device cuda`)")
    else:
        rates = measure_rates(inputs, N, args.threads, cores, compile_model=args.compile)
    rates = rates.with_given(**given)
    alpha = args.alpha_us * 1e-6 if args.alpha_us is not None else None
    beta = args.beta_gbs * 1e9 if args.beta_gbs is not None else None
    return rates.with_given(startup_s=args.startup_s, read_bytes_per_s=args.read_gbs and args.read_gbs * 1e9,
                            bcast_bytes_per_s=args.bcast_gbs and args.bcast_gbs * 1e9, alpha_s=alpha,
                            beta_bytes_per_s=beta)


def _check(args: argparse.Namespace) -> list[str]:
    for flag, value in (("--batch-size", args.batch_size), ("--hidden", args.hidden), ("--epochs", args.epochs),
                        ("--threads", args.threads), ("--layers", args.layers),
                        ("--calibrate-repeats", args.calibrate_repeats)):
        if value < 1:
            raise ConfigError(f"{flag} must be >= 1 (got {value})")
    for flag, value in (("--step-ms", args.step_ms), ("--forward-ms", args.forward_ms), ("--batch-ms", args.batch_ms),
                        ("--read-gbs", args.read_gbs), ("--bcast-gbs", args.bcast_gbs), ("--beta-gbs", args.beta_gbs)):
        if value is not None and value <= 0:
            raise ConfigError(f"{flag} must be > 0 (got {value:g})")
    for flag, value in (("--startup-s", args.startup_s), ("--alpha-us", args.alpha_us), ("--cores", args.cores),
                        ("--eval-windows", args.eval_windows), ("--max-steps-per-epoch", args.max_steps_per_epoch)):
        if value is not None and value < 0:
            raise ConfigError(f"{flag} must be >= 0 (got {value:g})")
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not backends or any(b not in BACKENDS for b in backends):
        raise ConfigError(f"--backends: choose from {', '.join(BACKENDS)} (got {args.backends!r})")
    if args.allreduce and (args.alpha_us is not None or args.beta_gbs is not None):
        raise ConfigError("--allreduce and --alpha-us/--beta-gbs both set: use one")
    if args.calibrate and args.device == "cuda":
        raise ConfigError("--calibrate measures on this machine's CPU: not with --device cuda")
    return backends


def cmd_plan_time(args: argparse.Namespace) -> int:
    from hvd_stgnn.bench.jobs import available_cores
    from hvd_stgnn.plan.activations import parameter_count
    from hvd_stgnn.plan.cli import dataset_shape

    backends = _check(args)
    cores = args.cores or available_cores()
    name, T, N, E, interval, nnz = dataset_shape(args)
    rpn = args.ranks_per_node
    base = PlanInputs(model=args.model, hidden=args.hidden, layers=args.layers, diffusion_steps=args.diffusion_steps,
                      graph_mode=args.graph_mode, batch_size=args.batch_size, input_steps=args.input_steps,
                      horizon=args.horizon, day_of_week=args.day_of_week, shuffle=args.shuffle, device=args.device,
                      baselines=args.baselines, interval_s=interval)
    params, _ = parameter_count(args.model, N, base.features, base.input_steps, base.horizon, base.hidden, base.layers,
                                base.diffusion_steps, base.adaptive_adjacency)
    rates = _rates(args, base, N, cores)
    fusion = int(args.fusion_threshold_mb * (1 << 20)) if args.fusion_threshold_mb >= 0 else None
    if args.calibrate:
        # Contention is measured for the rank counts that oversubscribe THIS machine, when it is
        # the node planned for (--cores not another's), up to a few ranks a core; beyond, the model.
        per_node = sorted({min(P, rpn or P) for P in args.np})
        here = cores == available_cores()
        shared = tuple(R for R in per_node if here and 1 < R <= MAX_CALIBRATION_RANKS_PER_CORE * cores
                       and oversubscribed(R, args.threads, cores, args.device))
        # The allreduce the np=R jobs' steps are measured net of is the one predict() adds back.
        cal_rates = rates.with_given(**_allreduce_rates(args, backends[0]))
        rates = calibrate(_data_file(args), base, cal_rates, T, N, args.calibrate_dir or _tempdir(), params,
                          backends[0], args.calibrate_repeats, shared, fusion, args.compile, say=_progress)
    node_memory = int(args.node_memory_gb * GiB) if args.node_memory_gb else meminfo("MemTotal")
    device_memory = int(args.device_memory_gb * GiB) if args.device_memory_gb else None
    rows = []
    for backend in backends:
        b_rates = rates.with_given(**_allreduce_rates(args, backend))
        for mode in DATA_MODES:
            inputs = dataclasses.replace(base, data_mode=mode)
            for P in args.np:
                per_node = min(P, rpn or P)
                try:
                    memory = estimate(inputs, T, N, E, P, per_node, nnz)
                    plan = predict(inputs, T, N, P, per_node, args.epochs, b_rates, params, backend, fusion,
                                   args.eval_windows, args.max_steps_per_epoch)
                except ValueError as exc:
                    source = f"--data {name}" if args.data else f"--preset {name}"
                    raise DataError(f"{source}: {exc}") from None
                fits = memory.fits(node_memory, device_memory)
                rows.append({**plan.to_dict(), "fits": fits, "node_bytes": memory.node_bytes,
                             "device_bytes": memory.device_bytes, "nodes": -(-P // per_node)})
    if args.json:
        print(json.dumps({"dataset": name, "T": T, "N": N, "parameters": params, "rates": dataclasses.asdict(rates),
                          "node_memory_bytes": node_memory, "device_memory_bytes": device_memory, "rows": rows},
                         indent=2))
    else:
        print(render_time(name, T, N, params, base, args.epochs, rates, rows, node_memory, device_memory))
    return 0


def _allreduce_rates(args: argparse.Namespace, backend: str) -> dict:
    """`backend`'s alpha and beta from --allreduce (bench allreduce's fit), if given."""
    if not args.allreduce:
        return {}
    alpha, beta = allreduce_fit(args.allreduce, backend)
    return {"alpha_s": alpha, "beta_bytes_per_s": beta}


def _progress(line: str) -> None:
    import sys

    print(f"hvd-stgnn plan: {line}", file=sys.stderr, flush=True)


def _data_file(args: argparse.Namespace) -> str:
    if args.data:  # absolute: the calibration jobs run from the repository root
        return os.path.abspath(args.data)
    from pathlib import Path

    from hvd_stgnn.bench.load import dataset_for
    from hvd_stgnn.bench.compare import DEFAULT_CACHE

    return str(dataset_for(args.preset, 0, Path(DEFAULT_CACHE)))


def _tempdir() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="hvd-stgnn-calibrate-")


def _s(x: float) -> str:
    if x >= 86_400:
        return f"{x / 3600:.0f} h"
    if x >= 3600:
        return f"{x / 3600:.1f} h"
    return f"{x:.1f} s" if x >= 10 else f"{x:.2f} s"


def render_time(name, T, N, params, inputs: PlanInputs, epochs, rates: Rates, rows, node_memory, device_memory) -> str:
    lines = [
        f"time plan: {name}  T={T:,} N={N:,}  model {inputs.model} ({params:,} parameters) hidden {inputs.hidden}  "
        f"B={inputs.batch_size} per rank  {epochs} epoch(s)  device {inputs.device}",
        "",
        f"  {'backend':<8} {'data':<12} {'P':>5} {'nodes':>5} {'steps/ep':>8} {'step ms':>9} {'(allreduce)':>11} "
        f"{'epoch':>9} {'start+load+prep':>16} {'end to end':>11} {'samples/s':>10} {'node mem':>10}"
        + (f" {'GPU mem':>10}" if inputs.device == "cuda" else ""),
    ]
    for r in rows:
        head = f"  {r['backend']:<8} {r['data_mode']:<12} {r['world_size']:>5} {r['nodes']:>5}"
        if not r["fits"]:
            need = fmt_bytes(r["node_bytes"]) + " per node" + (
                f", {fmt_bytes(r['device_bytes'])} per GPU" if r["device_bytes"] else "")
            lines.append(f"{head}  does not fit ({need}; node {fmt_bytes(node_memory)}"
                         + (f", GPU {fmt_bytes(device_memory)}" if device_memory else "") + "): cannot run")
            continue
        fixed = r["startup_s"] + r["load_s"] + r["prepare_s"]
        lines.append(f"{head} {r['steps_per_epoch']:>8,} {1e3 * r['step_s']:>9.1f} {1e3 * r['step_allreduce_s']:>11.2f} "
                     f"{_s(r['epoch_s']):>9} {_s(fixed):>16} {_s(r['total_s']):>11} {r['samples_per_s']:>10,.0f} "
                     f"{fmt_bytes(r['node_bytes']):>10}" + (f" {fmt_bytes(r['device_bytes']):>10}" if inputs.device == "cuda"
                                                            else ""))
    lines += ["", "rates (one rank alone, scaled by the contention of ranks sharing a node's cores; CPU only):"]
    units = {"step_ms": "ms", "forward_ms": "ms", "batch_ms": "ms", "loop_ms": "ms", "startup_s": "s", "read_bytes_per_s": "B/s",
             "bcast_bytes_per_s": "B/s", "stats_bytes_per_s": "B/s", "materialize_windows_per_s": "windows/s",
             "alpha_s": "s", "beta_bytes_per_s": "B/s", "threads": "", "cores": ""}
    for key, unit in units.items():
        value = getattr(rates, key)
        lines.append(f"  {key:<26} {value:>12.4g} {unit:<9} {rates.sources.get(key, 'default')}")
    per_node = sorted({r["ranks_per_node"] for r in rows})
    for backend in dict.fromkeys(r["backend"] for r in rows):
        for R in per_node:
            if oversubscribed(R, rates.threads, rates.cores, rates.device):
                key = contention_key(backend, R)
                where = rates.sources.get("contention", "") if key in rates.measured_contention else (
                    f"the model R (threads + s) / cores (--calibrate measures it on this machine, up to "
                    f"{MAX_CALIBRATION_RANKS_PER_CORE} ranks a core)")
                c = contention(R, rates.threads, rates.cores, rates.device, backend, rates.measured_contention)
                lines.append(f"  {'contention ' + key:<26} {c:>12.4g} {'x':<9} {where}")
    lines.append("(model and its assumptions: hvd_stgnn/plan/timing.py; docs/SCALING.md)")
    return "\n".join(lines)
