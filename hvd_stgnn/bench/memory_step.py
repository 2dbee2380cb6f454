"""`hvd-stgnn bench memory-step`: what activation checkpointing saves and what it costs, per
model, in one real training step at full size.

    hvd-stgnn bench memory-step --out runs/memory-step
    hvd-stgnn bench memory-step --models dcrnn,gwnet --nodes 11160 --batch-size 4 --steps 3 \\
        --hidden 64 --layers 2 --degree 3 --threads 2 --out runs/memory-step

For every model of `--models` and each of its two modes (`none` and the model's unit,
models/checkpointing.py CHECKPOINT_UNITS: `step` for the recurrent models, `block` for Graph
WaveNet) the parent runs one FRESH worker process (`python -m hvd_stgnn.bench.memory_step
--worker ...`), one after the other, so that every peak RSS starts from a clean heap. The
worker builds the model (graph_mode "sparse") on a random sparse graph of `--nodes` sensors
and `--degree` out-edges each (plan/activations.py `_random_graph`), Adam, random x (B, 12,
N, 2) and y (B, 12, N) (DCRNN, which takes the target for scheduled sampling, gets
teacher = y), and then:

1. warm-up: one step (zero_grad, forward + backward, Adam step) inside
   plan/activations.py `count_saved`: `saved_bytes` = what the forward keeps for the
   backward pass (`stored_bytes`: every saved tensor, each storage once, parameters,
   buffers and the input left out; with checkpointing, what the checkpointed regions hold);
2. glibc's heap is trimmed (`malloc_trim(0)`: the warm-up's freed activations go back to the
   kernel), VmHWM is reset (`5` to /proc/self/clear_refs) and `--steps` timed steps run (zero_grad,
   forward, loss = |pred - y|.mean(), backward, Adam step, `del pred, loss`, as the trainer
   does): `peak_growth_bytes` = VmHWM after them - VmRSS before them, `step_seconds` their
   median;
3. checkpointed mode only, after the timed steps (a plain pass before them would leave its
   freed activations in glibc's heap and raise the RSS baseline): one forward + backward with
   `model.checkpointing = False` under `count_saved`: `recompute_bytes` = the largest region's
   saved bytes (`max_region_bytes`), what one region's recomputation re-creates in the
   backward pass. The planner counts saved + recompute (plan/activations.py `_saved_bytes`).

Peak RSS is what the kernel sees, so it includes freed memory that glibc malloc keeps in its
heap. Within a step that is a lot (DCRNN at N = 2,000, B = 4, checkpointed: 106 MiB of live
tensors after the forward, +1.05-1.55 GiB RSS); `--malloc-mmap-threshold 65536` starts the
workers with glibc's MALLOC_MMAP_THRESHOLD_ fixed, every allocation above it its own mmap,
unmapped when freed, so that RSS follows the live tensors (+115 MiB there).

Per model: saved none / ckpt ("x lower"), (saved + recompute) none / ckpt, peak RSS growth
none / ckpt, step time ckpt / none; and the issue's targets: saved bytes >= 4x lower with
step time <= 1.5x for DCRNN and Graph WaveNet, saved bytes >= 3x lower for T-GCN and
A3T-GCN (TARGETS).

Writes, with `--out DIR`, memory_step.json (settings, machine, versions, command, rows,
comparisons), memory_step.csv (one row per model and mode) and memory_step.md (the machine,
torch, the exact command, the tables). Progress goes to stderr, one line as each worker
starts and ends. A worker that fails (killed for memory, an exception) ends the benchmark
with one line naming the model, the mode and its exit status, exit status 1.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

from hvd_stgnn.bench.jobs import available_cores, job_environment
from hvd_stgnn.bench.report import invoked_command, machine_info, write_csv
from hvd_stgnn.errors import ConfigError, UserError

MODELS = ("tgcn", "a3tgcn", "dcrnn", "gwnet")
# What each model checkpoints (models/checkpointing.py CHECKPOINT_UNITS; kept here too so the
# CLI does not import torch to build its parser; tests check that the two agree).
UNITS = {"tgcn": "step", "a3tgcn": "step", "dcrnn": "step", "gwnet": "block"}
NAMES = {"tgcn": "T-GCN", "a3tgcn": "A3T-GCN", "dcrnn": "DCRNN", "gwnet": "Graph WaveNet"}
# model -> (saved bytes none / ckpt at least, step time ckpt / none at most or None)
TARGETS: dict[str, tuple[float, float | None]] = {
    "tgcn": (3.0, None), "a3tgcn": (3.0, None), "dcrnn": (4.0, 1.5), "gwnet": (4.0, 1.5),
}
INPUT_STEPS = HORIZON = 12
FEATURES = 2
FILES = ("memory_step.json", "memory_step.csv", "memory_step.md")
CSV_COLUMNS = (
    "model", "mode", "nodes", "batch_size", "hidden", "layers", "degree", "threads", "steps", "mmap_threshold",
    "parameters",
    "saved_bytes", "recompute_bytes", "rss_before_bytes", "peak_rss_bytes", "peak_growth_bytes",
    "step_seconds", "warmup_seconds", "wall_seconds",
)


class WorkerFailed(UserError):
    """A worker process died or failed: one line, exit status 1."""

    exit_code = 1


@dataclass(frozen=True)
class Settings:
    nodes: int = 11160
    batch_size: int = 4
    steps: int = 3
    hidden: int = 64
    layers: int = 2
    degree: int = 3
    threads: int = 0  # 0: every core this process may run on
    mmap_threshold: int = 0  # glibc MALLOC_MMAP_THRESHOLD_ of the workers (0: glibc's dynamic default)

    def resolved(self) -> "Settings":
        return self if self.threads else Settings(**{**asdict(self), "threads": available_cores()})


# --- flags (pure) -------------------------------------------------------------------------------


def parse_models(text: str) -> list[str]:
    """'dcrnn,gwnet' -> ['dcrnn', 'gwnet'] in the order given. ConfigError naming --models."""
    values = [v.strip() for v in str(text).split(",")]
    bad = [v for v in values if v not in MODELS]
    if not text or bad:
        raise ConfigError(f"--models: {', '.join(map(repr, bad)) or repr(text)} is not a model; expected a "
                          f"comma-separated list of {', '.join(MODELS)}")
    if len(set(values)) != len(values):
        raise ConfigError(f"--models: a model appears twice (got {text!r})")
    return values


def check_settings(s: Settings) -> None:
    """Every size must be positive: ConfigError naming the first flag that is not."""
    for flag, value, least in (("--nodes", s.nodes, 2), ("--batch-size", s.batch_size, 1), ("--steps", s.steps, 1),
                               ("--hidden", s.hidden, 1), ("--layers", s.layers, 1), ("--degree", s.degree, 1),
                               ("--threads", s.threads, 0), ("--malloc-mmap-threshold", s.mmap_threshold, 0)):
        if value < least:
            what = f"at least {least}" if least > 1 else "a positive integer" if least else "0 or more"
            raise ConfigError(f"{flag} must be {what} (got {value})")


def modes_for(model: str) -> tuple[str, str]:
    return ("none", UNITS[model])


# --- ratios and targets (pure) -----------------------------------------------------------------


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing or b is not positive."""
    if a is None or b is None or b <= 0:
        return None
    return a / b


