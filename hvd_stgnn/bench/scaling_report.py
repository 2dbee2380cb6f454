"""The written side of `hvd-stgnn bench scaling` (bench/scaling.py): the markdown tables
(throughput, speedup and efficiency; where a step's time goes; the single-rank references),
the chart (OUT/scaling.png) and the report (OUT/scaling.md: machine, versions, the command,
the tables, how each column is derived, every job's command line).
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import shlex
import subprocess
from pathlib import Path

from hvd_stgnn.bench.compare import Variant
from hvd_stgnn.bench.report import data_summary, fmt_mb, fmt_num, fmt_pct, header_lines, machine_info, versions
from hvd_stgnn.bench.scaling import (
    Settings, batch_at_one_rank, global_batch_for, job_command, launch_prefix, median_jobs, plan_jobs,
)


# --- the table and the chart ------------------------------------------------------------------


def _x(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{x:.2f}x"


def _pct(x: float) -> str:
    return fmt_pct(x if math.isfinite(x) else None)


def _rate(r: dict) -> str:
    """samples/s, with the lowest-highest of the repeats when there are several."""
    text = fmt_num(r["samples_per_second"])
    if int(r.get("repeats", 1)) > 1 and "samples_per_second_min" in r:
        text += f" ({fmt_num(r['samples_per_second_min'])}-{fmt_num(r['samples_per_second_max'])})"
    return text


def _table(head: str, body) -> str:
    """A markdown table: the header row, a `--- |` under every column, then the body rows."""
    return "\n".join([head, "|" + " --- |" * (head.count("|") - 1), *body])


def markdown_table(rows: list[dict]) -> str:
    """Throughput, speedup, efficiency, preparation, memory and wall clock per config and np."""
    head = ("| config | np | threads/rank | batch/rank | global batch | steps | samples/s | speedup | efficiency "
            "| prepare s | node memory MB | wall s |")
    return _table(head, (
        f"| {r['name']} | {r['np']} | {r['threads']} | {r['batch_per_rank']} | {r['global_batch']} | {r['steps']} "
        f"| {_rate(r)} | {_x(r['speedup'])} | {_pct(r['efficiency'])} "
        f"| {fmt_num(r['prepare_seconds'])} | {fmt_mb(r['node_memory_bytes'])} | {fmt_num(r['wall_seconds'])} |"
        for r in rows))


def split_table(rows: list[dict]) -> str:
    """Where a step's time goes: ms per step, medians over ranks."""
    head = ("| config | np | step ms (samples/s) | step ms (phases) | batch | compute | exposed comm | optimizer "
            "| outside phases | comm share | compute slowdown | exposed comm adj. | single-rank reference |")
    return _table(head, (
        f"| {r['name']} | {r['np']} | {fmt_num(r['wall_step_ms'])} | {fmt_num(r['step_ms'])} "
        f"| {fmt_num(r['batch_ms'])} | {fmt_num(r['compute_ms'])} | {fmt_num(r['comm_exposed_ms'])} "
        f"| {fmt_num(r['optimizer_ms'])} | {fmt_num(r['outside_phases_ms'])} | {_pct(r['comm_share'])} "
        f"| {_x(r['compute_slowdown'])} | {fmt_num(r['comm_exposed_adj_ms'])} | {r['reference']} |"
        for r in rows))


def references_table(job_rows: list[dict]) -> str:
    """The np=1 jobs the split uses (scaling jobs at np=1 and the extra references)."""
    singles = sorted((m for m in median_jobs(job_rows).values() if int(m["np"]) == 1),
                     key=lambda m: (m["name"], -int(m["batch_per_rank"]), int(m["threads"])))
    head = "| config | role | batch/rank | threads | forward ms | backward ms | step ms | samples/s | runs |"
    return _table(head, (
        f"| {m['name']} | {'np=1 scaling job' if m['role'] == 'scaling' else 'extra reference job'} "
        f"| {m['batch_per_rank']} | {m['threads']} | {fmt_num(m['forward_ms'])} "
        f"| {fmt_num(m['backward_ms'])} | {fmt_num(m['step_ms'])} | {fmt_num(m['samples_per_second'])} "
        f"| {m['repeats']} |"
        for m in singles))


