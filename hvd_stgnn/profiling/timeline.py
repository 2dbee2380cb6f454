"""`hvd-stgnn timeline`: where the time goes, from a Horovod timeline (docs/PROFILING.md).

A Horovod timeline is a Chrome trace (a JSON array of events) that rank 0 writes for the
whole job (HOROVOD_TIMELINE=FILE, or HOROVOD_TIMELINE=DYNAMIC + hvd.start_timeline). What
this module relies on, as Horovod 0.28 writes it:

- every tensor is a trace "process": a `{"ph": "M", "name": "process_name", "pid": P,
  "args": {"name": "allreduce.<tensor>"}}` record names pid P; pid 0 carries
  `start_time_since_epoch_in_micros`. There is no `tid`.
- on each pid, `B`/`E` pairs nest two deep: a top-level interval (`NEGOTIATE_<OP>` while
  rank 0 waits for every rank to submit the tensor, then `<OP>` = ALLREDUCE, BROADCAST,
  ALLGATHER, ... while it is processed), and inside `<OP>` the activities
  (`MEMCPY_IN_FUSION_BUFFER`, `MPI_ALLREDUCE` / `NCCL_ALLREDUCE`, `MEMCPY_OUT_FUSION_BUFFER`,
  `WAIT_FOR_DATA`, `QUEUE`, ...). `E` records carry no name; the `E` closing `<OP>` carries
  `args: {"dtype", "shape"}`.
- inside `NEGOTIATE_<OP>`, `{"ph": "X", "name": "<rank>", "dur": 0}` ticks mark when rank
  0 heard from each rank (only on the full negotiation path, not for cached responses).
- with mark-cycles, `{"ph": "i", "name": "CYCLE_START", "s": "g"}` marks each background
  cycle (no pid).
- `ts` is in microseconds since Horovod started. After each event Horovod writes `}]` and
  overwrites the `]` with `,` before the next one, so a killed job leaves either a valid
  file or one whose last event is cut short (or whose `]` is missing): both are accepted.

Everything here is pure (no Horovod import); `cmd_timeline` is the CLI entry point and
`add_timeline_parser` registers it.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import re
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from hvd_stgnn.errors import ConfigError, DataError
from hvd_stgnn.profiling.timeline_ddp import TorchTrace, build_ddp_report, format_ddp_report, is_torch_trace, parse_torch_trace

# Horovod's response types: the names of top-level processing intervals (NEGOTIATE_ + these
# are the negotiation intervals).
OPS = ("ALLREDUCE", "ALLGATHER", "BROADCAST", "ALLTOALL", "REDUCESCATTER", "ADASUM", "JOIN", "BARRIER", "ERROR")

# Columns of the per-tensor table and segments of the chart, in the order time flows.
CATEGORIES = ("negotiate", "wait", "memcpy_in", "collective", "memcpy_out", "other")
CATEGORY_LABELS = {
    "negotiate": "negotiate",
    "wait": "wait/queue",
    "memcpy_in": "memcpy in",
    "collective": "collective",
    "memcpy_out": "memcpy out",
    "other": "other",
}
WAIT_ACTIVITIES = ("WAIT_FOR_DATA", "WAIT_FOR_OTHER_TENSOR_DATA", "QUEUE")
COLLECTIVE_PREFIXES = ("MPI_", "NCCL_", "GLOO_", "CCL_", "DDL_", "ADASUM_")
# Activities printed in a fixed order when present; anything else found follows, sorted.
ACTIVITY_ORDER = (
    "WAIT_FOR_DATA", "WAIT_FOR_OTHER_TENSOR_DATA", "QUEUE", "SCHEDULE", "INIT_FUSION_BUFFER", "ALLOCATE_OUTPUT",
    "MEMCPY_IN_FUSION_BUFFER", "MEMCPY_IN_HOST_BUFFER", "NCCL_REDUCESCATTER", "MPI_ALLREDUCE", "NCCL_ALLREDUCE",
    "NCCL_ALLGATHER", "MEMCPY_OUT_HOST_BUFFER", "MEMCPY_OUT_FUSION_BUFFER",
)
DTYPE_BYTES = {
    "uint8": 1, "int8": 1, "bool": 1, "uint16": 2, "int16": 2, "float16": 2, "bfloat16": 2,
    "int32": 4, "float32": 4, "int64": 8, "float64": 8,
}


def category(name: str) -> str:
    """The report column an activity belongs to."""
    if name.startswith("NEGOTIATE_"):
        return "negotiate"
    if name in WAIT_ACTIVITIES:
        return "wait"
    if name.startswith("MEMCPY_IN_"):
        return "memcpy_in"
    if name.startswith("MEMCPY_OUT_"):
        return "memcpy_out"
    if name.startswith(COLLECTIVE_PREFIXES):
        return "collective"
    return "other"


def is_top_level(name: str) -> bool:
    return name in OPS or name.startswith("NEGOTIATE_")


# --- parsing ----------------------------------------------------------------------------


@dataclass
class Interval:
    pid: int
    name: str
    start: float  # microseconds since Horovod started
    end: float
    parent: str | None = None  # the enclosing top-level interval's name, for activities

    @property
    def dur(self) -> float:
        return self.end - self.start


@dataclass
class Trace:
    """A parsed timeline: closed intervals per tensor pid, rank ticks, cycle markers."""

    path: str
    events: int
    truncated: bool = False  # last event cut short or closing ']' missing
    start_epoch_us: int | None = None
    tensors: dict[int, str] = field(default_factory=dict)  # pid -> tensor name
    intervals: list[Interval] = field(default_factory=list)
    ticks: list[tuple[int, int, float, float]] = field(default_factory=list)  # (pid, rank, ts, negotiate start)
    markers: dict[str, list[float]] = field(default_factory=dict)
    dtypes: dict[int, tuple[str, str]] = field(default_factory=dict)  # pid -> (dtype, shape)
    unclosed: int = 0  # B without E (recording stopped or job killed mid-operation)
    unmatched_ends: int = 0  # E without B (recording started mid-operation)
    first_ts: float | None = None
    last_ts: float | None = None


_NEXT_EVENT = re.compile(r"\}\s*,\s*\{")


def _not_a_timeline(path: str, why: str) -> DataError:
    return DataError(f"{path}: not a Horovod timeline ({why})")


def _read_body(path: str | Path) -> str:
    """The text of a trace file (gzip-compressed is fine), stripped; one-line DataError otherwise."""
    p = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{p}: is a directory, not a timeline file") from None
    except OSError as exc:
        raise DataError(f"{p}: cannot read it ({exc.strerror or exc})") from None
    if raw[:2] == b"\x1f\x8b":  # torch.profiler's tensorboard handler can write .json.gz
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DataError(f"{p}: a gzip file that cannot be decompressed ({exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _not_a_timeline(p, "not UTF-8 text") from None
    body = text.strip()
    if not body:
        raise DataError(f"{p}: empty: no events were written (nothing was recorded, or the job died before the first one)")
    return body


def _parse_json(body: str) -> Any:
    try:
        return json.loads(body)
    except json.JSONDecodeError:
        return None


def read_events(path: str | Path) -> tuple[list, bool]:
    """The trace events of a Horovod timeline file, and whether the file was cut short.

    Accepts a complete JSON array, or one with its closing `]` missing and/or its last event
    truncated (a killed job). Raises DataError with one line for anything else.
    """
    body = _read_body(path)
    return _events_from_body(str(path), body, _parse_json(body))


def _events_from_body(p: str, body: str, doc: Any) -> tuple[list, bool]:
    if doc is not None:
        if isinstance(doc, dict):
            if is_torch_trace(doc):
                raise _not_a_timeline(p, "a torch.profiler trace (DDP): read it with load_trace or `hvd-stgnn timeline`")
            hint = "; it looks like a results file: pass it with --results" if "timeline" in doc or "epochs" in doc else ""
            raise _not_a_timeline(p, f"a JSON object, expected an array of trace events{hint}")
        if not isinstance(doc, list):
            raise _not_a_timeline(p, f"a JSON {type(doc).__name__}, expected an array of trace events")
        return doc, False
    if not body.startswith("["):
        if body.startswith("{") and '"traceEvents"' in body[:100_000]:
            raise DataError(f"{p}: a torch.profiler trace that is not valid JSON (cut short? torch writes the whole "
                            "file when the recording stops: record again)")
        raise _not_a_timeline(p, "not JSON: expected an array of trace events starting with '['")
    # Incremental: event by event, up to the end or to a cut-short last event.
    decoder = json.JSONDecoder()
    events: list = []
    pos, n = 1, len(body)
    while True:
        while pos < n and body[pos] in " \t\r\n,":
            pos += 1
        if pos >= n:
            return events, True  # closing ']' missing
        if body[pos] == "]":
            rest = body[pos + 1:].strip()
            if rest:
                raise _not_a_timeline(p, f"unexpected text after the closing ']' at {_where(body, pos + 1)}")
            return events, False
        try:
            event, pos = decoder.raw_decode(body, pos)
        except json.JSONDecodeError as exc:
            if _NEXT_EVENT.search(body, pos) is None and body[pos] == "{":
                return events, True  # the last event is cut short
            raise _not_a_timeline(p, f"invalid JSON at {_where(body, exc.pos)}: {exc.msg}") from None
        events.append(event)


def _where(text: str, pos: int) -> str:
    line = text.count("\n", 0, pos) + 1
    return f"line {line}, column {pos - text.rfind(chr(10), 0, pos)}"


def parse_events(events: list, path: str = "<events>", truncated: bool = False) -> Trace:
    """Match B/E pairs per pid into intervals; collect tensor names, ticks and markers."""
    trace = Trace(path=path, events=len(events), truncated=truncated)
    stacks: dict[int, list[tuple[str, float]]] = defaultdict(list)
    seen_horovod = False
    for i, ev in enumerate(events):
        if not isinstance(ev, dict) or not isinstance(ev.get("ph"), str):
            raise _not_a_timeline(path, f"element {i} is not a trace event (an object with a 'ph' field)")
        ph = ev["ph"]
        pid = ev.get("pid")
        ts = ev.get("ts")
        if ts is not None:
            if not isinstance(ts, (int, float)) or isinstance(ts, bool):
                raise _not_a_timeline(path, f"element {i} has a non-numeric 'ts' {ts!r}")
            ts = float(ts)
            trace.first_ts = ts if trace.first_ts is None else min(trace.first_ts, ts)
            trace.last_ts = ts if trace.last_ts is None else max(trace.last_ts, ts)
        args = ev.get("args") if isinstance(ev.get("args"), dict) else {}
        if ph == "M":
            if ev.get("name") == "process_name":
                if "start_time_since_epoch_in_micros" in args:
                    trace.start_epoch_us = args["start_time_since_epoch_in_micros"]
                    seen_horovod = True
                elif isinstance(args.get("name"), str) and isinstance(pid, int):
                    trace.tensors[pid] = args["name"]
            continue
        if ts is None:
            continue
        if ph == "i" or ph == "I":
            trace.markers.setdefault(str(ev.get("name", "")), []).append(ts)
            continue
        if not isinstance(pid, int):
            continue
        stack = stacks[pid]
        if ph == "B":
            name = str(ev.get("name", ""))
            seen_horovod = seen_horovod or is_top_level(name)
            stack.append((name, ts))
        elif ph == "E":
            if not stack:
                trace.unmatched_ends += 1
                continue
            name, start = stack.pop()
            parent = stack[-1][0] if stack else None
            trace.intervals.append(Interval(pid, name, start, ts, parent))
            if name in OPS and "dtype" in args:
                trace.dtypes[pid] = (str(args.get("dtype")), str(args.get("shape", "")))
        elif ph == "X":
            name = str(ev.get("name", ""))
            dur = ev.get("dur")
            dur = float(dur) if isinstance(dur, (int, float)) and not isinstance(dur, bool) else 0.0
            if stack and stack[-1][0].startswith("NEGOTIATE_") and name.isdigit():
                trace.ticks.append((pid, int(name), ts, stack[-1][1]))
            elif dur > 0:
                parent = stack[-1][0] if stack else None
                trace.intervals.append(Interval(pid, name, ts, ts + dur, parent))
    trace.unclosed = sum(len(s) for s in stacks.values())
    if not seen_horovod:
        raise _not_a_timeline(path, "a trace, but with no Horovod header (pid 0 start time) and no NEGOTIATE_*/ALLREDUCE/... "
                                    "intervals")
    return trace


def load_timeline(path: str | Path) -> Trace:
    """A Horovod timeline (see load_trace for either format)."""
    events, truncated = read_events(path)
    return parse_events(events, str(path), truncated)


def load_trace(path: str | Path) -> Trace | TorchTrace:
    """A Horovod timeline or a torch.profiler trace (the DDP backend's), told apart by content:
    torch writes one JSON object with `traceEvents` and its header keys, Horovod an array."""
    body = _read_body(path)
    doc = _parse_json(body)
    if is_torch_trace(doc):
        return parse_torch_trace(doc, str(path))
    events, truncated = _events_from_body(str(path), body, doc)
    return parse_events(events, str(path), truncated)


# --- arithmetic -------------------------------------------------------------------------


def merge_intervals(spans: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
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


def union_length(spans: Iterable[tuple[float, float]]) -> float:
    """Wall time covered by at least one span."""
    return sum(b - a for a, b in merge_intervals(spans))


def overlap_groups(spans: Iterable[tuple[float, float]]) -> int:
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


def tensor_bytes(dtype: str, shape: str) -> int | None:
    size = DTYPE_BYTES.get(dtype)
    dims = re.findall(r"\d+", shape)
    if size is None or not shape.strip().startswith("["):
        return None
    return size * math.prod(int(d) for d in dims)


def _ms(us: float) -> float:
    return round(us / 1000.0, 3)


def _op_of(trace: Trace, pid: int, intervals: list[Interval]) -> str:
    ops = [iv.name for iv in intervals if iv.name in OPS]
    if ops:
        return max(set(ops), key=ops.count)
    negs = [iv.name[len("NEGOTIATE_"):] for iv in intervals if iv.name.startswith("NEGOTIATE_")]
    if negs:
        return max(set(negs), key=negs.count)
    prefix = trace.tensors.get(pid, "").split(".", 1)[0].upper()
    return prefix if prefix in OPS else "?"


def _activity_sort_key(name: str) -> tuple:
    return (ACTIVITY_ORDER.index(name), "") if name in ACTIVITY_ORDER else (len(ACTIVITY_ORDER), name)


def _categories(acts: dict[str, float], processing_us: float) -> dict[str, float]:
    """Per-category µs for one tensor (or all): `other` = processing not in wait/copy/collective."""
    cats = dict.fromkeys(CATEGORIES, 0.0)
    for name, us in acts.items():
        cat = category(name)
        if cat != "other":
            cats[cat] += us
    cats["other"] = max(0.0, processing_us - sum(cats[c] for c in ("wait", "memcpy_in", "collective", "memcpy_out")))
    return cats


def build_report(trace: Trace, top: int = 10, results: dict | None = None, results_path: str | None = None) -> dict:
    """Every number the report prints, as a JSON-ready dict (times in ms)."""
    by_pid: dict[int, list[Interval]] = defaultdict(list)
    for iv in trace.intervals:
        by_pid[iv.pid].append(iv)

    # Per activity, over all tensors: count, summed time, wall time (union).
    groups: dict[tuple[str, str], list[Interval]] = defaultdict(list)
    for pid, ivs in by_pid.items():
        op = _op_of(trace, pid, ivs)
        for iv in ivs:
            if iv.name.startswith("NEGOTIATE_"):
                grp = iv.name[len("NEGOTIATE_"):]
            elif iv.name in OPS:
                grp = iv.name
            else:
                grp = iv.parent if iv.parent in OPS else op
            groups[(grp, iv.name)].append(iv)
    activities = []
    op_groups = sorted({g for g, _ in groups}, key=lambda g: (OPS.index(g) if g in OPS else len(OPS), g))
    for grp in op_groups:
        names = [name for g, name in groups if g == grp]
        ordered = ([n for n in names if n.startswith("NEGOTIATE_")] + [n for n in names if n == grp]
                   + sorted((n for n in names if not is_top_level(n)), key=_activity_sort_key))
        for name in ordered:
            ivs = groups[(grp, name)]
            activities.append({
                "op": grp,
                "name": name,
                "level": 0 if is_top_level(name) else 1,
                "category": "processing" if name in OPS else category(name),
                "count": len(ivs),
                "sum_ms": _ms(sum(iv.dur for iv in ivs)),
                "wall_ms": _ms(union_length((iv.start, iv.end) for iv in ivs)),
            })
    found = {name for _, name in groups}
    missing = [name for name in WAIT_ACTIVITIES if name not in found]

    # Per tensor.
    tensors = []
    for pid in sorted(set(by_pid) | set(trace.tensors)):
        ivs = by_pid.get(pid, [])
        acts: dict[str, float] = defaultdict(float)
        for iv in ivs:
            acts[iv.name] += iv.dur
        op = _op_of(trace, pid, ivs)
        negotiate = sum(us for name, us in acts.items() if name.startswith("NEGOTIATE_"))
        processing = sum(us for name, us in acts.items() if name in OPS)
        dtype, shape = trace.dtypes.get(pid, ("", ""))
        tensors.append({
            "pid": pid,
            "name": trace.tensors.get(pid, f"pid {pid}"),
            "op": op,
            "calls": sum(1 for iv in ivs if iv.name in OPS),
            "dtype": dtype or None,
            "shape": shape or None,
            "bytes": tensor_bytes(dtype, shape),
            "total_ms": _ms(negotiate + processing),
            "negotiate_ms": _ms(negotiate),
            "processing_ms": _ms(processing),
            "categories_ms": {k: _ms(v) for k, v in _categories(acts, processing).items()},
            "activities_ms": {k: _ms(v) for k, v in sorted(acts.items(), key=lambda kv: _activity_sort_key(kv[0]))},
        })
    tensors.sort(key=lambda t: (-t["total_ms"], t["name"]))
    totals_cat = {c: round(sum(t["categories_ms"][c] for t in tensors), 3) for c in CATEGORIES}
    tensors_total = {
        "tensors": len(tensors),
        "calls": sum(t["calls"] for t in tensors),
        "total_ms": round(sum(t["total_ms"] for t in tensors), 3),
        "negotiate_ms": round(sum(t["negotiate_ms"] for t in tensors), 3),
        "processing_ms": round(sum(t["processing_ms"] for t in tensors), 3),
        "categories_ms": totals_cat,
    }

    # Counts.
    op_spans = {op: [(iv.start, iv.end) for iv in trace.intervals if iv.name == op] for op in OPS}
    allreduce = op_spans["ALLREDUCE"]
    ops_count = {op: len(spans) for op, spans in op_spans.items() if spans}
    cycles = len(trace.markers.get("CYCLE_START", [])) or None
    counts = {
        "allreduce_calls": len(allreduce),
        "allreduce_tensors": len({iv.pid for iv in trace.intervals if iv.name == "ALLREDUCE"}),
        "allreduce_batches": overlap_groups(allreduce),
        "ops": ops_count,
        "op_batches": {op: overlap_groups(spans) for op, spans in op_spans.items() if spans},
        "cycles": cycles,
        "tensors": len(tensors),
        "unclosed_intervals": trace.unclosed,
        "unmatched_ends": trace.unmatched_ends,
    }

    # Negotiation: which rank reached rank 0 last, and by how much.
    negotiation = _negotiation(trace)

    # Communication share.
    span_us = (trace.last_ts - trace.first_ts) if trace.first_ts is not None else 0.0
    allreduce_wall = union_length(allreduce)
    all_ops_wall = union_length(s for spans in op_spans.values() for s in spans)
    negotiate_wall = union_length((iv.start, iv.end) for iv in trace.intervals if iv.name == "NEGOTIATE_ALLREDUCE")
    window = (results or {}).get("timeline")
    if window:
        basis, basis_us = "window", float(window["window_seconds"]) * 1e6
    else:
        basis, basis_us = "trace_span", span_us
    comm = {
        "basis": basis,
        "basis_ms": _ms(basis_us),
        "trace_span_ms": _ms(span_us),
        "allreduce_wall_ms": _ms(allreduce_wall),
        "allreduce_share": (allreduce_wall / basis_us) if basis_us > 0 else None,
        "collectives_wall_ms": _ms(all_ops_wall),
        "collectives_share": (all_ops_wall / basis_us) if basis_us > 0 else None,
        "negotiate_allreduce_wall_ms": _ms(negotiate_wall),
    }
    steps = None
    if window:
        steps = {"first_step": window.get("first_step"), "active_steps": window.get("active_steps"),
                 "file": window.get("file")}
        active = window.get("active_steps")
        if isinstance(active, int) and active > 0:
            comm["allreduce_ms_per_step"] = _ms(allreduce_wall / active)
            comm["allreduce_calls_per_step"] = round(len(allreduce) / active, 3)

    report: dict[str, Any] = {
        "format": "horovod",
        "unit": "tensor",
        "file": trace.path,
        "events": trace.events,
        "truncated": trace.truncated,
        "start_time_since_epoch_us": trace.start_epoch_us,
        "counts": counts,
        "activities": activities,
        "not_recorded": missing,
        "top": top,
        "tensors": tensors[:top],
        "tensors_total": tensors_total,
        "negotiation": negotiation,
        "comm": comm,
        "results": None,
    }
    if results is not None:
        phases = results.get("phase_timings") or []
        last = phases[-1] if phases else None
        note = None
        if window and window.get("file") and Path(str(window["file"])).name != Path(trace.path).name:
            note = f"the results describe timeline {window['file']}, not {trace.path}"
        report["results"] = {"file": results_path, "timeline": steps, "phase_timings": last, "note": note}
        if last and "step_ms" in last and "median" in last["step_ms"] and "allreduce_ms_per_step" in comm:
            median = last["step_ms"]["median"]
            comm["allreduce_share_of_median_step"] = (comm["allreduce_ms_per_step"] / median) if median else None
    return report


def _negotiation(trace: Trace) -> dict:
    by_neg: dict[tuple[int, float], list[tuple[int, float]]] = defaultdict(list)
    for pid, rank, ts, start in trace.ticks:
        by_neg[(pid, start)].append((rank, ts))
    total = sum(1 for iv in trace.intervals if iv.name.startswith("NEGOTIATE_"))
    last: dict[int, list[float]] = defaultdict(list)
    for ticks in by_neg.values():
        ranks = {r for r, _ in ticks}
        if len(ranks) < 2:
            continue
        rank, ts = max(ticks, key=lambda rt: rt[1])
        last[rank].append(ts - min(t for _, t in ticks))
    return {
        "negotiations": total,
        "with_rank_ticks": len(by_neg),
        "ranks_seen": sorted({r for _, r, _, _ in trace.ticks}),
        "last_rank": {
            str(rank): {"times": len(lags), "lag_ms_median": _ms(statistics.median(lags)), "lag_ms_max": _ms(max(lags))}
            for rank, lags in sorted(last.items(), key=lambda kv: (-len(kv[1]), kv[0]))
        },
    }


# --- results.json ------------------------------------------------------------------------


def load_results(path: str | Path) -> dict:
    """The trainer's results file, checked for the `timeline` entry the report needs."""
    p = str(path)
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise DataError(f"{p}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{p}: cannot read it ({exc})") from None
    try:
        res = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{p}: not a results file (invalid JSON at line {exc.lineno}: {exc.msg})") from None
    if not isinstance(res, dict):
        raise DataError(f"{p}: not a results file (expected a JSON object)")
    tl = res.get("timeline")
    if not isinstance(tl, dict):
        raise DataError(f"{p}: no \"timeline\" entry (was the run recorded with `train --timeline FILE.json`?)")
    ws = tl.get("window_seconds")
    if not isinstance(ws, (int, float)) or isinstance(ws, bool) or not ws > 0:
        raise DataError(f"{p}: \"timeline\".window_seconds must be a number > 0 (got {ws!r})")
    phases = res.get("phase_timings", [])
    if not isinstance(phases, list) or not all(isinstance(e, dict) for e in phases):
        raise DataError(f"{p}: \"phase_timings\" must be a list of per-epoch objects")
    return res


# --- text -------------------------------------------------------------------------------

PHASES = (("batch_ms", "batch"), ("forward_ms", "forward"), ("backward_ms", "backward (incl. allreduce wait)"),
          ("optimizer_ms", "optimizer"), ("step_ms", "step"))


def _n(count: int, one: str, many: str | None = None) -> str:
    return f"{count} {one if count == 1 else (many or one + 's')}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _size(nbytes: int | None) -> str:
    if nbytes is None:
        return "-"
    if nbytes < 10_000:
        return f"{nbytes} B"
    if nbytes < 10_000_000:
        return f"{nbytes / 1e3:.0f} kB"
    return f"{nbytes / 1e6:.0f} MB"


def phase_lines(res: dict | None, comm: dict, png: str | None, allreduce_label: str) -> list[str]:
    """The report's tail, shared by both trace formats: the trainer's phase table for the
    recorded epoch (from --results) beside the trace's allreduce time per step, and the chart."""
    out: list[str] = []
    if res and res.get("phase_timings"):
        pt = res["phase_timings"]
        out.append("")
        out.append(f"phase times, epoch {pt.get('epoch')} ({pt.get('steps')} steps/rank; "
                   "per-step mean per rank, then min/median/max across ranks)")
        out.append(f"  {'phase':<32} {'min ms':>9} {'median ms':>10} {'max ms':>9}")
        for key, label in PHASES:
            v = pt.get(key)
            if isinstance(v, dict):
                out.append(f"  {label:<32} {v.get('min', math.nan):>9.3f} {v.get('median', math.nan):>10.3f} "
                           f"{v.get('max', math.nan):>9.3f}")
        if "allreduce_ms_per_step" in comm:
            out.append(f"  {allreduce_label:<32} {'':>9} {comm['allreduce_ms_per_step']:>10.3f}")
    elif res:
        out.append("  (no phase_timings in the results file)")
    if png:
        out.append("")
        out.append(f"chart: {png}")
    return out


def format_report(rep: dict) -> str:
    if rep.get("format") == "torch.profiler":
        return format_ddp_report(rep, _pct, _size, _n)
    out: list[str] = []
    c, comm = rep["counts"], rep["comm"]
    state = "cut short (job killed?), read up to the last whole event" if rep["truncated"] else "complete"
    out.append(f"timeline: {rep['file']}  ({rep['events']} events, {c['tensors']} tensors, "
               f"span {comm['trace_span_ms']:.1f} ms; {state})")
    others = ", ".join(f"{n} {op.lower()}" for op, n in c["ops"].items() if op != "ALLREDUCE")
    cycles = f"{c['cycles']} cycles marked" if c["cycles"] else "cycles not marked (record with --timeline-mark-cycles)"
    out.append(f"counts: {_n(c['allreduce_calls'], 'allreduce call')} ({_n(c['allreduce_tensors'], 'tensor')}) in "
               f"{_n(c['allreduce_batches'], 'fused batch', 'fused batches')}" + (f"; {others}" if others else "")
               + f"; {cycles}")
    if c["unclosed_intervals"] or c["unmatched_ends"]:
        out.append(f"        {c['unclosed_intervals']} interval(s) left open and {c['unmatched_ends']} end(s) without a "
                   "start were skipped (recording started or stopped mid-operation)")

    basis = "window" if comm["basis"] == "window" else "span"
    out.append("")
    out.append("time by activity (summed: over tensors, so fused tensors each count the same collective; "
               f"wall: union over tensors; % of {basis})")
    out.append(f"  {'activity':<32} {'count':>6} {'summed ms':>11} {'wall ms':>10} {'wall %':>7}")
    basis_ms = comm["basis_ms"]
    for a in rep["activities"]:
        name = ("  " * a["level"]) + a["name"]
        share = _pct(a["wall_ms"] / basis_ms) if basis_ms else "-"
        out.append(f"  {name:<32} {a['count']:>6} {a['sum_ms']:>11.3f} {a['wall_ms']:>10.3f} {share:>7}")
    if rep["not_recorded"]:
        out.append(f"  not in this trace: {', '.join(rep['not_recorded'])} (GPU-path activities)")

    out.append("")
    tt = rep["tensors_total"]
    out.append(f"slowest {len(rep['tensors'])} of {tt['tensors']} tensors (by negotiate + processing time, summed ms)")
    name_w = max([len("tensor")] + [len(t["name"]) for t in rep["tensors"]])
    name_w = min(name_w, 44)
    head = f"  {'tensor':<{name_w}} {'op':<10} {'calls':>5} {'size':>7} {'total':>9}"
    head += "".join(f" {CATEGORY_LABELS[k]:>10}" for k in CATEGORIES)
    out.append(head)
    for t in rep["tensors"]:
        name = t["name"] if len(t["name"]) <= name_w else "..." + t["name"][-(name_w - 3):]
        row = f"  {name:<{name_w}} {t['op']:<10} {t['calls']:>5} {_size(t['bytes']):>7} {t['total_ms']:>9.3f}"
        row += "".join(f" {t['categories_ms'][k]:>10.3f}" for k in CATEGORIES)
        out.append(row)
    label = f"all {tt['tensors']} tensors"
    row = f"  {label:<{name_w}} {'':<10} {tt['calls']:>5} {'':>7} {tt['total_ms']:>9.3f}"
    row += "".join(f" {tt['categories_ms'][k]:>10.3f}" for k in CATEGORIES)
    out.append(row)

    neg = rep["negotiation"]
    out.append("")
    if neg["last_rank"]:
        parts = [f"rank {r} {v['times']}x (lag median {v['lag_ms_median']:.3f} ms, max {v['lag_ms_max']:.3f} ms)"
                 for r, v in neg["last_rank"].items()]
        out.append(f"negotiation: rank ticks in {neg['with_rank_ticks']} of {neg['negotiations']} negotiations "
                   f"(cached responses have none); last to arrive: " + "; ".join(parts))
    else:
        out.append(f"negotiation: {neg['negotiations']} negotiations, none with ticks from several ranks "
                   "(cached responses skip them; HOROVOD_CACHE_CAPACITY=0 records them)")

    out.append("")
    out.append("communication share")
    res = rep["results"]
    if comm["basis"] == "window" and res:
        tl = res["timeline"] or {}
        first, active = tl.get("first_step"), tl.get("active_steps")
        steps = (f"steps {first}..{first + active - 1} of the job ({_n(active, 'step')})"
                 if isinstance(first, int) and isinstance(active, int) else f"{active} steps")
        out.append(f"  window: {steps}, {comm['basis_ms'] / 1000:.3f} s on rank 0 (from {res['file']})")
        if res.get("note"):
            out.append(f"  note: {res['note']}")
    else:
        out.append(f"  no --results: share of the trace span {comm['trace_span_ms']:.3f} ms (first to last event)")
    out.append(f"  allreduce wall {comm['allreduce_wall_ms']:.3f} ms = {_pct(comm['allreduce_share'])} of the {basis}"
               f"; all collectives {comm['collectives_wall_ms']:.3f} ms = {_pct(comm['collectives_share'])}")
    out.append(f"  (NEGOTIATE_ALLREDUCE wall {comm['negotiate_allreduce_wall_ms']:.3f} ms: waiting for every rank's "
               "gradient, overlapping backward)")
    if "allreduce_ms_per_step" in comm:
        out.append(f"  per step: {comm['allreduce_calls_per_step']:g} allreduce calls, "
                   f"{comm['allreduce_ms_per_step']:.3f} ms allreduce wall"
                   + (f" = {_pct(comm.get('allreduce_share_of_median_step'))} of the median step"
                      if comm.get("allreduce_share_of_median_step") is not None else ""))

    out += phase_lines(res, comm, rep.get("png"), "allreduce wall (timeline, rank 0)")
    return "\n".join(out)


# --- CLI --------------------------------------------------------------------------------


def cmd_timeline(args: argparse.Namespace) -> int:
    if args.top < 1:
        raise ConfigError(f"--top must be >= 1 (got {args.top})")
    files = args.file if isinstance(args.file, list) else [args.file]
    traces = [load_trace(f) for f in files]
    results = load_results(args.results) if args.results else None
    horovod = [t for t in traces if isinstance(t, Trace)]
    if horovod and len(traces) > 1:
        kinds = "a Horovod timeline and a torch.profiler trace" if len(horovod) < len(traces) else "several Horovod timelines"
        raise ConfigError(f"{kinds} given: pass one Horovod timeline (rank 0's describes every rank), or every "
                          "rank's torch.profiler trace of one DDP run")
    if horovod:
        report = build_report(traces[0], top=args.top, results=results, results_path=args.results or None)
    else:
        report = build_ddp_report(traces, top=args.top, results=results, results_path=args.results or None)
    if args.png:
        from hvd_stgnn.profiling.timeline_plot import plot_report

        plot_report(report, args.png)
        report["png"] = str(args.png)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
    return 0


def add_timeline_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `hvd-stgnn timeline FILE.json [FILE.json.rank1 ...] [--png OUT.png] [--results R.json] [--top K] [--json]`."""
    p = subparsers.add_parser("timeline", help="where the time goes: report on a Horovod timeline or a DDP "
                                               "torch.profiler trace (docs/PROFILING.md)")
    p.add_argument("file", nargs="+",
                   help="Horovod timeline (Chrome trace JSON; a cut-short file from a killed job is fine), or the DDP "
                        "backend's torch.profiler trace: FILE.json, plus FILE.json.rank1 ... for every rank's view")
    p.add_argument("--results", default="", help="the run's results.json: comm share of the recorded window + phase times")
    p.add_argument("--top", type=int, default=10, help="slowest tensors (DDP: collectives) to list (default: 10)")
    p.add_argument("--png", default="", help="also draw a bar chart of time per activity here")
    p.add_argument("--json", action="store_true", help="print the numbers as JSON")
    p.set_defaults(func=cmd_timeline)
    return p
