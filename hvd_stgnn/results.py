"""`results.json`: what a training run reports, in one schema.

The trainer fills a `Results` and writes it (`Results.write`, rank 0, atomically); `bench
compare`, `bench scaling`, `plot` and `timeline` read it back with `Results.read` and use its attributes, so
the names of the entries are written down once, here. Every field has a default: a run that
stopped early has no test table, an older file may lack newer entries, and readers say
which entry they need when it is missing. Unknown keys are ignored (newer files still load).

    model, world_size, backend       what ran
    launch                           launcher, scheduler, job, nodes, versions (parallel/launcher.py)
    epochs                           [EpochRecord]: epoch, train_mae, val_mae, seconds
    phase_timings                    [EpochPhases]: per epoch, ms per step of each phase, min/median/max over ranks;
                                     the epoch's training-loop seconds (validation excluded)
    timing                           Timing: prepare, training loop, samples/s after the warm-up steps
    memory                           Memory: per rank peak RSS / PSS / CUDA peak, node PSS totals
    normalization, data_health, load, batching, config
    timeline                         TimelineInfo, when a window was recorded
    stopped_after_epoch              set when --stop-after-epochs ended the job (no test then)
    tested_epoch, test, test_windows, eval_windows_cap, baselines
                                     the test tables: {"mae"|"rmse"|"mape": {"15min": .., "avg": ..}}
    param_digests, total_seconds
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hvd_stgnn.errors import DataError

PHASE_KEYS = ("batch_ms", "forward_ms", "backward_ms", "optimizer_ms", "step_ms")


class ResultsFileError(DataError):
    """A results file that cannot be read or does not follow the schema: `path: problem`."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = str(path), problem


@dataclass
class EpochRecord:
    epoch: int = 0
    train_mae: float = math.nan
    val_mae: float = math.nan
    seconds: float = 0.0


@dataclass
class EpochPhases:
    """One epoch's per-step phase times: {"min", "median", "max"} ms across ranks each."""

    epoch: int = 0
    steps: int = 0
    batch_ms: dict | None = None
    forward_ms: dict | None = None
    backward_ms: dict | None = None  # backward + waiting for the gradient allreduce
    optimizer_ms: dict | None = None
    step_ms: dict | None = None
    loop_seconds: float = 0.0  # the epoch's training loop, its steps and the loop's own work (rank 0's)

    def median(self, key: str) -> float:
        stats = getattr(self, key)
        return float(stats["median"]) if stats else math.nan


@dataclass
class Timing:
    prepare_seconds: float = 0.0  # load + statistics + batch sources (materialized: every window)
    train_loop_seconds: float = 0.0  # training steps of this job, validation excluded
    epoch_seconds_median: float = 0.0
    samples_per_second: float = 0.0  # over all ranks, after the job's first warm-up steps
    samples_per_second_excludes_steps: int = 0


@dataclass
class RankMemory:
    host: str = ""
    peak_rss_bytes: int = 0
    pss_peak_bytes: int = 0  # largest PSS sample: after loading, every epoch, the materialized build's peak
    cuda_peak_bytes: int = 0  # the allocator's peak since data preparation (the data on the GPU included)
    cuda_peak_reserved_bytes: int = 0  # what the caching allocator held from the driver at most


@dataclass
class Memory:
    per_rank: list[RankMemory] = field(default_factory=list)
    node_pss_peak_bytes: dict = field(default_factory=dict)  # host -> summed PSS of its ranks
    max_node_pss_peak_bytes: int = 0

    @classmethod
    def from_ranks(cls, per_rank: list[RankMemory]) -> "Memory":
        nodes: dict[str, int] = {}
        for r in per_rank:
            nodes[r.host] = nodes.get(r.host, 0) + r.pss_peak_bytes
        return cls(per_rank, nodes, max(nodes.values(), default=0))


@dataclass
class TimelineInfo:
    """The recorded profiling window (profiling/window.py). Only its length is needed to read
    a report against it; the rest is None where a file does not say."""

    file: str | None = None
    first_step: int | None = None  # the job's optimizer step it began at
    active_steps: int | None = None
    window_seconds: float = field(default=0.0, metadata={"required": True, "positive": True})


@dataclass
class Batching:
    """What each rank's batch sources hold (train/evaluate.py batching_summary)."""

    kind: str = ""  # index/shard, index/global, materialized
    device: str = "cpu"
    shares_node_memory: bool = False  # the bytes are views of the node-shared array
    device_bytes_per_rank: list = field(default_factory=list)
    train_steps_held_per_rank: list = field(default_factory=list)  # [first, last + 1) raw steps, per rank


