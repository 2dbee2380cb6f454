"""A PeMS-like synthetic traffic dataset with structure a graph model can learn.

Road network: directed highway corridors, sensors every 0.5-2.5 km; each corridor after
the first merges into a sensor of an earlier one (a junction). Edges link each sensor to
the sensors downstream of it within reach, weighted by a Gaussian kernel of road distance
(as DCRNN builds its graphs), so the graph is sparse.

Speeds: free-flow speed per sensor, daily commute peaks (weekends lighter, day-to-day
variation), congestion that forms at each corridor's bottleneck (its downstream end) and
spreads upstream with a delay and decay, incidents that do the same from a random sensor,
sensor noise, and missing readings as runs of 0.0. Upstream sensors therefore follow their
downstream neighbours with a lag, which a graph model can use and a per-sensor model cannot.

Deterministic for a seed. This generator holds the whole array in memory; the data-layer
issue replaces it with a chunk-streaming one for the PeMS-scale presets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hvd_stgnn.data.dataset import TrafficData

STEPS_PER_DAY_5MIN = 288
# 2024-01-01 00:00:00 UTC, a Monday.
DEFAULT_START = 1_704_067_200


@dataclass(frozen=True)
class Preset:
    num_nodes: int
    num_steps: int
    description: str


PRESETS: dict[str, Preset] = {
    "tiny": Preset(50, 14 * STEPS_PER_DAY_5MIN, "50 sensors x 2 weeks of 5-minute steps (the default `make run` data)"),
}

WAVE_KMH = 15.0  # upstream speed of a congestion front
KERNEL_SIGMA_KM = 2.0
KERNEL_THRESHOLD = 0.1  # DCRNN drops weights below 0.1


@dataclass
class RoadNetwork:
    corridor: np.ndarray  # (N,) corridor of each sensor
    position_km: np.ndarray  # (N,) position along its corridor (increasing downstream)
    to_bottleneck_km: np.ndarray  # (N,) road distance to the corridor's downstream end
    edge_index: np.ndarray  # (2, E)
    edge_weight: np.ndarray  # (E,)


def build_network(num_nodes: int, rng: np.random.Generator) -> RoadNetwork:
    num_corridors = max(1, min(int(round(num_nodes / 12)), num_nodes // 2))
    # At least 2 sensors per corridor, the rest spread at random.
    sizes = 2 + rng.multinomial(num_nodes - 2 * num_corridors, np.full(num_corridors, 1.0 / num_corridors))

    corridor = np.repeat(np.arange(len(sizes)), sizes)
    position = np.empty(num_nodes)
    to_end = np.empty(num_nodes)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    sources, targets, dists = [], [], []
    for c, (lo, hi) in enumerate(zip(offsets[:-1], offsets[1:])):
        gaps = rng.uniform(0.5, 2.5, size=hi - lo)
        gaps[0] = 0.0
        pos = np.cumsum(gaps)
        position[lo:hi] = pos
        to_end[lo:hi] = pos[-1] - pos
        d = pos[None, :] - pos[:, None]  # d[i, j] = distance from i to downstream j
        i, j = np.nonzero(d > 0)
        sources.append(lo + i)
        targets.append(lo + j)
        dists.append(d[i, j])
        if c > 0:
            # Junction: this corridor's last sensor feeds a sensor of an earlier corridor.
            k = rng.integers(0, lo)
            sources.append(np.array([hi - 1]))
            targets.append(np.array([k]))
            dists.append(np.array([rng.uniform(0.5, 2.0)]))
    src, dst, dist = (np.concatenate(a) for a in (sources, targets, dists))
    weight = np.exp(-((dist / KERNEL_SIGMA_KM) ** 2))
    keep = weight >= KERNEL_THRESHOLD
    return RoadNetwork(
        corridor=corridor,
        position_km=position,
        to_bottleneck_km=to_end,
        edge_index=np.stack([src[keep], dst[keep]]).astype(np.int64),
        edge_weight=weight[keep].astype(np.float32),
    )


def _commute_demand(minutes: np.ndarray, day_amplitude: np.ndarray, start_dow: int) -> np.ndarray:
    """Demand in [0, ~1.2] at absolute `minutes` (any shape); day_amplitude: (days,)."""
    day = np.clip((minutes // 1440).astype(np.int64), 0, len(day_amplitude) - 1)
    tod = minutes % 1440
    weekday = ((day + start_dow) % 7) < 5
    morning = np.exp(-0.5 * ((tod - 8 * 60) / 50.0) ** 2)
    evening = np.exp(-0.5 * ((tod - 17.5 * 60) / 70.0) ** 2)
    return day_amplitude[day] * np.where(weekday, 1.0, 0.3) * (0.9 * morning + evening)


def generate(
    num_nodes: int,
    num_steps: int,
    seed: int = 0,
    interval_s: int = 300,
    start: int = DEFAULT_START,
    missing_rate: float = 0.02,
) -> TrafficData:
    """Synthesize speeds (T, N) in mph and the sensor graph. Deterministic in `seed`."""
    if num_nodes < 2 or num_steps < 1:
        raise ValueError(f"need at least 2 sensors and 1 step (got {num_nodes} x {num_steps})")
    rng = np.random.default_rng(seed)
    net = build_network(num_nodes, rng)
    num_corridors = int(net.corridor.max()) + 1
    step_min = interval_s / 60.0
    minutes = np.arange(num_steps) * step_min  # (T,)
    num_days = int(minutes[-1] // 1440) + 1
    start_dow = int(((start // 86_400) + 3) % 7)  # 1970-01-01 was a Thursday (3)

    free_flow = rng.uniform(60.0, 70.0, size=num_nodes)
    severity = rng.uniform(0.45, 0.75, size=num_corridors)[net.corridor]
    queue_km = rng.uniform(4.0, 10.0, size=num_corridors)[net.corridor]
    day_amplitude = rng.uniform(0.7, 1.2, size=(num_corridors, num_days))

    delay_min = net.to_bottleneck_km / WAVE_KMH * 60.0  # (N,)
    shifted = minutes[:, None] - delay_min[None, :]  # (T, N)
    demand = np.empty((num_steps, num_nodes))
    for c in range(num_corridors):
        cols = net.corridor == c
        demand[:, cols] = _commute_demand(shifted[:, cols], day_amplitude[c], start_dow)
    reach = np.exp(-net.to_bottleneck_km / queue_km)
    # A queue forms once demand passes capacity; soft threshold keeps it smooth.
    congestion = reach * (1.0 / (1.0 + np.exp(-(demand - 0.55) * 10.0)))
    slowdown = severity * congestion

    # Incidents: a slowdown at one sensor that spreads upstream along its corridor.
    num_incidents = rng.poisson(0.4 * num_corridors * max(num_days, 1))
    for _ in range(num_incidents):
        k = rng.integers(0, num_nodes)
        upstream = np.nonzero((net.corridor == net.corridor[k]) & (net.position_km <= net.position_km[k]))[0]
        dist = net.position_km[k] - net.position_km[upstream]
        begin = rng.uniform(0, minutes[-1] + step_min)
        duration = rng.uniform(20, 90)
        depth = rng.uniform(0.3, 0.6)
        onset = begin + dist / WAVE_KMH * 60.0  # (U,)
        active = (minutes[:, None] >= onset) & (minutes[:, None] < onset + duration)
        slowdown[:, upstream] = np.maximum(slowdown[:, upstream], active * depth * np.exp(-dist / 3.0))

    speed = free_flow * (1.0 - slowdown)
    speed += rng.normal(0.0, 1.5, size=speed.shape)
    speed = np.clip(speed, 3.0, 85.0).astype(np.float32)

    # Missing readings: runs of 0.0 (PeMS marks gaps with zeros).
    if missing_rate > 0:
        mean_run = 6
        runs = rng.poisson(missing_rate * num_steps * num_nodes / mean_run)
        starts_t = rng.integers(0, num_steps, size=runs)
        sensors = rng.integers(0, num_nodes, size=runs)
        lengths = rng.geometric(1.0 / mean_run, size=runs)
        for t0, n, length in zip(starts_t, sensors, lengths):
            speed[t0 : t0 + length, n] = 0.0

    return TrafficData(
        speed=speed,
        timestamps=start + np.arange(num_steps, dtype=np.int64) * interval_s,
        sensor_ids=[f"{400000 + i}" for i in range(num_nodes)],
        edge_index=net.edge_index,
        edge_weight=net.edge_weight,
        interval_s=interval_s,
        source=f"hvd_stgnn synthetic (seed={seed})",
        attrs={"synthetic_seed": seed},
    )