def plot(rows: list[dict], path: Path, title: str = "") -> None:
    """Left: samples/s vs np (dashed: ideal from the smallest np). Middle: efficiency vs np.
    Right: one stacked bar per np (and config) of batch / compute / exposed comm / optimizer /
    outside-the-phases ms: the step time samples/s implies."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["name"] for r in rows))
    nps = sorted({int(r["np"]) for r in rows})
    fig, (ax_thr, ax_eff, ax_bar) = plt.subplots(1, 3, figsize=(15, 4.4))
    for name in names:
        group = sorted((r for r in rows if r["name"] == name), key=lambda r: int(r["np"]))
        xs = [int(r["np"]) for r in group]
        line = ax_thr.plot(xs, [r["samples_per_second"] for r in group], "o-", label=name)[0]
        ideal = [group[0]["samples_per_second"] * x / xs[0] for x in xs]
        ax_thr.plot(xs, ideal, "--", color=line.get_color(), alpha=0.5, label=f"{name} ideal")
        ax_eff.plot(xs, [100 * r["efficiency"] for r in group], "o-", color=line.get_color(), label=name)
    for ax in (ax_thr, ax_eff):
        ax.set_xscale("log", base=2)
        ax.set_xticks(nps, [str(n) for n in nps])
        ax.set_xlabel("ranks (np)")
        ax.grid(alpha=0.3)
    ax_thr.set_ylabel("samples/s (all ranks)")
    ax_thr.legend(fontsize=7)
    ax_eff.axhline(100, color="grey", lw=0.8)
    ax_eff.set_ylabel("parallel efficiency %")
    ax_eff.set_ylim(bottom=0)

    parts = (("batch_ms", "batch"), ("compute_ms", "compute"), ("comm_exposed_ms", "exposed comm"),
             ("optimizer_ms", "optimizer"), ("outside_phases_ms", "outside phases"))
    colors = ("#8c8c8c", "#1f77b4", "#d62728", "#2ca02c", "#ffbf00")
    width = 0.8 / max(1, len(names))
    by_key = {(r["name"], int(r["np"])): r for r in rows}
    tallest = 0.0
    for i, name in enumerate(names):
        for j, np_ in enumerate(nps):
            r = by_key.get((name, np_))
            if r is None:
                continue
            x = j - 0.4 + width * (i + 0.5)
            # A negative exposed comm (noise: the reference's backward ran slower) is drawn as 0,
            # with compute = forward + this job's own backward, so the bar is still the step.
            comm = max(0.0, r["comm_exposed_ms"])
            # Likewise time outside the phases below 0 (the phase times hold the job's slower first
            # steps, samples/s does not) is drawn as 0.
            outside = r["outside_phases_ms"]
            values = {"batch_ms": r["batch_ms"], "compute_ms": r["forward_ms"] + r["backward_ms"] - comm,
                      "comm_exposed_ms": comm, "optimizer_ms": r["optimizer_ms"],
                      "outside_phases_ms": max(0.0, outside) if math.isfinite(outside) else 0.0}
            bottom = 0.0
            for (key, label), color in zip(parts, colors):
                ax_bar.bar(x, values[key], width, bottom=bottom, color=color,
                           label=label if (i, j) == (0, 0) else None)
                bottom += values[key]
            tallest = max(tallest, bottom)
            if len(names) > 1:
                ax_bar.text(x, bottom, name, rotation=90, ha="center", va="bottom", fontsize=6)
    ax_bar.set_xticks(range(len(nps)), [f"np={n}" for n in nps])
    ax_bar.set_ylabel("ms per step (median over ranks)")
    ax_bar.set_ylim(0, 1.35 * tallest or 1.0)  # room for the legend above the bars
    ax_bar.legend(fontsize=7, ncol=3, loc="upper center")
    ax_bar.grid(axis="y", alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- the report -------------------------------------------------------------------------------


def _srun_version() -> str:
    try:
        proc = subprocess.run(["srun", "--version"], capture_output=True, text=True, timeout=30)
        return (proc.stdout.strip().splitlines() or ["unknown"])[0]
    except (OSError, subprocess.SubprocessError):
        return "srun not found"


DERIVATION = """\
Per job, from its `results.json` (`hvd_stgnn.results.Results`): the last epoch's phase times,
each the median over ranks of that rank's mean ms per step (`phase_timings[-1]`), and:

- **samples/s**: training windows per second over all ranks (`timing.samples_per_second`:
  the training loop after the job's first 2 steps, validation excluded); with repeats, the
  median and in brackets the lowest-highest of the repeats (CSV: `samples_per_second_min`,
  `_max`).
- **speedup** = samples/s / samples/s at the smallest np of the same config.
- **efficiency** = speedup / (np / smallest np). Strong scaling: the share of the ideal
  np-fold throughput at a fixed global batch. Weak scaling: samples/s per rank relative to
  the smallest np's (the same formula).
- **prepare s**: load + preprocessing inside the trainer (`timing.prepare_seconds`;
  materialized: building every window).
- **node memory MB**: the sum of the ranks' peak PSS on the fullest node
  (`memory.max_node_pss_peak_bytes`; shared pages count once).
- **wall s**: the parent's wall clock around the whole job (launcher start-up, load,
  preprocessing, the bounded training, validation and test on the evaluation windows).