@dataclass
class Results:
    model: str = ""
    world_size: int = 1
    backend: str = ""
    launch: dict = field(default_factory=dict)
    epochs: list[EpochRecord] = field(default_factory=list)
    phase_timings: list[EpochPhases] = field(default_factory=list)
    timing: Timing = field(default_factory=Timing)
    memory: Memory = field(default_factory=Memory)
    normalization: dict = field(default_factory=dict)
    data_health: dict | None = None
    load: dict = field(default_factory=dict)
    batching: Batching = field(default_factory=Batching)
    config: dict = field(default_factory=dict)
    timeline: TimelineInfo | None = None
    stopped_after_epoch: int | None = None
    tested_epoch: int | None = None
    test: dict | None = None
    test_windows: int | None = None
    eval_windows_cap: int | None = None
    baselines: dict | None = None
    param_digests: list = field(default_factory=list)
    total_seconds: float = 0.0

    # Entries left out of the file while unset (a stopped run has no test; no window, no timeline).
    OPTIONAL = ("timeline", "stopped_after_epoch", "tested_epoch", "test", "test_windows", "eval_windows_cap",
                "baselines")

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        return {k: v for k, v in out.items() if not (k in self.OPTIONAL and v is None)}

    def write(self, path: str | os.PathLike) -> None:
        write_json_atomic(path, self.to_dict())

    @classmethod
    def from_dict(cls, doc: Any, path: str | os.PathLike = "<results>") -> "Results":
        if not isinstance(doc, dict):
            raise ResultsFileError(path, f"expected a JSON object (got {type(doc).__name__})")
        try:
            return _build(cls, doc, "")
        except _SchemaError as exc:
            raise ResultsFileError(path, str(exc)) from None

    @classmethod
    def read(cls, path: str | os.PathLike) -> "Results":
        """Read and check a results file; one-line ResultsFileError naming the file otherwise."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ResultsFileError(path, "no such file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ResultsFileError(path, f"cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ResultsFileError(path, f"not valid JSON (invalid JSON at line {exc.lineno}: {exc.msg})") from None
        return cls.from_dict(doc, path)

    @property
    def last_phases(self) -> EpochPhases | None:
        return self.phase_timings[-1] if self.phase_timings else None


def write_json_atomic(path: str | os.PathLike, obj: dict) -> None:
    """Write JSON to a temp file beside `path`, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, allow_nan=True)
        f.write("\n")
    os.replace(tmp, path)


# --- reading: the dataclasses above are the schema ----------------------------------------


class _SchemaError(ValueError):
    pass


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _expected(kind: Any, meta: Any) -> str:
    """What a scalar field must be, for the error line."""
    if kind is float:
        return "a number > 0" if meta and meta.get("positive") else "a number"
    return {int: "an integer", bool: "true or false", str: "a string"}.get(kind, "given")


def _convert(kind: Any, value: Any, where: str, meta: Any = None) -> Any:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (kind,) = [a for a in args if a is not type(None)]
        origin, args = typing.get_origin(kind), typing.get_args(kind)
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise _SchemaError(f"{where} must be an object (got {type(value).__name__})")
        return _build(kind, value, where)
    if kind is list or origin is list:
        if not isinstance(value, list):
            raise _SchemaError(f"{where} must be a list (got {type(value).__name__})")
        if args and dataclasses.is_dataclass(args[0]):
            if not all(isinstance(v, dict) for v in value):
                raise _SchemaError(f"{where} must be a list of objects")
            return [_build(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
        return value
    if kind is dict:
        if not isinstance(value, dict):
            raise _SchemaError(f"{where} must be an object (got {type(value).__name__})")
        return value
    ok = {
        float: lambda v: _is_number(v) and (v > 0 or not (meta and meta.get("positive"))),
        int: lambda v: _is_number(v) and float(v).is_integer(),
        bool: lambda v: isinstance(v, bool),
        str: lambda v: isinstance(v, str),
    }.get(kind, lambda v: True)
    if not ok(value):
        raise _SchemaError(f"{where} must be {_expected(kind, meta)} (got {value!r})")
    return {float: float, int: int}.get(kind, lambda v: v)(value)


def _build(cls: type, doc: dict, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        name = f'"{f.name}"' if not where else f"{where}.{f.name}"
        if f.name in doc:
            values[f.name] = _convert(hints[f.name], doc[f.name], name, f.metadata)
        elif f.metadata.get("required"):
            raise _SchemaError(f"{name} must be {_expected(hints[f.name], f.metadata)} (got nothing)")
    return cls(**values)
