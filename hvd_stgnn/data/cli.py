"""`hvd-stgnn data synth|info|import`: write, inspect and convert dataset files.

    hvd-stgnn data synth --preset tiny --seed 0 --out data/tiny.h5
    hvd-stgnn data info data/tiny.h5 --json
    hvd-stgnn data import --format dcrnn-h5 --speed metr-la.h5 --graph adj_mx.pkl --out metr-la.h5

Bad input raises ConfigError / DataError naming the flag or file; hvd_stgnn/cli.py's main
turns it into one line and exit status 2.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os

import numpy as np

# This module is part of the data package, whose __init__ loads these modules anyway.
from hvd_stgnn.data.dataset import is_present
from hvd_stgnn.data.hdf5 import read_metadata, scan_missing, write_dataset
from hvd_stgnn.data.importers import IMPORT_OPTIONS, IMPORTERS
from hvd_stgnn.data.synthetic import PRESETS, write_synthetic
from hvd_stgnn.errors import ConfigError


def cmd_data_synth(args: argparse.Namespace) -> int:
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


def importer_kwargs(args: argparse.Namespace) -> dict:
    """The keyword arguments of `--format`'s importer, from the flags its registry entry
    declares (data/importers.py IMPORTERS); flags it does not read are ignored."""
    importer = IMPORTERS[args.format]
    kwargs = {}
    for flag in importer.options:
        option = IMPORT_OPTIONS[flag]
        value = getattr(args, _dest(flag))
        if flag in importer.required and value in (None, ""):
            raise ConfigError(f"{flag} is required for --format {args.format} ({option.required_because})")
        kwargs[option.keyword] = value
    return kwargs


def cmd_data_import(args: argparse.Namespace) -> int:
    data = IMPORTERS[args.format](args.speed, args.graph, **importer_kwargs(args))
    write_dataset(args.out, data)
    missing = float(np.mean(~is_present(data.speed)))
    print(f"wrote {args.out}: T={data.num_steps} N={data.num_nodes} E={data.num_edges} missing={missing:.2%} ({data.source})")
    return 0


def cmd_data_info(args: argparse.Namespace) -> int:
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


# --- parsers ------------------------------------------------------------------------------


def _dest(flag: str) -> str:
    """argparse's attribute name for `flag` ('--fill-gaps' -> 'fill_gaps')."""
    return flag.lstrip("-").replace("-", "_")


def _add_import_options(parser: argparse.ArgumentParser) -> None:
    """Every importer option, once; its help names the formats that read it."""
    for flag, option in IMPORT_OPTIONS.items():
        formats = ", ".join(name for name, importer in IMPORTERS.items() if flag in importer.options)
        help_text = f"{formats}: {option.help}"
        if option.default is False:
            parser.add_argument(flag, action="store_true", help=help_text)
        else:
            parser.add_argument(flag, type=option.type, default=option.default, help=help_text)


def add_parsers(subcommands: argparse._SubParsersAction) -> None:
    """Register `data synth|import|info` on hvd-stgnn's subcommands."""
    data = subcommands.add_parser("data", help="generate, inspect datasets")
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
    _add_import_options(imp)
    imp.add_argument("--out", required=True, help="output HDF5 file")
    imp.set_defaults(func=cmd_data_import)

    info = data_cmds.add_parser("info", help="summarize a dataset file")
    info.add_argument("file")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(func=cmd_data_info)