def compare(none: dict, ckpt: dict) -> dict:
    """The ratios of one model's two rows (`none` and its checkpointed mode)."""
    recompute = ckpt.get("recompute_bytes") or 0
    return {
        "model": none["model"],
        "mode": ckpt["mode"],
        "saved_ratio": ratio(none["saved_bytes"], ckpt["saved_bytes"]),  # x lower
        "activation_ratio": ratio(none["saved_bytes"], ckpt["saved_bytes"] + recompute),  # x lower
        "peak_ratio": ratio(none["peak_growth_bytes"], ckpt["peak_growth_bytes"]),  # x lower
        "time_ratio": ratio(ckpt["step_seconds"], none["step_seconds"]),  # x slower
    }


def check_targets(model: str, comparison: dict) -> dict:
    """The issue's targets for `model` against its comparison: saved bytes at least
    TARGETS[model][0] x lower, and (DCRNN, Graph WaveNet) step time at most TARGETS[model][1] x."""
    saved_target, time_target = TARGETS[model]
    saved, slower = comparison.get("saved_ratio"), comparison.get("time_ratio")
    saved_ok = saved is not None and saved >= saved_target
    time_ok = None if time_target is None else (slower is not None and slower <= time_target)
    return {"model": model, "saved_target": saved_target, "saved_ratio": saved, "saved_ok": saved_ok,
            "time_target": time_target, "time_ratio": slower, "time_ok": time_ok,
            "ok": saved_ok and time_ok is not False}


