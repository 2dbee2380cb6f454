"""`hvd-stgnn bench scaling`: strong and weak scaling of real training jobs, and where a step's
time goes at every rank count.

For every rank count P in --np and every (backend, data mode) it runs one real training job
(`jobs/local.sh -np P hvd-stgnn train ...`, or `srun --mpi=pmix -n P ... hvd-stgnn train ...`
inside a Slurm allocation) of a bounded number of optimizer steps (`--max-steps-per-epoch N
--epochs E`, validation and test on --eval-windows windows, no baselines):

    strong   the global batch G is fixed (--global-batch, default max(--np) x --batch-size);
             each rank takes G / P windows per step (refused with one line if P does not
             divide G)
    weak     each rank takes --batch-size windows per step; the global batch is P x B

From each job's results.json (`Results.read`): the last epoch's per-step phase times (each
the median over ranks of the rank's mean ms per step), throughput (samples/s over all
ranks, after the job's first 2 steps), prepare seconds, peak node memory, and the parent's
wall clock around the job.

The step is split into

    batch              batch_ms
    compute            forward_ms + the single-rank backward
    exposed comm       backward_ms - the single-rank backward   (backward_ms is backward + the
                                                                 wait for the gradient allreduce)
    optimizer          optimizer_ms

where the single-rank backward is backward_ms of an np=1 job of the same backend, data mode,
per-rank batch and threads per rank (`--reference run`, the default: such a job is run for
every (per-rank batch, threads) that occurs, and an np=1 job of the matrix is reused when it
is one), or (`--reference scale`) the np=1 job's backward scaled linearly by the per-rank
batch (one reference job; thread counts are not matched). `compute_slowdown` = forward_ms /
the reference's forward_ms says how much slower the same computation ran inside the P-rank
job (ranks sharing cores or memory bandwidth); `comm_exposed_adj_ms` removes that slowdown
from the backward too: backward_ms - ref_backward_ms x compute_slowdown. The step time the
throughput implies (1000 x global batch / samples/s) minus the four phases is the time
outside them (`outside_phases_ms`: the per-step stop-flag allreduce, where early ranks wait
for the slowest, metric sums, the progress bar).

speedup = samples/s / samples/s at the smallest np (same backend and data mode); efficiency
= speedup / (np / np_min): for strong scaling the share of the ideal P-fold throughput, for
weak scaling the throughput per rank relative to the smallest np's (the same formula).

With --repeats R every job runs R times round-robin and each measured number is the median
over its R runs; the derived columns come from those medians.

Writes OUT/scaling.csv (one row per backend, data mode and np), OUT/scaling.md (machine,
versions, the command as typed and with every setting explicit, the tables, how each column
is derived), OUT/scaling.png (throughput and efficiency vs ranks; a stacked bar of a step's
time per np) and OUT/raw/ (every job's results JSON and log, raw/jobs.csv with every run).
The tables, the chart and the report are written by bench/scaling_report.py.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import shutil
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from hvd_stgnn.bench.compare import (
    CONTROLLED_FLAGS as COMPARE_CONTROLLED_FLAGS, DEFAULT_CACHE, DEFAULT_FUSION_MB, Variant, parse_np_list,
)
from hvd_stgnn.bench.jobs import (
    LAUNCHER, available_cores, check_all, check_out, check_preset_and_model, check_train_args, job_environment,
    resolve_data, run_job, train_executable, warm_page_cache,
)
from hvd_stgnn.bench.report import invoked_command, write_csv
from hvd_stgnn.errors import ConfigError, UserError
from hvd_stgnn.results import Results, ResultsFileError
from hvd_stgnn.train.phases import WARMUP_STEPS

MODES = ("strong", "weak")
BACKENDS = ("horovod", "ddp")
DATA_MODES = ("index", "materialized")
LAUNCHERS = ("auto", "local", "srun")
REFERENCES = ("run", "scale")
DEFAULT_STEPS = 30
DEFAULT_EVAL_WINDOWS = 64
# The trainer's throughput leaves out the job's first steps; a job needs at least one after them.
TRAINER_WARMUP_STEPS = WARMUP_STEPS

# Flags the benchmark sets itself on every job; --train-args may not override them.
CONTROLLED_FLAGS = COMPARE_CONTROLLED_FLAGS | {"--max-steps-per-epoch", "--eval-windows"}

PHASES = ("batch_ms", "forward_ms", "backward_ms", "optimizer_ms")
# What one job gives (raw/jobs.csv), medians over repeats in scaling.csv.
JOB_METRICS = ("steps", *PHASES, "step_ms", "samples_per_second", "wall_step_ms", "prepare_seconds",
               "node_memory_bytes", "wall_seconds")
JOB_COLUMNS = ("role", "name", "backend", "data_mode", "np", "threads", "batch_per_rank", "repeat", *JOB_METRICS)
CSV_COLUMNS = (
    "mode", "name", "backend", "data_mode", "np", "threads", "batch_per_rank", "global_batch", "repeats",
    "steps", "step_ms", *PHASES, "ref_forward_ms", "ref_backward_ms", "reference",
    "compute_ms", "comm_exposed_ms", "comm_share", "compute_slowdown", "comm_exposed_adj_ms",
    "wall_step_ms", "outside_phases_ms", "samples_per_second", "samples_per_second_min",
    "samples_per_second_max", "speedup", "efficiency", "prepare_seconds", "node_memory_bytes", "wall_seconds",
)
TEXT_COLUMNS = ("mode", "name", "backend", "data_mode", "reference")


@dataclass
class Settings:
    """What every job shares, and how threads per rank are chosen."""

    data: Path
    mode: str = "strong"
    model: str = "tgcn"
    hidden: int = 0            # 0: the trainer's default
    steps: int = DEFAULT_STEPS  # optimizer steps per epoch (--max-steps-per-epoch)
    epochs: int = 1
    batch_size: int = 32       # weak: per rank; strong: sets the default global batch
    global_batch: int = 0      # strong: 0 -> max(np) x batch_size
    seed: int = 0
    threads: int = 0           # 0: cores per node // ranks per node (srun: SLURM_CPUS_PER_TASK if set)
    eval_windows: int = DEFAULT_EVAL_WINDOWS
    fusion_mb: float = DEFAULT_FUSION_MB
    train_args: list[str] = field(default_factory=list)
    launcher: str = "local"    # local | srun (auto already resolved)
    srun_args: list[str] = field(default_factory=list)
    cores: int = 1             # cores of one node (for the default threads)
    nodes: int = 1             # nodes the ranks spread over (srun: the allocation's)
    cpus_per_task: int = 0     # srun: SLURM_CPUS_PER_TASK of the allocation (0: not set)

    def threads_for(self, np_: int) -> int:
        if self.threads:
            return self.threads
        if self.launcher == "srun" and self.cpus_per_task:
            return self.cpus_per_task
        ranks_per_node = -(-np_ // max(1, self.nodes))
        return max(1, self.cores // ranks_per_node)


@dataclass(frozen=True)
class Job:
    """One training job: a point of the scaling matrix, or a single-rank reference."""

    role: str          # "scaling" | "reference"
    variant: Variant
    np: int
    batch: int         # windows per rank per step
    threads: int       # torch threads per rank

    @property
    def ref_key(self) -> tuple[str, int, int]:
        return (self.variant.name, self.batch, self.threads)

    def stem(self, repeat: int) -> str:
        if self.role == "reference":
            return f"{self.variant.name}_ref-np1-b{self.batch}-t{self.threads}_r{repeat}"
        return f"{self.variant.name}_np{self.np}_r{repeat}"

    def label(self) -> str:
        what = " single-rank reference" if self.role == "reference" else ""
        return (f"{self.variant.name} np={self.np}{what} (batch {self.batch}/rank, "
                f"{self.threads} thread{'s' * (self.threads > 1)}/rank)")


# --- arithmetic (pure) ----------------------------------------------------------------------


def parse_choices(text: str, choices: tuple[str, ...], flag: str) -> list[str]:
    """'horovod,ddp' -> ['horovod', 'ddp'] (in the order given). ConfigError on anything else."""
    values = [v.strip() for v in str(text).split(",")]
    bad = [v for v in values if v not in choices]
    if not values or bad:
        raise ConfigError(f"{flag}: expected a comma-separated list of {', '.join(choices)} (got {text!r})")
    if len(set(values)) != len(values):
        raise ConfigError(f"{flag}: a value appears twice (got {text!r})")
    return values


def variants_for(backends: list[str], data_modes: list[str]) -> list[Variant]:
    return [Variant(f"{b}+{d}", b, d) for b in backends for d in data_modes]


def global_batch_for(mode: str, nps: list[int], batch_size: int, global_batch: int = 0) -> int:
    """Strong: the fixed global batch (--global-batch, else max(np) x batch_size). Weak: 0
    (it grows with np)."""
    if mode == "weak":
        return 0
    return global_batch or max(nps) * batch_size


def per_rank_batches(mode: str, nps: list[int], batch_size: int, global_batch: int = 0) -> dict[int, int]:
    """np -> windows per rank per step. Strong: global / np, refused with one line when np does
    not divide the global batch; weak: batch_size at every np."""
    if mode == "weak":
        return {n: batch_size for n in nps}
    g = global_batch_for(mode, nps, batch_size, global_batch)
    bad = [n for n in nps if g % n]
    if bad:
        fits = [n for n in range(1, g + 1) if g % n == 0 and n <= max(nps)]
        raise ConfigError(
            f"--mode strong: the global batch {g} does not split evenly over np={','.join(map(str, bad))} "
            f"(each rank takes global / np windows); give --global-batch a multiple of every --np "
            f"(e.g. {math.lcm(*nps) * max(1, g // math.lcm(*nps))}), or use np in {','.join(map(str, fits))}")
    return {n: g // n for n in nps}


def batch_at_one_rank(mode: str, nps: list[int], batch_size: int, global_batch: int = 0) -> int:
    """What one rank takes per step at np=1 in this mode (the `--reference scale` job)."""
    return global_batch_for(mode, nps, batch_size, global_batch) if mode == "strong" else batch_size


def plan_jobs(settings: Settings, nps: list[int], variants: list[Variant],
              reference: str = "run") -> tuple[list[Job], list[Job]]:
    """The scaling jobs (one per variant and np) and the extra single-rank reference jobs.

    run:   one np=1 job per (variant, per-rank batch, threads) that the scaling jobs use;
           an np=1 scaling job with the same key is that reference (not run twice).
    scale: one np=1 job per variant at the np=1 per-rank batch of this mode (the scaling
           job when 1 is in --np); every other reference is scaled from it."""
    batches = per_rank_batches(settings.mode, nps, settings.batch_size, settings.global_batch)
    scaling = [Job("scaling", v, n, batches[n], settings.threads_for(n)) for n in nps for v in variants]
    if reference == "run":
        wanted = [Job("reference", j.variant, 1, j.batch, j.threads) for j in scaling]
    else:
        b1 = batch_at_one_rank(settings.mode, nps, settings.batch_size, settings.global_batch)
        wanted = [Job("reference", v, 1, b1, settings.threads_for(1)) for v in variants]
    have = {j.ref_key for j in scaling if j.np == 1}
    refs: list[Job] = []
    for job in wanted:
        if job.ref_key not in have:
            have.add(job.ref_key)
            refs.append(job)
    return scaling, refs


def ordered_runs(scaling: list[Job], refs: list[Job], repeats: int) -> list[tuple[int, Job]]:
    """Round-robin over repeats; inside one repeat the references first, then by np."""
    return [(r, job) for r in range(1, repeats + 1) for job in [*refs, *scaling]]


def samples_per_step(res: Results) -> int:
    """Training windows per optimizer step over all ranks: ranks x batch x micro-batches."""
    train, parallel = res.config.get("train", {}), res.config.get("parallel", {})
    return int(res.world_size) * int(train.get("batch_size", 0)) * int(parallel.get("backward_passes_per_step", 1) or 1)


def job_metrics(results: Results | dict, wall_seconds: float) -> dict:
    """One job's measured numbers: the last epoch's phase medians over ranks (ms per step),
    their sum, throughput and the step time it implies, prepare seconds, peak node memory,
    the wall clock."""
    res = results if isinstance(results, Results) else Results.from_dict(results)
    phases = res.last_phases
    if phases is None:
        raise ValueError("no phase_timings (did the job train at all?)")
    parts = {}
    for key in PHASES:
        value = phases.median(key)
        if not math.isfinite(value):
            raise ValueError(f"phase_timings[-1].{key} has no median")
        parts[key] = value
    rate = res.timing.samples_per_second
    return {
        "steps": int(phases.steps),
        **parts,
        "step_ms": sum(parts.values()),
        "samples_per_second": res.timing.samples_per_second,
        "wall_step_ms": 1e3 * samples_per_step(res) / rate if rate > 0 else math.nan,
        "prepare_seconds": res.timing.prepare_seconds,
        "node_memory_bytes": int(res.memory.max_node_pss_peak_bytes),
        "wall_seconds": float(wall_seconds),
    }


def median_jobs(rows: list[dict]) -> dict[tuple, dict]:
    """Job rows (one per run) -> {(role, name, np, batch, threads): medians over repeats}, and
    the lowest and highest samples/s of the repeats (the spread)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        key = (row["role"], row["name"], int(row["np"]), int(row["batch_per_rank"]), int(row["threads"]))
        groups.setdefault(key, []).append(row)
    out = {}
    for key, group in groups.items():
        merged = {k: group[0][k] for k in ("role", "name", "backend", "data_mode", "np", "threads", "batch_per_rank")}
        merged["repeats"] = len(group)
        for metric in JOB_METRICS:
            values = [r[metric] for r in group]
            med = statistics.median(values)
            merged[metric] = int(med) if all(isinstance(v, int) for v in values) and med == int(med) else float(med)
        rates = [r["samples_per_second"] for r in group]
        merged["samples_per_second_min"], merged["samples_per_second_max"] = min(rates), max(rates)
        out[key] = merged
    return out


