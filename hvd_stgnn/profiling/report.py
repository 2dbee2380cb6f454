"""`hvd-stgnn timeline`'s numbers: one report dict from parsed traces and the run's results.

    build_report([trace, ...], top, results, results_path) -> dict, JSON-ready, times in ms

The traces are one Horovod timeline (rank 0's describes every rank) or every given rank's
torch.profiler trace of one DDP run. Their format picks the part that builds the sections
(report_horovod.py, report_ddp.py); both give the same frame, which report_text.py and
report_plot.py read:

    format, unit, file, events, truncated
    counts          allreduce_calls, ops {OP: calls}, tensors (rows), ...
    activities      [{op, name, level, category, count, sum_ms, wall_ms}]: per activity, summed
                    over tensors / calls and as wall time (the union of its intervals)
    not_recorded    Horovod activities absent from this trace (DDP: also not_applicable)
    top, tensors    the `top` slowest rows (tensors; DDP: buckets and collective slots), each
                    with categories_ms {CATEGORIES key: ms, None where the format has none}
    tensors_total   the same over every row
    negotiation     Horovod only (DDP: None; per-rank waits are in ranks / ranks_summary)
    comm            basis (window | trace_span; DDP also profiler_span), basis_ms, allreduce and
                    all-collective wall ms and their shares, per-step figures with a window
    results         None, or {file, timeline: {first_step, active_steps, file}, phase_timings:
                    the last epoch's EpochPhases, note}

`load_results` reads the run's results.json for it (results.Results, with a timeline entry).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from hvd_stgnn.errors import ConfigError
from hvd_stgnn.profiling import report_ddp, report_horovod
from hvd_stgnn.profiling.trace import HorovodTrace, TorchTrace, Trace
from hvd_stgnn.results import Results, ResultsFileError

# The part that builds the sections of each kind of trace.
PARTS = {HorovodTrace: report_horovod, TorchTrace: report_ddp}

NO_TIMELINE = 'no "timeline" entry (was the run recorded with `train --timeline FILE.json`?)'


def build_report(traces: list[Trace], top: int = 10, results: Results | None = None,
                 results_path: str | None = None) -> dict:
    """Every number the report prints (see the module docstring)."""
    _check_combination(traces)
    part = PARTS[type(traces[0])]
    window = results.timeline if results is not None else None
    report = part.sections(traces, top, window)
    report["results"] = None
    if results is not None:
        note = None
        if window and window.file and Path(window.file).name != Path(part.trace_file(report["file"])).name:
            note = f"the results describe timeline {window.file}, not {report['file']}"
        steps = ({"first_step": window.first_step, "active_steps": window.active_steps, "file": window.file}
                 if window else None)
        last = results.last_phases
        report["results"] = {"file": results_path, "timeline": steps,
                             "phase_timings": dataclasses.asdict(last) if last else None, "note": note}
        part.with_results(report, last)
    return report


def _check_combination(traces: list[Trace]) -> None:
    if not traces:
        raise ConfigError("no trace given")
    horovod = [t for t in traces if isinstance(t, HorovodTrace)]
    if horovod and len(traces) > 1:
        kinds = "a Horovod timeline and a torch.profiler trace" if len(horovod) < len(traces) else "several Horovod timelines"
        raise ConfigError(f"{kinds} given: pass one Horovod timeline (rank 0's describes every rank), or every "
                          "rank's torch.profiler trace of one DDP run")


def load_results(path: str | os.PathLike) -> Results:
    """The trainer's results file (Results.read), checked for the `timeline` entry the report
    needs; ResultsFileError naming the file otherwise."""
    return require_timeline(Results.read(path), path)


def require_timeline(results: Results, path: str | os.PathLike) -> Results:
    if results.timeline is None:  # the schema checks the entry when it is there
        raise ResultsFileError(path, NO_TIMELINE)
    return results
