"""The report's sections for a Horovod timeline: per activity, per tensor, negotiation, share.

Called by report.build_report (which adds the `results` section); reads a HorovodTrace only.
"""

from __future__ import annotations

from collections import defaultdict

from hvd_stgnn.profiling.horovod_trace import NEGOTIATE, OPS, WAIT_ACTIVITIES, activity_sort_key, is_top_level, tensor_bytes
from hvd_stgnn.profiling.trace import (
    CATEGORIES,
    HorovodTrace,
    Interval,
    activity,
    last_arrivals,
    ms,
    overlap_groups,
    share,
    union_length,
)
from hvd_stgnn.results import EpochPhases, TimelineInfo

# Per-tensor columns measured directly; `other` is the rest of the processing time.
MEASURED = ("wait", "memcpy_in", "collective", "memcpy_out")


def trace_file(path: str) -> str:
    """The file a results' timeline entry names for this trace: the timeline itself."""
    return path


def sections(traces: list[HorovodTrace], top: int, window: TimelineInfo | None) -> dict:
    """Every number of the report but `results`, as a JSON-ready dict (times in ms)."""
    (trace,) = traces
    tensors = _tensors(trace)
    activities = _activities(trace)
    found = {a["name"] for a in activities}
    return {
        "format": "horovod",
        "unit": "tensor",
        "file": trace.path,
        "events": trace.events,
        "truncated": trace.truncated,
        "start_time_since_epoch_us": trace.start_epoch_us,
        "counts": _counts(trace, len(tensors)),
        "activities": activities,
        "not_recorded": [name for name in WAIT_ACTIVITIES if name not in found],
        "top": top,
        "tensors": tensors[:top],
        "tensors_total": {
            "tensors": len(tensors),
            "calls": sum(t["calls"] for t in tensors),
            "total_ms": round(sum(t["total_ms"] for t in tensors), 3),
            "negotiate_ms": round(sum(t["negotiate_ms"] for t in tensors), 3),
            "processing_ms": round(sum(t["processing_ms"] for t in tensors), 3),
            "categories_ms": {c: round(sum(t["categories_ms"][c] for t in tensors), 3) for c in CATEGORIES},
        },
        "negotiation": _negotiation(trace),
        "comm": _comm(trace, window),
    }


def with_results(report: dict, last: EpochPhases | None) -> None:
    """The allreduce time per step as a share of the epoch's median step."""
    comm = report["comm"]
    if last and last.step_ms and "median" in last.step_ms and "allreduce_ms_per_step" in comm:
        median = last.step_ms["median"]
        comm["allreduce_share_of_median_step"] = (comm["allreduce_ms_per_step"] / median) if median else None


def _activities(trace: HorovodTrace) -> list[dict]:
    """Per activity, over all tensors, under its operation: NEGOTIATE_<OP>, <OP>, then the
    activities inside <OP> in the order time flows."""
    groups: dict[tuple[str, str], list[Interval]] = defaultdict(list)
    for iv in trace.intervals:
        groups[(iv.op, iv.name)].append(iv)
    rows = []
    for op in sorted({op for op, _ in groups}, key=lambda g: (OPS.index(g) if g in OPS else len(OPS), g)):
        names = [name for g, name in groups if g == op]
        ordered = ([n for n in names if n.startswith(NEGOTIATE)] + [n for n in names if n == op]
                   + sorted((n for n in names if not is_top_level(n)), key=activity_sort_key))
        for name in ordered:
            ivs = groups[(op, name)]
            rows.append(activity(op, name, 0 if is_top_level(name) else 1, ivs[0].category, [iv.span for iv in ivs]))
    return rows