def single_rank_reference(row: dict, singles: dict[tuple[str, int, int], dict], reference: str = "run",
                          base: tuple[int, int] | None = None) -> tuple[float, float, str]:
    """(forward ms, backward ms, where they come from) of one rank alone at this row's batch.

    singles: np=1 medians by (name, batch per rank, threads). run: the np=1 job at the row's
    own (batch, threads). scale: the np=1 job at `base` = (batch, threads), both times scaled
    by batch / base batch (linear in the batch; threads not matched)."""
    name, batch, threads = row["name"], int(row["batch_per_rank"]), int(row["threads"])
    if reference == "run":
        ref = singles.get((name, batch, threads))
        if ref is None:
            raise KeyError(f"no np=1 job of {name} at batch {batch}/rank, {threads} thread(s)/rank")
        return ref["forward_ms"], ref["backward_ms"], f"np1-b{batch}-t{threads}"
    if base is None:
        raise ValueError("--reference scale needs the base (batch, threads) of the np=1 job")
    ref = singles.get((name, *base))
    if ref is None:
        raise KeyError(f"no np=1 job of {name} at batch {base[0]}/rank, {base[1]} thread(s)/rank")
    factor = batch / base[0]
    source = f"np1-b{base[0]}-t{base[1]}" + ("" if factor == 1 else f" x{batch}/{base[0]}")
    return ref["forward_ms"] * factor, ref["backward_ms"] * factor, source


