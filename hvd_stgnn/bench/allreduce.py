"""`hvd-stgnn bench allreduce`: Horovod and torch.distributed allreduce, by message size, and
the model's gradient set; the ring model's latency alpha and bandwidth beta fitted to it.

    hvd-stgnn bench allreduce --np 2 --out runs/allreduce
    hvd-stgnn bench allreduce --np 2 --backends horovod,ddp --min-size 4KB --max-size 256MB \\
        --model tgcn --threads 1 --launcher auto --out runs/allreduce

The parent (this module, `cmd_bench_allreduce`) runs ONE real job: `jobs/local.sh -np P`
here, or `srun` inside a Slurm allocation (`--launcher srun`, or `auto` on a node of the
allocation), through bench/jobs.py `run_job`. Every rank of the job runs
bench/allreduce_worker.py: per backend, a sweep of float32 messages of `--min-size` ..
`--max-size` (doubling), then the model's gradient set; rank 0 writes into `--out`:

- `allreduce.json`: machine, versions, command, np, nodes, device, the rows, the fits (at
  top level: `{"fits": {"horovod": {"alpha_s", "beta_bytes_per_s", "sizes",
  "relative_residual_max", ...}, "ddp": {...}}}`, what `hvd-stgnn plan --time --allreduce`
  reads) and the gradient-set timings;
- `allreduce.csv` (one row per backend and size), `allreduce.md` (an osu_allreduce-like
  table and one fit line per backend), `allreduce.png` (latency and bus bandwidth vs size,
  log-log, with the fitted curves);
- `allreduce.log`: the job's command, stdout and stderr.

Conventions (OSU `osu_allreduce`, NVIDIA `nccl-tests`):
- sizes are bytes of float32 (count = size / 4); KB = 1024 B, MB = 1024^2 B, GB = 1024^3 B;
- latency: every rank times every iteration after the warm-up; an iteration's time is the
  mean over ranks (OSU's "Avg Latency"; the max over ranks is kept as `latency_max_us`),
  and a size's latency is the median over its iterations. Iterations are scaled down for
  large messages (at most `--bytes-per-size` moved per size, at least `--min-iters`);
- algorithm bandwidth algbw = size / time; bus bandwidth busbw = algbw * 2 (P - 1) / P (the
  bytes each rank's link carries in a ring allreduce, comparable across P); GB/s = 1e9 B/s;
- the ring model t(n) = 2 (P - 1) alpha + 2 (P - 1) / P * n / beta is fitted by least
  squares of log(t_fit / t) over the sizes (`--fit-min-size`/`--fit-max-size` narrow them):
  every size counts alike, a factor too fast like a factor too slow (plain least squares
  would let the largest message decide everything and leave alpha to noise); the fit's
  quality is the largest and the root-mean-square relative residual (t_fit - t) / t.

The gradient set: the model of `--model` built with the trainer's defaults (hidden, layers,
L = H = 12, F = 2) on a synthetic road graph of `--nodes` sensors; Horovod as its
DistributedOptimizer sends it (one async allreduce per parameter's gradient, op Average,
then synchronize, fused by Horovod into buffers of at most the fusion threshold), and
torch.distributed as DDP does (gradients in DDP's buckets of `bucket_cap_mb`, each bucket
divided by P and allreduced async, then waited for). Reported with what the fitted ring
model predicts for the same messages.

The parts: bench/allreduce_fit.py (sizes, bandwidths, the ring model and its fit, message
grouping: pure arithmetic), bench/allreduce_report.py (the tables and the files), and this
module (the launcher, the job's command line and the flags).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import threading
from pathlib import Path

from hvd_stgnn.bench.allreduce_fit import format_size, parse_size, size_sweep
from hvd_stgnn.bench.allreduce_report import FILES, _summarize, fit_line, markdown_table
from hvd_stgnn.bench.jobs import LAUNCHER, job_environment, run_job
from hvd_stgnn.bench.report import fmt_num, invoked_command
from hvd_stgnn.errors import ConfigError

BACKENDS = ("horovod", "ddp")
LAUNCHERS = ("auto", "local", "srun")
DEVICES = ("cpu", "cuda")
DEFAULT_MIN_SIZE = "4KB"
DEFAULT_MAX_SIZE = "256MB"
DEFAULT_ITERS = 100
DEFAULT_MIN_ITERS = 5
DEFAULT_WARMUP = 5
DEFAULT_BYTES_PER_SIZE = "1GB"
DEFAULT_GRAD_ITERS = 20
DEFAULT_NODES = 207  # the METR-LA shape


# --- the launch ------------------------------------------------------------------------------------


def on_allocation_node(env: dict | None = None) -> bool:
    """Inside a Slurm allocation and on one of its nodes: SLURM_JOB_ID, and SLURMD_NODENAME
    (set by slurmd for a batch script, srun's tasks and salloc's interactive step, never on a
    login node, where an salloc shell only carries SLURM_JOB_ID)."""
    env = os.environ if env is None else env
    return bool(env.get("SLURM_JOB_ID")) and bool(env.get("SLURMD_NODENAME"))


def choose_launcher(requested: str, env: dict | None = None) -> tuple[str, str]:
    """(local | srun, why): auto is srun on a node of a Slurm allocation, else jobs/local.sh."""
    env = os.environ if env is None else env
    if requested == "local":
        return "local", "--launcher local"
    if requested == "srun":
        if not env.get("SLURM_JOB_ID"):
            raise ConfigError("--launcher srun: not inside a Slurm allocation (SLURM_JOB_ID is not set); run under "
                              "sbatch or salloc, or use --launcher local")
        return "srun", "--launcher srun"
    if on_allocation_node(env):
        return "srun", f"--launcher auto: inside Slurm job {env['SLURM_JOB_ID']} on node {env['SLURMD_NODENAME']}"
    if env.get("SLURM_JOB_ID"):
        return "local", (f"--launcher auto: SLURM_JOB_ID={env['SLURM_JOB_ID']} is set but this is not one of its nodes "
                         "(a login node): jobs/local.sh here; --launcher srun runs on the allocation")
    return "local", "--launcher auto: no Slurm allocation, jobs/local.sh"


def resolve_np(np_: int, launcher: str, env: dict | None = None) -> int:
    """--np, or by default 2 (local) / the allocation's tasks (srun). np 1: ConfigError."""
    env = os.environ if env is None else env
    if not np_:
        if launcher == "srun":
            tasks = env.get("SLURM_NTASKS") or env.get("SLURM_NPROCS") or ""
            if not tasks.isdigit():
                raise ConfigError("--np: not given and SLURM_NTASKS is not set; give --np P")
            np_ = int(tasks)
        else:
            np_ = 2
    if np_ == 1:
        raise ConfigError("--np 1: an allreduce over one rank moves no data, there is nothing to measure; "
                          "give --np 2 or more", all_ranks=True)
    if np_ < 1:
        raise ConfigError(f"--np must be >= 2 (got {np_})")
    return np_


