"""`hvd-stgnn`: the command-line entry point.

    hvd-stgnn data synth --preset tiny --seed 0 --out data/tiny.h5
    hvd-stgnn data info data/tiny.h5
    hvd-stgnn data import --format dcrnn-h5 --speed metr-la.h5 --graph adj_mx.pkl --out metr-la.h5
    hvd-stgnn bench load --preset metr-la --np 2
    hvd-stgnn train --data data/tiny.h5 --model tgcn --epochs 5 --results runs/r.json
    jobs/local.sh -np 2 hvd-stgnn train ...

Bad input gives one line on stderr from rank 0 and exit status 2 on every rank.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

import numpy as np

from hvd_stgnn.errors import ConfigError, UserError
from hvd_stgnn.parallel.launcher import launcher_rank


def _report(message: str) -> None:
    """Print an error once per job: only the launcher's rank 0 speaks."""
    if launcher_rank() == 0:
        print(message, file=sys.stderr, flush=True)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (from rank 0 only), not usage + error."""

    def error(self, message: str):  # type: ignore[override]
        _report(f"{self.prog}: error: {message} (see --help)")
        raise SystemExit(2)


# --- data -------------------------------------------------------------------------------


def cmd_data_synth(args: argparse.Namespace) -> int:
    from hvd_stgnn.data.synthetic import PRESETS, write_synthetic

    preset = PRESETS[args.preset]
    nodes = args.nodes or preset.num_nodes
    steps = args.steps or preset.num_steps
    if nodes < 2:
        raise ConfigError(f"--nodes must be >= 2 (got {nodes})")
    if steps < 1:
        raise ConfigError(f"--steps must be >= 1 (got {steps})")
    summary = write_synthetic(args.out, nodes, steps, seed=args.seed, progress=not args.quiet, preset=args.preset)
    print(
        f"wrote {args.out}: T={steps} N={nodes} E={summary.num_edges} missing={summary.missing_share:.2%} "
        f"seed={args.seed} ({summary.nbytes / 1e6:.1f} MB in {summary.seconds:.1f} s)"
    )
    return 0


def cmd_data_import(args: argparse.Namespace) -> int:
    from hvd_stgnn.data import write_dataset
    from hvd_stgnn.data.importers import IMPORTERS

    if args.format == "dcrnn-h5":
        kwargs = {"key": args.key, "fill_gaps": args.fill_gaps}
    else:
        if not args.start:
            raise ConfigError(f"--start is required for --format {args.format} (the files carry no timestamps)")
        kwargs = {"start": args.start, "interval_s": args.interval}
        if args.format == "pgt-npy":
            kwargs["feature"] = args.feature
    data = IMPORTERS[args.format](args.speed, args.graph, **kwargs)
    write_dataset(args.out, data)
    missing = float(np.mean(~(np.isfinite(data.speed) & (data.speed != 0))))
    print(f"wrote {args.out}: T={data.num_steps} N={data.num_nodes} E={data.num_edges} missing={missing:.2%} ({data.source})")
    return 0


def cmd_data_info(args: argparse.Namespace) -> int:
    import datetime as dt

    from hvd_stgnn.data.hdf5 import read_metadata, scan_missing

    data = read_metadata(args.file)
    missing, nonfinite = scan_missing(args.file)
    fmt = lambda s: dt.datetime.fromtimestamp(int(s), dt.timezone.utc).strftime("%Y-%m-%d %H:%M")  # noqa: E731
    info = {
        "file": str(args.file),
        "steps": data.num_steps,
        "sensors": data.num_nodes,
        "edges": data.num_edges,
        "interval_s": data.interval_s,
        "start": fmt(data.timestamps[0]) if data.num_steps else None,
        "end": fmt(data.timestamps[-1]) if data.num_steps else None,
        "missing_share": missing,
        "nonfinite_readings": nonfinite,
        "speed_bytes": data.num_steps * data.num_nodes * 4,
        "file_bytes": os.path.getsize(args.file),
        "source": data.source,
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            print(f"{key:>18}: {value:.2%}" if key == "missing_share" else f"{key:>18}: {value}")
    return 0


# --- bench ------------------------------------------------------------------------------


def cmd_bench_load(args: argparse.Namespace) -> int:
    from hvd_stgnn.bench import load

    if args.data:
        data = Path(args.data)
        if not data.exists():
            raise ConfigError(f"--data {data}: no such file")
    else:
        data = load.dataset_for(args.preset, args.seed, Path(args.cache))
    nps = sorted({1, *args.np})
    result = load.run(data, nps)
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
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = batching.run(args.nodes, args.batch_size, args.device, args.repeats)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"{'N':>7} {'MB':>7} {'memcpy ms':>10} {'gather ms':>10} {'x bound':>8} {'batch ms':>9} {'x bound':>8}")
        for r in rows:
            print(f"{r['nodes']:>7} {r['gathered_mb']:>7.1f} {r['memcpy_ms']:>10.3f} {r['gather_ms']:>10.3f} "
                  f"{r['gather_over_memcpy']:>8.2f} {r['batch_ms']:>9.3f} {r['batch_over_memcpy']:>8.2f}")
    return 0


def cmd_bench_memory(args: argparse.Namespace) -> int:
    from hvd_stgnn.bench import load, memory

    data = Path(args.data) if args.data else load.dataset_for(args.preset, 0, Path(args.cache))
    res = memory.run(data, args.np, day_of_week=args.day_of_week)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"{data}: T={res['steps']} N={res['nodes']}, {res['windows']} windows, F={res['features']}")
        for r in res["rows"]:
            print(f"  {r['ranks']} rank(s): index {r['index_rank_bytes_max'] / 1e6:.1f} MB/rank, {r['index_node_bytes'] / 1e6:.1f} MB/node"
                  f" | materialized {r['materialized_rank_bytes'] / 1e6:.1f} MB/rank, {r['materialized_node_bytes'] / 1e6:.1f} MB/node"
                  f" | node x{r['node_ratio']:.1f}, rank x{r['rank_ratio']:.1f}")
    return 0


def cmd_bench_models(args: argparse.Namespace) -> int:
    import torch

    from hvd_stgnn.bench import models
    from hvd_stgnn.models import MODELS

    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.models.split(",") if args.models else list(MODELS)
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise ConfigError(f"--models: unknown model(s) {unknown} (choose from {', '.join(MODELS)})")
    hidden = {"a3tgcn": 32}  # the A3T-GCN target is stated for hidden 32
    hidden.update(dict(kv.split("=") for kv in args.hidden.split(",")) if args.hidden else {})
    hidden = {k: int(v) for k, v in hidden.items()}
    rows = models.run(names, args.nodes, args.batch_size, hidden, args.large_batch_size, args.steps)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"{'model':>8} {'N':>7} {'B':>4} {'hidden':>6} {'graph':>6} {'params':>9} {'step ms':>9}")
        for r in rows:
            print(f"{r['model']:>8} {r['nodes']:>7} {r['batch_size']:>4} {r['hidden']:>6} {r['graph']:>6} "
                  f"{r['parameters']:>9,} {r['step_ms']:>9.1f}")
    return 0


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"rank counts must be >= 1, got {text!r}")
    return values


# --- train ------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    from hvd_stgnn.config import config_from_args
    from hvd_stgnn.parallel import make_backend
    from hvd_stgnn.train import preflight, train

    cfg = config_from_args(args)
    preflight(cfg)
    try:
        if cfg.profile.timeline and cfg.parallel.backend == "single":
            raise ConfigError("--timeline: not supported with --backend single (use horovod or ddp)")
        backend = make_backend(cfg.parallel.backend, cfg.parallel, timeline=bool(cfg.profile.timeline))
    except ImportError as exc:
        raise ConfigError(f"--backend {cfg.parallel.backend}: cannot import it ({exc}); run `make setup`") from None
    if backend.is_root:
        print("config: " + json.dumps(cfg.to_dict()), flush=True)

    try:
        train(cfg, backend)
    except (Exception, KeyboardInterrupt) as exc:
        if backend.size == 1:
            raise
        if isinstance(exc, UserError) and exc.all_ranks:
            # Every rank has the same verdict: end cleanly, one line from rank 0.
            backend.shutdown()
            raise
        # Peers may be waiting in a collective: end the whole job now instead of hanging.
        if isinstance(exc, UserError):
            if backend.is_root:
                print(f"hvd-stgnn train: error: {exc}", file=sys.stderr, flush=True)
        else:
            sys.stderr.write("".join(f"[rank {backend.rank}] {line}\n" for line in traceback.format_exc().splitlines()))
            sys.stderr.flush()
        backend.abort(exc.exit_code if isinstance(exc, UserError) else 1)
    backend.shutdown()
    return 0


# --- parser -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from hvd_stgnn import __version__
    from hvd_stgnn.config import add_config_flags
    from hvd_stgnn.data.importers import IMPORTERS
    from hvd_stgnn.data.synthetic import PRESETS
    from hvd_stgnn.bench.compare import add_compare_parser
    from hvd_stgnn.plan.cli import add_plan_parser
    from hvd_stgnn.profiling.plot import add_plot_parser
    from hvd_stgnn.profiling.timeline import add_timeline_parser

    parser = _Parser(prog="hvd-stgnn", description="Horovod + MPI training of spatiotemporal GNNs with index-batching.")
    parser.add_argument("--version", action="version", version=f"hvd-stgnn {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = commands.add_parser("data", help="generate, inspect datasets")
    data_cmds = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    synth = data_cmds.add_parser("synth", help="write a synthetic PeMS-like dataset")
    synth.add_argument("--preset", choices=list(PRESETS), default="tiny", help="shape preset (default: tiny)")
    synth.add_argument("--nodes", type=int, default=0, help="override the preset's sensor count")
    synth.add_argument("--steps", type=int, default=0, help="override the preset's step count")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    synth.add_argument("--out", required=True, help="output HDF5 file")
    synth.add_argument("--quiet", action="store_true", help="no progress bar")
    synth.set_defaults(func=cmd_data_synth)
    imp = data_cmds.add_parser("import", help="convert DCRNN / T-GCN / PGT files (docs/importers.md)")
    imp.add_argument("--format", required=True, choices=list(IMPORTERS), help="input format")
    imp.add_argument("--speed", required=True, help="speed file (.h5, .csv or node_values.npy)")
    imp.add_argument("--graph", required=True, help="graph file (adj_mx.pkl, adjacency .csv or adj_mat.npy)")
    imp.add_argument("--key", default=None, help="dcrnn-h5: HDF5 group, 'df' or 'speed' (default: whichever exists)")
    imp.add_argument("--fill-gaps", action="store_true", help="dcrnn-h5: fill skipped time steps with NaN (PEMS-BAY's DST gap)")
    imp.add_argument("--start", default="", help="tgcn-csv, pgt-npy: time of the first step, 'YYYY-MM-DD HH:MM' (UTC wall-clock)")
    imp.add_argument("--interval", type=int, default=300, help="tgcn-csv, pgt-npy: seconds per step (default: 300)")
    imp.add_argument("--feature", type=int, default=0, help="pgt-npy: feature index of speed (default: 0)")
    imp.add_argument("--out", required=True, help="output HDF5 file")
    imp.set_defaults(func=cmd_data_import)
    info = data_cmds.add_parser("info", help="summarize a dataset file")
    info.add_argument("file")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(func=cmd_data_info)

    bench = commands.add_parser("bench", help="benchmarks (each runs real mpirun jobs)")
    bench_cmds = bench.add_subparsers(dest="bench_command", required=True, metavar="SUBCOMMAND")
    bload = bench_cmds.add_parser("load", help="read + broadcast seconds and node memory, 1 and N ranks")
    bload.add_argument("--preset", choices=list(PRESETS), default="metr-la", help="synthetic preset (default: metr-la)")
    bload.add_argument("--data", default="", help="use this HDF5 file instead of a preset")
    bload.add_argument("--np", type=_int_list, default=[2], help="rank counts, e.g. 2 or 2,4 (1 is always run)")
    bload.add_argument("--seed", type=int, default=0)
    bload.add_argument("--cache", default=str(Path.home() / ".cache" / "hvd_stgnn" / "data"), help="where presets are generated")
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
    bmem.add_argument("--cache", default=str(Path.home() / ".cache" / "hvd_stgnn" / "data"))
    bmem.add_argument("--json", action="store_true")
    bmem.set_defaults(func=cmd_bench_memory)

    bmod = bench_cmds.add_parser("models", help="train-step ms per model (forward + backward + optimizer)")
    bmod.add_argument("--models", default="", help="comma-separated (default: all registered)")
    bmod.add_argument("--nodes", type=_int_list, default=[207, 11160], help="sensor counts; > 2048 uses the sparse path")
    bmod.add_argument("--batch-size", type=int, default=64)
    bmod.add_argument("--large-batch-size", type=int, default=8, help="batch size for N > 2048 (default: 8)")
    bmod.add_argument("--hidden", default="", help="per-model hidden sizes, e.g. tgcn=64,a3tgcn=32 (default: 64; a3tgcn 32)")
    bmod.add_argument("--steps", type=int, default=5, help="timed steps per model (after 2 warm-up steps)")
    bmod.add_argument("--threads", type=int, default=0)
    bmod.add_argument("--json", action="store_true")
    bmod.set_defaults(func=cmd_bench_models)

    add_compare_parser(bench_cmds)

    train = commands.add_parser("train", help="train a model (under mpirun/srun for several ranks)")
    train.add_argument("--config", default="", metavar="FILE.toml",
                       help="TOML file with [data] [model] [train] [parallel] [profile] tables; flags override it")
    add_config_flags(train)
    train.set_defaults(func=cmd_train)
    parser.train_parser = train  # main() sets its defaults from --config, then parses again

    add_plan_parser(commands)
    add_timeline_parser(commands)
    add_plot_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "config", ""):
            from hvd_stgnn.config import load_toml_defaults

            parser.train_parser.set_defaults(**load_toml_defaults(args.config))
            args = parser.parse_args(argv)
        return args.func(args)
    except UserError as exc:
        _report(f"hvd-stgnn {args.command}: {'error: ' if exc.exit_code == 2 else ''}{exc}")
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