def split_step(m: dict, ref_forward_ms: float, ref_backward_ms: float) -> dict:
    """A step's ms as batch + compute + exposed communication + optimizer (they add up to
    step_ms = the sum of the four phase medians), the contention-adjusted exposed comm, and
    the time outside the phases: wall_step_ms (the step time samples/s implies) - step_ms."""
    compute = m["forward_ms"] + ref_backward_ms
    comm = m["backward_ms"] - ref_backward_ms
    slowdown = m["forward_ms"] / ref_forward_ms if ref_forward_ms > 0 else math.nan
    step = m["batch_ms"] + m["forward_ms"] + m["backward_ms"] + m["optimizer_ms"]
    return {
        "ref_forward_ms": ref_forward_ms,
        "ref_backward_ms": ref_backward_ms,
        "compute_ms": compute,
        "comm_exposed_ms": comm,
        "comm_share": comm / step if step > 0 else math.nan,
        "compute_slowdown": slowdown,
        "comm_exposed_adj_ms": m["backward_ms"] - ref_backward_ms * slowdown,
        "outside_phases_ms": m["wall_step_ms"] - step if "wall_step_ms" in m else math.nan,
    }


def add_speedup(rows: list[dict], mode: str) -> list[dict]:
    """speedup = samples/s / samples/s at the smallest np of the same variant; efficiency =
    speedup / (np / np_min). Strong: the share of the ideal np-fold throughput. Weak: samples/s
    per rank relative to the smallest np's, (thr / np) / (thr_min / np_min): the same number."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES} (got {mode!r})")
    for name in dict.fromkeys(r["name"] for r in rows):
        group = [r for r in rows if r["name"] == name]
        base = min(group, key=lambda r: int(r["np"]))
        for r in group:
            thr0 = base["samples_per_second"]
            speedup = r["samples_per_second"] / thr0 if thr0 > 0 else math.nan
            r["speedup"] = speedup
            r["efficiency"] = speedup / (int(r["np"]) / int(base["np"]))
    return rows


def scaling_rows(job_rows: list[dict], settings: Settings, nps: list[int], reference: str = "run",
                 variants: list[Variant] | None = None) -> list[dict]:
    """Every run of every job -> one row per (variant, np) with the step split, the reference
    it used, speedup and efficiency. Order: variants as given (else first seen), then np."""
    medians = median_jobs(job_rows)
    singles = {(m["name"], int(m["batch_per_rank"]), int(m["threads"])): m for m in medians.values() if int(m["np"]) == 1}
    base = None
    if reference == "scale":
        base = (batch_at_one_rank(settings.mode, nps, settings.batch_size, settings.global_batch),
                settings.threads_for(1))
    g = global_batch_for(settings.mode, nps, settings.batch_size, settings.global_batch)
    names = [v.name for v in variants] if variants else list(dict.fromkeys(r["name"] for r in job_rows))
    rows = []
    for name in names:
        for m in sorted((m for m in medians.values() if m["role"] == "scaling" and m["name"] == name),
                        key=lambda m: int(m["np"])):
            fwd, bwd, source = single_rank_reference(m, singles, reference, base)
            row = {"mode": settings.mode, **{k: m[k] for k in ("name", "backend", "data_mode", "np", "threads",
                                                                 "batch_per_rank", "repeats")}}
            row["global_batch"] = g or int(m["np"]) * int(m["batch_per_rank"])
            row.update({k: m[k] for k in (*JOB_METRICS, "samples_per_second_min", "samples_per_second_max")})
            row.update(split_step(m, fwd, bwd))
            row["reference"] = source
            rows.append(row)
    return add_speedup(rows, settings.mode)


# --- running the jobs -------------------------------------------------------------------------


def launch_prefix(job: Job, settings: Settings) -> list[str]:
    """The launcher part of a job's command line, up to and including `hvd-stgnn`."""
    if settings.launcher == "srun":
        return ["srun", "--mpi=pmix", "-n", str(job.np), f"--cpus-per-task={job.threads}", "--export=ALL",
                "--kill-on-bad-exit=1", *settings.srun_args, *train_executable()]
    return ["bash", str(LAUNCHER), "-np", str(job.np), *train_executable()]


