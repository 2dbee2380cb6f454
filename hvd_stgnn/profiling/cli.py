"""The profiling package's subcommands: `hvd-stgnn timeline` and `hvd-stgnn plot`.

`add_parsers(subcommands)` registers both on the top-level parser; each sets `func`, which
returns the exit status. The timeline chart's module is imported only for --png (it imports
matplotlib, slow and not needed otherwise).
"""

from __future__ import annotations

import argparse
import json

from hvd_stgnn.errors import ConfigError, DataError
from hvd_stgnn.profiling.curves import DEFAULT_OUT, METRICS_FILE, RESULTS_FILE, plot_run
from hvd_stgnn.profiling.report import build_report, require_timeline
from hvd_stgnn.profiling.report_text import format_report
from hvd_stgnn.profiling.trace_file import load_trace
from hvd_stgnn.results import Results, ResultsFileError


def add_parsers(subcommands: argparse._SubParsersAction) -> None:
    add_timeline_parser(subcommands)
    add_plot_parser(subcommands)


# --- timeline ---------------------------------------------------------------------------


def cmd_timeline(args: argparse.Namespace) -> int:
    if args.top < 1:
        raise ConfigError(f"--top must be >= 1 (got {args.top})")
    files = args.file if isinstance(args.file, list) else [args.file]
    traces = [load_trace(f) for f in files]
    results = _timeline_results(args.results) if args.results else None
    report = build_report(traces, top=args.top, results=results, results_path=args.results or None)
    if args.png:
        from hvd_stgnn.profiling.report_plot import plot_report

        plot_report(report, args.png)
        report["png"] = str(args.png)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def _timeline_results(path: str) -> Results:
    """--results: a file that does not read as results says so; one without the window says which entry."""
    try:
        results = Results.read(path)
    except ResultsFileError as exc:
        raise DataError(f"--results {exc.path}: not a results file ({exc.problem})") from None
    try:
        return require_timeline(results, path)
    except ResultsFileError as exc:
        raise DataError(f"--results {exc}") from None


def add_timeline_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """`hvd-stgnn timeline FILE.json [FILE.json.rank1 ...] [--png OUT.png] [--results R.json] [--top K] [--json]`."""
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


# --- plot -------------------------------------------------------------------------------


def cmd_plot(args: argparse.Namespace) -> int:
    out, metrics = plot_run(args.run_dir, args.out or None)
    note = f"; skipped {metrics.skipped} truncated line(s)" if metrics.skipped else ""
    print(f"wrote {out} ({len(metrics.steps)} step records, {len(metrics.epochs)} epochs{note})")
    return 0


def add_plot_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """`hvd-stgnn plot RUN_DIR [--out PNG]`."""
    p = subparsers.add_parser("plot", help="draw a run's loss and MAE curves to a PNG")
    p.add_argument("run_dir", metavar="RUN_DIR", help=f"run directory holding {METRICS_FILE} (and {RESULTS_FILE})")
    p.add_argument("--out", default="", metavar="PNG", help=f"output image (default: RUN_DIR/{DEFAULT_OUT})")
    p.set_defaults(func=cmd_plot)
    return p
