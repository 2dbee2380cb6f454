"""`hvd-stgnn`: the command-line entry point.

    hvd-stgnn data synth --preset tiny --seed 0 --out data/tiny.h5
    hvd-stgnn data info data/tiny.h5
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
    from hvd_stgnn.data import PRESETS, generate, write_dataset

    preset = PRESETS[args.preset]
    nodes = args.nodes or preset.num_nodes
    steps = args.steps or preset.num_steps
    if nodes < 2:
        raise ConfigError(f"--nodes must be >= 2 (got {nodes})")
    if steps < 1:
        raise ConfigError(f"--steps must be >= 1 (got {steps})")
    data = generate(nodes, steps, seed=args.seed)
    write_dataset(args.out, data)
    missing = float((data.speed == 0).mean())
    print(f"wrote {args.out}: T={steps} N={nodes} E={data.num_edges} missing={missing:.2%} seed={args.seed}")
    return 0


def cmd_data_info(args: argparse.Namespace) -> int:
    import datetime as dt

    import numpy as np

    from hvd_stgnn.data import read_dataset

    data = read_dataset(args.file)
    fmt = lambda s: dt.datetime.fromtimestamp(int(s), dt.timezone.utc).strftime("%Y-%m-%d %H:%M")  # noqa: E731
    info = {
        "file": str(args.file),
        "steps": data.num_steps,
        "sensors": data.num_nodes,
        "edges": data.num_edges,
        "interval_s": data.interval_s,
        "start": fmt(data.timestamps[0]),
        "end": fmt(data.timestamps[-1]),
        "missing_share": float(np.mean(~(np.isfinite(data.speed) & (data.speed != 0)))),
        "size_bytes": os.path.getsize(args.file),
        "source": data.source,
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            print(f"{key:>13}: {value:.2%}" if key == "missing_share" else f"{key:>13}: {value}")
    return 0


# --- train ------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    from hvd_stgnn.config import config_from_args
    from hvd_stgnn.parallel import launcher_size, make_backend
    from hvd_stgnn.train import preflight, train

    cfg = config_from_args(args)
    preflight(cfg, launcher_size())
    try:
        backend = make_backend(cfg.parallel.backend)
    except ImportError as exc:
        raise ConfigError(f"--backend {cfg.parallel.backend}: cannot import it ({exc}); run `make setup`") from None
    if backend.is_root:
        print("config: " + json.dumps(cfg.to_dict()), flush=True)

    try:
        train(cfg, backend)
    except (Exception, KeyboardInterrupt) as exc:
        if backend.size == 1:
            raise
        # Peers may be waiting in a collective: end the whole job now instead of hanging.
        if isinstance(exc, UserError):
            if backend.is_root:
                print(f"hvd-stgnn train: error: {exc}", file=sys.stderr, flush=True)
        else:
            sys.stderr.write("".join(f"[rank {backend.rank}] {line}\n" for line in traceback.format_exc().splitlines()))
            sys.stderr.flush()
        backend.abort(2 if isinstance(exc, UserError) else 1)
    backend.shutdown()
    return 0


# --- parser -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from hvd_stgnn import __version__
    from hvd_stgnn.config import add_config_flags
    from hvd_stgnn.data.synthetic import PRESETS

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
    synth.set_defaults(func=cmd_data_synth)
    info = data_cmds.add_parser("info", help="summarize a dataset file")
    info.add_argument("file")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(func=cmd_data_info)

    train = commands.add_parser("train", help="train a model (under mpirun/srun for several ranks)")
    add_config_flags(train)
    train.set_defaults(func=cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        _report(f"hvd-stgnn {args.command}: error: {exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
