"""The training loop: one model, batch sources per split, a backend for everything distributed.

Data preparation (load, split, statistics, sources) is in data_setup.py, evaluation in
evaluate.py, checkpoints in checkpoint.py. Every rank runs the same number of optimizer
steps per epoch; validation/test metrics are sums and counts, reduced.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import statistics
import time

import torch
from tqdm import tqdm

from hvd_stgnn.batching import num_batches
from hvd_stgnn.config import Config
from hvd_stgnn.errors import ConfigError, Interrupted, UserError
from hvd_stgnn.metrics import HorizonErrorSums, masked_mae_loss
from hvd_stgnn.models import ModelInputs, build_model
from hvd_stgnn.parallel import Backend
from hvd_stgnn.parallel.launcher import launch_record
from hvd_stgnn.profiling.memory import peak_rss_bytes, process_pss_bytes
from hvd_stgnn.profiling.window import TimelineWindow
from hvd_stgnn.train import checkpoint as ckpt
from hvd_stgnn.train.data_setup import prepare, resolve_device
from hvd_stgnn.train.evaluate import batching_summary, evaluate, evaluate_baselines, param_digest
from hvd_stgnn.train.faults import FaultInjector, StopSignal
from hvd_stgnn.train.phases import PhaseTimer, summarize
from hvd_stgnn.train.results import format_test_table, write_json_atomic
from hvd_stgnn.train.rundir_lock import RunDirLock
from hvd_stgnn.train.runlog import RunLog
from hvd_stgnn.train.schedule import lr_factor

__all__ = ["evaluate", "param_digest", "threads_per_rank", "train"]

WARMUP_STEPS = 2


def _log(backend: Backend, message: str) -> None:
    if backend.is_root:
        tqdm.write(message)


def threads_per_rank(requested: int, local_size: int) -> int:
    """--threads, else OMP_NUM_THREADS (what the job scripts set from the allocation), else
    this rank's share of the cores it may run on: never more threads than free cores, since
    spin-waiting OpenMP threads on a shared core slow a step down ~30x."""
    if requested > 0:
        return requested
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(allowed, (os.cpu_count() or 1) // max(1, local_size)))


def _agree(backend: Backend, fn):
    """Run `fn` on rank 0 only; every rank gets its result, or the same UserError."""
    result, error = None, None
    if backend.is_root:
        try:
            result = fn()
        except UserError as exc:
            error = (type(exc), str(exc))
    result, error = backend.broadcast_object((result, error))
    if error is not None:
        raise error[0](error[1], all_ranks=True)
    return result


def _build_model(cfg: Config, rd, num_features: int, device: torch.device) -> torch.nn.Module:
    data = rd.data
    inputs = ModelInputs(
        edge_index=torch.from_numpy(data.edge_index),
        edge_weight=torch.from_numpy(data.edge_weight),
        num_nodes=data.num_nodes,
        in_features=num_features,
        input_steps=cfg.data.input_steps,
        horizon=cfg.data.horizon,
        hidden=cfg.model.hidden,
        graph_mode=cfg.model.graph_mode,
        layers=cfg.model.layers,
        diffusion_steps=cfg.model.diffusion_steps,
        teacher_decay=cfg.model.teacher_decay,
        adaptive_adjacency=cfg.model.adaptive_adjacency,
        self_loop_weight=cfg.model.self_loop_weight,
    )
    return build_model(cfg.model.name, inputs).to(device)


def _memory_plan(cfg: Config, backend: Backend, device: torch.device) -> str:
    """Rank 0: predict this run's memory per node and rank (hvd_stgnn/plan); a ConfigError
    with the numbers when it cannot fit, before anything is loaded."""
    from hvd_stgnn.data.hdf5 import read_metadata
    from hvd_stgnn.plan import check_fits
    from hvd_stgnn.plan.estimate import fmt_bytes

    meta = read_metadata(cfg.data.path)
    plan = check_fits(cfg, meta.num_steps, meta.num_nodes, meta.num_edges, backend.size, backend.local_size,
                      device.type, interval_s=meta.interval_s)
    return f"node {fmt_bytes(plan.node_bytes)} predicted ({backend.local_size} rank(s) per node; --no-memory-check to skip)"


class _State:
    """Where training stands; what a checkpoint restores."""

    def __init__(self) -> None:
        self.epoch, self.step, self.global_step = 1, 0, 0  # next epoch / step within it to run
        self.history: list[dict] = []
        self.best = {"val_mae": float("inf"), "epoch": 0, "state": None}


def train(cfg: Config, backend: Backend) -> dict:
    """Run the whole job; returns the results dict (rank 0 also writes it). Rank 0 holds
    the --run-dir lock from before the first write to the end, on every exit path."""
    lock = RunDirLock(cfg.train.run_dir) if backend.is_root and cfg.train.run_dir else None
    try:
        return _train(cfg, backend, lock)
    finally:
        if lock is not None:
            lock.release()


def _open_run_dir(cfg: Config, lock: RunDirLock | None, t_start: float) -> tuple[RunLog, tuple | None, list[str]]:
    """Rank 0: take the run dir (lock), decide the start (fresh / which checkpoint), then
    write config.toml and open metrics.jsonl. Returns the log, (path, state) to resume from
    or None, and the lines to print."""
    notes = []
    if lock is not None:
        lock.acquire()
        if lock.took_over:
            notes.append(f"run dir: took over a stale lock ({lock.took_over})")
    path, state, line = ckpt.choose_start(cfg.train.run_dir, cfg.train.resume, cfg.train.overwrite)
    if line:
        notes.append(line)
    if state is not None:
        ckpt.check_compatible(state, cfg.to_dict(), ckpt.data_fingerprint(cfg.data.path), path)
    return RunLog(cfg, True, t_start), (path, state) if state is not None else None, notes


def _train(cfg: Config, backend: Backend, lock: RunDirLock | None) -> dict:
    t_start = time.perf_counter()
    log = lambda message: _log(backend, message)  # noqa: E731
    torch.set_num_threads(threads_per_rank(cfg.train.threads, backend.local_size))
    torch.manual_seed(cfg.train.seed)
    device = resolve_device(cfg.train.device, backend.local_rank)
    opened: dict = {}

    def open_run_dir() -> None:  # rank 0: an unwritable or busy --run-dir is every rank's error
        opened["log"], opened["resumed"], notes = _open_run_dir(cfg, lock, t_start)
        return notes

    for note in _agree(backend, open_run_dir):
        log(note)
    runlog = opened.get("log") or RunLog(cfg, False, t_start)  # only rank 0's writes
    resumed = backend.broadcast_object(opened.get("resumed"))  # (path, state) or None, on every rank

    if cfg.train.memory_check:
        plan = _agree(backend, lambda: _memory_plan(cfg, backend, device))
        log(f"memory plan: {plan}")
    rd = prepare(cfg, backend, device, log)
    prepare_seconds = time.perf_counter() - t_start
    pss_peak = process_pss_bytes()
    data, splits, sources = rd.data, rd.splits, rd.sources
    train_source = sources["train"]
    B, k = cfg.train.batch_size, cfg.parallel.backward_passes_per_step
    per_rank = len(train_source.epoch_starts(1))
    steps_per_epoch = num_batches(per_rank, B) // k
    if cfg.train.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.train.max_steps_per_epoch)
    if steps_per_epoch < 1:
        raise ConfigError(
            f"--backward-passes-per-step {k}: each rank has only {num_batches(per_rank, B)} batch(es) per epoch",
            all_ranks=True,
        )
    batching = batching_summary(rd, backend, device)
    log(
        f"data: {cfg.data.path}  T={data.num_steps} N={data.num_nodes} E={data.num_edges}  "
        f"windows train/val/test={splits['train'].count}/{splits['val'].count}/{splits['test'].count}  "
        f"mean={rd.mean:.3f} std={rd.std:.3f}"
    )
    where = "views of node-shared memory" if batching["shares_node_memory"] else f"private on {device}"
    log(
        f"batching: {train_source.kind}  {per_rank} training windows/rank, {steps_per_epoch} steps/epoch "
        f"of {k} x {B} windows (ranks: {backend.size}, {backend.name}; "
        f"{splits['train'].count - per_rank * backend.size} tail window(s) "
        f"{'dropped' if per_rank * backend.size <= splits['train'].count else 'repeated'}); data held per rank: "
        f"max {max(batching['device_bytes_per_rank']) / 1e6:.2f} MB ({where}); threads/rank: {torch.get_num_threads()}"
    )

    model = _build_model(cfg, rd, train_source.num_features, device)
    uses_teacher = getattr(model, "uses_teacher", False)
    base_lr = cfg.train.lr * (backend.size if cfg.train.scale_lr else 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=base_lr, weight_decay=cfg.train.weight_decay)
    backend.broadcast_state(model, optimizer)
    optimizer = backend.wrap_optimizer(optimizer, model)
    total_steps = steps_per_epoch * cfg.train.epochs
    warmup_steps = round(cfg.train.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup_steps, cfg.train.lr_schedule)
    )
    train_model = backend.wrap_model(model)  # DDP: the wrapper whose backward allreduces
    st = _State()
    if resumed is not None:
        path, state = resumed
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        backend.broadcast_state(model, optimizer)
        rngs = state["rng"]
        ckpt.set_rng_state(rngs[backend.rank] if len(rngs) == backend.size else rngs[0])
        st.epoch, st.step, st.global_step = state["epoch"], state["step"], state["global_step"]
        st.history, st.best = state["history"], state["best"]
        log(f"resumed from {path}: epoch {st.epoch}, step {st.step} of {steps_per_epoch} (global step {st.global_step})")
    log(
        f"model: {cfg.model.name}  {sum(p.numel() for p in model.parameters()):,} parameters on {device}  "
        f"lr {base_lr:g} ({cfg.train.lr_schedule}, warm-up {warmup_steps} steps, clip {cfg.train.clip_grad:g})"
    )

    fingerprint = ckpt.data_fingerprint(cfg.data.path) if backend.is_root else None

    def save_checkpoint(name: str = ckpt.LAST) -> None:
        rngs = backend.allgather_object(ckpt.rng_state())
        if backend.is_root and runlog.dir is not None:
            ckpt.save_atomic(ckpt.checkpoint_path(runlog.dir, name), keep_previous=name == ckpt.LAST, state={
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "epoch": st.epoch, "step": st.step, "global_step": st.global_step, "rng": rngs,
                "history": st.history, "best": st.best, "config": cfg.to_dict(), "world_size": backend.size,
                "normalization": {"mean": rd.mean, "std": rd.std}, "data_fingerprint": fingerprint,
            })

    timeline = TimelineWindow(backend, cfg.profile.timeline, *cfg.profile.window(), cfg.profile.timeline_mark_cycles)
    faults = FaultInjector(backend.rank)
    timer = PhaseTimer(device)
    phase_timings = []
    job_steps, job_epochs = 0, 0
    loop_seconds, samples_trained = 0.0, 0
    # Throughput leaves out the job's first WARMUP_STEPS steps (allocator growth, first
    # Horovod negotiations / DDP bucket rebuild), unless there are no others.
    warm = {"t": None, "steps": 0, "seconds": 0.0}
    stopped_early = False
    with StopSignal() as stop:
        try:
            while st.epoch <= cfg.train.epochs:
                epoch, t0 = st.epoch, time.perf_counter()
                order = train_source.epoch_starts(epoch)
                train_sums = HorizonErrorSums(cfg.data.horizon)
                timer.reset()
                bar = tqdm(range(st.step, steps_per_epoch), initial=st.step, total=steps_per_epoch,
                           desc=f"epoch {epoch}/{cfg.train.epochs}", disable=not backend.is_root, leave=False,
                           dynamic_ncols=True, mininterval=0.5, unit="step")
                for step in bar:
                    faults.before_step(job_steps)
                    timeline.before_step(job_steps)
                    optimizer.zero_grad()
                    for micro in range(k):
                        lo = (step * k + micro) * B
                        with timer.phase("batch"):
                            batch = train_source(order[lo : lo + B])
                        with backend.accumulate(train_model, last=micro == k - 1):
                            with timer.phase("forward"):
                                teacher = ((batch.y - rd.mean) / rd.std).masked_fill(~batch.mask, 0.0) if uses_teacher else None
                                pred = train_model(batch.x, teacher) * rd.std + rd.mean
                                loss = masked_mae_loss(pred, batch.y, batch.mask)
                            with timer.phase("backward"):  # DDP: includes its bucketed allreduce
                                (loss / k).backward()
                        train_sums.update(pred.detach(), batch.y, batch.mask)
                    with timer.phase("backward"):  # + waiting for the gradient allreduce
                        backend.finish_gradients(optimizer)
                    with timer.phase("optimizer"):
                        backend.step(optimizer, model, cfg.train.clip_grad)
                        scheduler.step()
                    timer.steps += 1
                    job_steps += 1
                    st.global_step, st.step = st.global_step + 1, step + 1
                    timeline.after_step(job_steps)
                    if job_steps == WARMUP_STEPS:
                        warm["t"], warm["steps"] = time.perf_counter(), 0
                    elif warm["t"] is not None:
                        warm["steps"] += 1
                    loss_value = loss.item()
                    bar.set_postfix(loss=f"{loss_value:.3f}", refresh=False)
                    if st.global_step % cfg.train.log_every == 0 and runlog.active:
                        runlog.record("step", epoch=epoch, step=st.step, global_step=st.global_step,
                                      loss=loss_value, lr=scheduler.get_last_lr()[0])
                    if backend.any_rank(stop.requested is not None):
                        save_checkpoint()
                        where = f"; resume with --resume {runlog.dir}" if runlog.dir else " (no --run-dir: nothing saved)"
                        raise Interrupted(f"stopped by {stop.requested or 'a signal on another rank'} at epoch {epoch}, "
                                          f"step {st.step}/{steps_per_epoch}{where}")
                bar.close()
                loop_seconds += time.perf_counter() - t0
                if warm["t"] is not None:  # validation is not training time
                    warm["seconds"] += time.perf_counter() - max(warm["t"], t0)
                samples_trained += timer.steps * k * B * backend.size

                train_mae = train_sums.reduced(backend.allreduce_sum).mae
                val_mae = evaluate(model, sources["val"], backend, B, rd.mean, rd.std, cfg.train.eval_windows).mae
                seconds = time.perf_counter() - t0
                phases = summarize(backend.allgather_object(timer.per_step_ms()))
                phase_timings.append({"epoch": epoch, "steps": timer.steps, **phases})
                pss_peak = max(pss_peak, process_pss_bytes())
                improved = val_mae < st.best["val_mae"]
                if improved:  # every rank sees the same reduced val MAE, so all keep the same epoch
                    st.best = {"val_mae": val_mae, "epoch": epoch,
                               "state": {name: t.detach().cpu().clone() for name, t in model.state_dict().items()}}
                lr_now = scheduler.get_last_lr()[0]
                st.history.append({"epoch": epoch, "train_mae": train_mae, "val_mae": val_mae, "seconds": seconds})
                st.epoch, st.step = epoch + 1, 0
                job_epochs += 1
                runlog.record("epoch", epoch=epoch, train_mae=train_mae, val_mae=val_mae, seconds=seconds, lr=lr_now,
                              phases={p: v["median"] for p, v in phases.items()})
                log(
                    f"epoch {epoch:3d}/{cfg.train.epochs}  train MAE {train_mae:7.4f}  val MAE {val_mae:7.4f}"
                    f"{' *' if improved else '  '} lr {lr_now:.2e}  step {phases['step_ms']['median']:.1f} ms "
                    f"(batch {phases['batch_ms']['median']:.1f} fwd {phases['forward_ms']['median']:.1f} "
                    f"bwd+allreduce {phases['backward_ms']['median']:.1f} opt {phases['optimizer_ms']['median']:.1f}; "
                    f"max/min rank {phases['step_ms']['max'] / max(phases['step_ms']['min'], 1e-9):.2f})  ({seconds:.1f} s)"
                )
                last = st.epoch > cfg.train.epochs
                stop_now = cfg.train.stop_after_epochs and job_epochs >= cfg.train.stop_after_epochs and not last
                if last or stop_now or (cfg.train.checkpoint_every and epoch % cfg.train.checkpoint_every == 0):
                    save_checkpoint()
                if stop_now:
                    stopped_early = True
                    log(f"stopping after {job_epochs} epoch(s) (--stop-after-epochs); continue with --resume {runlog.dir}")
                    break
        finally:
            timeline.stop(job_steps)
            if backend.is_root:
                runlog.close()

    memory = backend.allgather_object({
        "host": socket.gethostname(), "peak_rss_bytes": peak_rss_bytes(), "pss_peak_bytes": pss_peak,
        "cuda_peak_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0,
    })
    node_pss: dict[str, int] = {}
    for r in memory:
        node_pss[r["host"]] = node_pss.get(r["host"], 0) + r["pss_peak_bytes"]
    epoch_seconds = [e["seconds"] for e in st.history[-job_epochs:]] if job_epochs else []
    results = {
        "model": cfg.model.name,
        "world_size": backend.size,
        "backend": backend.name,
        "launch": launch_record([r["host"] for r in memory], torch.get_num_threads()),
        "epochs": st.history,
        "phase_timings": phase_timings,
        "timing": {
            "prepare_seconds": prepare_seconds,  # load + statistics + batch sources (materialized: every window)
            "train_loop_seconds": loop_seconds,  # training steps of this job, validation excluded
            "epoch_seconds_median": statistics.median(epoch_seconds) if epoch_seconds else 0.0,
            "samples_per_second": (warm["steps"] * k * B * backend.size / warm["seconds"] if warm["steps"]
                                   else samples_trained / loop_seconds if loop_seconds else 0.0),
            "samples_per_second_excludes_steps": WARMUP_STEPS if warm["steps"] else 0,
        },
        "memory": {
            "per_rank": memory,  # PSS sampled after loading and after every epoch; peak RSS from the kernel
            "node_pss_peak_bytes": node_pss,
            "max_node_pss_peak_bytes": max(node_pss.values()),
        },
        "normalization": {"mean": rd.mean, "std": rd.std},
        "data_health": rd.health.to_dict() if rd.health is not None else None,
        "load": {**dataclasses.asdict(rd.load), "read_mb_per_s": rd.load.read_mb_per_s},
        "batching": batching,
        "config": cfg.to_dict(),
    }
    if timeline.info is not None:
        results["timeline"] = timeline.info
        log(f"timeline: {timeline.info['file']} (steps {timeline.info['first_step']}.."
            f"{timeline.info['first_step'] + timeline.info['active_steps'] - 1}, {timeline.info['window_seconds']:.2f} s); "
            f"report: hvd-stgnn timeline {timeline.info['file']}" + (f" --results {runlog.results_path}" if runlog.results_path else ""))
    if stopped_early:
        results["stopped_after_epoch"] = st.epoch - 1
    else:
        tested = cfg.train.epochs
        if cfg.train.test_on == "best" and st.best["state"] is not None and st.best["epoch"] != cfg.train.epochs:
            model.load_state_dict(st.best["state"])
            tested = st.best["epoch"]
            log(f"testing the model of epoch {tested} (best validation MAE {st.best['val_mae']:.4f}; --test-on last to change)")
        if backend.is_root and runlog.dir is not None and st.best["state"] is not None:
            ckpt.save_atomic(ckpt.checkpoint_path(runlog.dir, ckpt.BEST), {
                "model": st.best["state"], "epoch": st.best["epoch"], "val_mae": st.best["val_mae"],
                "config": cfg.to_dict(), "normalization": {"mean": rd.mean, "std": rd.std},
            })
        test = evaluate(model, sources["test"], backend, B, rd.mean, rd.std, cfg.train.eval_windows)
        results["tested_epoch"] = tested
        results["test"] = test.table(data.interval_s)
        results["test_windows"] = splits["test"].count
        results["eval_windows_cap"] = cfg.train.eval_windows
        results["baselines"] = evaluate_baselines(rd, cfg, backend) if cfg.train.baselines else {}
        count = splits["test"].count
        shown = f"a sample of ~{cfg.train.eval_windows} of {count}" if 0 < cfg.train.eval_windows < count else count
        log(format_test_table(results["test"], backend.size, shown, results["baselines"]))
    digests = backend.allgather_object(param_digest(model))
    results["param_digests"] = digests
    results["total_seconds"] = time.perf_counter() - t_start
    if len(set(digests)) != 1:
        raise RuntimeError(f"ranks ended with different parameters: {digests}")
    if backend.is_root and runlog.results_path:
        write_json_atomic(runlog.results_path, results)
        log(f"results: {runlog.results_path}")
    rd.free()
    return results
