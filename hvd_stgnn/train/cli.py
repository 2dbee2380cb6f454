"""`hvd-stgnn train`: train a model, as one process or as every rank of a launcher's job.

    hvd-stgnn train --data data/tiny.h5 --model tgcn --epochs 5 --results runs/r.json
    hvd-stgnn train --config run.toml --epochs 3          (flags override the file)
    jobs/local.sh -np 2 hvd-stgnn train ...

The flags are the config tree's (config.py `add_config_flags`); the whole config is
validated before any MPI call. Once the backend is up, every rank trains under the job-wide
failure policy of parallel/collective.py `run_collectively`.
"""

from __future__ import annotations

import argparse
import functools
import json
from typing import Sequence

from hvd_stgnn.config import add_config_flags, config_from_args, load_toml_defaults
from hvd_stgnn.errors import ConfigError

PROG = "hvd-stgnn train"


def cmd_train(args: argparse.Namespace) -> int:
    from hvd_stgnn.parallel import make_backend
    from hvd_stgnn.parallel.collective import run_collectively
    from hvd_stgnn.train.data_setup import preflight
    from hvd_stgnn.train.trainer import train

    cfg = config_from_args(args)
    preflight(cfg)
    try:
        backend = make_backend(cfg.parallel.backend, cfg.parallel, timeline=bool(cfg.profile.timeline),
                               device=cfg.train.device)
    except ImportError as exc:
        raise ConfigError(f"--backend {cfg.parallel.backend}: cannot import it ({exc}); run `make setup`") from None
    if backend.is_root:
        print("config: " + json.dumps(cfg.to_dict()), flush=True)
    run_collectively(backend, lambda: train(cfg, backend), PROG)
    return 0


def apply_config_file(train_parser: argparse.ArgumentParser, parser: argparse.ArgumentParser,
                      argv: Sequence[str] | None, args: argparse.Namespace) -> argparse.Namespace:
    """The `reparse` hook of `train` (hvd_stgnn/cli.py's main calls it after the first parse).

    With --config FILE.toml, the file's values become the train flags' defaults and `argv`
    is parsed again: argparse cannot tell a flag given on the command line from its default
    after the fact, and parsing again is what lets every given flag override the file.
    """
    if not args.config:
        return args
    train_parser.set_defaults(**load_toml_defaults(args.config))
    return parser.parse_args(argv)


def add_parsers(subcommands: argparse._SubParsersAction) -> None:
    """Register `train` on hvd-stgnn's subcommands."""
    train = subcommands.add_parser("train", help="train a model (under mpirun/srun for several ranks)")
    train.add_argument("--config", default="", metavar="FILE.toml",
                       help="TOML file with [data] [model] [train] [parallel] [profile] tables; flags override it")
    add_config_flags(train)
    train.set_defaults(func=cmd_train, reparse=functools.partial(apply_config_file, train))