def job_command(job: Job, settings: Settings, results: Path) -> list[str]:
    cmd = [*launch_prefix(job, settings), "train", "--data", str(settings.data), "--model", settings.model]
    if settings.hidden:
        cmd += ["--hidden", str(settings.hidden)]
    cmd += ["--epochs", str(settings.epochs), "--max-steps-per-epoch", str(settings.steps),
            "--batch-size", str(job.batch), "--seed", str(settings.seed), "--threads", str(job.threads),
            "--eval-windows", str(settings.eval_windows), "--fusion-threshold-mb", f"{settings.fusion_mb:g}",
            "--no-baselines", *job.variant.train_flags(), *settings.train_args, "--results", str(results)]
    return cmd


def run_jobs(settings: Settings, runs: list[tuple[int, Job]], out: Path, repeats: int = 1, timeout: float = 0,
             progress=None) -> list[dict]:
    """Run every (repeat, job); one row per run. One progress line per job on `progress`
    (default: stderr). A failed job raises one-line UserError naming it, its command and log."""
    progress = progress or sys.stderr
    raw = out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (rep, job) in enumerate(runs, 1):
        stem = job.stem(rep)
        results = raw / f"{stem}.json"
        results.unlink(missing_ok=True)
        cmd = job_command(job, settings, results)
        label = job.label() + (f" repeat {rep}/{repeats}" if repeats > 1 else "")
        print(f"[{i}/{len(runs)}] {label} ...", end="", file=progress, flush=True)
        try:
            seconds = run_job(cmd, job_environment(job.threads), label, raw / f"{stem}.log", timeout)
        except UserError:
            print(" failed", file=progress, flush=True)
            raise
        try:
            res = Results.read(results)
            if res.world_size != job.np:
                raise ValueError(f"world_size {res.world_size}, expected {job.np}")
            metrics = job_metrics(res, seconds)
        except (ResultsFileError, ValueError, KeyError, TypeError) as exc:
            print(" failed", file=progress, flush=True)
            raise UserError(f"job {label}: no usable results in {results} ({type(exc).__name__}: {exc}) "
                            f"| command: {shlex.join(cmd)} | full stdout/stderr: {raw / (stem + '.log')}") from None
        rows.append({"role": job.role, "name": job.variant.name, "backend": job.variant.backend,
                     "data_mode": job.variant.data_mode, "np": job.np, "threads": job.threads,
                     "batch_per_rank": job.batch, "repeat": rep, **metrics})
        short = "" if metrics["steps"] >= settings.steps else f" (only {metrics['steps']} steps: the shard ran out)"
        print(f" {seconds:.1f} s, step {metrics['step_ms']:.1f} ms, {metrics['samples_per_second']:.0f} samples/s{short}",
              file=progress, flush=True)
    return rows


