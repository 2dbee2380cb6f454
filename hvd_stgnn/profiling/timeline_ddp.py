"""`hvd-stgnn timeline` on a torch.profiler trace: the DDP backend's window (docs/PROFILING.md).

`train --backend ddp --timeline FILE.json --timeline-steps W:A` records the window with
`torch.profiler` and exports one Chrome trace per rank (rank 0: FILE.json, rank r:
FILE.json.rank{r}). What this module relies on, as torch 2.x writes it (checked on 2.13, CPU,
gloo):

- the file is one JSON object: `traceEvents` (the events) next to `schemaVersion`,
  `deviceProperties`, `distributedInfo` (`{"backend": "gloo", "rank": 0, "world_size": 2, ...}`),
  `baseTimeNanoseconds` (wall-clock epoch of `ts` 0) and `traceName`;
- complete events `{"ph": "X", "cat": ..., "name": ..., "pid": P, "tid": T, "ts": µs, "dur": µs}`:
  `cpu_op` (ATen and c10d operators, autograd's `autograd::engine::evaluate_function: XBackward0`,
  DDP's `torch::distributed::reducer::mul_out`), `user_annotation` (record_function ranges:
  `DistributedDataParallel.forward`, `Optimizer.step#Adam.step`, `Optimizer.zero_grad#Adam.zero_grad`,
  `ProfilerStep#N` with a schedule, and the collectives `gloo:all_reduce` / `gloo:broadcast` /
  `nccl:all_reduce`), `kernel` on GPUs (`ncclDevKernel_AllReduce_Sum_f32_RING_LL(...)`),
  and one `{"cat": "Trace", "name": "PyTorch Profiler (0)"}` spanning the recording;
- with gloo the collective runs on a `pt_gloo_runloop` worker thread: `gloo:all_reduce` there
  lasts from the start of the collective (waiting for the peers included) to its end; the
  training thread only shows the launch (`c10d::allreduce_`, inside the autograd hook that
  filled the bucket) and is idle while it waits for the last buckets at the end of backward;
- no shapes unless recorded with `record_shapes=True` (then the collective carries
  `Input Dims` / `Input type`); NCCL's `record_param_comms` carries `In msg nelems` / `dtype`.

DDP has no per-tensor operations: it reduces *buckets* of gradients, launched in bucket order
as they fill during backward. Rows are named by bucket index within a step (`bucket 0` is the
first launched: the last layers' gradients).
"""

from __future__ import annotations

import bisect
import math
import re
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hvd_stgnn.errors import DataError

TORCH_KEYS = ("schemaVersion", "deviceProperties", "distributedInfo", "baseTimeNanoseconds", "traceName")
TORCH_CATS = frozenset({
    "cpu_op", "user_annotation", "gpu_user_annotation", "kernel", "python_function", "cuda_runtime",
    "cuda_driver", "gpu_memcpy", "gpu_memset", "Trace", "fwdbwd", "ac2g", "cpu_instant_event",
})
COLLECTIVE = re.compile(r"^(gloo|nccl|mpi|ucc|xccl):([A-Za-z_]+)$")
NCCL_KERNEL = re.compile(r"^nccl(?:Dev)?Kernel_([A-Za-z]+)")
AUTOGRAD = "autograd::engine::evaluate_function"
DDP_FORWARD = "DistributedDataParallel.forward"
OPT_STEP = "Optimizer.step#"
PROFILER_STEP = "ProfilerStep#"
BUCKET_FILL = "torch::distributed::reducer::mul_out"
ENQUEUE = "c10d::"
# Horovod activities without a DDP counterpart (MEMCPY_IN_FUSION_BUFFER maps to the reducer's
# bucket fill when the trace has it).
NOT_IN_DDP = ("NEGOTIATE_ALLREDUCE", "WAIT_FOR_DATA", "WAIT_FOR_OTHER_TENSOR_DATA", "QUEUE", "MEMCPY_OUT_FUSION_BUFFER")
NA = "n/a (DDP)"
TYPE_BYTES = {
    "float": 4, "double": 8, "c10::half": 2, "c10::bfloat16": 2, "half": 2, "bfloat16": 2, "int": 4,
    "long int": 8, "long": 8, "short int": 2, "short": 2, "signed char": 1, "unsigned char": 1, "bool": 1,
    "float32": 4, "float64": 8, "float16": 2, "int32": 4, "int64": 8, "int8": 1, "uint8": 1,
}


