"""`hvd-stgnn`: the command-line entry point. It only dispatches.

    hvd-stgnn data synth --preset tiny --seed 0 --out data/tiny.h5
    hvd-stgnn data info data/tiny.h5
    hvd-stgnn data import --format dcrnn-h5 --speed metr-la.h5 --graph adj_mx.pkl --out metr-la.h5
    hvd-stgnn bench load --preset metr-la --np 2
    hvd-stgnn train --data data/tiny.h5 --model tgcn --epochs 5 --results runs/r.json
    hvd-stgnn plan --preset pems --np 2
    hvd-stgnn timeline run.json | hvd-stgnn plot RUN_DIR
    jobs/local.sh -np 2 hvd-stgnn train ...

Each package registers its own subcommands with `add_parsers(subcommands)` in its cli.py
(SUBCOMMANDS below). A subcommand sets `func` (the command: args -> exit status) and may set
`reparse` (args -> args, to finish parsing: train's --config) as parser defaults.

Bad input gives one line on stderr from rank 0 and exit status 2 on every rank: usage
errors through `_Parser` (every subcommand parser is made by `subcommands.add_parser`, so it
is a `_Parser` too), and a UserError raised by a command through `main`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from hvd_stgnn.bench.cli import add_parsers as add_bench_parsers
from hvd_stgnn.data.cli import add_parsers as add_data_parsers
from hvd_stgnn.errors import UserError
from hvd_stgnn.parallel.launcher import launcher_rank
from hvd_stgnn.plan.cli import add_parsers as add_plan_parsers
from hvd_stgnn.profiling.cli import add_parsers as add_profiling_parsers
from hvd_stgnn.train.cli import add_parsers as add_train_parsers

# Package -> its registrar, in the order `hvd-stgnn --help` lists the commands.
SUBCOMMANDS: dict[str, Callable[[argparse._SubParsersAction], object]] = {
    "data": add_data_parsers,  # data synth|info|import
    "bench": add_bench_parsers,  # bench load|batching|memory|models|compare|scaling|allreduce
    "train": add_train_parsers,  # train
    "plan": add_plan_parsers,  # plan
    "profiling": add_profiling_parsers,  # timeline, plot
}


def _report(message: str) -> None:
    """Print an error once per job: only the launcher's rank 0 speaks."""
    if launcher_rank() == 0:
        print(message, file=sys.stderr, flush=True)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (from rank 0 only), not usage + error."""

    def error(self, message: str):  # type: ignore[override]
        _report(f"{self.prog}: error: {message} (see --help)")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    """The whole `hvd-stgnn` parser: every package's subcommands."""
    from hvd_stgnn import __version__

    parser = _Parser(prog="hvd-stgnn", description="Horovod + MPI training of spatiotemporal GNNs with index-batching.")
    parser.add_argument("--version", action="version", version=f"hvd-stgnn {__version__}")
    # Subparsers are made with the parent's class (argparse's parser_class default): _Parser.
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_parsers in SUBCOMMANDS.values():
        add_parsers(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command `argv` (default: sys.argv[1:]) names; returns its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)  # usage errors end here, before any hook runs
    try:
        reparse = getattr(args, "reparse", None)
        if reparse:
            args = reparse(parser, argv, args)
        return args.func(args)
    except UserError as exc:
        _report(f"hvd-stgnn {args.command}: {'error: ' if exc.exit_code == 2 else ''}{exc}")
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