# --- the command ------------------------------------------------------------------------------


def resolve_launcher(choice: str, env: dict | None = None) -> str:
    """auto: srun inside a Slurm allocation (SLURM_JOB_ID set), else local (jobs/local.sh)."""
    env = os.environ if env is None else env
    if choice == "auto":
        return "srun" if env.get("SLURM_JOB_ID") else "local"
    return choice


def _env_int(env: dict, *names: str) -> int:
    for name in names:
        text = env.get(name, "")
        digits = text.split("(")[0].split(",")[0]  # SLURM_CPUS_ON_NODE is plain, SLURM_JOB_CPUS_PER_NODE "8(x2)"
        if digits.isdigit() and int(digits) > 0:
            return int(digits)
    return 0


def _check_args(args: argparse.Namespace) -> tuple[list[int], list[Variant], list[str], list[str]]:
    nps = parse_np_list(args.np)
    variants = variants_for(parse_choices(args.backend, BACKENDS, "--backend"),
                            parse_choices(args.data_mode, DATA_MODES, "--data-mode"))
    check_preset_and_model(args)
    check_all([
        (args.steps > TRAINER_WARMUP_STEPS, f"--steps must be >= {TRAINER_WARMUP_STEPS + 1} (the trainer's "
                                            f"samples/s leaves out the job's first {TRAINER_WARMUP_STEPS} steps)"),
        (args.epochs >= 1, "--epochs must be >= 1"),
        (args.batch_size >= 1, "--batch-size must be >= 1"),
        (args.global_batch >= 0, "--global-batch must be >= 1 (or 0: max(np) x --batch-size)"),
        (args.hidden >= 0, "--hidden must be >= 1 (or 0: the trainer's default)"),
        (args.threads >= 0, "--threads must be >= 1 (or 0: cores // np)"),
        (args.eval_windows >= 1, "--eval-windows must be >= 1"),
        (args.repeats >= 1, "--repeats must be >= 1"),
        (args.fusion_threshold_mb >= 0, "--fusion-threshold-mb must be >= 0"),
        (args.job_timeout >= 0, "--job-timeout must be >= 0"),
    ])
    if args.global_batch and args.mode == "weak":
        raise ConfigError("--global-batch: only for --mode strong (weak scaling keeps --batch-size per rank)")
    per_rank_batches(args.mode, nps, args.batch_size, args.global_batch)  # one line when np does not divide
    try:
        train_args = shlex.split(args.train_args)
        srun_args = shlex.split(args.srun_args)
    except ValueError as exc:
        raise ConfigError(f"--train-args/--srun-args: cannot split ({exc})") from None
    check_train_args(train_args, CONTROLLED_FLAGS)
    check_out(args.out)
    return nps, variants, train_args, srun_args