def is_torch_trace(doc: Any) -> bool:
    """A torch.profiler export: an object with a traceEvents list and torch's header keys
    (or, failing those, torch's event categories)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("traceEvents"), list):
        return False
    if any(k in doc for k in TORCH_KEYS):
        return True
    return any(isinstance(e, dict) and e.get("cat") in TORCH_CATS for e in doc["traceEvents"][:2000])


def op_of(name: str) -> str:
    """`all_reduce` / `allreduce` / `_reduce_scatter_base` / `AllReduce` -> ALLREDUCE, REDUCESCATTER, ..."""
    key = re.sub(r"[^a-z]", "", name.lower())
    for suffix in ("intotensor", "coalesced", "base", "single"):
        if key.endswith(suffix) and len(key) > len(suffix):
            key = key[: -len(suffix)]
    return key.upper()


def _num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _nbytes_from_args(args: dict) -> int | None:
    dims, types = args.get("Input Dims"), args.get("Input type")
    if isinstance(dims, list) and isinstance(types, list) and dims and types:
        total = 0
        for d, t in zip(dims, types):
            size = TYPE_BYTES.get(str(t).lower())
            if size is None or not isinstance(d, list) or not all(isinstance(n, int) for n in d):
                return None
            total += size * math.prod(d)
        return total
    n, dtype = args.get("In msg nelems"), args.get("dtype")
    size = TYPE_BYTES.get(str(dtype).lower()) if dtype is not None else None
    if isinstance(n, int) and size:
        return n * size
    return None


# --- parsing ----------------------------------------------------------------------------


@dataclass
class Call:
    """One collective on one rank (µs on the trace's clock)."""

    op: str  # ALLREDUCE, BROADCAST, ...
    name: str  # gloo:all_reduce, ncclDevKernel_AllReduce...
    thread: tuple
    start: float
    end: float  # the recorded end, clamped (see TorchTrace.clamped)
    recorded_end: float
    nbytes: int | None = None
    step: int | None = None
    phase: str = "other"  # forward (DDP's buffer broadcast), backward (gradient buckets), other
    ordinal: int = 0  # order among the calls of the same step, op and phase
    row: str = ""
    fill_us: float | None = None  # reducer::mul_out into this bucket (the memcpy-in analogue)
    wait_us: float | None = None  # waiting for the last rank to enter (needs every rank's trace)
    blocked_us: float = 0.0  # training thread idle, backward done, this call still running
    clamped: bool = False  # its recorded end was cut (see parse_torch_trace)

    @property
    def dur(self) -> float:
        return self.end - self.start

    @property
    def key(self) -> tuple:
        return (self.step, self.op, self.phase, self.ordinal)


@dataclass
class StepInfo:
    index: int
    span_us: float | None = None
    forward_us: float = 0.0
    backward_start: float | None = None
    backward_end: float | None = None
    finalize_end: float | None = None  # DDP's finalize done: every bucket reduced and unpacked
    idle: list[tuple[float, float]] = field(default_factory=list)  # training thread idle in finalize
    blocked_us: float | None = None
    optimizer_us: float = 0.0

    @property
    def backward_us(self) -> float | None:
        if self.backward_start is None or self.backward_end is None:
            return None
        return self.backward_end - self.backward_start


@dataclass
class TorchTrace:
    path: str
    events: int
    rank: int | None = None
    world_size: int | None = None
    pg_backend: str | None = None
    base_us: float = 0.0  # add to ts for wall-clock µs since the epoch
    main_thread: tuple | None = None
    profiler_span: tuple[float, float] | None = None
    first_ts: float | None = None
    last_ts: float | None = None
    calls: list[Call] = field(default_factory=list)
    steps: list[StepInfo] = field(default_factory=list)
    step_mode: str = "none"  # profiler_step, optimizer, forward, none
    partial_calls: int = 0  # after the last optimizer step (a step cut by the end of recording)
    source: str = "cpu"  # cpu: collective threads (gloo); gpu: NCCL kernels
    clamped: int = 0
    enqueues: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # c10d:: op -> intervals
    fills: list[tuple[float, float]] = field(default_factory=list)

    @property
    def truncated(self) -> bool:
        return False


def parse_torch_trace(doc: dict, path: str = "<trace>") -> TorchTrace:
    events = doc.get("traceEvents")
    if not isinstance(events, list):
        raise DataError(f"{path}: not a torch.profiler trace (no traceEvents list)")
    tr = TorchTrace(path=path, events=len(events))
    info = doc.get("distributedInfo") if isinstance(doc.get("distributedInfo"), dict) else {}
    tr.rank = info.get("rank") if isinstance(info.get("rank"), int) else None
    tr.world_size = info.get("world_size") if isinstance(info.get("world_size"), int) else None
    tr.pg_backend = str(info["backend"]) if info.get("backend") else None
    base = doc.get("baseTimeNanoseconds")
    tr.base_us = float(base) / 1000.0 if _num(base) else 0.0

    xs: list[dict] = []
    for i, ev in enumerate(events):
        if not isinstance(ev, dict) or not isinstance(ev.get("ph"), str):
            raise DataError(f"{path}: not a torch.profiler trace (traceEvents[{i}] is not a trace event)")
        if ev["ph"] != "X":
            continue
        ts, dur = ev.get("ts"), ev.get("dur")
        if not _num(ts):
            raise DataError(f"{path}: not a torch.profiler trace (traceEvents[{i}] has a non-numeric 'ts' {ts!r})")
        if not _num(dur) or dur < 0:
            continue
        xs.append(ev)
        end = ts + dur
        tr.first_ts = ts if tr.first_ts is None else min(tr.first_ts, ts)
        tr.last_ts = end if tr.last_ts is None else max(tr.last_ts, end)
        if ev.get("cat") == "Trace" and str(ev.get("name", "")).startswith("PyTorch Profiler"):
            tr.profiler_span = (float(ts), float(end))

    def thread(ev: dict) -> tuple:
        return (ev.get("pid"), ev.get("tid"))

    def named(prefix: str) -> list[dict]:
        return [e for e in xs if str(e.get("name", "")).startswith(prefix)]

    # The training thread: where DDP's forward runs (else where autograd runs, else the busiest).
    for prefix in (DDP_FORWARD, AUTOGRAD):
        counts = Counter(thread(e) for e in named(prefix))
        if counts:
            tr.main_thread = counts.most_common(1)[0][0]
            break
    else:
        counts = Counter(thread(e) for e in xs if e.get("cat") == "cpu_op")
        tr.main_thread = counts.most_common(1)[0][0] if counts else None
    main = sorted((e for e in xs if thread(e) == tr.main_thread and e.get("cat") != "Trace"),
                  key=lambda e: (e["ts"], -e["dur"]))
    top: list[dict] = []  # the training thread's outermost operators (not ProfilerStep#N, Python frames)
    for e in main:
        if e.get("cat") == "cpu_op" and (not top or e["ts"] >= top[-1]["ts"] + top[-1]["dur"]):
            top.append(e)
    top_starts = [e["ts"] for e in top]

    def spans(prefix: str, evs: list[dict] = main) -> list[tuple[float, float]]:
        return sorted((float(e["ts"]), float(e["ts"] + e["dur"])) for e in evs if str(e.get("name", "")).startswith(prefix))

    forward, optimizer, prof_steps = spans(DDP_FORWARD), spans(OPT_STEP), spans(PROFILER_STEP, xs)

    # Steps: ProfilerStep#N ranges (with a schedule), else up to each optimizer step's end, else
    # from each forward to the next.
    n_steps = 0
    if prof_steps:
        tr.step_mode, n_steps = "profiler_step", len(prof_steps)
        starts = [s for s, _ in prof_steps]

        def step_of(t: float) -> int | None:
            i = bisect.bisect_right(starts, t) - 1
            return i if i >= 0 else None
    elif optimizer:
        tr.step_mode, n_steps = "optimizer", len(optimizer)
        ends = [e for _, e in optimizer]

        def step_of(t: float) -> int | None:
            return bisect.bisect_left(ends, t)  # == n_steps: after the last optimizer step
    elif forward:
        tr.step_mode, n_steps = "forward", len(forward)
        starts = [s for s, _ in forward]

        def step_of(t: float) -> int | None:
            i = bisect.bisect_right(starts, t) - 1
            return i if i >= 0 else None
    else:
        def step_of(t: float) -> int | None:
            return None
    tr.steps = [StepInfo(i) for i in range(n_steps)]
    for i, st in enumerate(tr.steps):
        if tr.step_mode == "profiler_step":
            st.span_us = prof_steps[i][1] - prof_steps[i][0]
        elif tr.step_mode == "optimizer" and i > 0:
            st.span_us = optimizer[i][1] - optimizer[i - 1][1]
        elif tr.step_mode == "forward" and i + 1 < n_steps:
            st.span_us = forward[i + 1][0] - forward[i][0]

    def in_steps(s: int | None) -> bool:
        return s is not None and 0 <= s < n_steps

    for s, e in forward:
        if in_steps(step_of(s)):
            tr.steps[step_of(s)].forward_us += e - s
    for s, e in optimizer:
        if in_steps(step_of(s)):
            tr.steps[step_of(s)].optimizer_us += e - s

    # Collectives: NCCL kernels on the GPU when recorded, else the CPU-side collective ranges.
    kernels = [e for e in xs if e.get("cat") == "kernel" and NCCL_KERNEL.match(str(e.get("name", "")))]
    if kernels:
        tr.source, coll = "gpu", kernels
    else:
        coll = [e for e in xs if e.get("cat") != "cpu_op" and COLLECTIVE.match(str(e.get("name", "")))]
    comms = [e for e in xs if e.get("name") == "record_param_comms" and isinstance(e.get("args"), dict)]
    sizes: dict[str, list[int | None]] = defaultdict(list)
    for e in sorted(comms, key=lambda e: e["ts"]):
        sizes[op_of(str(e["args"].get("Collective name", "")))].append(_nbytes_from_args(e["args"]))
    span_end = tr.profiler_span[1] if tr.profiler_span else math.inf
    for e in sorted(coll, key=lambda e: e["ts"]):
        name = str(e["name"])
        m = NCCL_KERNEL.match(name) if tr.source == "gpu" else COLLECTIVE.match(name)
        op = op_of(m.group(1) if tr.source == "gpu" else m.group(2))
        args = e.get("args") if isinstance(e.get("args"), dict) else {}
        start, end = float(e["ts"]), float(e["ts"] + e["dur"])
        call = Call(op, name, thread(e), start, min(end, max(start, span_end)), end, _nbytes_from_args(args))
        call.clamped = call.end < end
        tr.calls.append(call)
    by_op: dict[str, list[Call]] = defaultdict(list)
    for c in tr.calls:
        by_op[c.op].append(c)
    for op, calls in by_op.items():  # record_param_comms sizes, when there is one per call
        if len(sizes.get(op, [])) == len(calls):
            for c, nb in zip(calls, sizes[op]):
                c.nbytes = c.nbytes if c.nbytes is not None else nb

    for name in sorted({str(e.get("name")) for e in main if str(e.get("name", "")).startswith(ENQUEUE)}):
        tr.enqueues[name] = spans(name)
    tr.fills = spans(BUCKET_FILL)

    # Backward per step on the training thread, then DDP's finalize: for each bucket in order,
    # wait for its allreduce, then point the gradients at the result (one top-level
    # `aten::as_strided` view per parameter). The training thread's idle time from the end of
    # backward to the last of those views is the communication that backward did not hide.
    grads = defaultdict(list)
    for s, e in spans(AUTOGRAD):
        if in_steps(step_of(s)):
            grads[step_of(s)].append((s, e))
    for i, ivs in grads.items():
        st = tr.steps[i]
        st.backward_start, st.backward_end = min(s for s, _ in ivs), max(e for _, e in ivs)
        j = k = bisect.bisect_left(top_starts, st.backward_end)
        while k < len(top) and top[k].get("name") == "aten::as_strided":
            k += 1
        if k > j:
            st.finalize_end = float(top[k - 1]["ts"] + top[k - 1]["dur"])
        elif j < len(top):
            st.finalize_end = float(top[j]["ts"])  # no views recorded: the first event after the wait
        else:
            st.finalize_end = tr.profiler_span[1] if tr.profiler_span else None
        if st.finalize_end is None:
            continue
        cursor = st.backward_end
        for e in top[j:k]:
            if e["ts"] > cursor:
                st.idle.append((cursor, float(e["ts"])))
            cursor = max(cursor, float(e["ts"] + e["dur"]))
        if st.finalize_end > cursor:
            st.idle.append((cursor, st.finalize_end))

    fwd_starts = [s for s, _ in forward]
    for c in tr.calls:
        c.step = step_of(c.start)
        k = bisect.bisect_right(fwd_starts, c.start) - 1
        st = tr.steps[c.step] if in_steps(c.step) else None
        if k >= 0 and c.start <= forward[k][1]:
            c.phase = "forward"
        elif st and st.backward_start is not None and st.backward_start <= c.start and (
                st.finalize_end is None or c.start < st.finalize_end):
            c.phase = "backward"
        if c.step is not None and c.step >= n_steps:
            tr.partial_calls += 1
    counters: Counter = Counter()
    for c in tr.calls:
        grp = (c.step, c.op, c.phase)
        c.ordinal = counters[grp]
        counters[grp] += 1
        if c.step is None:
            c.row = f"{c.op.lower()} {c.ordinal}"
        elif c.phase == "backward" and c.op == "ALLREDUCE":
            c.row = f"bucket {c.ordinal}"
        elif c.phase == "forward" and c.op == "BROADCAST":
            c.row = f"broadcast {c.ordinal} (forward: buffers)"
        else:
            c.row = f"{c.op.lower()} {c.ordinal}" + (f" ({c.phase})" if c.phase != "other" else "")

    # gloo: DDP's backward returns only once every bucket is reduced, so the end of its finalize
    # bounds the collectives backward launched (a worker thread descheduled before it closed its
    # range would otherwise look longer); `blocked` is the finalize's idle time while they ran.
    if tr.source == "cpu":
        for st in tr.steps:
            if st.backward_end is None or st.finalize_end is None:
                continue
            mine = [c for c in tr.calls if c.step == st.index and c.phase == "backward"]
            for c in mine:
                if c.end > st.finalize_end:
                    c.end, c.clamped = max(c.start, st.finalize_end), True
                c.blocked_us = sum(_overlap(gap, (c.start, c.end)) for gap in st.idle)
            st.blocked_us = sum(_overlap(gap, span) for gap in st.idle
                                for span in merge_spans((c.start, c.end) for c in mine))

    tr.clamped = sum(c.clamped for c in tr.calls)

    # The reducer's fill of each bucket (gradient / world size into the bucket), before its launch.
    launches = defaultdict(list)
    for s, _ in tr.enqueues.get("c10d::allreduce_", []):
        if in_steps(step_of(s)):
            launches[step_of(s)].append(s)
    buckets = {(c.step, c.ordinal): c for c in tr.calls if c.phase == "backward" and c.op == "ALLREDUCE"}
    for s, e in tr.fills:
        i = step_of(s)
        if not in_steps(i):
            continue
        j = bisect.bisect_left(launches[i], s)
        c = buckets.get((i, j))
        if c is not None:
            c.fill_us = (c.fill_us or 0.0) + (e - s)
    return tr


# --- several ranks ----------------------------------------------------------------------


def align_ranks(traces: list[TorchTrace]) -> dict:
    """Match every collective across the ranks' traces (same step, op, phase and order) and
    set each call's wait: how long it ran before the last rank entered it (wall clock:
    baseTimeNanoseconds + ts, so the ranks' clocks must agree: one node, or NTP/PTP)."""
    by_key: dict[tuple, list[tuple[int, Call, float]]] = defaultdict(list)
    for r, tr in enumerate(traces):
        for c in tr.calls:
            by_key[c.key].append((r, c, tr.base_us + c.start))
    lags: dict[int, list[float]] = defaultdict(list)
    matched = 0
    for entries in by_key.values():
        if len({r for r, _, _ in entries}) < 2:
            continue
        matched += 1
        last = max(t for _, _, t in entries)
        first = min(t for _, _, t in entries)
        for _, c, t in entries:
            c.wait_us = min(max(0.0, last - t), c.dur)
        r_last = max(entries, key=lambda x: x[2])[0]
        lags[r_last].append(last - first)
    return {"matched_calls": matched, "last": lags}


# --- arithmetic -------------------------------------------------------------------------


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> float:
    return max(0.0, min(a[1], b[1]) - max(a[0], b[0]))


def merge_spans(spans) -> list[tuple[float, float]]:
    merged: list[list[float]] = []
    for a, b in sorted(spans):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        elif b >= a:
            merged.append([a, b])
    return [(a, b) for a, b in merged]


def union_length(spans) -> float:
    total, end = 0.0, -math.inf
    for a, b in sorted(spans):
        if b <= a:
            continue
        if a > end:
            total += b - a
            end = b
        elif b > end:
            total += b - end
            end = b
    return total


def _ms(us: float | None) -> float | None:
    return None if us is None else round(us / 1000.0, 3)


def _median(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def _stat(xs: list[float]) -> dict | None:
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    return {"min": _ms(min(xs)), "median": _ms(statistics.median(xs)), "max": _ms(max(xs))}


def _rank_label(tr: TorchTrace, i: int) -> int:
    return tr.rank if tr.rank is not None else i


def build_ddp_report(traces: list[TorchTrace], top: int = 10, results: dict | None = None,
                     results_path: str | None = None) -> dict:
    """The DDP report as a JSON-ready dict (times in ms), in the layout of `build_report`."""
    traces = sorted(traces, key=lambda t: (t.rank is None, t.rank if t.rank is not None else 0))
    ranks = [_rank_label(t, i) for i, t in enumerate(traces)]
    if len(set(ranks)) != len(ranks):
        dup = next(r for r in ranks if ranks.count(r) > 1)
        raise DataError(f"{traces[ranks.index(dup)].path}: rank {dup} is given twice (one trace per rank)")
    aligned = align_ranks(traces) if len(traces) > 1 else None
    tr = traces[0]
    n_steps = len(tr.steps)
    calls = tr.calls
    has_fill = bool(tr.fills)

    # Per row (bucket / collective slot), slowest first.
    rows: dict[str, list[Call]] = defaultdict(list)
    for c in calls:
        rows[c.row].append(c)
    table = []
    for name, cs in rows.items():
        waits = [c.wait_us for c in cs]
        wait = sum(waits) if all(w is not None for w in waits) else None
        fill = sum(c.fill_us or 0.0 for c in cs) if has_fill and cs[0].op == "ALLREDUCE" and cs[0].phase == "backward" else None
        dur = sum(c.dur for c in cs)
        table.append({
            "name": name,
            "op": cs[0].op,
            "collective": cs[0].name,
            "calls": len(cs),
            "bytes": cs[-1].nbytes,
            "total_ms": _ms(dur + (fill or 0.0)),
            "categories_ms": {"negotiate": None, "wait": _ms(wait), "memcpy_in": _ms(fill),
                              "collective": _ms(dur - (wait or 0.0)), "memcpy_out": None, "other": None},
            "blocked_ms": _ms(sum(c.blocked_us for c in cs)) if tr.source == "cpu" else None,
            "mean_ms": _ms(dur / len(cs)),
            "max_ms": _ms(max(c.dur for c in cs)),
        })
    table.sort(key=lambda t: (-t["total_ms"], t["name"]))

    def total_of(key: str) -> float | None:
        vals = [t["categories_ms"][key] for t in table]
        return None if not vals or any(v is None for v in vals) else round(sum(vals), 3)

    tensors_total = {
        "tensors": len(table),
        "calls": len(calls),
        "total_ms": round(sum(t["total_ms"] for t in table), 3),
        "categories_ms": {
            "negotiate": None,
            "wait": total_of("wait"),
            "memcpy_in": round(sum(t["categories_ms"]["memcpy_in"] or 0.0 for t in table), 3) if has_fill else None,
            "collective": round(sum(t["categories_ms"]["collective"] for t in table), 3),
            "memcpy_out": None,
            "other": None,
        },
        "blocked_ms": round(sum(t["blocked_ms"] or 0.0 for t in table), 3) if tr.source == "cpu" else None,
    }

    # Per activity: each collective, with its launches / bucket fills / blocked time below it.
    activities = []
    by_name: dict[str, list[Call]] = defaultdict(list)
    for c in calls:
        by_name[c.name if tr.source == "cpu" else f"nccl kernel: {c.op.lower()}"].append(c)
    order = sorted(by_name, key=lambda n: (by_name[n][0].op != "ALLREDUCE", by_name[n][0].op, n))

    def act(op, name, level, cat, ivs):
        return {"op": op, "name": name, "level": level, "category": cat, "count": len(ivs),
                "sum_ms": _ms(sum(e - s for s, e in ivs)), "wall_ms": _ms(union_length(ivs))}

    for name in order:
        cs = by_name[name]
        op = cs[0].op
        activities.append(act(op, name, 0, "collective", [(c.start, c.end) for c in cs]))
        if op == "ALLREDUCE" and has_fill:
            activities.append(act(op, BUCKET_FILL, 1, "memcpy_in", tr.fills))
        for ename, ivs in tr.enqueues.items():
            if op_of(ename.split("::", 1)[1]) == op:
                activities.append(act(op, ename, 1, "launch", ivs))
        if tr.source == "cpu" and any(c.phase == "backward" for c in cs):
            mine = [c for c in cs if c.phase == "backward" and c.blocked_us > 0]
            bl = [(max(a, c.start), min(b, c.end)) for st in tr.steps for a, b in st.idle
                  for c in mine if c.step == st.index and _overlap((a, b), (c.start, c.end)) > 0]
            activities.append({**act(op, "blocked after backward", 1, "blocked", bl), "count": len(mine),
                               "sum_ms": _ms(sum(c.blocked_us for c in mine))})
    not_applicable = list(NOT_IN_DDP) if has_fill else ["NEGOTIATE_ALLREDUCE", "WAIT_FOR_DATA",
                                                         "WAIT_FOR_OTHER_TENSOR_DATA", "QUEUE",
                                                         "MEMCPY_IN_FUSION_BUFFER", "MEMCPY_OUT_FUSION_BUFFER"]

    # Counts.
    ops = Counter(c.op for c in calls)
    per_step = Counter(c.step for c in calls if c.op == "ALLREDUCE" and c.phase == "backward")
    buckets = sorted({per_step[i] for i in range(n_steps)}) if n_steps else []
    counts = {
        "allreduce_calls": ops.get("ALLREDUCE", 0),
        "ops": dict(sorted(ops.items(), key=lambda kv: (kv[0] != "ALLREDUCE", kv[0]))),
        "steps": n_steps,
        "step_mode": tr.step_mode,
        "buckets_per_step": buckets,
        "forward_broadcasts": sum(1 for c in calls if c.phase == "forward" and c.op == "BROADCAST"),
        "partial_step_calls": tr.partial_calls,
        "tensors": len(table),
        "clamped_ends": tr.clamped,
    }

    # Communication share: of the profiler's own span (the recording on this rank's clock).
    span_us = (tr.last_ts - tr.first_ts) if tr.first_ts is not None else 0.0
    prof_us = (tr.profiler_span[1] - tr.profiler_span[0]) if tr.profiler_span else None
    window = (results or {}).get("timeline")
    window_us = float(window["window_seconds"]) * 1e6 if window else None
    if prof_us:
        basis, basis_us = "profiler_span", prof_us
    elif window_us:
        basis, basis_us = "window", window_us
    else:
        basis, basis_us = "trace_span", span_us
    allreduce = [(c.start, c.end) for c in calls if c.op == "ALLREDUCE"]
    allreduce_wall = union_length(allreduce)
    all_wall = union_length((c.start, c.end) for c in calls)
    blocked = [st.blocked_us for st in tr.steps if st.blocked_us is not None]
    comm: dict[str, Any] = {
        "basis": basis,
        "basis_ms": _ms(basis_us),
        "trace_span_ms": _ms(span_us),
        "profiler_span_ms": _ms(prof_us),
        "results_window_ms": _ms(window_us),
        "allreduce_wall_ms": _ms(allreduce_wall),
        "allreduce_share": (allreduce_wall / basis_us) if basis_us > 0 else None,
        "collectives_wall_ms": _ms(all_wall),
        "collectives_share": (all_wall / basis_us) if basis_us > 0 else None,
        "negotiate_allreduce_wall_ms": None,
        "blocked_wall_ms": _ms(sum(blocked)) if blocked else None,
        "blocked_share": (sum(blocked) / basis_us) if blocked and basis_us > 0 else None,
    }
    if n_steps:
        in_steps = [c for c in calls if c.op == "ALLREDUCE" and c.step is not None and c.step < n_steps]
        comm["allreduce_calls_per_step"] = round(len(in_steps) / n_steps, 3)
        comm["allreduce_ms_per_step"] = _ms(union_length((c.start, c.end) for c in in_steps) / n_steps)
        comm["blocked_ms_per_step"] = _ms(sum(blocked) / n_steps) if blocked else None
        comm["recorded_step_ms"] = _ms(basis_us / n_steps) if basis != "trace_span" else None
    notes = []
    if tr.clamped:
        notes.append(f"{tr.clamped} collective end(s) recorded after the training thread had already gone on (or "
                     "after the recording stopped) were cut there: the collective's thread was descheduled "
                     "before it closed its range")
    if tr.partial_calls:
        notes.append(f"{tr.partial_calls} collective(s) after the last optimizer step (a step cut by the end of "
                     "the recording) are listed but not counted per step")
    if prof_us and window_us and abs(window_us - prof_us) > 0.2 * prof_us:
        notes.append(f"results window_seconds ({window_us / 1000:.1f} ms) differs from the profiler's span "
                     f"({prof_us / 1000:.1f} ms); shares use the profiler's span (the trainer measures the window "
                     "after stop_timeline, which for DDP includes the profiler's teardown and the trace export)")
    if window and isinstance(window.get("active_steps"), int) and n_steps and window["active_steps"] != n_steps:
        notes.append(f"the results say {window['active_steps']} recorded steps, the trace holds {n_steps}")
    if tr.pg_backend == "nccl" and tr.source == "cpu":
        notes.append("NCCL without CUDA activity in the trace: the nccl:* ranges are kernel launches, not "
                     "the collectives (record with ProfilerActivity.CUDA)")
    if len(traces) == 1 and tr.world_size and tr.world_size > 1:
        base = _rank0_path(tr.path)
        found = [f for f in [base] + [f"{base}.rank{r}" for r in range(1, tr.world_size)] if f != tr.path and Path(f).exists()]
        hint = f" (found {len(found)} next to it: {Path(found[0]).name}{', ...' if len(found) > 1 else ''})" if found else ""
        notes.append(f"one of {tr.world_size} ranks' traces: pass them all (FILE.json FILE.json.rank1 ...) to see "
                     f"how long each rank waited for the others{hint}")

    # Phases from the trace, per step (medians), on each rank.
    def phases(t: TorchTrace) -> dict:
        done = [st for st in t.steps]
        return {
            "steps": len(done),
            "forward_ms": _ms(_median([st.forward_us for st in done])),
            "backward_ms": _ms(_median([st.backward_us for st in done])),
            "blocked_ms": _ms(_median([st.blocked_us for st in done])),
            "optimizer_ms": _ms(_median([st.optimizer_us for st in done])),
            "step_ms": _ms(_median([st.span_us for st in done])),
        }

    per_rank = None
    if aligned is not None:
        per_rank = []
        for r, t in zip(ranks, traces):
            n = len(t.steps) or 1
            coll = [sum(c.dur for c in t.calls if c.step == st.index) for st in t.steps]
            waits = [c.wait_us for c in t.calls]
            per_rank.append({
                "rank": r,
                "file": t.path,
                "calls": len(t.calls),
                "collective_ms": _ms(sum(c.dur for c in t.calls)),
                "collective_ms_per_step": _ms(sum(c.dur for c in t.calls if c.step is not None and c.step < len(t.steps)) / n),
                "wait_ms": _ms(sum(w for w in waits if w is not None)),
                "blocked_ms": _ms(sum(st.blocked_us or 0.0 for st in t.steps)) if t.source == "cpu" else None,
                "collective_step_ms": [_ms(x) for x in coll],
                "clamped_ends": t.clamped,
                "phases": phases(t),
            })
        last = aligned["last"]
        ranks_summary = {
            "matched_calls": aligned["matched_calls"],
            "collective_ms_per_step": _stat([p["collective_ms_per_step"] * 1000 for p in per_rank]),
            "wait_ms": _stat([p["wait_ms"] * 1000 for p in per_rank]),
            "last_rank": {
                str(ranks[r]): {"times": len(lags), "lag_ms_median": _ms(statistics.median(lags)), "lag_ms_max": _ms(max(lags))}
                for r, lags in sorted(last.items(), key=lambda kv: (-len(kv[1]), kv[0]))
            },
        }
    else:
        ranks_summary = None

    report: dict[str, Any] = {
        "format": "torch.profiler",
        "unit": "collective",
        "file": tr.path,
        "files": [t.path for t in traces],
        "rank": tr.rank,
        "world_size": tr.world_size,
        "pg_backend": tr.pg_backend,
        "source": tr.source,
        "events": tr.events,
        "truncated": False,
        "counts": counts,
        "activities": activities,
        "not_applicable": not_applicable,
        "not_recorded": [],
        "top": top,
        "tensors": table[:top],
        "tensors_total": tensors_total,
        "negotiation": None,
        "comm": comm,
        "phases": phases(tr),
        "ranks": per_rank,
        "ranks_summary": ranks_summary,
        "notes": notes,
        "results": None,
    }
    if results is not None:
        phases_res = results.get("phase_timings") or []
        last_epoch = phases_res[-1] if phases_res else None
        note = None
        if window and window.get("file") and Path(str(window["file"])).name != Path(_rank0_path(tr.path)).name:
            note = f"the results describe timeline {window['file']}, not {tr.path}"
        steps = {"first_step": window.get("first_step"), "active_steps": window.get("active_steps"),
                 "file": window.get("file")} if window else None
        report["results"] = {"file": results_path, "timeline": steps, "phase_timings": last_epoch, "note": note}
        # No share of the epoch's median step here (Horovod's report has one): the recorded
        # steps, every operator profiled, are not the epoch's steps; both step times are shown.
        if last_epoch and isinstance(last_epoch.get("step_ms"), dict):
            comm["results_median_step_ms"] = last_epoch["step_ms"].get("median")
    return report


def _rank0_path(path: str) -> str:
    return re.sub(r"\.rank\d+$", "", path)


# --- text -------------------------------------------------------------------------------


def _cell(v: float | None, width: int = 10, na: str = NA) -> str:
    return f"{na:>{width}}" if v is None else f"{v:>{width}.3f}"


def format_ddp_report(rep: dict, pct, size, n) -> str:
    """Text for a torch.profiler report (helpers passed in from timeline.py)."""
    from hvd_stgnn.profiling.timeline import CATEGORIES, CATEGORY_LABELS, phase_lines

    out: list[str] = []
    c, comm = rep["counts"], rep["comm"]
    who = f"rank {rep['rank']} of {rep['world_size']}" if rep["rank"] is not None else "rank ?"
    where = "NCCL kernels" if rep["source"] == "gpu" else f"{rep['pg_backend'] or '?'} collective threads"
    span = (f"profiler span {comm['profiler_span_ms']:.1f} ms" if comm["profiler_span_ms"] is not None
            else f"span {comm['trace_span_ms']:.1f} ms")
    out.append(f"trace: {rep['file']}  (torch.profiler, DDP, {who}; {rep['events']} events, {span}; "
               f"collectives from {where})")
    if len(rep["files"]) > 1:
        out.append(f"ranks: {len(rep['files'])} traces ({', '.join(Path(f).name for f in rep['files'])})")
    others = ", ".join(f"{k} {op.lower()}" for op, k in c["ops"].items() if op != "ALLREDUCE")
    fwd = f" ({c['forward_broadcasts']} in forward: DDP's buffer broadcast)" if c["forward_broadcasts"] else ""
    if c["steps"]:
        b = c["buckets_per_step"]
        bk = (_bucket_words(b[0]) if len(b) == 1 else f"{min(b)}-{max(b)} buckets") + " per step"
        out.append(f"counts: {n(c['allreduce_calls'], 'allreduce call')} in {n(c['steps'], 'step')} ({bk})"
                   + (f"; {others}{fwd}" if others else ""))
    else:
        out.append(f"counts: {n(c['allreduce_calls'], 'allreduce call')}; no step markers (no DDP forward or "
                   "optimizer step annotations)" + (f"; {others}" if others else ""))
    for note in rep["notes"]:
        out.append(f"note: {note}")

    basis = {"profiler_span": "profiler span", "window": "window", "trace_span": "span"}[comm["basis"]]
    basis_ms = comm["basis_ms"]
    out.append("")
    out.append(f"time by activity (summed: over calls; wall: union over calls; % of the {basis})")
    out.append(f"  {'activity':<38} {'count':>6} {'summed ms':>11} {'wall ms':>10} {'wall %':>7}")
    for a in rep["activities"]:
        name = ("  " * a["level"]) + a["name"]
        share = pct(a["wall_ms"] / basis_ms) if basis_ms else "-"
        out.append(f"  {name:<38} {a['count']:>6} {a['sum_ms']:>11.3f} {a['wall_ms']:>10.3f} {share:>7}")
    out.append(f"  {', '.join(rep['not_applicable'])}: {NA}")

    out.append("")
    tt = rep["tensors_total"]
    out.append(f"slowest {len(rep['tensors'])} of {n(tt['tensors'], 'collective')} (buckets by launch order in each "
               "step; summed ms over steps)")
    name_w = min(max([len("collective")] + [len(t["name"]) for t in rep["tensors"]]), 44)
    head = f"  {'collective':<{name_w}} {'op':<10} {'calls':>5} {'size':>7} {'total':>9}"
    head += "".join(f" {CATEGORY_LABELS[k]:>10}" for k in CATEGORIES) + f" {'blocked':>10}"
    out.append(head)

    def cats(cs: dict, blocked) -> str:
        s = "".join(" " + _cell(cs[k], na="-" if k == "wait" else NA) for k in CATEGORIES)
        return s + " " + _cell(blocked, na="-")

    for t in rep["tensors"]:
        name = t["name"] if len(t["name"]) <= name_w else "..." + t["name"][-(name_w - 3):]
        out.append(f"  {name:<{name_w}} {t['op']:<10} {t['calls']:>5} {size(t['bytes']):>7} {t['total_ms']:>9.3f}"
                   + cats(t["categories_ms"], t["blocked_ms"]))
    label = f"all {n(tt['tensors'], 'collective')}"
    out.append(f"  {label:<{name_w}} {'':<10} {tt['calls']:>5} {'':>7} {tt['total_ms']:>9.3f}"
               + cats(tt["categories_ms"], tt["blocked_ms"]))
    wait_note = ("wait/queue: time this rank's collective waited for the last rank to enter it"
                 if tt["categories_ms"]["wait"] is not None else
                 "wait/queue '-': needs every rank's trace (the collective column then includes the wait)")
    out.append(f"  ({wait_note}; memcpy in: the reducer's copy of gradients / world size into the bucket; "
               "blocked: the training thread idle after backward while the collective ran)")

    if rep["ranks"]:
        out.append("")
        out.append("ranks (each rank's trace: collective ms per step = mean over steps of the summed collective "
                   "durations; wait, blocked: totals; phases: medians over steps)")
        out.append(f"  {'rank':>4} {'calls':>6} {'coll ms/step':>12} {'wait ms':>9} {'blocked ms':>10} "
                   f"{'forward':>9} {'backward':>9} {'optimizer':>9}")
        for p in rep["ranks"]:
            out.append(f"  {p['rank']:>4} {p['calls']:>6} {p['collective_ms_per_step']:>12.3f} {p['wait_ms']:>9.3f} "
                       f"{_cell(p['blocked_ms'], 10, '-')} {_cell(p['phases']['forward_ms'], 9, '-')} "
                       f"{_cell(p['phases']['backward_ms'], 9, '-')} {_cell(p['phases']['optimizer_ms'], 9, '-')}")
        rs = rep["ranks_summary"]
        st = rs["collective_ms_per_step"]
        if st:
            out.append(f"  collective ms/step across ranks: min {st['min']:.3f}, median {st['median']:.3f}, "
                       f"max {st['max']:.3f}")
        if rs["last_rank"]:
            parts = [f"rank {r} {v['times']}x (lag median {v['lag_ms_median']:.3f} ms, max {v['lag_ms_max']:.3f} ms)"
                     for r, v in rs["last_rank"].items()]
            out.append(f"  last to enter a collective ({rs['matched_calls']} matched calls): " + "; ".join(parts))

    out.append("")
    out.append("communication share")
    res = rep["results"]
    if comm["profiler_span_ms"] is not None:
        out.append(f"  profiler span: {comm['profiler_span_ms']:.3f} ms on {who} ({n(c['steps'], 'step')} in the trace)")
    if res:
        tl = res["timeline"] or {}
        first, active = tl.get("first_step"), tl.get("active_steps")
        steps = (f"steps {first}..{first + active - 1} of the job ({n(active, 'step')})"
                 if isinstance(first, int) and isinstance(active, int) else f"{active} steps")
        out.append(f"  window: {steps}, {comm['results_window_ms'] / 1000:.3f} s on rank 0 (from {res['file']})")
        if res.get("note"):
            out.append(f"  note: {res['note']}")
    elif comm["basis"] == "trace_span":
        out.append(f"  no profiler span or --results: share of the trace span {comm['trace_span_ms']:.3f} ms")
    out.append(f"  allreduce wall {comm['allreduce_wall_ms']:.3f} ms = {pct(comm['allreduce_share'])} of the {basis}"
               f"; all collectives {comm['collectives_wall_ms']:.3f} ms = {pct(comm['collectives_share'])}")
    if comm["blocked_wall_ms"] is not None:
        out.append(f"  blocked after backward {comm['blocked_wall_ms']:.3f} ms = {pct(comm['blocked_share'])}: "
                   "the part of the allreduce not hidden behind backward")
    out.append(f"  (NEGOTIATE_ALLREDUCE: {NA}: every rank launches the buckets in the same order, no coordinator)")
    if "allreduce_ms_per_step" in comm:
        k = comm["allreduce_calls_per_step"]
        out.append(f"  per step: {k:g} allreduce call{'' if k == 1 else 's'}, "
                   f"{comm['allreduce_ms_per_step']:.3f} ms allreduce wall"
                   + (f", blocked {comm['blocked_ms_per_step']:.3f} ms" if comm.get("blocked_ms_per_step") is not None else "")
                   + (f"; a recorded step took {comm['recorded_step_ms']:.3f} ms" if comm.get("recorded_step_ms") else ""))
        rec, med = comm.get("recorded_step_ms"), comm.get("results_median_step_ms")
        if rec and med:
            why = ("; the recorded steps were slower: the profiler's overhead or a busy machine" if rec > 1.2 * med else "")
            out.append(f"  (the epoch's median step, unprofiled steps included: {med:.3f} ms{why})")

    ph = rep["phases"]
    if ph["steps"]:
        out.append("")
        out.append(f"phases in the trace, {who} (median over {n(ph['steps'], 'step')})")
        for key, label in (("forward_ms", "forward (DistributedDataParallel.forward)"),
                           ("backward_ms", "backward (autograd, launches included)"),
                           ("blocked_ms", "blocked after backward (allreduce)"),
                           ("optimizer_ms", "optimizer (Optimizer.step)"),
                           ("step_ms", "step (optimizer step to the next)")):
            out.append(f"  {label:<42} {_cell(ph[key], 9, '-')}")
    out += phase_lines(res, comm, rep.get("png"), "allreduce wall (trace)")
    return "\n".join(out)


def _bucket_words(k: int) -> str:
    return f"{k} bucket" if k == 1 else f"{k} buckets"
