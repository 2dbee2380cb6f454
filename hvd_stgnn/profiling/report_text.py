"""The report as text: `format_report(report)` for either format (report.py's dict).

Both formats print the same blocks (header, time by activity, slowest rows, communication
share, the trainer's phase table); DDP adds notes, the per-rank table and the trace's own
phases, and prints `n/a (DDP)` where Horovod has a column DDP has not.
"""

from __future__ import annotations

import math
from pathlib import Path

from hvd_stgnn.profiling.trace import CATEGORIES, CATEGORY_LABELS

NA = "n/a (DDP)"
# The trainer's phase table (results.json phase_timings): key, label.
PHASES = (("batch_ms", "batch"), ("forward_ms", "forward"), ("backward_ms", "backward (incl. allreduce wait)"),
          ("optimizer_ms", "optimizer"), ("step_ms", "step"))
# The DDP trace's own phases, medians over the recorded steps.
TRACE_PHASES = (("forward_ms", "forward (DistributedDataParallel.forward)"),
                ("backward_ms", "backward (autograd, launches included)"),
                ("blocked_ms", "blocked after backward (allreduce)"),
                ("optimizer_ms", "optimizer (Optimizer.step)"),
                ("step_ms", "step (optimizer step to the next)"))
BASIS_WORDS = {"profiler_span": "profiler span", "window": "window", "trace_span": "span"}


def format_report(rep: dict) -> str:
    return "\n".join(FORMATTERS[rep["format"]](rep))


# --- small pieces -----------------------------------------------------------------------


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


def _cell(v: float | None, width: int = 10, na: str = NA) -> str:
    return f"{na:>{width}}" if v is None else f"{v:>{width}.3f}"


def _activity_lines(rep: dict, title: str, width: int) -> list[str]:
    basis_ms = rep["comm"]["basis_ms"]
    out = ["", title, f"  {'activity':<{width}} {'count':>6} {'summed ms':>11} {'wall ms':>10} {'wall %':>7}"]
    for a in rep["activities"]:
        name = ("  " * a["level"]) + a["name"]
        pct = _pct(a["wall_ms"] / basis_ms) if basis_ms else "-"
        out.append(f"  {name:<{width}} {a['count']:>6} {a['sum_ms']:>11.3f} {a['wall_ms']:>10.3f} {pct:>7}")
    return out


def _row_table(rep: dict, noun: str, total_label: str, ddp: bool) -> list[str]:
    """The slowest rows and the total, one column per category (DDP: and `blocked`)."""
    rows, tt = rep["tensors"], rep["tensors_total"]
    name_w = min(max([len(noun)] + [len(t["name"]) for t in rows]), 44)

    def cells(t: dict) -> str:
        cats = t["categories_ms"]
        s = "".join(" " + _cell(cats[k], na="-" if k == "wait" else NA) for k in CATEGORIES)
        return s + " " + _cell(t["blocked_ms"], na="-") if ddp else s

    head = f"  {noun:<{name_w}} {'op':<10} {'calls':>5} {'size':>7} {'total':>9}"
    out = [head + "".join(f" {CATEGORY_LABELS[k]:>10}" for k in CATEGORIES) + (f" {'blocked':>10}" if ddp else "")]
    for t in rows:
        name = t["name"] if len(t["name"]) <= name_w else "..." + t["name"][-(name_w - 3):]
        out.append(f"  {name:<{name_w}} {t['op']:<10} {t['calls']:>5} {_size(t['bytes']):>7} {t['total_ms']:>9.3f}"
                   + cells(t))
    out.append(f"  {total_label:<{name_w}} {'':<10} {tt['calls']:>5} {'':>7} {tt['total_ms']:>9.3f}" + cells(tt))
    return out


def _window_lines(res: dict, window_ms: float) -> list[str]:
    tl = res["timeline"] or {}
    first, active = tl.get("first_step"), tl.get("active_steps")
    steps = (f"steps {first}..{first + active - 1} of the job ({_n(active, 'step')})"
             if isinstance(first, int) and isinstance(active, int) else f"{active} steps")
    out = [f"  window: {steps}, {window_ms / 1000:.3f} s on rank 0 (from {res['file']})"]
    if res.get("note"):
        out.append(f"  note: {res['note']}")
    return out


