"""The training loop: a `Trainer` whose methods each do one thing, and the parts it calls.

    setup()        threads, seed, device; the run dir (lock, start); the memory plan; data
                   (data_setup.py); model, optimizer, schedule; checkpointer; resume
    train()        per epoch: run_epoch(), evaluate("val"), end_epoch()
    run_epoch()    per step: train_step(), then the step tracker, timeline window, metrics
                   log and the job-wide stop check
    train_step()   K micro-batches: forward, masked loss, backward; finish_gradients; step
    evaluate()     masked metrics over a split (evaluate.py), reduced over ranks
    finish()       test the best (or last) model, baselines, Results -> results.json

The parts, one file each: RunDir (rundir.py), Checkpointer (checkpointer.py) over the
Stateful trainer, TrainState (state.py), StepTracker (phases.py), MetricsLogger
(metrics_log.py), TimelineWindow and MemoryMonitor (profiling/), StopSignal and
FaultInjector (faults.py). Every rank runs the same number of optimizer steps per epoch;
metrics are sums and counts, reduced. The trainer talks to the Backend only.
"""

from __future__ import annotations

import os
import socket
import time

import torch
from tqdm import tqdm

from hvd_stgnn.batching import num_batches
from hvd_stgnn.config import Config
from hvd_stgnn.errors import ConfigError, Interrupted
from hvd_stgnn.metrics import HorizonErrorSums, masked_mae_loss
from hvd_stgnn.models import ModelInputs, build_model
from hvd_stgnn.parallel import Backend, run_on_root
from hvd_stgnn.parallel.device import device_description, gpu_identity, gpu_sharing
from hvd_stgnn.parallel.launcher import launch_record
from hvd_stgnn.profiling.memory import MemoryMonitor
from hvd_stgnn.profiling.sync_debug import SyncDebug
from hvd_stgnn.profiling.window import TimelineWindow
from hvd_stgnn.results import PHASE_KEYS, EpochRecord, Memory, Results
from hvd_stgnn.train.checkpointer import Checkpointer
from hvd_stgnn.train.data_setup import memory_plan, prepare
from hvd_stgnn.train.evaluate import batching_summary, evaluate, evaluate_baselines, param_digest
from hvd_stgnn.train.faults import FaultInjector, StopSignal
from hvd_stgnn.train.metrics_log import MetricsLogger
from hvd_stgnn.train.phases import WARMUP_STEPS, StepTracker
from hvd_stgnn.train.precision import Precision
from hvd_stgnn.train.rundir import RunDir
from hvd_stgnn.train.schedule import lr_factor
from hvd_stgnn.train.state import TrainState
from hvd_stgnn.train.summary import format_epoch_line, format_test_table

__all__ = ["Trainer", "threads_per_rank", "train"]


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


def train(cfg: Config, backend: Backend) -> Results:
    """Run the whole job; returns its Results (rank 0 also writes them). Rank 0 holds the
    --run-dir lock from before the first write to the end, on every exit path."""
    trainer = Trainer(cfg, backend)
    try:
        trainer.setup()
        trainer.train()
        return trainer.finish()
    finally:
        trainer.close()


