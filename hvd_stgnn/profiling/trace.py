"""The intermediate form of a profiling trace, and the arithmetic on it.

The two parsers turn a file into one of the trace records below (horovod_trace.py: a Horovod
timeline; torch_trace.py: the DDP backend's torch.profiler trace); the report (report.py and
its per-format parts) reads only these records. Times are µs on the trace's own clock; the
report converts them to ms once, with `ms`.

    Interval      one closed span of one activity: name, start, end, category, op, rank, step
    Call          one collective on one rank (an Interval, plus DDP's bucket bookkeeping)
    StepInfo      one recorded training step of a torch.profiler trace
    Trace         what every parsed file has: path, event count, first and last timestamp
    HorovodTrace  + per-tensor names, ops and dtypes, negotiation ticks, cycle markers
    TorchTrace    + rank, process group, training thread, steps, collectives

Pure: no Horovod, torch or file access here.
"""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass, field
from typing import Iterable

Span = tuple[float, float]  # [start, end) in µs

# Columns of the per-tensor (DDP: per-bucket) table and segments of the chart, in the order
# time flows. An Interval's category is one of these, or a non-column kind: "processing"
# (Horovod's <OP> interval around its activities), "launch" (c10d's enqueue of a collective).
CATEGORIES = ("negotiate", "wait", "memcpy_in", "collective", "memcpy_out", "other")
CATEGORY_LABELS = {
    "negotiate": "negotiate",
    "wait": "wait/queue",
    "memcpy_in": "memcpy in",
    "collective": "collective",
    "memcpy_out": "memcpy out",
    "other": "other",
}


# --- records ----------------------------------------------------------------------------


@dataclass
class Interval:
    """One closed span of one activity (µs)."""

    name: str  # as the trace names it: MPI_ALLREDUCE, gloo:all_reduce, c10d::allreduce_, ...
    start: float
    end: float
    category: str = "other"  # see CATEGORIES
    op: str = "?"  # the operation it serves: ALLREDUCE, BROADCAST, ...
    tensor: int | None = None  # Horovod: the tensor's trace pid (one trace process per tensor)
    parent: str | None = None  # Horovod: the enclosing top-level interval's name
    rank: int | None = None  # whose clock (Horovod: rank 0 records every interval)
    step: int | None = None  # the recorded step it falls in, when the trace marks steps

    @property
    def dur(self) -> float:
        return self.end - self.start

    @property
    def span(self) -> Span:
        return (self.start, self.end)


@dataclass
class Call(Interval):
    """One collective on one rank, as DDP's report needs it (category "collective")."""

    thread: tuple = ()  # (pid, tid) it ran on
    recorded_end: float = 0.0  # `end` before clamping (see torch_trace._clamp_to_finalize)
    nbytes: int | None = None
    phase: str = "other"  # forward (DDP's buffer broadcast), backward (gradient buckets), other
    ordinal: int = 0  # order among the calls of the same step, op and phase
    row: str = ""  # the report's row: "bucket 0", "broadcast 0 (forward: buffers)", ...
    fill_us: float | None = None  # reducer::mul_out into this bucket (the memcpy-in analogue)
    wait_us: float | None = None  # waiting for the last rank to enter (needs every rank's trace)
    blocked_us: float = 0.0  # training thread idle, backward done, this call still running
    clamped: bool = False  # its recorded end was cut

    @property
    def key(self) -> tuple:
        """The same collective on every rank has the same key (ranks launch in the same order)."""
        return (self.step, self.op, self.phase, self.ordinal)


@dataclass
class StepInfo:
    """One recorded step on the training thread (µs)."""

    index: int
    span_us: float | None = None
    forward_us: float = 0.0
    backward_start: float | None = None
    backward_end: float | None = None
    finalize_end: float | None = None  # DDP's finalize done: every bucket reduced and unpacked
    idle: list[Span] = field(default_factory=list)  # training thread idle in finalize
    blocked_us: float | None = None
    optimizer_us: float = 0.0

    @property
    def backward_us(self) -> float | None:
        if self.backward_start is None or self.backward_end is None:
            return None
        return self.backward_end - self.backward_start


@dataclass
class Trace:
    path: str
    events: int
    truncated: bool = False  # the file was cut short (a killed job); only Horovod's can be
    first_ts: float | None = None
    last_ts: float | None = None

    @property
    def span_us(self) -> float:
        """First to last timestamp: the share basis when nothing better is known."""
        return (self.last_ts - self.first_ts) if self.first_ts is not None else 0.0

    def see(self, ts: float, end: float | None = None) -> None:
        """Widen [first_ts, last_ts] to cover an event."""
        end = ts if end is None else end
        self.first_ts = ts if self.first_ts is None else min(self.first_ts, ts)
        self.last_ts = end if self.last_ts is None else max(self.last_ts, end)


