"""Parsing a Horovod timeline into a HorovodTrace (trace.py).

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

Every interval leaves the parser categorised (trace.CATEGORIES, "processing" for `<OP>`) and
under the operation it belongs to. Reading the file is trace_file.py's part.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter, defaultdict
from typing import Any

from hvd_stgnn.errors import DataError
from hvd_stgnn.profiling.torch_trace import is_torch_trace
from hvd_stgnn.profiling.trace import HorovodTrace, Interval

# Horovod's response types: the names of top-level processing intervals (NEGOTIATE_ + these
# are the negotiation intervals).
OPS = ("ALLREDUCE", "ALLGATHER", "BROADCAST", "ALLTOALL", "REDUCESCATTER", "ADASUM", "JOIN", "BARRIER", "ERROR")
NEGOTIATE = "NEGOTIATE_"
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
    if name.startswith(NEGOTIATE):
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
    return name in OPS or name.startswith(NEGOTIATE)


def activity_sort_key(name: str) -> tuple:
    return (ACTIVITY_ORDER.index(name), "") if name in ACTIVITY_ORDER else (len(ACTIVITY_ORDER), name)


def tensor_bytes(dtype: str, shape: str) -> int | None:
    size = DTYPE_BYTES.get(dtype)
    dims = re.findall(r"\d+", shape)
    if size is None or not shape.strip().startswith("["):
        return None
    return size * math.prod(int(d) for d in dims)


# --- the file's text -> events ------------------------------------------------------------

_NEXT_EVENT = re.compile(r"\}\s*,\s*\{")


def not_a_timeline(path: str, why: str) -> DataError:
    return DataError(f"{path}: not a Horovod timeline ({why})")


def events_from_body(p: str, body: str, doc: Any) -> tuple[list, bool]:
    """The events of a timeline's text (`doc`: its JSON when it parses as a whole, else None),
    and whether the file was cut short: a missing `]` and/or a truncated last event (a killed
    job) are accepted; anything else is a one-line DataError."""
    if doc is not None:
        if isinstance(doc, dict):
            if is_torch_trace(doc):
                raise not_a_timeline(p, "a torch.profiler trace (DDP): read it with load_trace or `hvd-stgnn timeline`")
            hint = "; it looks like a results file: pass it with --results" if "timeline" in doc or "epochs" in doc else ""
            raise not_a_timeline(p, f"a JSON object, expected an array of trace events{hint}")
        if not isinstance(doc, list):
            raise not_a_timeline(p, f"a JSON {type(doc).__name__}, expected an array of trace events")
        return doc, False
    if not body.startswith("["):
        if body.startswith("{") and '"traceEvents"' in body[:100_000]:
            raise DataError(f"{p}: a torch.profiler trace that is not valid JSON (cut short? torch writes the whole "
                            "file when the recording stops: record again)")
        raise not_a_timeline(p, "not JSON: expected an array of trace events starting with '['")
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
                raise not_a_timeline(p, f"unexpected text after the closing ']' at {_where(body, pos + 1)}")
            return events, False
        try:
            event, pos = decoder.raw_decode(body, pos)
        except json.JSONDecodeError as exc:
            if _NEXT_EVENT.search(body, pos) is None and body[pos] == "{":
                return events, True  # the last event is cut short
            raise not_a_timeline(p, f"invalid JSON at {_where(body, exc.pos)}: {exc.msg}") from None
        events.append(event)


def _where(text: str, pos: int) -> str:
    line = text.count("\n", 0, pos) + 1
    return f"line {line}, column {pos - text.rfind(chr(10), 0, pos)}"


# --- events -> HorovodTrace ---------------------------------------------------------------


def parse_events(events: list, path: str = "<events>", truncated: bool = False) -> HorovodTrace:
    """Match B/E pairs per pid into intervals; collect tensor names, ticks and markers; then
    give every interval its category and operation."""
    trace = HorovodTrace(path=path, events=len(events), truncated=truncated)
    stacks: dict[int, list[tuple[str, float]]] = defaultdict(list)
    seen_horovod = False
    for i, ev in enumerate(events):
        if not isinstance(ev, dict) or not isinstance(ev.get("ph"), str):
            raise not_a_timeline(path, f"element {i} is not a trace event (an object with a 'ph' field)")
        ph = ev["ph"]
        pid = ev.get("pid")
        ts = ev.get("ts")
        if ts is not None:
            if not isinstance(ts, (int, float)) or isinstance(ts, bool):
                raise not_a_timeline(path, f"element {i} has a non-numeric 'ts' {ts!r}")
            ts = float(ts)
            trace.see(ts)
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
            trace.intervals.append(Interval(name, start, ts, tensor=pid, parent=parent, rank=0))
            if name in OPS and "dtype" in args:
                trace.dtypes[pid] = (str(args.get("dtype")), str(args.get("shape", "")))
        elif ph == "X":
            name = str(ev.get("name", ""))
            dur = ev.get("dur")
            dur = float(dur) if isinstance(dur, (int, float)) and not isinstance(dur, bool) else 0.0
            if stack and stack[-1][0].startswith(NEGOTIATE) and name.isdigit():
                trace.ticks.append((pid, int(name), ts, stack[-1][1]))
            elif dur > 0:
                parent = stack[-1][0] if stack else None
                trace.intervals.append(Interval(name, ts, ts + dur, tensor=pid, parent=parent, rank=0))
    trace.unclosed = sum(len(s) for s in stacks.values())
    if not seen_horovod:
        raise not_a_timeline(path, "a trace, but with no Horovod header (pid 0 start time) and no NEGOTIATE_*/ALLREDUCE/... "
                                   "intervals")
    _categorise(trace)
    return trace


def _categorise(trace: HorovodTrace) -> None:
    """Each tensor's operation, and each interval's category and operation: NEGOTIATE_<OP>
    and <OP> name theirs, an activity belongs to the <OP> around it (else to its tensor's)."""
    by_pid: dict[int, list[Interval]] = defaultdict(list)
    for iv in trace.intervals:
        by_pid[iv.tensor].append(iv)
    for pid in sorted(set(by_pid) | set(trace.tensors)):
        trace.ops[pid] = _op_of(trace.tensors.get(pid, ""), by_pid.get(pid, []))
    for iv in trace.intervals:
        iv.category = "processing" if iv.name in OPS else category(iv.name)
        if iv.name.startswith(NEGOTIATE):
            iv.op = iv.name[len(NEGOTIATE):]
        elif iv.name in OPS:
            iv.op = iv.name
        else:
            iv.op = iv.parent if iv.parent in OPS else trace.ops[iv.tensor]


def _op_of(tensor: str, intervals: list[Interval]) -> str:
    """The tensor's operation: the most frequent <OP> interval, else NEGOTIATE_<OP>, else the
    prefix of its name (allreduce.x -> ALLREDUCE)."""
    for names in ([iv.name for iv in intervals if iv.name in OPS],
                  [iv.name[len(NEGOTIATE):] for iv in intervals if iv.name.startswith(NEGOTIATE)]):
        if names:
            return Counter(names).most_common(1)[0][0]
    prefix = tensor.split(".", 1)[0].upper()
    return prefix if prefix in OPS else "?"
