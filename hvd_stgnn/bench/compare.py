"""`hvd-stgnn bench compare`: Horovod + index-batching against standard DDP, end to end.

For every rank count P in --np it runs four real training jobs (`jobs/local.sh -np P
hvd-stgnn train ...`, one subprocess each):

    horovod+index         --backend horovod --data-mode index --shuffle shard   (our path)
    horovod+materialized  --backend horovod --data-mode materialized
    ddp+index             --backend ddp     --data-mode index --shuffle shard
    ddp+materialized      --backend ddp     --data-mode materialized           (standard DDP)

with everything else equal: model and hidden size, seed, epochs, batch per rank (so the
same global batch P x B), learning-rate rule, torch threads per rank (--threads, passed to
every job and as OMP_NUM_THREADS), and gradient bucket bytes (--fusion-threshold-mb: the
Horovod fusion threshold and DDP's bucket_cap_mb). Each job writes its results JSON into
OUT/raw/ and its stdout/stderr into OUT/raw/*.log; the parent measures each job's wall
clock around the subprocess (mpirun start-up + load + preprocessing + training + test).

With --repeats R the matrix runs round-robin (repeat 1 of every job, then repeat 2, ...)
and every reported number is the median over the R repeats.

Writes OUT/compare.csv (one row per config and P), OUT/compare.md (machine, versions,
command, the table and the ratios) and OUT/compare.png (grouped bars).
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from hvd_stgnn.bench.jobs import (
    LAUNCHER, available_cores, check_all, check_out, check_preset_and_model, check_train_args, job_environment,
    resolve_data, run_job, train_executable, warm_page_cache,
)
from hvd_stgnn.bench.report import (
    data_summary, fmt_mb, fmt_num, fmt_pct, header_lines, invoked_command, machine_info, versions, write_csv,
)
from hvd_stgnn.errors import ConfigError, UserError
from hvd_stgnn.results import Results, ResultsFileError

DEFAULT_CACHE = Path.home() / ".cache" / "hvd_stgnn" / "data"
DEFAULT_FUSION_MB = 25.0  # torch's default bucket_cap_mb; Horovod's default fusion threshold is 128 MiB


@dataclass(frozen=True)
class Variant:
    """One column of the matrix: a backend and a data path."""

    name: str
    backend: str
    data_mode: str

    def train_flags(self) -> list[str]:
        flags = ["--backend", self.backend, "--data-mode", self.data_mode]
        if self.data_mode == "index":
            flags += ["--shuffle", "shard"]  # the default, stated so both index rows are the same run
        return flags


VARIANTS: tuple[Variant, ...] = (
    Variant("horovod+index", "horovod", "index"),
    Variant("horovod+materialized", "horovod", "materialized"),
    Variant("ddp+index", "ddp", "index"),
    Variant("ddp+materialized", "ddp", "materialized"),
)
OURS = "horovod+index"
STANDARD_DDP = "ddp+materialized"

# Flags the benchmark sets itself on every job; --train-args may not override them.
CONTROLLED_FLAGS = {
    "--data", "--model", "--hidden", "--epochs", "--batch-size", "--seed", "--threads", "--backend",
    "--data-mode", "--shuffle", "--fusion-threshold-mb", "--results", "--baselines", "--no-baselines",
    "--config", "--run-dir", "--resume", "--stop-after-epochs",
}

# The per-row metrics (CSV columns after name, backend, data_mode, np, repeats).
METRICS = (
    "end_to_end_seconds",     # wall clock of the whole mpirun job, measured by the parent
    "prepare_seconds",        # load + preprocessing (materialized: building every window)
    "epoch_seconds_median",   # training + validation of one epoch
    "samples_per_second",     # training windows per second over all ranks
    "peak_rss_bytes",         # peak RSS of the largest rank
    "node_memory_bytes",      # sum of the ranks' peak PSS on the fullest node
    "data_bytes_per_rank",    # batch-source bytes held by the largest rank
    "gpu_peak_bytes",         # peak CUDA memory of the largest rank (0 on CPU)
    "final_val_mae",          # validation MAE after the last epoch
)
CSV_COLUMNS = ("name", "backend", "data_mode", "np", "repeats", *METRICS)


@dataclass
class Settings:
    """What every job of the matrix shares."""

    data: Path
    model: str = "tgcn"
    hidden: int = 0            # 0: the trainer's default
    epochs: int = 1
    batch_size: int = 32       # per rank
    seed: int = 0
    threads: int = 0           # 0: cores // P (at least 1)
    fusion_mb: float = DEFAULT_FUSION_MB
    train_args: list[str] = field(default_factory=list)
    cores: int = 1

    def threads_for(self, np_: int) -> int:
        return self.threads or default_threads(np_, self.cores)


# --- arithmetic (pure) ----------------------------------------------------------------------


def parse_np_list(text: str) -> list[int]:
    """'1,2' -> [1, 2] (ascending). ConfigError on anything else."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise ConfigError(f"--np: expected comma-separated rank counts like 1,2 (got {text!r})") from None
    if not values or any(v < 1 for v in values):
        raise ConfigError(f"--np: rank counts must be >= 1 (got {text!r})")
    if len(set(values)) != len(values):
        raise ConfigError(f"--np: a rank count appears twice (got {text!r})")
    return sorted(values)


