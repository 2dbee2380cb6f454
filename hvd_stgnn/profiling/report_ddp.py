"""The report's sections for DDP's torch.profiler traces (one per rank), in the layout of the
Horovod report: per activity, per bucket (in place of per tensor), per rank, notes, share.

Called by report.build_report (which adds the `results` section); reads TorchTraces only.
Several ranks' traces are matched call by call (`align_ranks`) to tell how long each rank
waited for the last one to enter each collective.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from hvd_stgnn.errors import DataError
from hvd_stgnn.profiling.torch_trace import BUCKET_FILL
from hvd_stgnn.profiling.trace import (
    Call,
    TorchTrace,
    activity,
    last_arrivals,
    median,
    ms,
    overlap,
    rank0_path,
    share,
    stat_ms,
    union_length,
)
from hvd_stgnn.results import EpochPhases, TimelineInfo

# Horovod activities without a DDP counterpart (MEMCPY_IN_FUSION_BUFFER maps to the reducer's
# bucket fill when the trace has it).
NOT_IN_DDP = ("NEGOTIATE_ALLREDUCE", "WAIT_FOR_DATA", "WAIT_FOR_OTHER_TENSOR_DATA", "QUEUE", "MEMCPY_IN_FUSION_BUFFER",
              "MEMCPY_OUT_FUSION_BUFFER")
FILL_ANALOGUE = "MEMCPY_IN_FUSION_BUFFER"


def trace_file(path: str) -> str:
    """The file a results' timeline entry names for this trace: rank 0's."""
    return rank0_path(path)


def sections(traces: list[TorchTrace], top: int, window: TimelineInfo | None) -> dict:
    """Every number of the report but `results`, as a JSON-ready dict (times in ms): the
    tables are rank 0's (the lowest rank given), `ranks` compares every rank given."""
    traces = sorted(traces, key=lambda t: (t.rank is None, t.rank if t.rank is not None else 0))
    ranks = [t.rank if t.rank is not None else i for i, t in enumerate(traces)]
    if len(set(ranks)) != len(ranks):
        dup = next(r for r in ranks if ranks.count(r) > 1)
        raise DataError(f"{traces[ranks.index(dup)].path}: rank {dup} is given twice (one trace per rank)")
    aligned = align_ranks(traces, ranks) if len(traces) > 1 else None
    tr = traces[0]
    table = _table(tr)
    has_fill = bool(tr.activities("memcpy_in"))
    cpu = tr.source == "cpu"
    comm = _comm(tr, window)
    per_rank = _per_rank(traces, ranks) if aligned else None
    return {
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
        "counts": _counts(tr, len(table)),
        "activities": _activities(tr),
        "not_applicable": [a for a in NOT_IN_DDP if not (has_fill and a == FILL_ANALOGUE)],
        "not_recorded": [],
        "top": top,
        "tensors": table[:top],
        "tensors_total": {
            "tensors": len(table),
            "calls": len(tr.calls),
            "total_ms": round(sum(t["total_ms"] for t in table), 3),
            "categories_ms": {
                "negotiate": None,
                "wait": _total(table, "wait"),
                "memcpy_in": round(sum(t["categories_ms"]["memcpy_in"] or 0.0 for t in table), 3) if has_fill else None,
                "collective": round(sum(t["categories_ms"]["collective"] for t in table), 3),
                "memcpy_out": None,
                "other": None,
            },
            "blocked_ms": round(sum(t["blocked_ms"] or 0.0 for t in table), 3) if cpu else None,
        },
        "negotiation": None,
        "comm": comm,
        "phases": _phases(tr),
        "ranks": per_rank,
        "ranks_summary": _ranks_summary(aligned, per_rank) if aligned else None,
        "notes": _notes(tr, traces, window, comm),
    }


def with_results(report: dict, last: EpochPhases | None) -> None:
    """The epoch's median step beside the recorded one. No share of it (Horovod's report has
    one): the recorded steps, every operator profiled, are not the epoch's steps."""
    if last and isinstance(last.step_ms, dict):
        report["comm"]["results_median_step_ms"] = last.step_ms.get("median")


def align_ranks(traces: list[TorchTrace], ranks: list[int]) -> dict:
    """Match every collective across the ranks' traces (same step, op, phase and order) and
    set each call's wait: how long it ran before the last rank entered it (wall clock:
    baseTimeNanoseconds + ts, so the ranks' clocks must agree: one node, or NTP/PTP)."""
    by_key: dict[tuple, list[tuple[int, Call, float]]] = defaultdict(list)
    for rank, tr in zip(ranks, traces):
        for c in tr.calls:
            by_key[c.key].append((rank, c, tr.base_us + c.start))
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
        lags[max(entries, key=lambda x: x[2])[0]].append(last - first)
    return {"matched_calls": matched, "last": lags}


