"""`hvd-stgnn plan`: predicted memory per node and per rank, index-batching vs materialized;
with `--time`, predicted time per step, per epoch and end to end (plan/timing.py).

    hvd-stgnn plan --preset pems --np 2 --model tgcn --batch-size 8
    hvd-stgnn plan --data data/metr-la.h5 --np 8 --ranks-per-node 4 --device cuda --device-memory-gb 80 --json
    hvd-stgnn plan --time --preset metr-la --np 1,2,4 --threads 1 --epochs 5 --calibrate

Prints both data modes side by side; `--data-mode` picks the one the verdict (and the exit
status: 0 fits, 1 does not) is about. Bad input: ConfigError / DataError naming the flag or
file (one line, exit status 2, from hvd_stgnn/cli.py's main).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from hvd_stgnn.errors import ConfigError, DataError
from hvd_stgnn.plan.estimate import (
    ALLOCATORS,
    GiB,
    LABELS,
    RESIDENT,
    Plan,
    PlanInputs,
    estimate,
    exact_operator_nnz,
    fmt_bytes,
    max_batch_by_mode,
    meminfo,
    preloaded_allocator,
)


def dataset_shape(args: argparse.Namespace):
    """(name, T, N, E, interval_s, exact operator nnz or None) of --data or --preset."""
    if args.data:
        from hvd_stgnn.data.hdf5 import read_metadata

        path = Path(args.data)
        if not path.exists():
            raise ConfigError(f"--data {path}: no such file")
        meta = read_metadata(path)  # DataError names the file
        nnz = exact_operator_nnz(args.model, meta.edge_index, meta.edge_weight, meta.num_nodes)
        return str(path), meta.num_steps, meta.num_nodes, meta.num_edges, meta.interval_s, nnz
    import numpy as np

    from hvd_stgnn.data.synthetic import PRESETS, build_network

    preset = PRESETS[args.preset]
    # The seed-0 road network (what `hvd-stgnn data synth --preset P` writes): exact E, O(N) work.
    net = build_network(preset.num_nodes, np.random.default_rng(0))
    E = int(net.edge_index.shape[1])
    nnz = exact_operator_nnz(args.model, net.edge_index, net.edge_weight, preset.num_nodes)
    return args.preset, preset.num_steps, preset.num_nodes, E, 300, nnz


def _row(label: str, values: list[str]) -> str:
    return f"  {label:<46}" + "".join(f"{v:>17}" for v in values)


def _ratio(need: int, have: int | None) -> str:
    if have is None:
        return "-"
    return f"{'yes' if need <= have else 'NO'} ({need / have:.0%})"


def render(name: str, plans: dict[str, Plan], selected: str, node_memory: int, node_source: str,
           device_memory: int | None) -> str:
    """The side-by-side text report of `plans` (mode -> Plan)."""
    p0 = next(iter(plans.values()))
    i = p0.inputs
    modes = list(plans)
    heads = [f"{m}{' *' if m == selected else ''}" for m in modes]
    nodes = -(-p0.world_size // p0.ranks_per_node)
    lines = [
        f"plan: {name}  T={p0.num_steps:,} N={p0.num_nodes:,} E={p0.num_edges:,}  windows "
        f"train/val/test={p0.windows['train']:,}/{p0.windows['val']:,}/{p0.windows['test']:,}",
        f"model: {i.model} ({p0.parameters:,} parameters, graph {p0.graph_storage})  B={i.batch_size} "
        f"L={i.input_steps} H={i.horizon} F={i.features} hidden={i.hidden}  shuffle {i.shuffle}  device {i.device}"
        + (f"  activation checkpointing {i.activation_checkpointing}" if i.activation_checkpointing != "none" else "")
        + (f"  precision {i.precision}" if i.precision != "fp32" else "")
        + (f"  malloc {i.allocator}" if i.allocator != "glibc" else ""),
        f"job: {p0.world_size} rank(s), {p0.ranks_per_node} per node ({nodes} node(s)); node memory "
        f"{fmt_bytes(node_memory)} ({node_source})"
        + (f"; GPU memory {fmt_bytes(device_memory)}" if device_memory else ""),
        "",
        _row("bytes", heads),
        "node-shared (once per node)",
    ]
    for k in p0.shared:
        lines.append(_row(LABELS[k], [fmt_bytes(plans[m].shared[k]) for m in modes]))
    for where, title in (("host", "per rank, host"), ("device", "per rank, GPU")):
        terms = getattr(p0, where)
        if not terms:
            continue
        lines.append(f"{title}: resident")
        for k in terms:
            if k in RESIDENT or k in ("cuda_host", "cuda_context"):
                lines.append(_row(LABELS[k], [fmt_bytes(getattr(plans[m], where)[k]) for m in modes]))
        lines.append(f"{title}: transient (only the largest phase counts)")
        for k in terms:
            if k in RESIDENT or k in ("cuda_host", "cuda_context"):
                continue
            label = LABELS[k]
            if k == "activations":
                label = f"{label} (saved x {p0.peak_factor:g})"
            lines.append(_row(label, [fmt_bytes(getattr(plans[m], where)[k]) for m in modes]))
    lines += [
        "",
        _row("per rank, host peak (private)", [fmt_bytes(plans[m].rank_bytes) for m in modes]),
        _row("  set by the phase", [plans[m].peak_phase for m in modes]),
        _row(f"node total = shared + {p0.ranks_per_node} x rank", [fmt_bytes(plans[m].node_bytes) for m in modes]),
        _row("node leader peak RSS (+ libraries + series)", [fmt_bytes(plans[m].rank_rss_bytes) for m in modes]),
        _row(f"fits node memory {fmt_bytes(node_memory)}?", [_ratio(plans[m].node_bytes, node_memory) for m in modes]),
    ]
    if p0.device:
        lines.append(_row("per rank, GPU peak", [fmt_bytes(plans[m].device_bytes) for m in modes]))
        lines.append(_row(f"fits GPU memory {fmt_bytes(device_memory)}?",
                          [_ratio(plans[m].device_bytes, device_memory) for m in modes]))
    lines.append(f"(* = --data-mode {selected}; GiB = 2^30 bytes; formulas and calibration: docs/PLANNER.md)")
    return "\n".join(lines)


def _np_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in str(text).split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a rank count or a comma-separated list, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"rank counts must be >= 1, got {text!r}")
    return values


def cmd_plan(args: argparse.Namespace) -> int:
    """Print the plan; 0 when the --data-mode run fits, 1 when it does not."""
    if bool(args.data) == bool(args.preset):
        raise ConfigError("give exactly one of --preset or --data")
    if args.time:
        from hvd_stgnn.plan.time_cli import cmd_plan_time

        return cmd_plan_time(args)
    if len(args.np) > 1:
        raise ConfigError(f"--np {','.join(map(str, args.np))}: one rank count for a memory plan (a list with --time)")
    args.np = args.np[0]
    for flag, value in (("--np", args.np), ("--batch-size", args.batch_size), ("--hidden", args.hidden),
                        ("--layers", args.layers), ("--diffusion-steps", args.diffusion_steps),
                        ("--input-steps", args.input_steps), ("--horizon", args.horizon)):
        if value < 1:
            raise ConfigError(f"{flag} must be >= 1 (got {value})")
    ranks_per_node = args.ranks_per_node or args.np
    if not 1 <= ranks_per_node <= args.np:
        raise ConfigError(f"--ranks-per-node must be between 1 and --np {args.np} (got {ranks_per_node})")
    for flag, value in (("--node-memory-gb", args.node_memory_gb), ("--device-memory-gb", args.device_memory_gb)):
        if value is not None and value <= 0:
            raise ConfigError(f"{flag} must be > 0 (got {value:g})")

    if args.node_memory_gb is not None:
        node_memory, node_source = int(args.node_memory_gb * GiB), "--node-memory-gb"
    else:
        node_memory, node_source = meminfo("MemTotal"), "MemTotal of this machine"
    device_memory = None
    if args.device == "cuda":
        if args.device_memory_gb is not None:
            device_memory = int(args.device_memory_gb * GiB)
        else:
            from hvd_stgnn.plan.estimate import _cuda_total_memory

            device_memory = _cuda_total_memory()
            if device_memory is None:
                raise ConfigError("--device cuda: no CUDA device here to read its memory from; give --device-memory-gb")

    from hvd_stgnn.models.checkpointing import checkpointing_error

    error = checkpointing_error(args.model, args.activation_checkpointing)
    if error:
        raise ConfigError(error)
    name, T, N, E, interval, nnz = dataset_shape(args)
    base = PlanInputs(
        model=args.model, hidden=args.hidden, layers=args.layers, diffusion_steps=args.diffusion_steps,
        graph_mode=args.graph_mode, batch_size=args.batch_size, input_steps=args.input_steps, horizon=args.horizon,
        day_of_week=args.day_of_week, shuffle=args.shuffle, device=args.device, baselines=args.baselines,
        interval_s=interval, activation_checkpointing=args.activation_checkpointing, precision=args.precision,
        allocator=args.allocator,
    )
    plans = {}
    try:
        for mode in ("index", "materialized"):
            plans[mode] = estimate(dataclasses.replace(base, data_mode=mode), T, N, E, args.np, ranks_per_node, nnz)
    except ValueError as exc:
        source = f"--data {name}" if args.data else f"--preset {name}"
        raise DataError(f"{source}: {exc}") from None
    chosen = plans[args.data_mode]
    fits = chosen.fits(node_memory, device_memory)
    by_mode = None
    if args.max_batch:
        by_mode = max_batch_by_mode(chosen.inputs, T, N, E, args.np, ranks_per_node, node_memory, device_memory, nnz)
    if args.json:
        print(json.dumps({
            "dataset": name, "selected": args.data_mode, "node_memory_bytes": node_memory,
            "device_memory_bytes": device_memory,
            "plans": {m: {**p.to_dict(), "fits": p.fits(node_memory, device_memory)} for m, p in plans.items()},
            **({"max_batch": by_mode} if by_mode is not None else {}),
        }, indent=2))
    else:
        print(render(name, plans, args.data_mode, node_memory, node_source, device_memory))
        if by_mode is not None:
            print(max_batch_text(by_mode, chosen, node_memory, device_memory))
    return 0 if fits else 1


def max_batch_text(by_mode: dict[str, int], plan: Plan, node_memory: int, device_memory: int | None) -> str:
    """The --max-batch lines: per checkpointing mode, the largest per-rank batch that fits."""
    where = f"{fmt_bytes(device_memory)} per GPU" if plan.device else f"{fmt_bytes(node_memory)} per node"
    lines = [f"largest per-rank --batch-size that fits {where} (--data-mode {plan.inputs.data_mode}, "
             f"--precision {plan.inputs.precision}):"]
    for mode, b in by_mode.items():
        lines.append(f"  --activation-checkpointing {mode:<6} {b if b else 'none fits (not even 1)'}")
    return "\n".join(lines)


def add_parsers(subparsers) -> argparse.ArgumentParser:
    """Add the `plan` subcommand (func=cmd_plan) to hvd-stgnn's subparsers."""
    from hvd_stgnn.config import DataConfig, ModelConfig, TrainConfig
    from hvd_stgnn.data.synthetic import PRESETS
    from hvd_stgnn.models import MODELS

    d, m, t = DataConfig(), ModelConfig(), TrainConfig()
    p = subparsers.add_parser("plan", help="predicted memory per node and rank: index-batching vs materialized")
    src = p.add_argument_group("dataset (one of)")
    src.add_argument("--preset", choices=list(PRESETS), default="", help="a synthetic preset's shape (seed-0 graph)")
    src.add_argument("--data", default="", help="an HDF5 dataset (metadata only is read)")
    job = p.add_argument_group("job")
    job.add_argument("--np", type=_np_list, default=[1], help="ranks in the job (default: 1); with --time a list, "
                     "e.g. 1,2,4")
    job.add_argument("--ranks-per-node", type=int, default=0, help="ranks per node (default: all on one node)")
    job.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where each rank trains (default: cpu)")
    job.add_argument("--node-memory-gb", type=float, default=None, help="node memory in GiB (default: MemTotal here)")
    job.add_argument("--device-memory-gb", type=float, default=None,
                     help="GPU memory in GiB (--device cuda; default: this machine's GPU, else required)")
    run = p.add_argument_group("run (the same flags and defaults as `train`)")
    run.add_argument("--model", choices=list(MODELS), default=m.name, help=f"(default: {m.name})")
    run.add_argument("--batch-size", type=int, default=t.batch_size, help=f"(default: {t.batch_size})")
    run.add_argument("--hidden", type=int, default=m.hidden, help=f"(default: {m.hidden})")
    run.add_argument("--layers", type=int, default=m.layers, help=f"DCRNN (default: {m.layers})")
    run.add_argument("--diffusion-steps", type=int, default=m.diffusion_steps, help=f"(default: {m.diffusion_steps})")
    run.add_argument("--graph-mode", choices=["auto", "dense", "sparse"], default=m.graph_mode,
                     help=f"(default: {m.graph_mode})")
    run.add_argument("--input-steps", type=int, default=d.input_steps, help=f"(default: {d.input_steps})")
    run.add_argument("--horizon", type=int, default=d.horizon, help=f"(default: {d.horizon})")
    run.add_argument("--data-mode", choices=["index", "materialized"], default=d.data_mode,
                     help=f"the run the verdict and exit status are about (default: {d.data_mode})")
    run.add_argument("--shuffle", choices=["shard", "global"], default=d.shuffle, help=f"(default: {d.shuffle})")
    run.add_argument("--day-of-week", action=argparse.BooleanOptionalAction, default=d.day_of_week,
                     help="add the day-of-week feature (F = 3)")
    run.add_argument("--baselines", action=argparse.BooleanOptionalAction, default=t.baselines,
                     help="the run evaluates the baselines (their slot sums are a transient)")
    run.add_argument("--activation-checkpointing", choices=["none", "step", "block"],
                     default=t.activation_checkpointing,
                     help=f"step (recurrent models) or block (Graph WaveNet) (default: {t.activation_checkpointing})")
    run.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default=t.precision,
                     help=f"bf16/fp16: activations stored in 2 bytes (default: {t.precision})")
    run.add_argument("--allocator", choices=list(ALLOCATORS), default=preloaded_allocator(),
                     help="the ranks' malloc on the host: glibc, or jemalloc (HVD_STGNN_JEMALLOC=1, jobs/common.sh) "
                     "(default: this process's)")
    p.add_argument("--max-batch", action="store_true",
                   help="also print the largest per-rank --batch-size that fits, without and with activation "
                   "checkpointing")
    p.add_argument("--json", action="store_true", help="print JSON")
    from hvd_stgnn.plan.time_cli import add_time_arguments

    add_time_arguments(p)
    p.set_defaults(func=cmd_plan)
    return p
