"""`hvd-stgnn bench load|batching|memory|memory-step|models|compare|scaling|allreduce`: the benchmarks' subcommands.

    hvd-stgnn bench load --preset metr-la --np 2
    hvd-stgnn bench batching --nodes 207,11160 --json
    hvd-stgnn bench memory --data data/tiny.h5 --np 1,2,4
    hvd-stgnn bench memory-step --out runs/memory-step    (bench/memory_step.py)
    hvd-stgnn bench models --models tgcn,a3tgcn --hidden tgcn=64
    hvd-stgnn bench compare --np 1,2 --out runs/compare      (its parser: bench/compare.py)
    hvd-stgnn bench scaling --np 1,2,4 --mode strong --out runs/scaling   (bench/scaling.py)
    hvd-stgnn bench allreduce --np 2 --out runs/allreduce    (bench/allreduce.py)

Each benchmark's logic is in its own module (bench/load.py, ...); this file holds the flags,
their checks and the printing. Bad input raises ConfigError naming the flag.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hvd_stgnn.bench.allreduce import add_allreduce_parser
from hvd_stgnn.bench.compare import DEFAULT_CACHE, add_compare_parser
from hvd_stgnn.bench.memory_step import add_memory_step_parser
from hvd_stgnn.bench.scaling import add_scaling_parser
from hvd_stgnn.errors import ConfigError

# (heading, row key, width, format spec after the width) of the text tables.
Column = tuple[str, str, int, str]

BATCHING_COLUMNS: tuple[Column, ...] = (
    ("N", "nodes", 7, ""), ("MB", "gathered_mb", 7, ".1f"), ("memcpy ms", "memcpy_ms", 10, ".3f"),
    ("gather ms", "gather_ms", 10, ".3f"), ("x bound", "gather_over_memcpy", 8, ".2f"),
    ("batch ms", "batch_ms", 9, ".3f"), ("x bound", "batch_over_memcpy", 8, ".2f"),
)
MODELS_COLUMNS: tuple[Column, ...] = (
    ("model", "model", 8, ""), ("N", "nodes", 7, ""), ("B", "batch_size", 4, ""), ("hidden", "hidden", 6, ""),
    ("graph", "graph", 6, ""), ("params", "parameters", 9, ","), ("step ms", "step_ms", 9, ".1f"),
)

# `bench models` prints these: the variant (ours eager/compiled, precision, or PGT's) and the ratio.
MODELS_RUN_COLUMNS: tuple[Column, ...] = (
    ("model", "model", 8, ""), ("impl", "impl", 10, ""), ("N", "nodes", 7, ""), ("B", "batch_size", 4, ""),
    ("hidden", "hidden", 6, ""), ("graph", "graph", 9, ""), ("compile", "compile", 7, ""),
    ("prec", "precision", 5, ""), ("params", "parameters", 9, ","), ("step ms", "step_ms", 9, ".1f"),
    ("PGT/ours", "pgt_over_ours", 8, ""),
)


def print_rows(rows: list[dict], columns: tuple[Column, ...], as_json: bool) -> None:
    """`rows` as JSON, or as a right-aligned table of `columns`."""
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    print(" ".join(f"{heading:>{width}}" for heading, _, width, _ in columns))
    for row in rows:
        print(" ".join(format(row[key], f">{width}{spec}") for _, key, width, spec in columns))


def _use_threads(threads: int) -> None:
    """--threads N: torch's intra-op threads (0: leave torch's default)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def cmd_bench_load(args: argparse.Namespace) -> int:
    from hvd_stgnn.bench import load

    if args.data:
        data = Path(args.data)
        if not data.exists():
            raise ConfigError(f"--data {data}: no such file")
    else:
        data = load.dataset_for(args.preset, args.seed, Path(args.cache))
    result = load.run(data, sorted({1, *args.np}))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


def cmd_bench_batching(args: argparse.Namespace) -> int:
    import torch

    from hvd_stgnn.bench import batching

    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available")
    _use_threads(args.threads)
    print_rows(batching.run(args.nodes, args.batch_size, args.device, args.repeats), BATCHING_COLUMNS, args.json)
    return 0


def cmd_bench_memory(args: argparse.Namespace) -> int:
    from hvd_stgnn.bench import load, memory

    data = Path(args.data) if args.data else load.dataset_for(args.preset, 0, Path(args.cache))
    res = memory.run(data, args.np, day_of_week=args.day_of_week)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"{data}: T={res['steps']} N={res['nodes']}, {res['windows']} windows, F={res['features']}")
    for r in res["rows"]:
        print(f"  {r['ranks']} rank(s): index {r['index_rank_bytes_max'] / 1e6:.1f} MB/rank, {r['index_node_bytes'] / 1e6:.1f} MB/node"
              f" | materialized {r['materialized_rank_bytes'] / 1e6:.1f} MB/rank, {r['materialized_node_bytes'] / 1e6:.1f} MB/node"
              f" | node x{r['node_ratio']:.1f}, rank x{r['rank_ratio']:.1f}")
    return 0