- **step ms (samples/s)** = 1000 x global batch / samples/s: the step time the throughput
  implies. **step ms (phases)** = batch + forward + backward + optimizer (the sum of the four
  medians; with 3 or more ranks it can differ slightly from the median of the ranks' sums).
- **batch**: building the batch (index: one gather from the series; materialized: indexing
  the precomputed windows).
- **compute** = forward of this job + the single-rank backward (*ref backward*).
- **exposed comm** = backward of this job (backward + waiting for the gradient allreduce)
  - the single-rank backward: the communication the backward did not hide, the wait for
  the slowest rank to reach the allreduce (load imbalance, a rank slowed by anything), and
  anything else that made this job's backward slower than one rank's alone (negative
  values are noise: the reference's backward ran slower).
- **optimizer**: gradient clipping + the Adam step + the LR schedule.
- **outside phases** = step ms (samples/s) - step ms (phases): per-step time in none of the
  four phases: the per-step stop-flag allreduce (where ranks that finished early wait for the
  slowest: load imbalance), the metric sums, the progress bar. With `--epochs 1` the phase
  times include the job's first 2 steps (slower: allocator growth, the first negotiations)
  and samples/s does not, which pulls this column down (it can be negative).
- **comm share** = exposed comm / step ms (phases).
- **compute slowdown** = forward of this job / the single-rank forward at the same batch:
  how much slower the same computation ran with the other ranks beside it (shared cores
  when ranks x threads exceed the cores, shared memory bandwidth, MPI progress threads).
  1.00x means none.
- **exposed comm adj.** = backward - ref backward x compute slowdown: exposed comm with that
  slowdown taken out of the backward as well (an estimate of the communication alone).
- **single-rank reference**: the np=1 job the reference forward/backward come from
  (`np1-b<batch>-t<threads>`; `xB/B0`: scaled from batch B0).
"""


def reference_note(reference: str, settings: Settings, nps: list[int]) -> str:
    if reference == "run":
        return ("The single-rank reference of a row is an np=1 job of the same backend, data mode, per-rank batch "
                "and threads per rank (`--reference run`): the np=1 job of the matrix where it matches, else an extra "
                "reference job (listed below, not a row of the table). Its forward and backward are measured, "
                "not scaled.")
    b1 = batch_at_one_rank(settings.mode, nps, settings.batch_size, settings.global_batch)
    return (f"The single-rank reference is the np=1 job at batch {b1}/rank and {settings.threads_for(1)} "
            "thread(s)/rank (`--reference scale`); at another per-rank batch B its forward and backward ms are "
            f"scaled by B / {b1} (linear in the batch: it ignores the per-step fixed cost, so at small B the "
            "reference is too small and exposed comm too large), and thread counts are not matched.")


def report(rows: list[dict], job_rows: list[dict], settings: Settings, nps: list[int], repeats: int, *,
           reference: str, command: str, invoked: str = "", source: str = "", machine: dict | None = None,
           vers: dict | None = None, date: str = "", srun_version: str = "") -> str:
    machine = machine or machine_info()
    vers = vers or versions()
    date = date or dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    threads = ", ".join(f"np={n}: {settings.threads_for(n)}" for n in nps)
    g = global_batch_for(settings.mode, nps, settings.batch_size, settings.global_batch)
    if settings.mode == "strong":
        batch_text = (f"strong scaling: global batch {g} fixed, per rank "
                      + ", ".join(f"np={n}: {g // n}" for n in nps))
    else:
        batch_text = f"weak scaling: {settings.batch_size} windows per rank at every np (global np x {settings.batch_size})"
    over = [n for n in nps if n * settings.threads_for(n) > machine["cores"] * max(1, settings.nodes)]
    if settings.launcher == "srun":
        launch = (f"`srun --mpi=pmix -n NP --cpus-per-task=THREADS` inside Slurm allocation "
                  f"{os.environ.get('SLURM_JOB_ID', '(none)')}, {settings.nodes} node(s)"
                  + (f", extra srun options `{shlex.join(settings.srun_args)}`" if settings.srun_args else "")
                  + f"; {srun_version or _srun_version()}")
    else:
        launch = "`jobs/local.sh -np NP` (mpirun on this machine; OMP_NUM_THREADS = threads per rank)"
    lines = header_lines(f"{settings.mode.capitalize()} scaling: `hvd-stgnn bench scaling`", date=date,
                         command=command, invoked=invoked, machine=machine, vers=vers)
    lines += [
        f"- launcher: {launch}",
        f"- data: {source + ', ' if source else ''}{data_summary(settings.data)}",
        f"- {batch_text}",
        f"- every job: model {settings.model}, hidden {settings.hidden or 'trainer default'}, {settings.epochs} "
        f"epoch(s) of at most {settings.steps} optimizer steps (`--max-steps-per-epoch {settings.steps}`; the "
        f"phase times are the last epoch's" + (", which includes the job's first 2 steps" if settings.epochs == 1 else "")
        + f"), validation and test on {settings.eval_windows} windows, `--no-baselines`, seed {settings.seed}, "
        f"gradient buckets {settings.fusion_mb:g} MiB (Horovod fusion threshold = DDP bucket_cap_mb), "
        f"torch threads per rank {threads}"
        + (f" (np={','.join(map(str, over))}: ranks x threads exceed the cores: oversubscribed)" if over else "")
        + (f", extra train flags `{shlex.join(settings.train_args)}`" if settings.train_args else ""),
        (f"- {repeats} repeats, run round-robin (repeat 1 of every job, then repeat 2, ...); every measured "
         "number is the median over the repeats, the derived columns come from those medians"
         if repeats > 1 else "- 1 run per job (no repeats: single measurements)"),
        "",
        "## Results",
        "",
        markdown_table(rows),
        "",
        "Where a step's time goes (ms per step; each phase the median over ranks):",
        "",
        split_table(rows),
        "",
        "## How each column is derived",
        "",
        DERIVATION,
        reference_note(reference, settings, nps),
        "",
        "## Single-rank references",
        "",
        references_table(job_rows),
        "",
    ]
    first = (Variant(rows[0]["name"], rows[0]["backend"], rows[0]["data_mode"]) if rows
             else Variant("horovod+index", "horovod", "index"))
    scaling, refs = plan_jobs(settings, nps, [first], reference)
    lines += [
        "## Jobs",
        "",
        f"The jobs of {first.name} (other configs differ in `--backend` / `--data-mode` only; OMP_NUM_THREADS = "
        "--threads; every job's exact command is the first lines of its log in `raw/`):",
        "",
        "```bash",
    ]
    for job in [*refs, *scaling]:
        cmd = job_command(job, settings, Path("OUT/raw") / f"{job.stem(1)}.json")
        exe = len(launch_prefix(job, settings)) - 1
        if cmd[exe].endswith("hvd-stgnn"):
            cmd[exe] = "hvd-stgnn"
        if cmd[0] == "bash":
            cmd = ["jobs/local.sh", *cmd[2:]]
        lines.append(shlex.join(cmd))
    lines += ["```", ""]
    return "\n".join(lines)


def explicit_command(args: argparse.Namespace, nps: list[int], settings: Settings, launcher: str) -> str:
    """The command as typed with every setting explicit (defaults resolved), for the report."""
    cmd = ["hvd-stgnn", "bench", "scaling"]
    cmd += ["--data", args.data] if args.data else ["--preset", args.preset, "--cache", args.cache]
    cmd += ["--np", ",".join(map(str, nps)), "--mode", args.mode, "--backend", args.backend,
            "--data-mode", args.data_mode, "--model", args.model]
    if args.hidden:
        cmd += ["--hidden", str(args.hidden)]
    cmd += ["--steps", str(args.steps), "--epochs", str(args.epochs), "--batch-size", str(args.batch_size)]
    if args.mode == "strong":
        cmd += ["--global-batch", str(global_batch_for("strong", nps, args.batch_size, args.global_batch))]
    threads = {settings.threads_for(n) for n in nps}
    cmd += ["--threads", str(args.threads or (threads.pop() if len(threads) == 1 else 0)),
            "--eval-windows", str(args.eval_windows), "--seed", str(args.seed),
            "--fusion-threshold-mb", f"{args.fusion_threshold_mb:g}", "--repeats", str(args.repeats),
            "--reference", args.reference, "--launcher", launcher]
    if args.srun_args:
        cmd += ["--srun-args", args.srun_args]
    if args.train_args:
        cmd += ["--train-args", args.train_args]
    if args.job_timeout:
        cmd += ["--job-timeout", f"{args.job_timeout:g}"]
    return shlex.join(cmd + ["--out", args.out])
