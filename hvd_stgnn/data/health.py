"""What the data hides: sensors that never report, sensors stuck at one value, and time
ranges where most sensors are missing (a "NaN storm"). Training works through all of
them (missing readings are masked in the loss and the metrics, and become the training
mean in the inputs); this module says how much was masked, so the log can.

Pure functions on a (T, N) slice; the trainer sums each rank's share with one allreduce.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hvd_stgnn.data.dataset import is_present

STORM_SHARE = 0.5  # a step is in a storm when more than this share of sensors is missing
CONSTANT_STD = 1e-3  # mph: a sensor whose valid readings vary less than this is stuck


def health_sums(speed: np.ndarray, lo: int, hi: int, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Per sensor (valid count, sum, sum of squares) over steps [lo, hi), and the per-step
    count of missing readings; both are sums, so ranks' shares add up. In chunks of steps
    (bounded temporaries)."""
    N = speed.shape[1]
    per_sensor = np.zeros((3, N), dtype=np.float64)
    missing_per_step = np.zeros(max(0, hi - lo), dtype=np.float64)
    for t0 in range(lo, hi, chunk):
        block = np.asarray(speed[t0 : min(hi, t0 + chunk)], dtype=np.float64)
        valid = is_present(block)
        values = np.where(valid, block, 0.0)
        per_sensor[0] += valid.sum(axis=0)
        per_sensor[1] += values.sum(axis=0)
        per_sensor[2] += (values * values).sum(axis=0)
        missing_per_step[t0 - lo : t0 - lo + block.shape[0]] = N - valid.sum(axis=1)
    return per_sensor, missing_per_step


@dataclass
class Health:
    steps: int
    sensors: int
    missing_share: float
    all_missing_sensors: list[int]
    constant_sensors: list[int]
    storm_steps: int  # steps with more than STORM_SHARE of the sensors missing
    longest_storm: tuple[int, int]  # (first step, length) of the longest run of storm steps

    def to_dict(self) -> dict:
        return {**self.__dict__, "longest_storm": list(self.longest_storm)}

    def summary(self, step_offset: int = 0, limit: int = 8) -> str:
        def ids(xs):
            return ", ".join(map(str, xs[:limit])) + (f", ... ({len(xs)} in all)" if len(xs) > limit else "")

        parts = [f"{self.missing_share:.2%} of readings missing (masked)"]
        if self.all_missing_sensors:
            parts.append(f"{len(self.all_missing_sensors)} sensor(s) never report, masked throughout "
                         f"(columns {ids(self.all_missing_sensors)})")
        if self.constant_sensors:
            parts.append(f"{len(self.constant_sensors)} sensor(s) constant (columns {ids(self.constant_sensors)})")
        if self.storm_steps:
            first, length = self.longest_storm
            parts.append(f"{self.storm_steps} step(s) with > {STORM_SHARE:.0%} of sensors missing "
                         f"(longest run: {length} steps from step {first + step_offset})")
        return "; ".join(parts)


def summarize_health(per_sensor: np.ndarray, missing_per_step: np.ndarray) -> Health:
    count, total, squares = per_sensor
    N, T = per_sensor.shape[1], missing_per_step.shape[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        var = squares / count - (total / count) ** 2
    all_missing = np.flatnonzero(count == 0)
    constant = np.flatnonzero((count > 1) & (np.nan_to_num(var) <= CONSTANT_STD**2))
    storm = missing_per_step > STORM_SHARE * N
    longest = (0, 0)
    if storm.any():
        edges = np.flatnonzero(np.diff(np.concatenate([[0], storm.astype(np.int8), [0]])))
        starts, ends = edges[::2], edges[1::2]
        i = int(np.argmax(ends - starts))
        longest = (int(starts[i]), int(ends[i] - starts[i]))
    return Health(
        steps=T,
        sensors=N,
        missing_share=float(missing_per_step.sum() / (T * N)) if T * N else 0.0,
        all_missing_sensors=all_missing.tolist(),
        constant_sensors=constant.tolist(),
        storm_steps=int(storm.sum()),
        longest_storm=longest,
    )