def _share_line(comm: dict, basis: str) -> str:
    return (f"  allreduce wall {comm['allreduce_wall_ms']:.3f} ms = {_pct(comm['allreduce_share'])} of the {basis}"
            f"; all collectives {comm['collectives_wall_ms']:.3f} ms = {_pct(comm['collectives_share'])}")


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


# --- Horovod ----------------------------------------------------------------------------


def _horovod(rep: dict) -> list[str]:
    c, comm, res = rep["counts"], rep["comm"], rep["results"]
    state = "cut short (job killed?), read up to the last whole event" if rep["truncated"] else "complete"
    out = [f"timeline: {rep['file']}  ({rep['events']} events, {c['tensors']} tensors, "
           f"span {comm['trace_span_ms']:.1f} ms; {state})"]
    others = ", ".join(f"{n} {op.lower()}" for op, n in c["ops"].items() if op != "ALLREDUCE")
    cycles = f"{c['cycles']} cycles marked" if c["cycles"] else "cycles not marked (record with --timeline-mark-cycles)"
    out.append(f"counts: {_n(c['allreduce_calls'], 'allreduce call')} ({_n(c['allreduce_tensors'], 'tensor')}) in "
               f"{_n(c['allreduce_batches'], 'fused batch', 'fused batches')}" + (f"; {others}" if others else "")
               + f"; {cycles}")
    if c["unclosed_intervals"] or c["unmatched_ends"]:
        out.append(f"        {c['unclosed_intervals']} interval(s) left open and {c['unmatched_ends']} end(s) without a "
                   "start were skipped (recording started or stopped mid-operation)")

    basis = "window" if comm["basis"] == "window" else "span"
    out += _activity_lines(rep, "time by activity (summed: over tensors, so fused tensors each count the same "
                                f"collective; wall: union over tensors; % of {basis})", 32)
    if rep["not_recorded"]:
        out.append(f"  not in this trace: {', '.join(rep['not_recorded'])} (GPU-path activities)")

    tt = rep["tensors_total"]
    out += ["", f"slowest {len(rep['tensors'])} of {tt['tensors']} tensors (by negotiate + processing time, summed ms)"]
    out += _row_table(rep, "tensor", f"all {tt['tensors']} tensors", ddp=False)

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

    out += ["", "communication share"]
    if comm["basis"] == "window" and res:
        out += _window_lines(res, comm["basis_ms"])
    else:
        out.append(f"  no --results: share of the trace span {comm['trace_span_ms']:.3f} ms (first to last event)")
    out.append(_share_line(comm, basis))
    out.append(f"  (NEGOTIATE_ALLREDUCE wall {comm['negotiate_allreduce_wall_ms']:.3f} ms: waiting for every rank's "
               "gradient, overlapping backward)")
    if "allreduce_ms_per_step" in comm:
        out.append(f"  per step: {comm['allreduce_calls_per_step']:g} allreduce calls, "
                   f"{comm['allreduce_ms_per_step']:.3f} ms allreduce wall"
                   + (f" = {_pct(comm.get('allreduce_share_of_median_step'))} of the median step"
                      if comm.get("allreduce_share_of_median_step") is not None else ""))

    return out + phase_lines(res, comm, rep.get("png"), "allreduce wall (timeline, rank 0)")


# --- DDP (torch.profiler) ---------------------------------------------------------------