def default_threads(np_: int, cores: int) -> int:
    return max(1, cores // np_)


def row_from_results(variant: Variant, np_: int, results: Results | dict, wall_seconds: float) -> dict:
    """One job's row from the trainer's results (read through the results.py schema; a dict
    is checked against it first) plus the parent's wall clock."""
    res = results if isinstance(results, Results) else Results.from_dict(results)
    per_rank = res.memory.per_rank
    return {
        "name": variant.name,
        "backend": variant.backend,
        "data_mode": variant.data_mode,
        "np": np_,
        "repeats": 1,
        "end_to_end_seconds": float(wall_seconds),
        "prepare_seconds": res.timing.prepare_seconds,
        "epoch_seconds_median": res.timing.epoch_seconds_median,
        "samples_per_second": res.timing.samples_per_second,
        "peak_rss_bytes": max(r.peak_rss_bytes for r in per_rank),
        "node_memory_bytes": res.memory.max_node_pss_peak_bytes,
        "data_bytes_per_rank": max(int(b) for b in res.batching.device_bytes_per_rank),
        "gpu_peak_bytes": max(r.cuda_peak_bytes for r in per_rank),
        "final_val_mae": res.epochs[-1].val_mae if res.epochs else float("nan"),
    }


def median_rows(rows: list[dict]) -> list[dict]:
    """Rows of the same (name, np) merged into one: the median of every metric over repeats.

    Order: by np, then in VARIANTS order (unknown names after, in first-seen order)."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["name"], int(row["np"])), []).append(row)
    order = {v.name: i for i, v in enumerate(VARIANTS)}
    first_seen = {key: i for i, key in enumerate(groups)}
    out = []
    for key in sorted(groups, key=lambda k: (k[1], order.get(k[0], len(order)), first_seen[k])):
        group = groups[key]
        merged = {k: group[0][k] for k in ("name", "backend", "data_mode", "np")}
        merged["repeats"] = len(group)
        for metric in METRICS:
            values = [r[metric] for r in group]
            med = statistics.median(values)
            merged[metric] = int(med) if all(isinstance(v, int) for v in values) and med == int(med) else float(med)
        out.append(merged)
    return out


def _ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or den == 0:
        return None
    return num / den


def ratios(rows: list[dict]) -> list[dict]:
    """Per np: our node memory as a share of standard DDP's, our end-to-end time over
    standard DDP's, and the spread of the final validation MAE over the configs
    (max / min - 1). None where a row is missing or a denominator is 0."""
    out = []
    for np_ in sorted({int(r["np"]) for r in rows}):
        by_name = {r["name"]: r for r in rows if int(r["np"]) == np_}
        ours, ddp = by_name.get(OURS), by_name.get(STANDARD_DDP)
        maes = [r["final_val_mae"] for r in by_name.values()]
        spread = None
        if maes and all(m == m for m in maes) and min(maes) > 0:  # m == m: not NaN
            spread = max(maes) / min(maes) - 1
        out.append({
            "np": np_,
            "node_memory_share": _ratio(ours and ours["node_memory_bytes"], ddp and ddp["node_memory_bytes"]),
            "end_to_end_ratio": _ratio(ours and ours["end_to_end_seconds"], ddp and ddp["end_to_end_seconds"]),
            "data_bytes_share": _ratio(ours and ours["data_bytes_per_rank"], ddp and ddp["data_bytes_per_rank"]),
            "val_mae_spread": spread,
            "configs": len(by_name),
        })
    return out


def markdown_table(rows: list[dict]) -> str:
    head = ("| config | np | end-to-end s | prepare s | epoch s | samples/s | peak RSS/rank MB "
            "| node memory MB | data MB/rank | GPU peak MB | final val MAE |")
    lines = [head, "|" + " --- |" * head.count(" | ") + " --- |"]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['np']} | {fmt_num(r['end_to_end_seconds'])} | {fmt_num(r['prepare_seconds'])} "
            f"| {fmt_num(r['epoch_seconds_median'])} | {fmt_num(r['samples_per_second'])} | {fmt_mb(r['peak_rss_bytes'])} "
            f"| {fmt_mb(r['node_memory_bytes'])} | {fmt_mb(r['data_bytes_per_rank'])} | {fmt_mb(r['gpu_peak_bytes'])} "
            f"| {r['final_val_mae']:.4f} |"
        )
    return "\n".join(lines)


def ratios_table(ratio_rows: list[dict]) -> str:
    lines = [
        f"| np | node memory {OURS} / {STANDARD_DDP} | end-to-end time {OURS} / {STANDARD_DDP} "
        f"| data bytes/rank {OURS} / {STANDARD_DDP} | final val MAE spread (max/min - 1) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in ratio_rows:
        time_ratio = "n/a" if r["end_to_end_ratio"] is None else f"{r['end_to_end_ratio']:.2f}x"
        lines.append(f"| {r['np']} | {fmt_pct(r['node_memory_share'])} | {time_ratio} "
                     f"| {fmt_pct(r['data_bytes_share'])} | {fmt_pct(r['val_mae_spread'], 3)} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, title: str = "") -> None:
    """Grouped bars, one group per np: end-to-end seconds (left), node memory MB (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nps = sorted({int(r["np"]) for r in rows})
    names = [v.name for v in VARIANTS if any(r["name"] == v.name for r in rows)]
    names += [n for n in dict.fromkeys(r["name"] for r in rows) if n not in names]
    by_key = {(r["name"], int(r["np"])): r for r in rows}
    width = 0.8 / max(1, len(names))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    panels = (("end_to_end_seconds", "end-to-end seconds (mpirun job)", 1.0),
              ("node_memory_bytes", "node memory MB (sum of ranks' peak PSS)", 1e6))
    for ax, (metric, label, scale) in zip(axes, panels):
        for i, name in enumerate(names):
            xs, hs = [], []
            for j, np_ in enumerate(nps):
                row = by_key.get((name, np_))
                if row is not None:
                    xs.append(j - 0.4 + width * (i + 0.5))
                    hs.append(row[metric] / scale)
            bars = ax.bar(xs, hs, width, label=name)
            ax.bar_label(bars, fmt="%.0f" if max(hs, default=0) >= 100 else "%.1f", fontsize=7)
        ax.set_xticks(range(len(nps)), [f"np={n}" for n in nps])
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(names), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- running the jobs -------------------------------------------------------------------------


def job_command(variant: Variant, np_: int, settings: Settings, results: Path) -> list[str]:
    cmd = ["bash", str(LAUNCHER), "-np", str(np_), *train_executable(), "train",
           "--data", str(settings.data), "--model", settings.model]
    if settings.hidden:
        cmd += ["--hidden", str(settings.hidden)]
    cmd += ["--epochs", str(settings.epochs), "--batch-size", str(settings.batch_size),
            "--seed", str(settings.seed), "--threads", str(settings.threads_for(np_)),
            "--fusion-threshold-mb", f"{settings.fusion_mb:g}", "--no-baselines",
            *variant.train_flags(), *settings.train_args, "--results", str(results)]
    return cmd


def run_matrix(settings: Settings, nps: list[int], repeats: int, out: Path,
               variants: tuple[Variant, ...] = VARIANTS, timeout: float = 0, progress=None) -> list[dict]:
    """Every (repeat, np, variant) job, round-robin over repeats; returns one row per job.
    One progress line per job goes to `progress` (default: stderr)."""
    progress = progress or sys.stderr
    raw = out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    jobs = [(r, np_, v) for r in range(1, repeats + 1) for np_ in nps for v in variants]
    rows = []
    for i, (rep, np_, variant) in enumerate(jobs, 1):
        stem = f"{variant.name}_np{np_}_r{rep}"
        results = raw / f"{stem}.json"
        results.unlink(missing_ok=True)
        cmd = job_command(variant, np_, settings, results)
        threads = settings.threads_for(np_)
        label = f"{variant.name} np={np_}" + (f" repeat {rep}/{repeats}" if repeats > 1 else "")
        print(f"[{i}/{len(jobs)}] {label} ({threads} thread{'s' * (threads > 1)}/rank) ...",
              end="", file=progress, flush=True)
        try:
            seconds = run_job(cmd, job_environment(threads), label, raw / f"{stem}.log", timeout)
        except UserError:
            print(" failed", file=progress, flush=True)
            raise
        try:
            row = row_from_results(variant, np_, Results.read(results), seconds)
        except (ResultsFileError, ValueError, KeyError, TypeError) as exc:
            print(" failed", file=progress, flush=True)
            raise UserError(f"job {label}: no usable results in {results} ({type(exc).__name__}: {exc}) "
                            f"| command: {shlex.join(cmd)} | full stdout/stderr: {raw / (stem + '.log')}") from None
        row["repeat"] = rep
        rows.append(row)
        print(f" {seconds:.1f} s, val MAE {row['final_val_mae']:.4f}", file=progress, flush=True)
    return rows


# --- the report -------------------------------------------------------------------------------


def report(rows: list[dict], settings: Settings, nps: list[int], repeats: int, *, command: str,
           invoked: str = "", source: str = "", machine: dict | None = None, vers: dict | None = None,
           date: str = "") -> str:
    machine = machine or machine_info()
    vers = vers or versions()
    date = date or dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    threads = ", ".join(f"np={n}: {settings.threads_for(n)}" for n in nps)
    lines = header_lines("Horovod + index-batching vs DDP: `hvd-stgnn bench compare`", date=date, command=command,
                         invoked=invoked, machine=machine, vers=vers)
    lines += [
        f"- data: {source + ', ' if source else ''}{data_summary(settings.data)}",
        f"- every job: model {settings.model}, hidden {settings.hidden or 'trainer default'}, {settings.epochs} epoch(s), "
        f"batch {settings.batch_size} per rank (global np x {settings.batch_size}), seed {settings.seed}, "
        f"learning rate: the trainer's rule (not scaled by np unless --train-args says so), "
        f"gradient buckets {settings.fusion_mb:g} MiB (Horovod fusion threshold = DDP bucket_cap_mb), "
        f"torch threads per rank {threads}, `--no-baselines`"
        + (f", extra train flags `{shlex.join(settings.train_args)}`" if settings.train_args else ""),
        (f"- {repeats} repeats of the matrix, run round-robin (repeat 1 of every job, then repeat 2, ...); "
         "every number is the median over the repeats" if repeats > 1 else "- 1 run per job (no repeats: single measurements)"),
        "",
        "## Results",
        "",
        "end-to-end s: wall clock of the whole `mpirun` job (start-up, load, preprocessing, training, "
        "validation, test). prepare s: load + preprocessing inside the trainer (materialized: building every "
        "window). epoch s: median seconds of one epoch (training + validation). samples/s: training windows "
        "per second over all ranks. peak RSS/rank: the largest rank's peak RSS. node memory: sum of the ranks' "
        "peak PSS on the node (shared pages counted once). data MB/rank: bytes the largest rank's batch "
        "sources hold (index: views into the node-shared series, whose pages the node's ranks share and node memory "
        "counts once; materialized: the precomputed windows, a private copy on every rank).",
        "",
        markdown_table(rows),
        "",
        "## Ratios",
        "",
        ratios_table(ratios(rows)),
        "",
        "## Jobs",
        "",
        "Each row is one `jobs/local.sh` job (OMP_NUM_THREADS = the --threads value), e.g. for "
        f"np={nps[0]}:",
        "",
        "```bash",
    ]
    for v in VARIANTS:
        cmd = job_command(v, nps[0], settings, Path("OUT/raw") / f"{v.name}_np{nps[0]}_r1.json")
        cmd[1] = "jobs/local.sh"
        cmd[:1] = []
        if cmd[3].endswith("hvd-stgnn"):
            cmd[3] = "hvd-stgnn"
        lines.append(shlex.join(cmd))
    lines += ["```", ""]
    return "\n".join(lines)


def explicit_command(args: argparse.Namespace, nps: list[int]) -> str:
    cmd = ["hvd-stgnn", "bench", "compare"]
    cmd += ["--data", args.data] if args.data else ["--preset", args.preset, "--cache", args.cache]
    cmd += ["--np", ",".join(map(str, nps)), "--model", args.model]
    if args.hidden:
        cmd += ["--hidden", str(args.hidden)]
    cmd += ["--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--seed", str(args.seed),
            "--threads", str(args.threads), "--fusion-threshold-mb", f"{args.fusion_threshold_mb:g}",
            "--repeats", str(args.repeats)]
    if args.train_args:
        cmd += ["--train-args", args.train_args]
    if args.job_timeout:
        cmd += ["--job-timeout", f"{args.job_timeout:g}"]
    return shlex.join(cmd + ["--out", args.out])


# --- the command ------------------------------------------------------------------------------


def _check_args(args: argparse.Namespace) -> tuple[list[int], list[str]]:
    nps = parse_np_list(args.np)
    check_preset_and_model(args)
    check_all([
        (args.epochs >= 1, "--epochs must be >= 1"),
        (args.batch_size >= 1, "--batch-size must be >= 1"),
        (args.hidden >= 0, "--hidden must be >= 1 (or 0: the trainer's default)"),
        (args.threads >= 0, "--threads must be >= 1 (or 0: cores // np)"),
        (args.repeats >= 1, "--repeats must be >= 1"),
        (args.fusion_threshold_mb >= 0, "--fusion-threshold-mb must be >= 0"),
        (args.job_timeout >= 0, "--job-timeout must be >= 0"),
    ])
    try:
        train_args = shlex.split(args.train_args)
    except ValueError as exc:
        raise ConfigError(f"--train-args: cannot split {args.train_args!r} ({exc})") from None
    check_train_args(train_args, CONTROLLED_FLAGS)
    check_out(args.out)
    return nps, train_args


def cmd_compare(args: argparse.Namespace) -> int:
    nps, train_args = _check_args(args)
    data, source = resolve_data(args)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    settings = Settings(data=data, model=args.model, hidden=args.hidden, epochs=args.epochs,
                        batch_size=args.batch_size, seed=args.seed, threads=args.threads,
                        fusion_mb=args.fusion_threshold_mb, train_args=train_args, cores=available_cores())
    warm_page_cache(data)

    jobs = run_matrix(settings, nps, args.repeats, out, timeout=args.job_timeout)
    write_csv(jobs, out / "raw" / "jobs.csv", ("repeat", *CSV_COLUMNS))
    rows = median_rows(jobs)
    write_csv(rows, out / "compare.csv", CSV_COLUMNS)
    text = report(rows, settings, nps, args.repeats, command=explicit_command(args, nps),
                  invoked=invoked_command(), source=source)
    (out / "compare.md").write_text(text)
    plot(rows, out / "compare.png",
         title=f"{data.name}: {settings.model}, {settings.epochs} epoch(s), batch {settings.batch_size}/rank"
               + (f", median of {args.repeats}" if args.repeats > 1 else ""))
    print(markdown_table(rows))
    print()
    print(ratios_table(ratios(rows)))
    print(f"\nwrote {out / 'compare.csv'}, {out / 'compare.md'}, {out / 'compare.png'} (job logs in {out / 'raw'})")
    return 0


def add_compare_parser(bench_subparsers) -> argparse.ArgumentParser:
    """Add `compare` to the `hvd-stgnn bench` subcommands; returns its parser."""
    p = bench_subparsers.add_parser(
        "compare", help="Horovod+index vs Horovod/DDP materialized: time and memory, real jobs",
        description="For every np: 4 real training jobs (horovod/ddp x index/materialized) with the same "
                    "model, seed, batch, threads and bucket bytes; writes compare.csv, compare.md, compare.png.")
    p.add_argument("--preset", default="metr-la", help="synthetic preset (default: metr-la)")
    p.add_argument("--data", default="", help="use this HDF5 file instead of a preset")
    p.add_argument("--cache", default=str(DEFAULT_CACHE), help="where presets are generated")
    p.add_argument("--np", default="1,2", help="rank counts, e.g. 1,2 (default: 1,2)")
    p.add_argument("--model", default="tgcn", help="model (default: tgcn)")
    p.add_argument("--hidden", type=int, default=0, help="hidden units (default: 0 = the trainer's default, 64)")
    p.add_argument("--epochs", type=int, default=1, help="epochs per job (default: 1)")
    p.add_argument("--batch-size", type=int, default=32, help="windows per batch per rank (default: 32)")
    p.add_argument("--seed", type=int, default=0, help="training seed, and the preset's data seed (default: 0)")
    p.add_argument("--threads", type=int, default=0, help="torch threads per rank (default: 0 = cores // np, >= 1)")
    p.add_argument("--fusion-threshold-mb", type=float, default=DEFAULT_FUSION_MB,
                   help=f"gradient bucket MiB: Horovod fusion threshold and DDP bucket_cap_mb (default: {DEFAULT_FUSION_MB:g})")
    p.add_argument("--repeats", type=int, default=1, help="runs of the whole matrix, round-robin; medians reported")
    p.add_argument("--train-args", default="", help='extra `hvd-stgnn train` flags for every job, e.g. --train-args="--lr 0.01 --graph-mode dense"')
    p.add_argument("--job-timeout", type=float, default=0, help="seconds before a job counts as failed (0: none)")
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=cmd_compare)
    return p