def worker_args(args: argparse.Namespace, np_: int, command: str, job_prefix: str) -> list[str]:
    """The worker's flags: everything the sweep needs, the command line for the report."""
    out = ["--out", str(Path(args.out).resolve()), "--backends", ",".join(args.backends),
           "--min-size", str(args.min_size), "--max-size", str(args.max_size), "--iters", str(args.iters),
           "--min-iters", str(args.min_iters), "--warmup", str(args.warmup),
           "--bytes-per-size", str(args.bytes_per_size), "--model", args.model, "--hidden", str(args.hidden),
           "--layers", str(args.layers), "--nodes", str(args.nodes), "--grad-iters", str(args.grad_iters),
           "--fusion-threshold-mb", f"{args.fusion_threshold_mb:g}", "--cycle-time-ms", f"{args.cycle_time_ms:g}",
           "--fit-min-size", str(args.fit_min_size), "--fit-max-size", str(args.fit_max_size),
           "--threads", str(args.threads),
           "--device", args.device, "--expect-np", str(np_), "--command", command, "--job-command", job_prefix]
    return out


def job_command(launcher: str, np_: int, threads: int, worker: list[str], env: dict | None = None,
                srun_args: list[str] | None = None) -> list[str]:
    """The launch line: `bash jobs/local.sh -np P python -m hvd_stgnn.bench.allreduce_worker ...`,
    or `srun --mpi=pmix --cpu-bind=cores -n P --cpus-per-task=T --export=ALL --kill-on-bad-exit=1 ...`
    (jobs/slurm.sbatch's SRUN_MPI, SRUN_CPU_BIND and SRUN_ARGS are honoured; `srun_args`: --srun-args)."""
    env = os.environ if env is None else env
    program = [sys.executable, "-m", "hvd_stgnn.bench.allreduce_worker", *worker]
    if launcher == "srun":
        return ["srun", f"--mpi={env.get('SRUN_MPI') or 'pmix'}", f"--cpu-bind={env.get('SRUN_CPU_BIND') or 'cores'}",
                "-n", str(np_), f"--cpus-per-task={threads}", "--export=ALL", "--kill-on-bad-exit=1",
                *env.get("SRUN_ARGS", "").split(), *(srun_args or []), *program]
    return ["bash", str(LAUNCHER), "-np", str(np_), *program]