@dataclass
class HorovodTrace(Trace):
    """Rank 0's view of every tensor: closed intervals per tensor pid, rank ticks, cycle markers."""

    start_epoch_us: int | None = None
    tensors: dict[int, str] = field(default_factory=dict)  # pid -> tensor name
    ops: dict[int, str] = field(default_factory=dict)  # pid -> the tensor's operation (mostly ALLREDUCE)
    intervals: list[Interval] = field(default_factory=list)
    ticks: list[tuple[int, int, float, float]] = field(default_factory=list)  # (pid, rank, ts, negotiate start)
    markers: dict[str, list[float]] = field(default_factory=dict)
    dtypes: dict[int, tuple[str, str]] = field(default_factory=dict)  # pid -> (dtype, shape)
    unclosed: int = 0  # B without E (recording stopped or job killed mid-operation)
    unmatched_ends: int = 0  # E without B (recording started mid-operation)


@dataclass
class TorchTrace(Trace):
    """One rank's torch.profiler window: its steps, its collectives and the training thread's
    launches and bucket fills (`intervals`, categories "launch" and "memcpy_in")."""

    rank: int | None = None
    world_size: int | None = None
    pg_backend: str | None = None
    base_us: float = 0.0  # add to ts for wall-clock µs since the epoch
    main_thread: tuple | None = None
    profiler_span: Span | None = None
    calls: list[Call] = field(default_factory=list)
    steps: list[StepInfo] = field(default_factory=list)
    step_mode: str = "none"  # profiler_step, optimizer, forward, none
    partial_calls: int = 0  # after the last optimizer step (a step cut by the end of recording)
    source: str = "cpu"  # cpu: collective threads (gloo); gpu: NCCL kernels
    clamped: int = 0
    intervals: list[Interval] = field(default_factory=list)

    def activities(self, category: str) -> list[Interval]:
        return [iv for iv in self.intervals if iv.category == category]


def rank0_path(path: str) -> str:
    """FILE.json.rank3 -> FILE.json: the name the trainer gives rank 0's trace."""
    return re.sub(r"\.rank\d+$", "", path)


# --- arithmetic -------------------------------------------------------------------------


def merge_intervals(spans: Iterable[Span]) -> list[Span]:
    """Sorted, disjoint union of [start, end) spans (touching spans are merged)."""
    merged: list[list[float]] = []
    for start, end in sorted(spans):
        if end < start:
            continue
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(a, b) for a, b in merged]


def union_length(spans: Iterable[Span]) -> float:
    """Wall time covered by at least one span."""
    return sum(b - a for a, b in merge_intervals(spans))


def overlap_groups(spans: Iterable[Span]) -> int:
    """Number of groups of spans that overlap (strictly): fused tensors form one group."""
    groups = 0
    end = -math.inf
    for start, stop in sorted(spans):
        if start >= end:
            groups += 1
            end = stop
        else:
            end = max(end, stop)
    return groups


def overlap(a: Span, b: Span) -> float:
    return max(0.0, min(a[1], b[1]) - max(a[0], b[0]))


def ms(us: float | None) -> float | None:
    """µs -> ms, to the µs (the report's unit and precision)."""
    return None if us is None else round(us / 1000.0, 3)


def share(us: float, basis_us: float) -> float | None:
    return (us / basis_us) if basis_us > 0 else None


def median(xs: Iterable[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def stat_ms(xs: Iterable[float | None]) -> dict | None:
    """{"min", "median", "max"} in ms of the known values, or None."""
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    return {"min": ms(min(xs)), "median": ms(statistics.median(xs)), "max": ms(max(xs))}


def activity(op: str, name: str, level: int, category: str, spans: list[Span]) -> dict:
    """One row of the report's activity table: count, summed and wall (union) ms of its spans."""
    return {"op": op, "name": name, "level": level, "category": category, "count": len(spans),
            "sum_ms": ms(sum(e - s for s, e in spans)), "wall_ms": ms(union_length(spans))}


def last_arrivals(lags: dict[int, list[float]]) -> dict:
    """Who arrived last, how often and how late (µs lags per rank), most often first."""
    return {
        str(rank): {"times": len(v), "lag_ms_median": ms(statistics.median(v)), "lag_ms_max": ms(max(v))}
        for rank, v in sorted(lags.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    }
