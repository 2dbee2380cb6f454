"""Parsing a torch.profiler trace (the DDP backend's window) into a TorchTrace (trace.py).

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

Pure JSON: the document comes from trace_file.py, torch is not imported.
"""

from __future__ import annotations

import bisect
import math
import re
from collections import Counter, defaultdict
from typing import Any

from hvd_stgnn.errors import DataError
from hvd_stgnn.profiling.trace import Call, Interval, Span, StepInfo, TorchTrace, merge_intervals, overlap

TORCH_KEYS = ("schemaVersion", "deviceProperties", "distributedInfo", "baseTimeNanoseconds", "traceName")
TORCH_CATS = frozenset({
    "cpu_op", "user_annotation", "gpu_user_annotation", "kernel", "python_function", "cuda_runtime",
    "cuda_driver", "gpu_memcpy", "gpu_memset", "Trace", "fwdbwd", "ac2g", "cpu_instant_event",
})
# Where the collectives are, by TorchTrace.source: NCCL kernels on the GPU when recorded,
# else the CPU-side collective ranges (never the cpu_op launch of the same name).
COLLECTIVES = {
    "gpu": re.compile(r"^nccl(?:Dev)?Kernel_(?P<op>[A-Za-z]+)"),
    "cpu": re.compile(r"^(gloo|nccl|mpi|ucc|xccl):(?P<op>[A-Za-z_]+)$"),
}
AUTOGRAD = "autograd::engine::evaluate_function"
DDP_FORWARD = "DistributedDataParallel.forward"
GPU_CATS = frozenset({"gpu_user_annotation", "kernel", "gpu_memcpy", "gpu_memset"})  # on CUDA streams
OPT_STEP = "Optimizer.step#"
PROFILER_STEP = "ProfilerStep#"
BUCKET_FILL = "torch::distributed::reducer::mul_out"
ENQUEUE = "c10d::"
FINALIZE_VIEW = "aten::as_strided"
TYPE_BYTES = {
    "float": 4, "double": 8, "c10::half": 2, "c10::bfloat16": 2, "half": 2, "bfloat16": 2, "int": 4,
    "long int": 8, "long": 8, "short int": 2, "short": 2, "signed char": 1, "unsigned char": 1, "bool": 1,
    "float32": 4, "float64": 8, "float16": 2, "int32": 4, "int64": 8, "int8": 1, "uint8": 1,
}
# Rows of the report with a name of their own, by (phase, op); others: "<op> <n> (<phase>)".
ROW_NAMES = {("backward", "ALLREDUCE"): "bucket {n}", ("forward", "BROADCAST"): "broadcast {n} (forward: buffers)"}


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


def _thread(ev: dict) -> tuple:
    return (ev.get("pid"), ev.get("tid"))


def _spans(evs: list[dict], prefix: str) -> list[Span]:
    return sorted((float(e["ts"]), float(e["ts"] + e["dur"])) for e in evs if str(e.get("name", "")).startswith(prefix))


class _Steps:
    """Which recorded step a time falls in. Markers that open a step (ProfilerStep#N with a
    schedule, DDP's forward): the last one started at or before t. Optimizer steps close one:
    the first to end at or after t, len(markers) after the last (a step cut by the end of the
    recording). None: before the first step, or no markers."""

    def __init__(self, mode: str, spans: list[Span]) -> None:
        self.mode, self.spans = mode, spans
        self.closing = mode == "optimizer"
        self.bounds = [e if self.closing else s for s, e in spans]

    def __len__(self) -> int:
        return len(self.spans)

    def of(self, t: float) -> int | None:
        if self.closing:
            return bisect.bisect_left(self.bounds, t)
        i = bisect.bisect_right(self.bounds, t) - 1
        return i if i >= 0 else None

    def within(self, t: float) -> int | None:
        """of(t), when that is one of the recorded steps."""
        i = self.of(t)
        return i if i is not None and 0 <= i < len(self) else None

    def span_us(self, i: int) -> float | None:
        if self.mode == "profiler_step":
            return self.spans[i][1] - self.spans[i][0]
        if self.closing:
            return self.bounds[i] - self.bounds[i - 1] if i > 0 else None
        return self.bounds[i + 1] - self.bounds[i] if i + 1 < len(self) else None


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

    xs = _complete_events(tr, events)
    main, top = _training_thread(tr, xs)
    forward, optimizer = _spans(main, DDP_FORWARD), _spans(main, OPT_STEP)
    steps = _step_markers(xs, optimizer, forward)
    tr.step_mode = steps.mode
    tr.steps = [StepInfo(i, span_us=steps.span_us(i)) for i in range(len(steps))]
    for s, e in forward:
        if (i := steps.within(s)) is not None:
            tr.steps[i].forward_us += e - s
    for s, e in optimizer:
        if (i := steps.within(s)) is not None:
            tr.steps[i].optimizer_us += e - s

    tr.calls = _collectives(tr, xs)
    tr.intervals = _launches_and_fills(tr, main, steps)
    _backward_and_finalize(tr, steps, _spans(main, AUTOGRAD), top)
    _place_calls(tr, steps, forward)
    if tr.source == "cpu":
        _clamp_to_finalize(tr)
    tr.clamped = sum(c.clamped for c in tr.calls)
    _attribute_fills(tr)
    return tr


