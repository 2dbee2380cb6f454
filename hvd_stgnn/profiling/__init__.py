"""Profiling: what a run records besides its metrics, and the reports on it.

    window.py          the bounded timeline window the trainer records (steps W..W+A)
    memory.py          memory accounting (RSS, PSS, CUDA peaks)

`hvd-stgnn timeline` (a Horovod timeline or DDP's torch.profiler traces -> report):

    trace_file.py      read a trace file, tell the format apart, parse it
    horovod_trace.py   Horovod timeline -> HorovodTrace   (the format, documented there)
    torch_trace.py     torch.profiler trace -> TorchTrace (the format, documented there)
    trace.py           the intermediate form both parse into (categorised intervals per
                       rank and step) and the interval arithmetic
    report.py          build_report: traces + results.json -> one report dict; load_results
    report_horovod.py  its sections for a Horovod timeline
    report_ddp.py      its sections for DDP traces (one per rank)
    report_text.py     format_report: the dict as text
    report_plot.py     plot_report: the --png chart

`hvd-stgnn plot` (a run directory -> loss and MAE curves): curves.py.
cli.py registers both subcommands (`add_parsers`).
"""