def cmd_bench_models(args: argparse.Namespace) -> int:
    from hvd_stgnn.bench import models

    _use_threads(args.threads)
    # --models and --hidden are parsed (and their defaults applied) by bench/models.py.
    rows = models.run(args.models, args.nodes, args.batch_size, args.hidden, args.large_batch_size, args.steps,
                      compile=args.compile, precision=args.precision, device=args.device,
                      graph_mode=args.graph_mode, layers=args.layers, against_pgt=args.against_pgt)
    if not args.json:  # the text table: booleans as on/off, a missing ratio as "-"
        rows = [{**r, "compile": "on" if r["compile"] else "off",
                 "pgt_over_ours": "-" if r["pgt_over_ours"] is None else f"{r['pgt_over_ours']:.2f}x"} for r in rows]
    print_rows(rows, MODELS_RUN_COLUMNS, args.json)
    return 0


# --- parsers ------------------------------------------------------------------------------


def _int_list(text: str) -> list[int]:
    """'2,4' -> [2, 4]: rank or sensor counts, each >= 1 (argparse turns the error into a usage line)."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"rank counts must be >= 1, got {text!r}")
    return values


def add_parsers(subcommands: argparse._SubParsersAction) -> None:
    """Register `bench load|batching|memory|models|compare` on hvd-stgnn's subcommands."""
    from hvd_stgnn.data.synthetic import PRESETS

    bench = subcommands.add_parser("bench", help="benchmarks (each runs real mpirun jobs)")
    bench_cmds = bench.add_subparsers(dest="bench_command", required=True, metavar="SUBCOMMAND")

    bload = bench_cmds.add_parser("load", help="read + broadcast seconds and node memory, 1 and N ranks")
    bload.add_argument("--preset", choices=list(PRESETS), default="metr-la", help="synthetic preset (default: metr-la)")
    bload.add_argument("--data", default="", help="use this HDF5 file instead of a preset")
    bload.add_argument("--np", type=_int_list, default=[2], help="rank counts, e.g. 2 or 2,4 (1 is always run)")
    bload.add_argument("--seed", type=int, default=0)
    bload.add_argument("--cache", default=str(DEFAULT_CACHE), help="where presets are generated")
    bload.add_argument("--out", default="", help="also write the JSON here")
    bload.set_defaults(func=cmd_bench_load)

    bbatch = bench_cmds.add_parser("batching", help="ms per batch vs one contiguous copy of the same bytes")
    bbatch.add_argument("--nodes", type=_int_list, default=[207, 11160], help="sensor counts (default: 207,11160)")
    bbatch.add_argument("--batch-size", type=int, default=64)
    bbatch.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    bbatch.add_argument("--repeats", type=int, default=50)
    bbatch.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    bbatch.add_argument("--json", action="store_true")
    bbatch.set_defaults(func=cmd_bench_batching)

    bmem = bench_cmds.add_parser("memory", help="data bytes per rank and node: index vs materialized")
    bmem.add_argument("--preset", choices=list(PRESETS), default="metr-la")
    bmem.add_argument("--data", default="", help="use this HDF5 file instead of a preset")
    bmem.add_argument("--np", type=_int_list, default=[1, 2, 4], help="world sizes (default: 1,2,4)")
    bmem.add_argument("--day-of-week", action="store_true", help="add the day-of-week feature")
    bmem.add_argument("--cache", default=str(DEFAULT_CACHE))
    bmem.add_argument("--json", action="store_true")
    bmem.set_defaults(func=cmd_bench_memory)

    add_memory_step_parser(bench_cmds)

    bmod = bench_cmds.add_parser("models", help="train-step ms per model (forward + backward + optimizer)")
    bmod.add_argument("--models", default="", help="comma-separated (default: all registered)")
    bmod.add_argument("--nodes", type=_int_list, default=[207, 11160], help="sensor counts; > 2048 uses the sparse path")
    bmod.add_argument("--batch-size", type=int, default=64)
    bmod.add_argument("--large-batch-size", type=int, default=8, help="batch size for N > 2048 (default: 8)")
    bmod.add_argument("--hidden", default="", help="per-model hidden sizes, e.g. tgcn=64,a3tgcn=32 (default: 64; a3tgcn 32)")
    bmod.add_argument("--steps", type=int, default=5, help="timed steps per variant, round-robin (after 2 warm-up "
                      "steps; 3 when compiled)")
    bmod.add_argument("--layers", type=int, default=2, help="DCRNN's recurrent layers (default: 2)")
    bmod.add_argument("--graph-mode", choices=["auto", "dense", "sparse"], default="auto",
                      help="graph operator storage (auto: per device, models/graph.py)")
    bmod.add_argument("--compile", nargs="?", const="on", default="off", choices=["off", "on", "both"],
                      help="time our models under hvd_stgnn.models.compile_model; --compile=both: eager and "
                      "compiled side by side")
    bmod.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                      help="autocast of our models' forward (bf16: CPU or GPU; fp16: GPU, with a GradScaler)")
    bmod.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    bmod.add_argument("--against-pgt", action="store_true",
                      help="also time PyTorch Geometric Temporal's A3TGCN2 / BatchedDCRNN at the same shape "
                      "(bench/pgt.py; the PGT/ours column)")
    bmod.add_argument("--threads", type=int, default=0)
    bmod.add_argument("--json", action="store_true")
    bmod.set_defaults(func=cmd_bench_models)

    add_compare_parser(bench_cmds)
    add_allreduce_parser(bench_cmds)
    add_scaling_parser(bench_cmds)