def _step_markers(xs: list[dict], optimizer: list[Span], forward: list[Span]) -> _Steps:
    """ProfilerStep#N ranges (with a schedule), else up to each optimizer step's end, else from
    each forward to the next."""
    for mode, spans in (("profiler_step", _spans(xs, PROFILER_STEP)), ("optimizer", optimizer), ("forward", forward)):
        if spans:
            return _Steps(mode, spans)
    return _Steps("none", [])


def _launches_and_fills(tr: TorchTrace, main: list[dict], steps: _Steps) -> list[Interval]:
    """The training thread's c10d:: launches (by name) and the reducer's bucket fills."""
    out = []
    for name in sorted({str(e.get("name")) for e in main if str(e.get("name", "")).startswith(ENQUEUE)}):
        op = op_of(name.split("::", 1)[1])
        out += [Interval(name, s, e, "launch", op, rank=tr.rank, step=steps.within(s)) for s, e in _spans(main, name)]
    return out + [Interval(BUCKET_FILL, s, e, "memcpy_in", "ALLREDUCE", rank=tr.rank, step=steps.within(s))
                  for s, e in _spans(main, BUCKET_FILL)]


def _complete_events(tr: TorchTrace, events: list) -> list[dict]:
    """The complete ("X") events with a duration; the trace's first/last time and the
    profiler's own span on the way."""
    xs: list[dict] = []
    for i, ev in enumerate(events):
        if not isinstance(ev, dict) or not isinstance(ev.get("ph"), str):
            raise DataError(f"{tr.path}: not a torch.profiler trace (traceEvents[{i}] is not a trace event)")
        if ev["ph"] != "X":
            continue
        ts, dur = ev.get("ts"), ev.get("dur")
        if not _num(ts):
            raise DataError(f"{tr.path}: not a torch.profiler trace (traceEvents[{i}] has a non-numeric 'ts' {ts!r})")
        if not _num(dur) or dur < 0:
            continue
        xs.append(ev)
        tr.see(ts, ts + dur)
        if ev.get("cat") == "Trace" and str(ev.get("name", "")).startswith("PyTorch Profiler"):
            tr.profiler_span = (float(ts), float(ts + dur))
    return xs


def _training_thread(tr: TorchTrace, xs: list[dict]) -> tuple[list[dict], list[dict]]:
    """Its events in time order, and its outermost operators (not ProfilerStep#N or Python
    frames). The training thread: the CPU thread where DDP's forward runs, else autograd,
    else the busiest. On a GPU the profiler repeats annotations as `gpu_user_annotation`
    ranges on the CUDA streams (one per stream, so possibly more of them): never those."""
    cpu = [e for e in xs if e.get("cat") not in GPU_CATS]
    for prefix in (DDP_FORWARD, AUTOGRAD):
        counts = Counter(_thread(e) for e in cpu if str(e.get("name", "")).startswith(prefix))
        if counts:
            tr.main_thread = counts.most_common(1)[0][0]
            break
    else:
        counts = Counter(_thread(e) for e in xs if e.get("cat") == "cpu_op")
        tr.main_thread = counts.most_common(1)[0][0] if counts else None
    main = sorted((e for e in xs if _thread(e) == tr.main_thread and e.get("cat") != "Trace"),
                  key=lambda e: (e["ts"], -e["dur"]))
    top: list[dict] = []
    for e in main:
        if e.get("cat") == "cpu_op" and (not top or e["ts"] >= top[-1]["ts"] + top[-1]["dur"]):
            top.append(e)
    return main, top


