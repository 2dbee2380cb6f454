"""The in-memory form of a traffic dataset, whatever file it came from."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SECONDS_PER_DAY = 86_400


def is_present(values):
    """True where a reading is present: finite and not 0.0, the missing marker of every
    format we read (docs/data-format.md). numpy arrays and torch tensors alike."""
    finite = values.isfinite() if hasattr(values, "isfinite") else np.isfinite(values)
    return finite & (values != 0)


def weekday(timestamps) -> np.ndarray:
    """Day of the week of int64 seconds since the epoch (UTC), Monday = 0: 1970-01-01 was a
    Thursday (3)."""
    return (np.asarray(timestamps, dtype=np.int64) // SECONDS_PER_DAY + 3) % 7


@dataclass
class TrafficData:
    """speed: (T, N) float32 raw readings, 0.0 (or NaN) where missing.
    timestamps: (T,) int64 seconds since epoch, regular `interval_s`.
    sensor_ids: (N,) str.  edge_index: (2, E) int64 (source, target).  edge_weight: (E,) float32.
    """

    speed: np.ndarray | None
    timestamps: np.ndarray
    sensor_ids: list[str]
    edge_index: np.ndarray
    edge_weight: np.ndarray
    interval_s: int = 300
    source: str = ""
    attrs: dict = field(default_factory=dict)

    @property
    def num_steps(self) -> int:
        return int(len(self.timestamps))

    @property
    def num_nodes(self) -> int:
        return len(self.sensor_ids)

    @property
    def num_edges(self) -> int:
        return int(self.edge_index.shape[1])
