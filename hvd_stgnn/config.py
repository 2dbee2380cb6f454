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
    self_loop_weight: float = _flag(
        "T-GCN, A3T-GCN: GCN self-loop weight w in norm(A + w I); 1 Kipf-Welling, 2 T-GCN's reference; "
        "larger keeps more of a sensor's own reading (docs/RESULTS.md)", default=8.0)


@dataclass
class TrainConfig:
    epochs: int = _flag("training epochs", default=5)
    batch_size: int = _flag("windows per batch per rank", default=32)
    lr: float = _flag("Adam learning rate (per the whole job; see --scale-lr)", default=1e-3)
    scale_lr: bool = _flag("multiply --lr by the number of ranks (Horovod's rule for a global batch W x B)", default=False)
    lr_schedule: str = _flag("constant, or cosine decay to 0 over all steps (after warm-up)",
                             choices=["constant", "cosine"], default="constant")
    warmup_epochs: float = _flag("linear learning-rate warm-up from lr/10, in epochs (fractions allowed)", default=0.0)
    clip_grad: float = _flag("clip the global gradient norm to this (0: off; DCRNN uses 5)", default=5.0)
    weight_decay: float = _flag("Adam weight decay (L2)", default=0.0)
    test_on: str = _flag("test (and save) the model of the best validation epoch or the last epoch",
                         choices=["best", "last"], default="best")
    seed: int = _flag("random seed (model init, shuffling)", default=0)
    threads: int = _flag("torch threads per rank (0: $OMP_NUM_THREADS, else cores / ranks on the node)", default=0)
    device: str = _flag("auto: the local rank's GPU if CUDA works, else the CPU (saying why when a GPU is there "
                        "but CUDA failed); cuda: a GPU or one clear error", choices=["auto", "cpu", "cuda"], default="auto")
    precision: str = _flag("fp32, or mixed precision: bf16 (autocast; CPU and GPU) or fp16 (autocast + loss "
                           "scaling; GPU only). Losses and metrics stay fp32", choices=["fp32", "bf16", "fp16"],
                           default="fp32")
    tf32: bool = _flag("GPU: let float32 matmuls and convolutions use TF32 tensor cores (Ampere and newer)",
                       default=True)
    activation_checkpointing: str = _flag(
        "recompute activations in the backward pass instead of storing them: step (T-GCN, A3T-GCN, DCRNN: each time "
        "step's cell) or block (Graph WaveNet: each residual block); same gradients, less memory, more time "
        "(docs/PLANNER.md)", choices=["none", "step", "block"], default="none")
    compile: bool = _flag("torch.compile the model (hvd_stgnn.models.compile_model); the first steps are slower "
                          "while it compiles", default=False)
    sync_timings: bool = _flag("GPU: synchronize before and after every phase for exact per-phase times (slower); "
                               "default: CUDA events, one synchronization per epoch", default=False)
    results: str = _flag("write the results JSON here (rank 0; default RUN_DIR/results.json)", default="")
    baselines: bool = _flag("evaluate persistence and historical average on the test windows too", default=True)
    run_dir: str = _flag("run directory (rank 0 writes config.toml, metrics.jsonl, results.json, checkpoints/)",
                         default="")
    resume: str = _flag("resume from this run directory's last checkpoint (or a checkpoint file); auto: from "
                        "RUN_DIR's last good checkpoint when there is one, else start fresh (requeued/chained jobs)",
                        default="")
    overwrite: bool = _flag("start fresh in a --run-dir that holds checkpoints of an earlier run (deletes them)",
                            default=False)
    checkpoint_every: int = _flag("write RUN_DIR/checkpoints/last.pt every N epochs (0: only at the end)", default=1)
    stop_after_epochs: int = _flag("end this job after N epochs with a checkpoint, to continue with --resume "
                                   "(time-limited allocations; 0: run all --epochs)", default=0)
    log_every: int = _flag("metrics.jsonl (and TensorBoard): one step record every N optimizer steps", default=10)
    tensorboard: str = _flag("also log loss, LR, phase times, validation/test MAE per horizon and memory as "
                             "TensorBoard event files into this directory (rank 0)", default="")
    max_steps_per_epoch: int = _flag("cap optimizer steps per epoch (0: all); for a first look at a huge series",
                                     default=0)
    memory_check: bool = _flag("predict node/device memory first (hvd-stgnn plan) and refuse a run that "
                               "cannot fit", default=True)
    eval_windows: int = _flag("validate and test on at most this many windows, evenly spaced over the split "
                              "(0: all)", default=0)


@dataclass
class ParallelConfig:
    backend: str = _flag("distributed backend", choices=_backend_names, default="horovod")
    compression: str = _flag("Horovod gradient compression on the wire", choices=["none", "fp16"], default="none")
    reduce_op: str = _flag("Horovod gradient reduction: average, or adasum (adaptive summation)",
                           choices=["average", "adasum"], default="average")
    backward_passes_per_step: int = _flag("batches accumulated locally per optimizer step (one allreduce each)",
                                          default=1)
    fusion_threshold_mb: float = _flag("HOROVOD_FUSION_THRESHOLD in MiB (-1: keep Horovod's default / the env)",
                                       default=-1.0)
    cycle_time_ms: float = _flag("HOROVOD_CYCLE_TIME in ms (-1: keep Horovod's default / the env)", default=-1.0)
    autotune: bool = _flag("HOROVOD_AUTOTUNE: let Horovod tune fusion threshold and cycle time", default=False)
    ddp_timeout_s: float = _flag("DDP: seconds a collective may wait for the other ranks before the job fails "
                                 "(torch.distributed's process-group timeout)", default=600.0)