def summarize(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """(comparisons, targets), one each per model that has both of its rows, in row order."""
    by_key = {(r["model"], r["mode"]): r for r in rows}
    comparisons, targets = [], []
    for model in dict.fromkeys(r["model"] for r in rows):
        none, unit = modes_for(model)
        if (model, none) in by_key and (model, unit) in by_key:
            c = compare(by_key[model, none], by_key[model, unit])
            comparisons.append(c)
            targets.append(check_targets(model, c))
    return comparisons, targets


# --- formats ------------------------------------------------------------------------------------


def fmt_bytes(n: float | None) -> str:
    """1.23 GiB, 456 MiB, 12.3 KiB; '-' for None."""
    if n is None:
        return "-"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            v = n / size
            return f"{v:.2f} {unit}" if v < 10 else f"{v:.1f} {unit}" if v < 100 else f"{v:.0f} {unit}"
    return f"{n:.0f} B"


def fmt_ratio(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}x"


def fmt_seconds(x: float) -> str:
    return f"{x:.3f} s" if x < 1 else f"{x:.2f} s" if x < 100 else f"{x:.0f} s"


def _verdict(ok: bool | None) -> str:
    return "-" if ok is None else "yes" if ok else "**no**"


def full_command(models: list[str], s: Settings, out: str = "") -> str:
    """The command with every setting explicit (what reproduces this run)."""
    argv = ["hvd-stgnn", "bench", "memory-step", "--models", ",".join(models), "--nodes", str(s.nodes),
            "--batch-size", str(s.batch_size), "--steps", str(s.steps), "--hidden", str(s.hidden),
            "--layers", str(s.layers), "--degree", str(s.degree), "--threads", str(s.threads),
            "--malloc-mmap-threshold", str(s.mmap_threshold)]
    return shlex.join([*argv, *(["--out", out] if out else [])])


def tables(result: dict) -> str:
    """The measurement table (a ratio row after each model's two rows) and the targets table."""
    rows, comparisons = result["rows"], {c["model"]: c for c in result["comparisons"]}
    out = ["| model | mode | saved | recompute | peak RSS growth | step |",
           "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        out.append(f"| {NAMES[r['model']]} | {r['mode']} | {fmt_bytes(r['saved_bytes'])} | "
                   f"{fmt_bytes(r['recompute_bytes'])} | {fmt_bytes(r['peak_growth_bytes'])} | "
                   f"{fmt_seconds(r['step_seconds'])} |")
        c = comparisons.get(r["model"])
        if c and r["mode"] == c["mode"]:
            out.append(f"| {NAMES[r['model']]} | ratio | none/{c['mode']} {fmt_ratio(c['saved_ratio'])} | "
                       f"(saved + recompute) {fmt_ratio(c['activation_ratio'])} | "
                       f"none/{c['mode']} {fmt_ratio(c['peak_ratio'])} | {c['mode']}/none {fmt_ratio(c['time_ratio'])} |")
    out += ["", "| model | saved bytes lower | target | met | step time | target | met |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for t in result["targets"]:
        time_target = "-" if t["time_target"] is None else f"<= {t['time_target']:g}x"
        out.append(f"| {NAMES[t['model']]} | {fmt_ratio(t['saved_ratio'])} | >= {t['saved_target']:g}x | "
                   f"{_verdict(t['saved_ok'])} | {fmt_ratio(t['time_ratio'])} | {time_target} | "
                   f"{_verdict(t['time_ok'])} |")
    return "\n".join(out)


def markdown(result: dict) -> str:
    m, s = result["machine"], result["settings"]
    ram = f", {m['ram_bytes'] / (1 << 30):.0f} GiB RAM" if m.get("ram_bytes") else ""
    lines = [
        "# Activation checkpointing: saved bytes, peak RSS, step time (`hvd-stgnn bench memory-step`)",
        "",
        f"- machine: {m['cpu']}, {m['cores']} cores{ram} (host {m['host']})",
        f"- torch {result['versions']['torch']}, Python {result['versions']['python']}",
        f"- command: `{result['command']}`",
    ]
    if result.get("typed_command") and result["typed_command"] != result["command"]:
        lines.append(f"- as typed: `{result['typed_command']}`")
    lines += [
        f"- N = {s['nodes']} sensors (random sparse graph, {s['degree']} out-edges each, graph_mode sparse), "
        f"B = {s['batch_size']}, L = H = {INPUT_STEPS}, F = {FEATURES}, hidden {s['hidden']}, DCRNN "
        f"{s['layers']} layers; Adam; {s['threads']} threads; one fresh process per row; glibc malloc "
        + (f"with MALLOC_MMAP_THRESHOLD_={s['mmap_threshold']}" if s["mmap_threshold"] else "as it comes (dynamic "
           "mmap threshold)"),
        f"- saved: what the forward keeps for the backward pass (warm-up step, plan/activations.py "
        f"count_saved); recompute: the largest checkpointed region's saved bytes, re-created once in the "
        f"backward pass; peak RSS growth: VmHWM over {s['steps']} timed step(s) - VmRSS before them (after "
        f"malloc_trim), freed memory that the allocator keeps included; step: median seconds of the timed steps",
        f"- wall time: {result['wall_seconds']:.0f} s",
        "",
        tables(result),
        "",
    ]
    return "\n".join(lines)


def write_outputs(result: dict, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / name for name in FILES]
    paths[0].write_text(json.dumps(result, indent=2) + "\n")
    write_csv(result["rows"], paths[1], CSV_COLUMNS)
    paths[2].write_text(markdown(result))
    return paths


# --- the worker (one model, one mode, a fresh process) ---------------------------------------------


def _trim_heap() -> bool:
    """glibc `malloc_trim(0)`: return the free pages of every malloc arena to the kernel. Without
    it, RSS before the timed steps still holds the warm-up's freed activations (tensors below
    glibc's mmap threshold, up to 32 MiB, live in the heap), the timed steps reuse them, and
    the growth says little (T-GCN at N = 11,160, B = 4: +127 MiB for 804 MiB saved). False
    where there is no glibc."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
        return True
    except (OSError, AttributeError):
        return False


def measure(model: str, mode: str, s: Settings) -> dict:
    """One row: build, warm up under count_saved, time `s.steps` steps, (ckpt) probe the
    recomputation. Linux only (/proc/self/status, /proc/self/clear_refs)."""
    import torch

    from hvd_stgnn.models import ModelInputs, build_model
    from hvd_stgnn.plan.activations import _random_graph, _status_bytes, count_saved, recompute_bytes, training_step

    t_start = time.perf_counter()
    torch.set_num_threads(s.threads)
    torch.manual_seed(0)
    edge_index, edge_weight = _random_graph(s.nodes, s.degree)
    net = build_model(model, ModelInputs(
        edge_index, edge_weight, s.nodes, in_features=FEATURES, input_steps=INPUT_STEPS, horizon=HORIZON,
        hidden=s.hidden, graph_mode="sparse", layers=s.layers, activation_checkpointing=mode))
    net.train()
    opt = torch.optim.Adam(net.parameters())
    x = torch.randn(s.batch_size, INPUT_STEPS, s.nodes, FEATURES)
    y = torch.randn(s.batch_size, HORIZON, s.nodes)
    teacher = y if getattr(net, "uses_teacher", False) else None

    t0 = time.perf_counter()
    opt.zero_grad()
    saved = count_saved(net, x, teacher).stored_bytes  # forward + backward
    opt.step()
    warmup = time.perf_counter() - t0

    trimmed = _trim_heap()  # the warm-up's freed activations back to the kernel: a clean baseline
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    base = _status_bytes("VmRSS")
    seconds = []
    for _ in range(s.steps):
        t0 = time.perf_counter()
        training_step(net, opt, x, y, teacher)
        seconds.append(time.perf_counter() - t0)
    peak = _status_bytes("VmHWM")

    recompute = None
    if mode != "none":
        opt.zero_grad()
        recompute = recompute_bytes(net, x, teacher)
    return {
        "model": model, "mode": mode, **asdict(s), "parameters": sum(p.numel() for p in net.parameters()),
        "saved_bytes": saved, "recompute_bytes": recompute, "rss_before_bytes": base, "peak_rss_bytes": peak,
        "peak_growth_bytes": peak - base, "heap_trimmed": trimmed, "step_seconds": statistics.median(seconds),
        "step_seconds_all": seconds, "warmup_seconds": warmup, "wall_seconds": time.perf_counter() - t_start,
    }


def _worker_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hvd_stgnn.bench.memory_step --worker")
    p.add_argument("--worker", action="store_true", required=True)
    p.add_argument("--model", choices=MODELS, required=True)
    p.add_argument("--mode", choices=("none", "step", "block"), required=True)
    for name in ("nodes", "batch-size", "steps", "hidden", "layers", "degree", "threads", "mmap-threshold"):
        p.add_argument(f"--{name}", type=int, required=True)
    return p


def worker_main(argv: list[str] | None = None) -> int:
    a = _worker_parser().parse_args(argv)
    s = Settings(a.nodes, a.batch_size, a.steps, a.hidden, a.layers, a.degree, a.threads, a.mmap_threshold)
    print(json.dumps(measure(a.model, a.mode, s)), flush=True)
    return 0


# --- the parent ---------------------------------------------------------------------------------


def worker_command(model: str, mode: str, s: Settings) -> list[str]:
    return [sys.executable, "-m", "hvd_stgnn.bench.memory_step", "--worker", "--model", model, "--mode", mode,
            "--nodes", str(s.nodes), "--batch-size", str(s.batch_size), "--steps", str(s.steps),
            "--hidden", str(s.hidden), "--layers", str(s.layers), "--degree", str(s.degree),
            "--threads", str(s.threads), "--mmap-threshold", str(s.mmap_threshold)]


def _exit_status(rc: int) -> str:
    if rc < 0:
        import signal

        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        hint = "; out of memory?" if -rc == signal.SIGKILL else ""
        return f"killed by {name} (exit status {rc}{hint})"
    if rc == 137:
        return "exit status 137 (SIGKILL; out of memory?)"
    return f"exit status {rc}"


def _last_error(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "error" in line]
    return (errors or lines or [""])[-1][:300]


def run_worker(model: str, mode: str, s: Settings, command: list[str] | None = None) -> dict:
    """Run one worker; its row. WorkerFailed (one line) when it fails."""
    env = job_environment(s.threads)
    if s.mmap_threshold:  # read by glibc when the worker starts
        env["MALLOC_MMAP_THRESHOLD_"] = str(s.mmap_threshold)
    proc = subprocess.run(command or worker_command(model, mode, s), capture_output=True, text=True, env=env)
    where = f"memory-step worker for {model} mode {mode}"
    if proc.returncode != 0:
        why = _last_error(proc.stderr)
        raise WorkerFailed(f"{where} failed: {_exit_status(proc.returncode)}"
                           + (f": {why}" if why else ""))
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise WorkerFailed(f"{where} printed no result (exit status 0)") from None


def _progress(log: TextIO | None, text: str) -> None:
    print(f"bench memory-step: {text}", file=log or sys.stderr, flush=True)


def run(models: list[str], s: Settings, log: TextIO | None = None) -> dict:
    """Every (model, mode) in its own worker, one after the other; the result dict."""
    s = s.resolved()
    check_settings(s)
    jobs = [(m, mode) for m in models for mode in modes_for(m)]
    rows, t_start = [], time.perf_counter()
    for i, (model, mode) in enumerate(jobs, 1):
        _progress(log, f"[{i}/{len(jobs)}] {model} {mode}: started (N={s.nodes}, B={s.batch_size}, "
                       f"{s.steps} timed step(s), {s.threads} thread(s))")
        t0 = time.perf_counter()
        row = run_worker(model, mode, s)
        rows.append(row)
        _progress(log, f"[{i}/{len(jobs)}] {model} {mode}: done in {time.perf_counter() - t0:.0f} s: saved "
                       f"{fmt_bytes(row['saved_bytes'])}, recompute {fmt_bytes(row['recompute_bytes'])}, peak RSS "
                       f"+{fmt_bytes(row['peak_growth_bytes'])}, {fmt_seconds(row['step_seconds'])}/step")
    comparisons, targets = summarize(rows)
    return {"settings": asdict(s), "models": models, "rows": rows, "comparisons": comparisons, "targets": targets,
            "wall_seconds": time.perf_counter() - t_start}


# --- the subcommand -------------------------------------------------------------------------------


def cmd_bench_memory_step(args: argparse.Namespace) -> int:
    from hvd_stgnn.bench.report import versions

    models = parse_models(args.models)
    s = Settings(args.nodes, args.batch_size, args.steps, args.hidden, args.layers, args.degree,
                 args.threads if args.threads is not None else 0, args.malloc_mmap_threshold)
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be a positive integer (got {args.threads}); leave it out for every core")
    check_settings(s)
    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        raise ConfigError(f"--out {args.out}: exists and is not a directory")
    result = run(models, s)
    s = Settings(**result["settings"])
    result = {"command": full_command(models, s, args.out), "typed_command": invoked_command(),
              "machine": machine_info(), "versions": {k: v for k, v in versions().items() if k in ("python", "torch")},
              **result}
    if args.out:
        for path in write_outputs(result, Path(args.out)):
            _progress(None, f"wrote {path}")
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(tables(result))
    return 0


def add_memory_step_parser(bench_cmds: argparse._SubParsersAction) -> None:
    d = Settings()
    p = bench_cmds.add_parser("memory-step", help="activation checkpointing: saved bytes, peak RSS and step time, "
                              "none vs checkpointed, one fresh process each")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated (default: {','.join(MODELS)})")
    p.add_argument("--nodes", type=int, default=d.nodes, help=f"sensors (default: {d.nodes}, PeMS)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"windows per step (default: {d.batch_size})")
    p.add_argument("--steps", type=int, default=d.steps, help=f"timed steps after 1 warm-up (default: {d.steps})")
    p.add_argument("--hidden", type=int, default=d.hidden, help=f"hidden units (default: {d.hidden})")
    p.add_argument("--layers", type=int, default=d.layers, help=f"DCRNN's recurrent layers (default: {d.layers})")
    p.add_argument("--degree", type=int, default=d.degree,
                   help=f"out-edges per sensor of the random sparse graph (default: {d.degree}, about PeMS's)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per worker (default: every core)")
    p.add_argument("--malloc-mmap-threshold", type=int, default=0, metavar="BYTES",
                   help="run the workers with glibc's MALLOC_MMAP_THRESHOLD_=BYTES: every larger allocation is "
                   "its own mmap, given back when freed, so RSS follows the live tensors (default 0: glibc's "
                   "dynamic threshold, what training runs with)")
    p.add_argument("--out", default="", help="write memory_step.json, .csv and .md into this directory")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_bench_memory_step)


if __name__ == "__main__":
    sys.exit(worker_main())