def job_env(launcher: str, threads: int, device: str) -> dict:
    env = job_environment(threads)
    if launcher == "srun":
        env["SRUN_CPUS_PER_TASK"] = str(threads)  # srun >= 22.05 does not inherit --cpus-per-task (slurm.sbatch)
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU benchmark: no rank should touch (or share) a GPU
    return env


def explicit_command(args: argparse.Namespace, np_: int) -> str:
    """The command with every setting explicit (for the report when not run from the CLI)."""
    cmd = ["hvd-stgnn", "bench", "allreduce", "--np", str(np_), "--backends", ",".join(args.backends),
           "--min-size", format_size(args.min_size).replace(" ", ""),
           "--max-size", format_size(args.max_size).replace(" ", ""), "--iters", str(args.iters),
           "--min-iters", str(args.min_iters), "--warmup", str(args.warmup),
           "--bytes-per-size", format_size(args.bytes_per_size).replace(" ", ""), "--model", args.model,
           "--hidden", str(args.hidden), "--layers", str(args.layers), "--nodes", str(args.nodes),
           "--grad-iters", str(args.grad_iters), "--fusion-threshold-mb", f"{args.fusion_threshold_mb:g}",
           "--cycle-time-ms", f"{args.cycle_time_ms:g}", "--threads", str(args.threads), "--device", args.device,
           "--launcher", args.launcher]
    for flag, size in (("--fit-min-size", args.fit_min_size), ("--fit-max-size", args.fit_max_size)):
        if size:
            cmd += [flag, format_size(size).replace(" ", "")]
    if args.srun_args:
        cmd += ["--srun-args", args.srun_args]
    return shlex.join(cmd + ["--out", str(args.out)])


class _Tail(threading.Thread):
    """Echo the lines rank 0 appends to the progress file onto our stderr while the job runs."""

    def __init__(self, path: Path, stream=None) -> None:
        super().__init__(daemon=True)
        self.path, self.stream, self.done = path, stream or sys.stderr, threading.Event()

    def run(self) -> None:
        pos = 0
        while True:
            finished = self.done.wait(0.5)
            try:
                with open(self.path) as f:
                    f.seek(pos)
                    chunk = f.read()
                    pos = f.tell()
            except OSError:
                chunk = ""
            if chunk:
                self.stream.write(chunk)
                self.stream.flush()
            if finished:
                return