class Trainer:
    def __init__(self, cfg: Config, backend: Backend) -> None:
        self.cfg, self.backend = cfg, backend
        self.t_start = time.perf_counter()
        self.run_dir = RunDir(cfg, backend.is_root)
        self.metrics = MetricsLogger()  # rank 0's sinks are opened with the run dir
        self.job_epochs = 0  # epochs run by this job (a resumed job starts at 0)
        self.stopped_early = False  # --stop-after-epochs ended the job
        self.phase_timings = []

    def log(self, message: str) -> None:
        if self.backend.is_root:
            tqdm.write(message)

    # --- setup --------------------------------------------------------------------------

    def setup(self) -> None:
        cfg, backend = self.cfg, self.backend
        torch.set_num_threads(threads_per_rank(cfg.train.threads, backend.local_size))
        torch.manual_seed(cfg.train.seed)
        self.device = backend.device  # chosen with the process group (parallel/device.py)
        if backend.device_note:
            self.log(backend.device_note)
        self._check_gpus()
        start = self._open_run_dir()
        if cfg.train.memory_check:
            self.log(f"memory plan: {run_on_root(backend, lambda: memory_plan(cfg, backend, self.device))}")
        self.rd = prepare(cfg, backend, self.device, self.log)
        self.prepare_seconds = time.perf_counter() - self.t_start
        self.memory = MemoryMonitor(self.device)
        self.memory.sample()
        self.memory.reset_device_peak()  # the GPU peak of training, the data already on the device
        self.train_source = self.rd.sources["train"]
        self.steps_per_epoch = self._steps_per_epoch()
        self.batching = batching_summary(self.rd, backend, self.device)
        self._log_data()
        self._build_model()
        self.state = TrainState()
        normalization = {"mean": self.rd.scaler.mean, "std": self.rd.scaler.std}
        self.checkpointer = Checkpointer(cfg, backend, self.run_dir.path, normalization)
        if start is not None:
            path, state = start
            self.checkpointer.restore(self, state)
            self.log(f"resumed from {path}: epoch {self.state.epoch}, step {self.state.step} of "
                     f"{self.steps_per_epoch} (global step {self.state.global_step})")
        self.log(f"model: {cfg.model.name}  {sum(p.numel() for p in self.model.parameters()):,} parameters on "
                 f"{self.device}  lr {self.base_lr:g} ({cfg.train.lr_schedule}, warm-up {self.warmup_steps} steps, "
                 f"clip {cfg.train.clip_grad:g})  {cfg.train.precision}{', compiled' if cfg.train.compile else ''}")
        self.timeline = TimelineWindow(backend, cfg.profile.timeline, *cfg.profile.window(),
                                       cfg.profile.timeline_mark_cycles)
        self.faults = FaultInjector(backend.rank)
        k, B = cfg.parallel.backward_passes_per_step, cfg.train.batch_size
        self.tracker = StepTracker(self.device, k * B * backend.size, cfg.train.sync_timings)
        self.sync_debug = SyncDebug(cfg.profile.sync_debug, self.device, after_steps=WARMUP_STEPS)

    def _check_gpus(self) -> None:
        """Collective: one clear line, on every rank alike, when two ranks would share a GPU."""
        if self.device.type != "cuda":
            return
        problem = gpu_sharing(self.backend.allgather_object((socket.gethostname(), gpu_identity(self.device))))
        if problem:
            raise ConfigError(problem, all_ranks=True)

    def _open_run_dir(self) -> tuple | None:
        """Collective: rank 0 takes the run dir and opens the metrics sinks (an unwritable or
        busy dir is every rank's error); every rank gets the checkpoint to start from."""

        def on_root():
            start, notes = self.run_dir.open()
            self.metrics = MetricsLogger.for_run(self.run_dir.path, self.cfg.train.tensorboard, self.t_start)
            return start, notes

        start, notes = run_on_root(self.backend, on_root)
        for note in notes:
            self.log(note)
        return start

    def _steps_per_epoch(self) -> int:
        cfg = self.cfg
        B, k = cfg.train.batch_size, cfg.parallel.backward_passes_per_step
        self.windows_per_rank = len(self.train_source.epoch_starts(1))
        steps = num_batches(self.windows_per_rank, B) // k
        if cfg.train.max_steps_per_epoch:
            steps = min(steps, cfg.train.max_steps_per_epoch)
        if steps < 1:
            raise ConfigError(f"--backward-passes-per-step {k}: each rank has only "
                              f"{num_batches(self.windows_per_rank, B)} batch(es) per epoch", all_ranks=True)
        return steps

    def _log_data(self) -> None:
        cfg, backend, rd, batching = self.cfg, self.backend, self.rd, self.batching
        data, splits, per_rank = rd.data, rd.splits, self.windows_per_rank
        self.log(f"data: {cfg.data.path}  T={data.num_steps} N={data.num_nodes} E={data.num_edges}  "
                 f"windows train/val/test={splits['train'].count}/{splits['val'].count}/{splits['test'].count}  "
                 f"mean={rd.scaler.mean:.3f} std={rd.scaler.std:.3f}")
        where = "views of node-shared memory" if batching.shares_node_memory else f"private on {self.device}"
        tail = splits["train"].count - per_rank * backend.size
        self.log(f"batching: {self.train_source.kind}  {per_rank} training windows/rank, {self.steps_per_epoch} "
                 f"steps/epoch of {cfg.parallel.backward_passes_per_step} x {cfg.train.batch_size} windows (ranks: "
                 f"{backend.size}, {backend.name}; {tail} tail window(s) "
                 f"{'dropped' if per_rank * backend.size <= splits['train'].count else 'repeated'}); data held per "
                 f"rank: max {max(batching.device_bytes_per_rank) / 1e6:.2f} MB ({where}); threads/rank: "
                 f"{torch.get_num_threads()}")

    def _build_model(self) -> None:
        cfg, backend, cuda = self.cfg, self.backend, self.device.type == "cuda"
        self.model = build_model(cfg.model.name,
                                 _model_inputs(cfg, self.rd.data, self.train_source.num_features, self.device.type))
        self.model.to(self.device)
        self.uses_teacher = getattr(self.model, "uses_teacher", False)
        self.precision = Precision(cfg.train.precision, self.device)
        if cuda:
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = cfg.train.tf32
            torch.backends.cudnn.benchmark = bool(getattr(self.model, "cudnn_benchmark", False))
        self.base_lr = cfg.train.lr * (backend.size if cfg.train.scale_lr else 1)
        optimizer = torch.optim.Adam(self.model.parameters(), lr=self.base_lr, weight_decay=cfg.train.weight_decay,
                                     fused=cuda or None)  # one kernel per step on a GPU
        backend.broadcast_state(self.model, optimizer)
        self.optimizer = backend.wrap_optimizer(optimizer, self.model)
        total_steps = self.steps_per_epoch * cfg.train.epochs
        self.warmup_steps = round(cfg.train.warmup_epochs * self.steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, total_steps, self.warmup_steps, cfg.train.lr_schedule)
        )
        forward = self.model
        if cfg.train.compile:
            from hvd_stgnn.models import compile_model

            forward = compile_model(self.model)
        self.train_model = backend.wrap_model(forward)  # DDP: the wrapper whose backward allreduces

    # --- Stateful: what the Checkpointer saves and restores ---------------------------------

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "grad_scaler": self.precision.state_dict(),
                **self.state.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.precision.load_state_dict(state.get("grad_scaler"))
        self.backend.broadcast_state(self.model, self.optimizer)  # collective: rank 0's copy wins
        self.state.load_state_dict(state)

    # --- the loop -----------------------------------------------------------------------

    def train(self) -> None:
        with StopSignal() as self.stop:
            try:
                while self.state.epoch <= self.cfg.train.epochs and not self.stopped_early:
                    epoch, t0 = self.state.epoch, time.perf_counter()
                    train_mae = self.run_epoch(epoch)
                    val = self.evaluate("val")
                    self.end_epoch(epoch, train_mae, val, time.perf_counter() - t0)
            finally:
                self.timeline.stop(self.tracker.job_steps)  # a clean file on errors and signals too

    def run_epoch(self, epoch: int) -> float:
        """This epoch's remaining optimizer steps; returns the train MAE (reduced)."""
        cfg, k, B = self.cfg, self.cfg.parallel.backward_passes_per_step, self.cfg.train.batch_size
        order = self.train_source.epoch_starts(epoch).to(self.device)  # once per epoch: no copy per step
        sums = HorizonErrorSums(cfg.data.horizon)
        self.tracker.start_epoch()
        bar = tqdm(range(self.state.step, self.steps_per_epoch), initial=self.state.step, total=self.steps_per_epoch,
                   desc=f"epoch {epoch}/{cfg.train.epochs}", disable=not self.backend.is_root, leave=False,
                   dynamic_ncols=True, mininterval=0.5, unit="step")
        for step in bar:
            self.faults.before_step(self.tracker.job_steps)
            self.timeline.before_step(self.tracker.job_steps)
            with self.sync_debug.watch(self.tracker.job_steps):
                loss = self.train_step([order[(step * k + m) * B : (step * k + m + 1) * B] for m in range(k)], sums)
            self.tracker.step_done()
            self.state.finish_step()
            self.timeline.after_step(self.tracker.job_steps)
            if self.state.global_step % cfg.train.log_every == 0:  # loss.item() waits for the GPU: not every step
                loss_value = loss.item()
                bar.set_postfix(loss=f"{loss_value:.3f}", refresh=False)
                self.metrics.log("step", self.state.global_step, epoch=epoch, step=self.state.step,
                                 global_step=self.state.global_step, loss=loss_value, lr=self.scheduler.get_last_lr()[0])
            self._stop_if_asked(epoch)
        bar.close()
        self.tracker.end_epoch()
        return sums.reduced(self.backend.allreduce_sum).mae

    def train_step(self, micro_batches: list[torch.Tensor], sums: HorizonErrorSums) -> torch.Tensor:
        """One optimizer step over K micro-batches of window starts (K =
        --backward-passes-per-step; one gradient allreduce); returns the last one's loss, detached."""
        tracker, backend = self.tracker, self.backend
        self.optimizer.zero_grad()
        for i, starts in enumerate(micro_batches):
            with tracker.phase("batch"):
                batch = self.train_source(starts)
            with backend.accumulate(self.train_model, last=i == len(micro_batches) - 1):
                with tracker.phase("forward"):
                    teacher = batch.normalized_targets() if self.uses_teacher else None
                    pred = batch.scaler.inverse(self.precision.forward(self.train_model, batch.x, teacher))
                    loss = masked_mae_loss(pred, batch.y, batch.mask)
                with tracker.phase("backward"):  # DDP: includes its bucketed allreduce
                    self.precision.backward(loss / len(micro_batches))
            sums.update(pred.detach(), batch.y, batch.mask)
            last_loss = loss.detach()
            # Freed before the next forward: a prediction or loss kept alive keeps its autograd
            # graph's buffers too, which raised DCRNN's step peak by ~40% (docs/PLANNER.md).
            del batch, teacher, pred, loss
        with tracker.phase("backward"):  # + waiting for the gradient allreduce
            backend.finish_gradients(self.optimizer)
        with tracker.phase("optimizer"):
            backend.step(self.optimizer, self.model, self.cfg.train.clip_grad, self.precision.scaler)
            self.scheduler.step()
        return last_loss

    def _stop_if_asked(self, epoch: int) -> None:
        """Collective, after every step: a SIGTERM seen by any rank stops every rank here,
        with a checkpoint of exactly this step."""
        if not self.backend.any_rank(self.stop.requested is not None):
            return
        self.checkpointer.save(self)
        where = f"; resume with --resume {self.run_dir.path}" if self.run_dir.path else " (no --run-dir: nothing saved)"
        raise Interrupted(f"stopped by {self.stop.requested or 'a signal on another rank'} at epoch {epoch}, "
                          f"step {self.state.step}/{self.steps_per_epoch}{where}")

    def evaluate(self, split: str) -> HorizonErrorSums:
        """Collective: the model's masked error sums over `split` (all windows, or an evenly
        spaced --eval-windows sample), reduced over ranks."""
        return evaluate(self.model, self.rd.sources[split], self.backend, self.cfg.train.batch_size,
                        self.cfg.train.eval_windows, self.precision)

    def end_epoch(self, epoch: int, train_mae: float, val: HorizonErrorSums, seconds: float) -> None:
        """Phases, best model, log lines, checkpoint cadence and --stop-after-epochs."""
        cfg = self.cfg
        phases = self.tracker.epoch_phases(epoch, self.backend.allgather_object)
        self.phase_timings.append(phases)
        pss = self.memory.sample()
        improved = self.state.finish_epoch(EpochRecord(epoch, train_mae, val.mae, seconds), self.model)
        lr = self.scheduler.get_last_lr()[0]
        self.job_epochs += 1
        self.metrics.log("epoch", self.state.global_step, epoch=epoch, train_mae=train_mae, val_mae=val.mae,
                         seconds=seconds, lr=lr, phases={key: phases.median(key) for key in PHASE_KEYS},
                         val_mae_by_horizon=val.table(self.rd.data.interval_s)["mae"],
                         memory={**vars(self.memory.record()), "pss_bytes": pss})
        self.log(format_epoch_line(epoch, cfg.train.epochs, train_mae, val.mae, improved, lr, phases, seconds))
        last = self.state.epoch > cfg.train.epochs
        stop_now = bool(cfg.train.stop_after_epochs) and self.job_epochs >= cfg.train.stop_after_epochs and not last
        if self.checkpointer.should_save(epoch, last or stop_now):
            self.checkpointer.save(self)
        if stop_now:
            self.stopped_early = True
            self.log(f"stopping after {self.job_epochs} epoch(s) (--stop-after-epochs); continue with --resume "
                     f"{self.run_dir.path}")

    # --- the end ------------------------------------------------------------------------

    def close(self) -> None:
        """Every exit path: flush the metrics sinks, give up the run-dir lock."""
        self.metrics.close()
        self.run_dir.release()

    def finish(self) -> Results:
        """Collective: test (unless stopped early), gather what every rank measured, check
        that all ranks ended with the same parameters, write the results (rank 0)."""
        cfg, backend, rd = self.cfg, self.backend, self.rd
        memory = Memory.from_ranks(backend.allgather_object(self.memory.record()))
        devices = backend.allgather_object(device_description(self.device))
        job_history = self.state.history[-self.job_epochs:] if self.job_epochs else []
        if self.sync_debug.summary():
            self.log(self.sync_debug.summary())
        results = Results(
            model=cfg.model.name, world_size=backend.size, backend=backend.name,
            launch=launch_record([r.host for r in memory.per_rank], torch.get_num_threads(), devices),
            epochs=self.state.history, phase_timings=self.phase_timings,
            timing=self.tracker.timing(self.prepare_seconds, [e.seconds for e in job_history]),
            memory=memory, normalization={"mean": rd.scaler.mean, "std": rd.scaler.std},
            data_health=rd.health.to_dict() if rd.health is not None else None,
            load={**vars(rd.load), "read_mb_per_s": rd.load.read_mb_per_s},
            batching=self.batching, config=cfg.to_dict(), timeline=self.timeline.info,
        )
        if self.timeline.info is not None:
            self._log_timeline()
        if self.stopped_early:
            results.stopped_after_epoch = self.state.epoch - 1
        else:
            self._test(results)
        results.param_digests = backend.allgather_object(param_digest(self.model))
        results.total_seconds = time.perf_counter() - self.t_start
        if len(set(results.param_digests)) != 1:
            raise RuntimeError(f"ranks ended with different parameters: {results.param_digests}")
        if backend.is_root and self.run_dir.results_path:
            results.write(self.run_dir.results_path)
            self.log(f"results: {self.run_dir.results_path}")
        rd.free()
        return results

    def _test(self, results: Results) -> None:
        """The test tables of the best validation epoch's model (--test-on best) or the last."""
        cfg, state = self.cfg, self.state
        tested = cfg.train.epochs
        if cfg.train.test_on == "best" and state.best_params is not None and state.best_epoch != cfg.train.epochs:
            self.model.load_state_dict(state.best_params)
            tested = state.best_epoch
            self.log(f"testing the model of epoch {tested} (best validation MAE {state.best_val_mae:.4f}; "
                     "--test-on last to change)")
        if state.best_params is not None:
            self.checkpointer.save_best(state.best_params, state.best_epoch, state.best_val_mae)
        interval_s, count = self.rd.data.interval_s, self.rd.splits["test"].count
        results.tested_epoch = tested
        results.test = self.evaluate("test").table(interval_s)
        results.test_windows = count
        results.eval_windows_cap = cfg.train.eval_windows
        results.baselines = evaluate_baselines(self.rd, cfg, self.backend) if cfg.train.baselines else {}
        self.metrics.log("test", state.global_step, epoch=tested, **results.test)
        shown = f"a sample of ~{cfg.train.eval_windows} of {count}" if 0 < cfg.train.eval_windows < count else count
        self.log(format_test_table(results.test, self.backend.size, shown, results.baselines))

    def _log_timeline(self) -> None:
        info = self.timeline.info
        report = f"hvd-stgnn timeline {info.file}"
        if self.run_dir.results_path:
            report += f" --results {self.run_dir.results_path}"
        self.log(f"timeline: {info.file} (steps {info.first_step}..{info.first_step + info.active_steps - 1}, "
                 f"{info.window_seconds:.2f} s); report: {report}")


def _model_inputs(cfg: Config, data, num_features: int, device_type: str) -> ModelInputs:
    return ModelInputs(
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
        activation_checkpointing=cfg.train.activation_checkpointing,
        device=device_type,  # --graph-mode auto chooses dense or sparse per device
    )
