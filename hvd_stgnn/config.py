"""One typed config for a training run: dataclass sections, each field a CLI flag.

`add_config_flags(parser)` turns every field into a flag (metadata gives the flag name,
help and choices); `config_from_args(ns)` builds and validates a `Config`. The whole config
is printed at start and saved in the results JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from hvd_stgnn.errors import ConfigError


def _flag(help: str, flag: str | None = None, choices: Any = None, parse: Any = None, **kw) -> Any:
    meta = {"help": help, "flag": flag, "choices": choices, "parse": parse}
    return field(metadata=meta, **kw)


def _fractions(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three comma-separated numbers, got {text!r}") from None
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected three comma-separated numbers, got {text!r}")
    return parts  # type: ignore[return-value]


def _model_names() -> list[str]:
    from hvd_stgnn.models import MODELS

    return list(MODELS)


def _backend_names() -> list[str]:
    from hvd_stgnn.parallel import BACKENDS

    return list(BACKENDS)


@dataclass
class DataConfig:
    path: str = _flag("HDF5 dataset (docs/data-format.md)", flag="--data", default="")
    input_steps: int = _flag("input window length L (steps)", default=12)
    horizon: int = _flag("forecast horizon H (steps)", default=12)
    split: tuple = _flag("train,val,test fractions of the windows", parse=_fractions, default=(0.7, 0.1, 0.2))
    day_of_week: bool = _flag("add day of week to the time-of-day input feature", default=False)
    shuffle: str = _flag(
        "shard: each rank a contiguous range of starts and only its steps; global: whole series, "
        "share of one global permutation (PGT)", choices=["shard", "global"], default="shard",
    )
    data_mode: str = _flag(
        "index: build batches from start indices; materialized: precompute every window on every rank (baseline)",
        choices=["index", "materialized"], default="index",
    )


@dataclass
class ModelConfig:
    name: str = _flag("model", flag="--model", choices=_model_names, default="tgcn")
    hidden: int = _flag("hidden units (T-GCN, A3T-GCN, DCRNN; Graph WaveNet: residual channels)", default=64)
    graph_mode: str = _flag("graph operator storage (auto: dense up to 2048 nodes)", choices=["auto", "dense", "sparse"], default="auto")
    layers: int = _flag("DCRNN: stacked recurrent layers", default=2)
    diffusion_steps: int = _flag("DCRNN: diffusion hops K; Graph WaveNet: diffusion order", default=2)
    teacher_decay: int = _flag("DCRNN scheduled sampling decay (cl_decay_steps); 0: off", default=0)
    adaptive_adjacency: bool = _flag("Graph WaveNet: learned adjacency (dense graphs only)", default=True)


@dataclass
class TrainConfig:
    epochs: int = _flag("training epochs", default=5)
    batch_size: int = _flag("windows per batch per rank", default=32)
    lr: float = _flag("Adam learning rate", default=1e-3)
    seed: int = _flag("random seed (model init, shuffling)", default=0)
    threads: int = _flag("torch threads per rank (0: cores / ranks on the node)", default=0)
    device: str = _flag("auto: the local rank's GPU if CUDA is there, else CPU", choices=["auto", "cpu", "cuda"], default="auto")
    results: str = _flag("write the results JSON here (rank 0)", default="")
    baselines: bool = _flag("evaluate persistence and historical average on the test windows too", default=True)


@dataclass
class ParallelConfig:
    backend: str = _flag("distributed backend", choices=_backend_names, default="horovod")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        checks = [
            (self.data.input_steps >= 1, "--input-steps must be >= 1"),
            (self.data.horizon >= 1, "--horizon must be >= 1"),
            (
                len(self.data.split) == 3 and all(f > 0 for f in self.data.split) and abs(sum(self.data.split) - 1) < 1e-6,
                f"--split must be three positive fractions summing to 1 (got {self.data.split})",
            ),
            (self.model.hidden >= 1, "--hidden must be >= 1"),
            (self.model.layers >= 1, "--layers must be >= 1"),
            (self.model.diffusion_steps >= 1, "--diffusion-steps must be >= 1"),
            (self.model.teacher_decay >= 0, "--teacher-decay must be >= 0"),
            (self.train.epochs >= 1, "--epochs must be >= 1"),
            (self.train.batch_size >= 1, "--batch-size must be >= 1"),
            (self.train.lr > 0, "--lr must be > 0"),
            (self.train.threads >= 0, "--threads must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)


_SECTIONS = {f.name: f.default_factory for f in dataclasses.fields(Config)}


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    for section, factory in _SECTIONS.items():
        group = parser.add_argument_group(section)
        for f in dataclasses.fields(factory()):
            meta = f.metadata
            default = f.default
            flag = meta.get("flag") or "--" + f.name.replace("_", "-")
            choices = meta.get("choices")
            kwargs: dict[str, Any] = {
                "dest": f"{section}.{f.name}",
                "default": default,
                "help": f"{meta['help']} (default: {default})",
            }
            if isinstance(default, bool):
                kwargs["action"] = argparse.BooleanOptionalAction
            else:
                kwargs["type"] = meta.get("parse") or type(default)
            if choices is not None:
                kwargs["choices"] = choices() if callable(choices) else choices
            elif not isinstance(default, bool):
                kwargs["metavar"] = f.name.upper()
            group.add_argument(flag, **kwargs)


def config_from_args(ns: argparse.Namespace) -> Config:
    values = vars(ns)
    sections = {
        section: factory(**{f.name: values[f"{section}.{f.name}"] for f in dataclasses.fields(factory())})
        for section, factory in _SECTIONS.items()
    }
    cfg = Config(**sections)
    cfg.validate()
    return cfg