def _table(tr: TorchTrace) -> list[dict]:
    """Per row (bucket / collective slot), slowest first: collective time split into waiting
    for the other ranks and the rest, plus the bucket's fill."""
    has_fill = bool(tr.activities("memcpy_in"))
    rows: dict[str, list[Call]] = defaultdict(list)
    for c in tr.calls:
        rows[c.row].append(c)
    table = []
    for name, cs in rows.items():
        waits = [c.wait_us for c in cs]
        wait = sum(waits) if all(w is not None for w in waits) else None
        bucket = cs[0].op == "ALLREDUCE" and cs[0].phase == "backward"
        fill = sum(c.fill_us or 0.0 for c in cs) if has_fill and bucket else None
        dur = sum(c.dur for c in cs)
        table.append({
            "name": name,
            "op": cs[0].op,
            "collective": cs[0].name,
            "calls": len(cs),
            "bytes": cs[-1].nbytes,
            "total_ms": ms(dur + (fill or 0.0)),
            "categories_ms": {"negotiate": None, "wait": ms(wait), "memcpy_in": ms(fill),
                              "collective": ms(dur - (wait or 0.0)), "memcpy_out": None, "other": None},
            "blocked_ms": ms(sum(c.blocked_us for c in cs)) if tr.source == "cpu" else None,
            "mean_ms": ms(dur / len(cs)),
            "max_ms": ms(max(c.dur for c in cs)),
        })
    table.sort(key=lambda t: (-t["total_ms"], t["name"]))
    return table


def _total(table: list[dict], category: str) -> float | None:
    """A column's total, unknown if any row's is."""
    vals = [t["categories_ms"][category] for t in table]
    return None if not vals or any(v is None for v in vals) else round(sum(vals), 3)


def _activities(tr: TorchTrace) -> list[dict]:
    """Each collective (allreduce first), with its launches, bucket fills and blocked time below it."""
    by_name: dict[str, list[Call]] = defaultdict(list)
    for c in tr.calls:
        by_name[c.name if tr.source == "cpu" else f"nccl kernel: {c.op.lower()}"].append(c)
    launches: dict[str, list] = defaultdict(list)
    for iv in tr.activities("launch"):
        launches[iv.name].append(iv)
    fills = [iv.span for iv in tr.activities("memcpy_in")]
    rows = []
    for name in sorted(by_name, key=lambda n: (by_name[n][0].op != "ALLREDUCE", by_name[n][0].op, n)):
        cs = by_name[name]
        op = cs[0].op
        rows.append(activity(op, name, 0, "collective", [c.span for c in cs]))
        if op == "ALLREDUCE" and fills:
            rows.append(activity(op, BUCKET_FILL, 1, "memcpy_in", fills))
        for launch, ivs in launches.items():
            if ivs[0].op == op:
                rows.append(activity(op, launch, 1, "launch", [iv.span for iv in ivs]))
        if tr.source == "cpu" and any(c.phase == "backward" for c in cs):
            mine = [c for c in cs if c.phase == "backward" and c.blocked_us > 0]
            blocked = [(max(a, c.start), min(b, c.end)) for st in tr.steps for a, b in st.idle
                       for c in mine if c.step == st.index and overlap((a, b), c.span) > 0]
            rows.append({**activity(op, "blocked after backward", 1, "blocked", blocked), "count": len(mine),
                         "sum_ms": ms(sum(c.blocked_us for c in mine))})
    return rows


def _counts(tr: TorchTrace, rows: int) -> dict:
    ops = Counter(c.op for c in tr.calls)
    per_step = Counter(c.step for c in tr.calls if c.op == "ALLREDUCE" and c.phase == "backward")
    return {
        "allreduce_calls": ops.get("ALLREDUCE", 0),
        "ops": dict(sorted(ops.items(), key=lambda kv: (kv[0] != "ALLREDUCE", kv[0]))),
        "steps": len(tr.steps),
        "step_mode": tr.step_mode,
        "buckets_per_step": sorted({per_step[i] for i in range(len(tr.steps))}),
        "forward_broadcasts": sum(1 for c in tr.calls if c.phase == "forward" and c.op == "BROADCAST"),
        "partial_step_calls": tr.partial_calls,
        "tensors": rows,
        "clamped_ends": tr.clamped,
    }


def _comm(tr: TorchTrace, window: TimelineInfo | None) -> dict:
    """Communication share of the profiler's own span (the recording on this rank's clock),
    else of the results' window, else of the trace's span."""
    prof_us = (tr.profiler_span[1] - tr.profiler_span[0]) if tr.profiler_span else None
    window_us = window.window_seconds * 1e6 if window else None
    if prof_us:
        basis, basis_us = "profiler_span", prof_us
    elif window_us:
        basis, basis_us = "window", window_us
    else:
        basis, basis_us = "trace_span", tr.span_us
    allreduce_wall = union_length(c.span for c in tr.calls if c.op == "ALLREDUCE")
    all_wall = union_length(c.span for c in tr.calls)
    blocked = [st.blocked_us for st in tr.steps if st.blocked_us is not None]
    comm: dict[str, Any] = {
        "basis": basis,
        "basis_ms": ms(basis_us),
        "trace_span_ms": ms(tr.span_us),
        "profiler_span_ms": ms(prof_us),
        "results_window_ms": ms(window_us),
        "allreduce_wall_ms": ms(allreduce_wall),
        "allreduce_share": share(allreduce_wall, basis_us),
        "collectives_wall_ms": ms(all_wall),
        "collectives_share": share(all_wall, basis_us),
        "negotiate_allreduce_wall_ms": None,
        "blocked_wall_ms": ms(sum(blocked)) if blocked else None,
        "blocked_share": share(sum(blocked), basis_us) if blocked else None,
    }
    n_steps = len(tr.steps)
    if n_steps:
        in_steps = [c for c in tr.calls if c.op == "ALLREDUCE" and c.step is not None and c.step < n_steps]
        comm["allreduce_calls_per_step"] = round(len(in_steps) / n_steps, 3)
        comm["allreduce_ms_per_step"] = ms(union_length(c.span for c in in_steps) / n_steps)
        comm["blocked_ms_per_step"] = ms(sum(blocked) / n_steps) if blocked else None
        comm["recorded_step_ms"] = ms(basis_us / n_steps) if basis != "trace_span" else None
    return comm