@dataclass
class ProfileConfig:
    timeline: str = _flag("record a Horovod timeline (Chrome trace) of a window of steps into this file", default="")
    timeline_steps: str = _flag("WARMUP:ACTIVE optimizer steps: skip WARMUP, then record ACTIVE", default="5:20")
    timeline_mark_cycles: bool = _flag("mark Horovod's background cycles in the timeline", default=False)
    sync_debug: bool = _flag("GPU: report every host-device synchronization in the training steps after the "
                             "warm-up (torch.cuda.set_sync_debug_mode('warn')), with where it happens",
                             default=False)

    def window(self) -> tuple[int, int]:
        """(first step, number of steps) of the recorded window."""
        return _steps_window(self.timeline_steps)


def _steps_window(text: str) -> tuple[int, int]:
    try:
        warmup, active = (int(v) for v in text.split(":"))
    except ValueError:
        raise ConfigError(f"--timeline-steps must be WARMUP:ACTIVE, two integers (got {text!r})") from None
    if warmup < 0 or active < 1:
        raise ConfigError(f"--timeline-steps: WARMUP must be >= 0 and ACTIVE >= 1 (got {text!r})")
    return warmup, active


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)

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
            (self.train.warmup_epochs >= 0, "--warmup-epochs must be >= 0"),
            (self.train.clip_grad >= 0, "--clip-grad must be >= 0"),
            (self.train.weight_decay >= 0, "--weight-decay must be >= 0"),
            (self.model.self_loop_weight > 0, "--self-loop-weight must be > 0"),
            (self.train.checkpoint_every >= 0, "--checkpoint-every must be >= 0"),
            (self.train.stop_after_epochs >= 0, "--stop-after-epochs must be >= 0"),
            (self.train.log_every >= 1, "--log-every must be >= 1"),
            (self.train.max_steps_per_epoch >= 0, "--max-steps-per-epoch must be >= 0"),
            (self.train.eval_windows >= 0, "--eval-windows must be >= 0"),
            (self.parallel.backward_passes_per_step >= 1, "--backward-passes-per-step must be >= 1"),
            (not (self.parallel.reduce_op == "adasum" and self.parallel.compression != "none"),
             "--reduce-op adasum does not combine with --compression (Horovod's Adasum reduces full precision)"),
            (not (self.train.stop_after_epochs and not self.train.run_dir),
             "--stop-after-epochs needs --run-dir (where the checkpoint goes)"),
            (self.train.threads >= 0, "--threads must be >= 0"),
            (not (self.train.resume == "auto" and not self.train.run_dir),
             "--resume auto needs --run-dir (whose checkpoints it resumes from)"),
            (not (self.train.resume and self.train.overwrite),
             f"--resume {self.train.resume} and --overwrite contradict each other: choose one"),
            (self.parallel.ddp_timeout_s > 0, "--ddp-timeout-s must be > 0"),
            (not (self.train.precision == "fp16" and self.parallel.reduce_op == "adasum"),
             "--precision fp16 does not combine with --reduce-op adasum (loss scaling needs averaged gradients)"),
            (not (self.profile.timeline and self.parallel.backend == "single"),
             "--timeline: not supported with --backend single (use horovod or ddp)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        from hvd_stgnn.models.checkpointing import checkpointing_error

        error = checkpointing_error(self.model.name, self.train.activation_checkpointing)
        if error:
            raise ConfigError(error)
        self.profile.window()


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


def load_toml_defaults(path: str) -> dict[str, Any]:
    """Read a TOML config ([data], [model], [train], [parallel], [profile] tables) into
    argparse defaults {"section.field": value}; the command line overrides them."""
    import tomllib

    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"--config {path}: not a valid TOML file ({exc})") from None
    defaults: dict[str, Any] = {}
    for section, table in doc.items():
        if section not in _SECTIONS or not isinstance(table, dict):
            raise ConfigError(f"--config {path}: unknown table [{section}] (expected {', '.join(_SECTIONS)})")
        fields = {f.name: f for f in dataclasses.fields(_SECTIONS[section]())}
        for key, value in table.items():
            name = key.replace("-", "_")
            if name not in fields:
                raise ConfigError(f"--config {path}: unknown key {key!r} in [{section}]")
            expected = type(fields[name].default)
            if expected is tuple and isinstance(value, list):
                value = tuple(value)
            elif expected is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
                raise ConfigError(f"--config {path}: [{section}] {key} must be {expected.__name__} (got {value!r})")
            defaults[f"{section}.{name}"] = value
    return defaults


def config_to_toml(cfg: Config) -> str:
    import tomli_w

    return tomli_w.dumps({section: {k: list(v) if isinstance(v, tuple) else v for k, v in table.items()}
                          for section, table in cfg.to_dict().items()})


def config_from_args(ns: argparse.Namespace) -> Config:
    values = vars(ns)
    sections = {
        section: factory(**{f.name: values[f"{section}.{f.name}"] for f in dataclasses.fields(factory())})
        for section, factory in _SECTIONS.items()
    }
    cfg = Config(**sections)
    for section, factory in _SECTIONS.items():  # TOML values bypass argparse's choices
        for f in dataclasses.fields(factory()):
            choices = f.metadata.get("choices")
            choices = choices() if callable(choices) else choices
            value = getattr(getattr(cfg, section), f.name)
            if choices is not None and value not in choices:
                flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
                raise ConfigError(f"{flag} must be one of {', '.join(map(str, choices))} (got {value!r})")
    cfg.validate()
    return cfg