def cmd_scaling(args: argparse.Namespace) -> int:
    # Imported here: scaling_report imports this module (the planning and the arithmetic).
    from hvd_stgnn.bench.scaling_report import explicit_command, markdown_table, plot, report, split_table

    nps, variants, train_args, srun_args = _check_args(args)
    launcher = resolve_launcher(args.launcher)
    env = dict(os.environ)
    if launcher == "srun" and not shutil.which("srun", path=job_environment(1)["PATH"]):
        raise ConfigError("--launcher srun: no `srun` on PATH (outside Slurm use --launcher local)")
    data, source = resolve_data(args)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    srun = launcher == "srun"
    settings = Settings(
        data=data, mode=args.mode, model=args.model, hidden=args.hidden, steps=args.steps, epochs=args.epochs,
        batch_size=args.batch_size, global_batch=args.global_batch, seed=args.seed, threads=args.threads,
        eval_windows=args.eval_windows, fusion_mb=args.fusion_threshold_mb, train_args=train_args,
        launcher=launcher, srun_args=srun_args,
        cores=(_env_int(env, "SLURM_CPUS_ON_NODE") if srun else 0) or available_cores(),
        nodes=(_env_int(env, "SLURM_JOB_NUM_NODES", "SLURM_NNODES") if srun else 0) or 1,
        cpus_per_task=_env_int(env, "SLURM_CPUS_PER_TASK") if srun else 0)
    scaling, refs = plan_jobs(settings, nps, variants, args.reference)
    runs = ordered_runs(scaling, refs, args.repeats)
    print(f"bench scaling: {args.mode}, {len(scaling)} scaling job(s) + {len(refs)} single-rank reference job(s)"
          f"{f' x {args.repeats} repeats' if args.repeats > 1 else ''}, launcher "
          f"{'srun' if srun else 'jobs/local.sh'}; logs in {out / 'raw'}", file=sys.stderr, flush=True)
    warm_page_cache(data)

    job_rows = run_jobs(settings, runs, out, args.repeats, timeout=args.job_timeout)
    write_csv(job_rows, out / "raw" / "jobs.csv", JOB_COLUMNS)
    rows = scaling_rows(job_rows, settings, nps, args.reference, variants)
    write_csv(rows, out / "scaling.csv", CSV_COLUMNS)
    text = report(rows, job_rows, settings, nps, args.repeats, reference=args.reference,
                  command=explicit_command(args, nps, settings, launcher), invoked=invoked_command(), source=source)
    (out / "scaling.md").write_text(text)
    g = global_batch_for(settings.mode, nps, settings.batch_size, settings.global_batch)
    plot(rows, out / "scaling.png",
         title=f"{data.name}: {settings.model}, {args.mode} scaling "
               + (f"(global batch {g})" if g else f"({settings.batch_size}/rank)")
               + f", {settings.steps} steps/job" + (f", median of {args.repeats}" if args.repeats > 1 else ""))
    print(markdown_table(rows))
    print()
    print(split_table(rows))
    print(f"\nwrote {out / 'scaling.csv'}, {out / 'scaling.md'}, {out / 'scaling.png'} (job logs in {out / 'raw'})")
    return 0