def _notes(tr: TorchTrace, traces: list[TorchTrace], window: TimelineInfo | None, comm: dict) -> list[str]:
    notes = []
    if tr.clamped:
        notes.append(f"{tr.clamped} collective end(s) recorded after the training thread had already gone on (or "
                     "after the recording stopped) were cut there: the collective's thread was descheduled "
                     "before it closed its range")
    if tr.partial_calls:
        notes.append(f"{tr.partial_calls} collective(s) after the last optimizer step (a step cut by the end of "
                     "the recording) are listed but not counted per step")
    prof_us = (tr.profiler_span[1] - tr.profiler_span[0]) if tr.profiler_span else None
    window_us = window.window_seconds * 1e6 if window else None
    if prof_us and window_us and abs(window_us - prof_us) > 0.2 * prof_us:
        notes.append(f"results window_seconds ({window_us / 1000:.1f} ms) differs from the profiler's span "
                     f"({prof_us / 1000:.1f} ms); shares use the profiler's span (the trainer measures the window "
                     "after stop_timeline, which for DDP includes the profiler's teardown and the trace export)")
    n_steps = len(tr.steps)
    if window and window.active_steps is not None and n_steps and window.active_steps != n_steps:
        notes.append(f"the results say {window.active_steps} recorded steps, the trace holds {n_steps}")
    if tr.pg_backend == "nccl" and tr.source == "cpu":
        notes.append("NCCL without CUDA activity in the trace: the nccl:* ranges are kernel launches, not "
                     "the collectives (record with ProfilerActivity.CUDA)")
    if len(traces) == 1 and tr.world_size and tr.world_size > 1:
        base = rank0_path(tr.path)
        found = [f for f in [base] + [f"{base}.rank{r}" for r in range(1, tr.world_size)] if f != tr.path and Path(f).exists()]
        hint = f" (found {len(found)} next to it: {Path(found[0]).name}{', ...' if len(found) > 1 else ''})" if found else ""
        notes.append(f"one of {tr.world_size} ranks' traces: pass them all (FILE.json FILE.json.rank1 ...) to see "
                     f"how long each rank waited for the others{hint}")
    return notes


def _phases(t: TorchTrace) -> dict:
    """Phases from the trace, per step (medians)."""
    return {
        "steps": len(t.steps),
        "forward_ms": ms(median(st.forward_us for st in t.steps)),
        "backward_ms": ms(median(st.backward_us for st in t.steps)),
        "blocked_ms": ms(median(st.blocked_us for st in t.steps)),
        "optimizer_ms": ms(median(st.optimizer_us for st in t.steps)),
        "step_ms": ms(median(st.span_us for st in t.steps)),
    }


def _per_rank(traces: list[TorchTrace], ranks: list[int]) -> list[dict]:
    out = []
    for r, t in zip(ranks, traces):
        n = len(t.steps) or 1
        waits = [c.wait_us for c in t.calls]
        out.append({
            "rank": r,
            "file": t.path,
            "calls": len(t.calls),
            "collective_ms": ms(sum(c.dur for c in t.calls)),
            "collective_ms_per_step": ms(sum(c.dur for c in t.calls if c.step is not None and c.step < len(t.steps)) / n),
            "wait_ms": ms(sum(w for w in waits if w is not None)),
            "blocked_ms": ms(sum(st.blocked_us or 0.0 for st in t.steps)) if t.source == "cpu" else None,
            "collective_step_ms": [ms(sum(c.dur for c in t.calls if c.step == st.index)) for st in t.steps],
            "clamped_ends": t.clamped,
            "phases": _phases(t),
        })
    return out


def _ranks_summary(aligned: dict, per_rank: list[dict]) -> dict:
    return {
        "matched_calls": aligned["matched_calls"],
        "collective_ms_per_step": stat_ms([p["collective_ms_per_step"] * 1000 for p in per_rank]),
        "wait_ms": stat_ms([p["wait_ms"] * 1000 for p in per_rank]),
        "last_rank": last_arrivals(aligned["last"]),
    }