def cmd_bench_allreduce(args: argparse.Namespace) -> int:
    launcher, why = choose_launcher(args.launcher)
    np_ = resolve_np(args.np, launcher)
    if args.device == "cuda" and launcher == "local":
        import torch

        if not torch.cuda.is_available():
            why_not = "this torch has no CUDA support" if torch.version.cuda is None else "no CUDA device is visible"
            raise ConfigError(f"--device cuda: no GPU to run on here ({why_not}; torch {torch.__version__})")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    progress = out / "allreduce.progress"
    progress.unlink(missing_ok=True)
    for name in FILES:
        (out / name).unlink(missing_ok=True)
    command = invoked_command() or explicit_command(args, np_)
    srun_args = shlex.split(args.srun_args)
    prefix = (shlex.join(job_command(launcher, np_, args.threads, [], srun_args=srun_args)[:-3]) if launcher == "srun"
              else f"jobs/local.sh -np {np_}")
    cmd = job_command(launcher, np_, args.threads, worker_args(args, np_, command, prefix), srun_args=srun_args)
    sizes = size_sweep(args.min_size, args.max_size)
    log = out / "allreduce.log"
    print(f"bench allreduce: {np_} ranks ({why}), {', '.join(args.backends)}, {len(sizes)} sizes "
          f"{format_size(sizes[0])}..{format_size(sizes[-1])}, gradient set of {args.model}; log {log}",
          file=sys.stderr, flush=True)
    tail = _Tail(progress)
    tail.start()
    try:
        seconds = run_job(cmd, job_env(launcher, args.threads, args.device), f"allreduce np={np_}", log, args.job_timeout)
    finally:
        tail.done.set()
        tail.join()
        progress.unlink(missing_ok=True)
    result_path = out / "allreduce.json"
    try:
        result = json.loads(result_path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"the job ended but wrote no usable {result_path} ({exc}); full stdout/stderr: {log}") from None
    print(f"bench allreduce: done in {seconds:.1f} s; wrote {', '.join(str(out / f) for f in FILES)}",
          file=sys.stderr, flush=True)
    print(markdown_table(result["rows"], result["backends"]))
    print()
    for b in result["backends"]:
        if b in result["fits"]:
            print(fit_line(b, result["fits"][b], result["np"]))
    grad = result.get("gradient_set") or {}
    for b in result["backends"]:
        g = grad.get(b)
        if g:
            model = g.get("predicted_s")
            print(f"{grad['model']} gradient set, {b}: {fmt_num(g['seconds'] * 1e3)} ms for "
                  f"{len(g['message_bytes'])} message(s) of {fmt_num(grad['bytes'] / 1e6)} MB"
                  + (f" (ring model {fmt_num(model * 1e3)} ms)" if model else ""))
    return 0


# --- flags ---------------------------------------------------------------------------------------


def _backends(text: str) -> list[str]:
    names = [p.strip() for p in str(text).split(",") if p.strip()]
    bad = [n for n in names if n not in BACKENDS]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(BACKENDS)} (got {text!r})")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"a backend appears twice (got {text!r})")
    return names


def _size(flag: str, allow_zero: bool = False):
    def parse(text: str) -> int:
        if allow_zero and str(text).strip() == "0":
            return 0
        try:
            return parse_size(text, flag)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc).split(": ", 1)[-1]) from None
    parse.__name__ = "size"
    return parse