def _collectives(tr: TorchTrace, xs: list[dict]) -> list[Call]:
    """Every collective in time order, its end cut at the end of the recording."""
    pattern = COLLECTIVES["gpu"]
    coll = [e for e in xs if e.get("cat") == "kernel" and pattern.match(str(e.get("name", "")))]
    if coll:
        tr.source = "gpu"
    else:
        pattern = COLLECTIVES["cpu"]
        coll = [e for e in xs if e.get("cat") != "cpu_op" and pattern.match(str(e.get("name", "")))]
    span_end = tr.profiler_span[1] if tr.profiler_span else math.inf
    calls = []
    for e in sorted(coll, key=lambda e: e["ts"]):
        name = str(e["name"])
        args = e.get("args") if isinstance(e.get("args"), dict) else {}
        start, end = float(e["ts"]), float(e["ts"] + e["dur"])
        c = Call(name, start, min(end, max(start, span_end)), "collective", op_of(pattern.match(name).group("op")),
                 rank=tr.rank, thread=_thread(e), recorded_end=end, nbytes=_nbytes_from_args(args))
        c.clamped = c.end < end
        calls.append(c)
    # record_param_comms sizes, when there is one per call of the op.
    sizes: dict[str, list[int | None]] = defaultdict(list)
    comms = [e for e in xs if e.get("name") == "record_param_comms" and isinstance(e.get("args"), dict)]
    for e in sorted(comms, key=lambda e: e["ts"]):
        sizes[op_of(str(e["args"].get("Collective name", "")))].append(_nbytes_from_args(e["args"]))
    by_op: dict[str, list[Call]] = defaultdict(list)
    for c in calls:
        by_op[c.op].append(c)
    for op, cs in by_op.items():
        if len(sizes.get(op, [])) == len(cs):
            for c, nb in zip(cs, sizes[op]):
                c.nbytes = c.nbytes if c.nbytes is not None else nb
    return calls


def _backward_and_finalize(tr: TorchTrace, steps: _Steps, autograd: list[Span], top: list[dict]) -> None:
    """Backward per step on the training thread, then DDP's finalize: for each bucket in order,
    wait for its allreduce, then point the gradients at the result (one top-level
    `aten::as_strided` view per parameter). The training thread's idle time from the end of
    backward to the last of those views is the communication that backward did not hide."""
    top_starts = [e["ts"] for e in top]
    grads: dict[int, list[Span]] = defaultdict(list)
    for s, e in autograd:
        if (i := steps.within(s)) is not None:
            grads[i].append((s, e))
    for i, spans in grads.items():
        st = tr.steps[i]
        st.backward_start, st.backward_end = min(s for s, _ in spans), max(e for _, e in spans)
        j = k = bisect.bisect_left(top_starts, st.backward_end)
        while k < len(top) and top[k].get("name") == FINALIZE_VIEW:
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


def _place_calls(tr: TorchTrace, steps: _Steps, forward: list[Span]) -> None:
    """Each call's step, phase (in a forward; in backward up to the end of its finalize) and
    row: its order among the calls of its step, op and phase."""
    fwd_starts = [s for s, _ in forward]
    for c in tr.calls:
        c.step = steps.of(c.start)
        k = bisect.bisect_right(fwd_starts, c.start) - 1
        st = tr.steps[c.step] if steps.within(c.start) is not None else None
        if k >= 0 and c.start <= forward[k][1]:
            c.phase = "forward"
        elif st and st.backward_start is not None and st.backward_start <= c.start and (
                st.finalize_end is None or c.start < st.finalize_end):
            c.phase = "backward"
        if c.step is not None and c.step >= len(steps):
            tr.partial_calls += 1
    counters: Counter = Counter()
    for c in tr.calls:
        group = (c.step, c.op, c.phase)
        c.ordinal = counters[group]
        counters[group] += 1
        own = ROW_NAMES.get((c.phase, c.op)) if c.step is not None else None
        if own:
            c.row = own.format(n=c.ordinal)
        else:
            c.row = f"{c.op.lower()} {c.ordinal}" + (f" ({c.phase})" if c.step is not None and c.phase != "other" else "")


def _clamp_to_finalize(tr: TorchTrace) -> None:
    """gloo: DDP's backward returns only once every bucket is reduced, so the end of its
    finalize bounds the collectives backward launched (a worker thread descheduled before it
    closed its range would otherwise look longer); `blocked` is the finalize's idle time while
    they ran."""
    for st in tr.steps:
        if st.backward_end is None or st.finalize_end is None:
            continue
        mine = [c for c in tr.calls if c.step == st.index and c.phase == "backward"]
        for c in mine:
            if c.end > st.finalize_end:
                c.end, c.clamped = max(c.start, st.finalize_end), True
            c.blocked_us = sum(overlap(gap, c.span) for gap in st.idle)
        st.blocked_us = sum(overlap(gap, span) for gap in st.idle for span in merge_intervals(c.span for c in mine))


def _attribute_fills(tr: TorchTrace) -> None:
    """The reducer's fill of each bucket (gradient / world size into the bucket) happens just
    before the bucket's launch: the fills before a step's k-th launch belong to bucket k."""
    launches: dict[int, list[float]] = defaultdict(list)
    for iv in tr.activities("launch"):
        if iv.name == "c10d::allreduce_" and iv.step is not None:
            launches[iv.step].append(iv.start)
    buckets = {(c.step, c.ordinal): c for c in tr.calls if c.phase == "backward" and c.op == "ALLREDUCE"}
    for iv in tr.activities("memcpy_in"):
        if iv.step is None:
            continue
        c = buckets.get((iv.step, bisect.bisect_left(launches[iv.step], iv.start)))
        if c is not None:
            c.fill_us = (c.fill_us or 0.0) + iv.dur
