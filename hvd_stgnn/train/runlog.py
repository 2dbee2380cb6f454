"""What rank 0 writes into the run directory: config.toml, metrics.jsonl, results.json.

metrics.jsonl gets one JSON object per line, flushed at once (a killed job loses at most
the line being written; `hvd-stgnn plot` skips a truncated last line):
    {"event": "step", "epoch", "step", "global_step", "loss", "lr", "time"}
    {"event": "epoch", "epoch", "train_mae", "val_mae", "seconds", "lr", "phases"}
A resumed run appends to the same file.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from hvd_stgnn.config import Config, config_to_toml
from hvd_stgnn.errors import ConfigError


class RunLog:
    def __init__(self, cfg: Config, is_root: bool, t_start: float) -> None:
        self.dir = Path(cfg.train.run_dir) if cfg.train.run_dir else None
        self.active = is_root and self.dir is not None
        self.t_start = t_start
        self.results_path = cfg.train.results or (str(self.dir / "results.json") if self.dir else "")
        self._metrics = None
        if self.active:
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
                (self.dir / "config.toml").write_text(config_to_toml(cfg))
                self._metrics = open(self.dir / "metrics.jsonl", "a", buffering=1)
            except OSError as exc:
                raise ConfigError(f"--run-dir {self.dir}: cannot write ({exc.strerror or exc})") from None

    def record(self, event: str, **fields) -> None:
        if self._metrics is not None:
            self._metrics.write(json.dumps({"event": event, **fields, "time": round(time.perf_counter() - self.t_start, 3)}) + "\n")

    def close(self) -> None:
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