def _int_at_least(minimum: int, words: str):
    """An argparse type: an integer >= `minimum`, else "expected {words} (got ...)"."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {words} (got {text!r})") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {words} (got {text!r})")
        return value
    return parse


_positive = _int_at_least(1, "a positive integer")
_non_negative = _int_at_least(0, "an integer >= 0")


def _model(text: str) -> str:
    from hvd_stgnn.models import MODELS

    if text not in MODELS:
        raise argparse.ArgumentTypeError(f"unknown model {text!r} (choose from {', '.join(MODELS)})")
    return text


def add_sweep_flags(p: argparse.ArgumentParser) -> None:
    """The flags the parent and the worker share."""
    p.add_argument("--backends", type=_backends, default=list(BACKENDS),
                   help="comma-separated: horovod (hvd.allreduce over MPI), ddp (torch.distributed: gloo on the CPU, "
                   "nccl with --device cuda) (default: horovod,ddp)")
    p.add_argument("--min-size", type=_size("--min-size"), default=parse_size(DEFAULT_MIN_SIZE),
                   help=f"smallest message, e.g. 4KB (KB = 1024 B) (default: {DEFAULT_MIN_SIZE})")
    p.add_argument("--max-size", type=_size("--max-size"), default=parse_size(DEFAULT_MAX_SIZE),
                   help=f"largest message; sizes double from --min-size (default: {DEFAULT_MAX_SIZE})")
    p.add_argument("--iters", type=_positive, default=DEFAULT_ITERS,
                   help=f"timed iterations per size for small messages (default: {DEFAULT_ITERS})")
    p.add_argument("--min-iters", type=_positive, default=DEFAULT_MIN_ITERS,
                   help=f"timed iterations for the largest messages, at least (default: {DEFAULT_MIN_ITERS})")
    p.add_argument("--warmup", type=_non_negative, default=DEFAULT_WARMUP,
                   help=f"warm-up iterations per size, scaled down with the timed ones, at least 1 "
                   f"(default: {DEFAULT_WARMUP})")
    p.add_argument("--bytes-per-size", type=_size("--bytes-per-size"), default=parse_size(DEFAULT_BYTES_PER_SIZE),
                   help="scale iterations down so that at most this much is reduced per size "
                   f"(default: {DEFAULT_BYTES_PER_SIZE})")
    p.add_argument("--model", type=_model, default="tgcn", help="model whose gradient set is timed (default: tgcn)")
    p.add_argument("--hidden", type=_non_negative, default=0, help="its hidden size (0: the trainer's default, 64)")
    p.add_argument("--layers", type=_non_negative, default=0, help="DCRNN's layers (0: the trainer's default, 2)")
    p.add_argument("--nodes", type=_positive, default=DEFAULT_NODES,
                   help=f"sensors of the synthetic graph the model is built on (default: {DEFAULT_NODES}, METR-LA)")
    p.add_argument("--grad-iters", type=_non_negative, default=DEFAULT_GRAD_ITERS,
                   help=f"timed allreduces of the gradient set (0: skip it) (default: {DEFAULT_GRAD_ITERS})")
    p.add_argument("--fusion-threshold-mb", type=float, default=-1.0,
                   help="Horovod fusion threshold and DDP bucket_cap_mb for the gradient set, MiB (-1: each "
                   "backend's default: HOROVOD_FUSION_THRESHOLD or 128 MiB; 25 MiB)")
    p.add_argument("--cycle-time-ms", type=float, default=-1.0,
                   help="HOROVOD_CYCLE_TIME, ms: how often Horovod's background thread starts queued allreduces; a "
                   "synchronous hvd.allreduce waits for the next cycle (-1: the environment's or Horovod's 1 ms)")
    p.add_argument("--fit-min-size", type=_size("--fit-min-size", allow_zero=True), default=0,
                   help="fit alpha/beta over sizes from this one only (default: every size)")
    p.add_argument("--fit-max-size", type=_size("--fit-max-size", allow_zero=True), default=0,
                   help="fit alpha/beta over sizes up to this one only (default: every size)")
    p.add_argument("--threads", type=_positive, default=1, help="torch threads per rank (default: 1)")
    p.add_argument("--device", choices=DEVICES, default="cpu",
                   help="where the messages live: cpu, or cuda (each rank its local GPU; ddp then uses nccl, "
                   "Horovod needs an NCCL build)")


def add_allreduce_parser(bench_cmds: argparse._SubParsersAction) -> None:
    """Register `bench allreduce` (called from bench/cli.py)."""
    p = bench_cmds.add_parser("allreduce", help="allreduce latency/bandwidth by size (Horovod, torch.distributed), "
                              "the model's gradient set, and the ring model's alpha/beta")
    p.add_argument("--np", type=_non_negative, default=0,
                   help="ranks (>= 2; default: 2, or SLURM_NTASKS under srun)")
    add_sweep_flags(p)
    p.add_argument("--launcher", choices=LAUNCHERS, default="auto",
                   help="local: jobs/local.sh (mpirun); srun: inside a Slurm allocation; auto: srun on a node of "
                   "an allocation, else local")
    p.add_argument("--srun-args", default="", help='extra srun options, e.g. "--ntasks-per-node=4" (with srun)')
    p.add_argument("--job-timeout", type=float, default=0, help="seconds the job may run (0: no limit)")
    p.add_argument("--out", required=True, help="directory for allreduce.json/.csv/.md/.png and the job's log")
    p.set_defaults(func=cmd_bench_allreduce)


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        sys.exit("usage: python -m hvd_stgnn.bench.allreduce OUT_DIR_OR_JSON ...   (median table over runs)")
    sys.exit(_summarize(sys.argv[1:]))