def add_scaling_parser(bench_subparsers) -> argparse.ArgumentParser:
    """Add `scaling` to the `hvd-stgnn bench` subcommands; returns its parser."""
    p = bench_subparsers.add_parser(
        "scaling", help="strong/weak scaling: real jobs at each np, where a step's time goes, speedup, efficiency",
        description="One real training job of --steps optimizer steps per np, backend and data mode (plus np=1 "
                    "reference jobs); splits each step into batch / compute / exposed communication / optimizer; "
                    "writes scaling.csv, scaling.md, scaling.png.")
    p.add_argument("--np", default="1,2", help="rank counts, e.g. 1,2,4 (default: 1,2)")
    p.add_argument("--mode", choices=MODES, default="strong",
                   help="strong: fixed global batch, global / np per rank; weak: --batch-size per rank (default: strong)")
    p.add_argument("--backend", default="horovod", help="comma-separated: horovod,ddp (default: horovod)")
    p.add_argument("--data-mode", default="index", help="comma-separated: index,materialized (default: index)")
    p.add_argument("--preset", default="metr-la", help="synthetic preset (default: metr-la)")
    p.add_argument("--data", default="", help="use this HDF5 file instead of a preset")
    p.add_argument("--cache", default=str(DEFAULT_CACHE), help="where presets are generated")
    p.add_argument("--model", default="tgcn", help="model (default: tgcn)")
    p.add_argument("--hidden", type=int, default=0, help="hidden units (default: 0 = the trainer's default, 64)")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                   help=f"optimizer steps per epoch of every job (--max-steps-per-epoch; default: {DEFAULT_STEPS})")
    p.add_argument("--epochs", type=int, default=1,
                   help="epochs per job; the last one's phase times are used (2 leaves the job's first 2 steps out "
                        "of them; default: 1)")
    p.add_argument("--batch-size", type=int, default=32,
                   help="weak: windows per rank per step; strong: the default global batch is max(np) x this (default: 32)")
    p.add_argument("--global-batch", type=int, default=0,
                   help="strong: the fixed global batch, divisible by every np (default: 0 = max(np) x --batch-size)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads per rank (default: 0 = cores // np, at least 1; srun: SLURM_CPUS_PER_TASK if set)")
    p.add_argument("--eval-windows", type=int, default=DEFAULT_EVAL_WINDOWS,
                   help=f"validate and test on this many windows (default: {DEFAULT_EVAL_WINDOWS})")
    p.add_argument("--seed", type=int, default=0, help="training seed, and the preset's data seed (default: 0)")
    p.add_argument("--fusion-threshold-mb", type=float, default=DEFAULT_FUSION_MB,
                   help=f"gradient bucket MiB: Horovod fusion threshold and DDP bucket_cap_mb (default: {DEFAULT_FUSION_MB:g})")
    p.add_argument("--reference", choices=REFERENCES, default="run",
                   help="the single-rank backward at each per-rank batch: run an np=1 job at every (batch, threads) "
                        "that occurs, or scale the np=1 job's linearly by the batch (default: run)")
    p.add_argument("--repeats", type=int, default=1, help="runs of every job, round-robin; medians reported")
    p.add_argument("--launcher", choices=LAUNCHERS, default="auto",
                   help="auto: srun inside a Slurm allocation (SLURM_JOB_ID set), else jobs/local.sh (default: auto)")
    p.add_argument("--srun-args", default="", help='extra srun options, e.g. --srun-args="--mpi=pmi2 --cpu-bind=cores"')
    p.add_argument("--train-args", default="", help='extra `hvd-stgnn train` flags for every job, e.g. --train-args="--lr 0.01"')
    p.add_argument("--job-timeout", type=float, default=0, help="seconds before a job counts as failed (0: none)")
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=cmd_scaling)
    return p
