"""The in-memory form of a traffic dataset, whatever file it came from."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


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