def _tensors(trace: HorovodTrace) -> list[dict]:
    """Per tensor, slowest first: negotiation + processing, split by category and by activity."""
    by_pid: dict[int, list[Interval]] = defaultdict(list)
    for iv in trace.intervals:
        by_pid[iv.tensor].append(iv)
    rows = []
    for pid, op in trace.ops.items():
        ivs = by_pid.get(pid, [])
        acts: dict[str, float] = defaultdict(float)
        cats = dict.fromkeys(CATEGORIES + ("processing",), 0.0)
        for iv in ivs:
            acts[iv.name] += iv.dur
            cats[iv.category] += iv.dur
        negotiate, processing = cats["negotiate"], cats["processing"]
        cats["other"] = max(0.0, processing - sum(cats[c] for c in MEASURED))
        dtype, shape = trace.dtypes.get(pid, ("", ""))
        rows.append({
            "pid": pid,
            "name": trace.tensors.get(pid, f"pid {pid}"),
            "op": op,
            "calls": sum(1 for iv in ivs if iv.category == "processing"),
            "dtype": dtype or None,
            "shape": shape or None,
            "bytes": tensor_bytes(dtype, shape),
            "total_ms": ms(negotiate + processing),
            "negotiate_ms": ms(negotiate),
            "processing_ms": ms(processing),
            "categories_ms": {k: ms(cats[k]) for k in CATEGORIES},
            "activities_ms": {k: ms(v) for k, v in sorted(acts.items(), key=lambda kv: activity_sort_key(kv[0]))},
        })
    rows.sort(key=lambda t: (-t["total_ms"], t["name"]))
    return rows


def _op_spans(trace: HorovodTrace) -> dict[str, list[tuple[float, float]]]:
    return {op: [iv.span for iv in trace.intervals if iv.name == op] for op in OPS}


def _counts(trace: HorovodTrace, tensors: int) -> dict:
    op_spans = _op_spans(trace)
    allreduce = op_spans["ALLREDUCE"]
    return {
        "allreduce_calls": len(allreduce),
        "allreduce_tensors": len({iv.tensor for iv in trace.intervals if iv.name == "ALLREDUCE"}),
        "allreduce_batches": overlap_groups(allreduce),
        "ops": {op: len(spans) for op, spans in op_spans.items() if spans},
        "op_batches": {op: overlap_groups(spans) for op, spans in op_spans.items() if spans},
        "cycles": len(trace.markers.get("CYCLE_START", [])) or None,
        "tensors": tensors,
        "unclosed_intervals": trace.unclosed,
        "unmatched_ends": trace.unmatched_ends,
    }


def _negotiation(trace: HorovodTrace) -> dict:
    """Which rank reached rank 0 last in each negotiation with ticks from several ranks, and by how much."""
    by_neg: dict[tuple[int, float], list[tuple[int, float]]] = defaultdict(list)
    for pid, rank, ts, start in trace.ticks:
        by_neg[(pid, start)].append((rank, ts))
    last: dict[int, list[float]] = defaultdict(list)
    for ticks in by_neg.values():
        if len({r for r, _ in ticks}) < 2:
            continue
        rank, ts = max(ticks, key=lambda rt: rt[1])
        last[rank].append(ts - min(t for _, t in ticks))
    return {
        "negotiations": sum(1 for iv in trace.intervals if iv.name.startswith(NEGOTIATE)),
        "with_rank_ticks": len(by_neg),
        "ranks_seen": sorted({r for _, r, _, _ in trace.ticks}),
        "last_rank": last_arrivals(last),
    }


def _comm(trace: HorovodTrace, window: TimelineInfo | None) -> dict:
    """Communication share of the recorded window (from the results), else of the trace's span."""
    op_spans = _op_spans(trace)
    allreduce = op_spans["ALLREDUCE"]
    allreduce_wall = union_length(allreduce)
    all_ops_wall = union_length(s for spans in op_spans.values() for s in spans)
    negotiate_wall = union_length(iv.span for iv in trace.intervals if iv.name == NEGOTIATE + "ALLREDUCE")
    if window:
        basis, basis_us = "window", window.window_seconds * 1e6
    else:
        basis, basis_us = "trace_span", trace.span_us
    comm = {
        "basis": basis,
        "basis_ms": ms(basis_us),
        "trace_span_ms": ms(trace.span_us),
        "allreduce_wall_ms": ms(allreduce_wall),
        "allreduce_share": share(allreduce_wall, basis_us),
        "collectives_wall_ms": ms(all_ops_wall),
        "collectives_share": share(all_ops_wall, basis_us),
        "negotiate_allreduce_wall_ms": ms(negotiate_wall),
    }
    if window and (window.active_steps or 0) > 0:
        comm["allreduce_ms_per_step"] = ms(allreduce_wall / window.active_steps)
        comm["allreduce_calls_per_step"] = round(len(allreduce) / window.active_steps, 3)
    return comm