def _ddp(rep: dict) -> list[str]:
    c, comm, res = rep["counts"], rep["comm"], rep["results"]
    who = f"rank {rep['rank']} of {rep['world_size']}" if rep["rank"] is not None else "rank ?"
    where = "NCCL kernels" if rep["source"] == "gpu" else f"{rep['pg_backend'] or '?'} collective threads"
    span = (f"profiler span {comm['profiler_span_ms']:.1f} ms" if comm["profiler_span_ms"] is not None
            else f"span {comm['trace_span_ms']:.1f} ms")
    out = [f"trace: {rep['file']}  (torch.profiler, DDP, {who}; {rep['events']} events, {span}; "
           f"collectives from {where})"]
    if len(rep["files"]) > 1:
        out.append(f"ranks: {len(rep['files'])} traces ({', '.join(Path(f).name for f in rep['files'])})")
    others = ", ".join(f"{k} {op.lower()}" for op, k in c["ops"].items() if op != "ALLREDUCE")
    fwd = f" ({c['forward_broadcasts']} in forward: DDP's buffer broadcast)" if c["forward_broadcasts"] else ""
    if c["steps"]:
        b = c["buckets_per_step"]
        bk = (_n(b[0], "bucket") if len(b) == 1 else f"{min(b)}-{max(b)} buckets") + " per step"
        out.append(f"counts: {_n(c['allreduce_calls'], 'allreduce call')} in {_n(c['steps'], 'step')} ({bk})"
                   + (f"; {others}{fwd}" if others else ""))
    else:
        out.append(f"counts: {_n(c['allreduce_calls'], 'allreduce call')}; no step markers (no DDP forward or "
                   "optimizer step annotations)" + (f"; {others}" if others else ""))
    out += [f"note: {note}" for note in rep["notes"]]

    basis = BASIS_WORDS[comm["basis"]]
    out += _activity_lines(rep, f"time by activity (summed: over calls; wall: union over calls; % of the {basis})", 38)
    out.append(f"  {', '.join(rep['not_applicable'])}: {NA}")

    tt = rep["tensors_total"]
    out += ["", f"slowest {len(rep['tensors'])} of {_n(tt['tensors'], 'collective')} (buckets by launch order in "
                "each step; summed ms over steps)"]
    out += _row_table(rep, "collective", f"all {_n(tt['tensors'], 'collective')}", ddp=True)
    wait_note = ("wait/queue: time this rank's collective waited for the last rank to enter it"
                 if tt["categories_ms"]["wait"] is not None else
                 "wait/queue '-': needs every rank's trace (the collective column then includes the wait)")
    out.append(f"  ({wait_note}; memcpy in: the reducer's copy of gradients / world size into the bucket; "
               "blocked: the training thread idle after backward while the collective ran)")

    if rep["ranks"]:
        out += _ranks_lines(rep)

    out += ["", "communication share"]
    if comm["profiler_span_ms"] is not None:
        out.append(f"  profiler span: {comm['profiler_span_ms']:.3f} ms on {who} ({_n(c['steps'], 'step')} in the trace)")
    if res:
        out += _window_lines(res, comm["results_window_ms"])
    elif comm["basis"] == "trace_span":
        out.append(f"  no profiler span or --results: share of the trace span {comm['trace_span_ms']:.3f} ms")
    out.append(_share_line(comm, basis))
    if comm["blocked_wall_ms"] is not None:
        out.append(f"  blocked after backward {comm['blocked_wall_ms']:.3f} ms = {_pct(comm['blocked_share'])}: "
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
        out += ["", f"phases in the trace, {who} (median over {_n(ph['steps'], 'step')})"]
        out += [f"  {label:<42} {_cell(ph[key], 9, '-')}" for key, label in TRACE_PHASES]
    return out + phase_lines(res, comm, rep.get("png"), "allreduce wall (trace)")


def _ranks_lines(rep: dict) -> list[str]:
    out = ["", "ranks (each rank's trace: collective ms per step = mean over steps of the summed collective "
               "durations; wait, blocked: totals; phases: medians over steps)",
           f"  {'rank':>4} {'calls':>6} {'coll ms/step':>12} {'wait ms':>9} {'blocked ms':>10} "
           f"{'forward':>9} {'backward':>9} {'optimizer':>9}"]
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
    return out


# The text of each report format (report["format"]).
FORMATTERS = {"horovod": _horovod, "torch.profiler": _ddp}
