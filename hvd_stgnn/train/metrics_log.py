"""The metrics logger the trainer calls, and its sinks (rank 0 only; other ranks log nowhere).

`logger.log(event, at_step, **fields)` (at_step: the global optimizer step) goes to every sink:

- `JsonlSink`: RUN_DIR/metrics.jsonl, one JSON object per line, flushed at once (a killed
  job loses at most the line being written; `hvd-stgnn plot` skips a truncated last line).
  A resumed run appends to the same file.
      {"event": "step", "epoch", "step", "global_step", "loss", "lr", "time"}
      {"event": "epoch", "epoch", "train_mae", "val_mae", "seconds", "lr", "phases",
       "val_mae_by_horizon", "memory", "time"}
      {"event": "test", "epoch", "mae", "rmse", "mape", "time"}   (per horizon each)
- `TensorBoardSink` (`--tensorboard DIR`): every number of those records as a scalar
  `EVENT/KEY` (nested tables flattened: `epoch/phases/step_ms`, `test/mae/15min`,
  `epoch/memory/pss_bytes`) at the job's global optimizer step, through
  torch.utils.tensorboard.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Iterator

from hvd_stgnn.errors import ConfigError

METRICS_FILE = "metrics.jsonl"
# Position fields: the x axis of a TensorBoard scalar, not a curve of their own.
POSITION_KEYS = frozenset({"epoch", "step", "global_step"})


class JsonlSink:
    def __init__(self, path: Path, t_start: float) -> None:
        self.t_start = t_start
        try:
            self._file = open(path, "a", buffering=1)
        except OSError as exc:
            raise ConfigError(f"--run-dir {path.parent}: cannot write ({exc.strerror or exc})") from None

    def write(self, event: str, at_step: int, fields: dict) -> None:
        record = {"event": event, **fields, "time": round(time.perf_counter() - self.t_start, 3)}
        self._file.write(json.dumps(record) + "\n")

    def close(self) -> None:
        self._file.close()


def flat_scalars(fields: dict, prefix: str = "") -> Iterator[tuple[str, float]]:
    """("phases/step_ms", 12.5), ... for every finite number in `fields`, nested dicts
    flattened with '/', position keys left out."""
    for key, value in fields.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from flat_scalars(value, f"{name}/")
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and key not in POSITION_KEYS:
            if math.isfinite(value):
                yield name, float(value)


class TensorBoardSink:
    def __init__(self, logdir: str) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise ConfigError(f"--tensorboard {logdir}: needs the tensorboard package ({exc}); run `make setup`") from None
        try:
            Path(logdir).mkdir(parents=True, exist_ok=True)
            self._writer = SummaryWriter(log_dir=logdir)
        except OSError as exc:
            raise ConfigError(f"--tensorboard {logdir}: cannot write ({exc.strerror or exc})") from None

    def write(self, event: str, at_step: int, fields: dict) -> None:
        for name, value in flat_scalars(fields):
            self._writer.add_scalar(f"{event}/{name}", value, at_step)

    def close(self) -> None:
        self._writer.close()


class MetricsLogger:
    """Fans each record out to its sinks; with no sinks (ranks other than 0) it is a no-op."""

    def __init__(self, sinks: list | None = None) -> None:
        self.sinks = list(sinks or [])

    @classmethod
    def for_run(cls, run_dir: Path | None, tensorboard: str, t_start: float) -> "MetricsLogger":
        """Rank 0's logger: metrics.jsonl in the run dir (if any), TensorBoard (if asked)."""
        sinks: list = []
        if run_dir is not None:
            sinks.append(JsonlSink(run_dir / METRICS_FILE, t_start))
        if tensorboard:
            sinks.append(TensorBoardSink(tensorboard))
        return cls(sinks)

    def log(self, event: str, at_step: int, **fields) -> None:
        for sink in self.sinks:
            sink.write(event, at_step, fields)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
        self.sinks = []
