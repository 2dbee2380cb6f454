"""The run directory as rank 0 holds it: the lock, where the run starts, config.toml, paths.

    RUN_DIR/lock.json        held for the job's life (rundir_lock.py)
    RUN_DIR/config.toml      the validated config of this job
    RUN_DIR/metrics.jsonl    metrics_log.py
    RUN_DIR/results.json     hvd_stgnn/results.py (or --results)
    RUN_DIR/checkpoints/     last.pt, prev.pt, best.pt (checkpoint.py, checkpointer.py)
"""

from __future__ import annotations

from pathlib import Path

from hvd_stgnn.config import Config, config_to_toml
from hvd_stgnn.errors import ConfigError
from hvd_stgnn.train import checkpoint as ckpt
from hvd_stgnn.train.rundir_lock import RunDirLock

RESULTS_FILE = "results.json"
CONFIG_FILE = "config.toml"


class RunDir:
    """`path` is None without --run-dir; only rank 0 (`writes`) touches the directory."""

    def __init__(self, cfg: Config, is_root: bool) -> None:
        self.cfg = cfg
        self.path = Path(cfg.train.run_dir) if cfg.train.run_dir else None
        self.writes = is_root and self.path is not None
        self.results_path = cfg.train.results or (str(self.path / RESULTS_FILE) if self.path else "")
        self._lock = RunDirLock(self.path) if self.writes else None

    def open(self) -> tuple[tuple[Path, dict] | None, list[str]]:
        """Rank 0, before anything is written: take the lock, decide the start (fresh, or
        which checkpoint: checkpoint.choose_start), check the checkpoint fits this config and
        data, write config.toml. Returns ((checkpoint path, its state) or None, lines to print)."""
        notes = []
        if self._lock is not None:
            self._lock.acquire()
            if self._lock.took_over:
                notes.append(f"run dir: took over a stale lock ({self._lock.took_over})")
        cfg = self.cfg
        path, state, line = ckpt.choose_start(cfg.train.run_dir, cfg.train.resume, cfg.train.overwrite)
        if line:
            notes.append(line)
        if state is not None:
            ckpt.check_compatible(state, cfg.to_dict(), ckpt.data_fingerprint(cfg.data.path), path)
        if self.writes:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
                (self.path / CONFIG_FILE).write_text(config_to_toml(cfg))
            except OSError as exc:
                raise ConfigError(f"--run-dir {self.path}: cannot write ({exc.strerror or exc})") from None
        return ((path, state) if state is not None else None), notes

    def release(self) -> None:
        """Give up the lock (every exit path: the trainer calls this in a `finally`)."""
        if self._lock is not None:
            self._lock.release()
