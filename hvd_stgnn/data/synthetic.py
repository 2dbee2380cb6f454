"""A PeMS-like synthetic traffic dataset with structure a graph model can learn, at any scale.

Road network: directed highway corridors, sensors every 0.5-2.5 km; each corridor after
the first merges into a sensor of an earlier one (a junction). Edges link each sensor to
the sensors downstream of it within reach, weighted by a Gaussian kernel of road distance
(as DCRNN builds its graphs), so the graph is sparse: O(N) edges, never an N x N matrix.

Speeds: free-flow speed per sensor, daily commute peaks (weekends lighter, day-to-day
variation), congestion that forms at each corridor's bottleneck (its downstream end) and
spreads upstream with a delay and decay, incidents that do the same from a random sensor,
sensor noise, and missing readings as runs of 0.0. Upstream sensors therefore follow their
downstream neighbours with a lag, which a graph model can use and a per-sensor model cannot.

Streaming: `SyntheticTraffic` builds the network, the small per-sensor / per-corridor /
per-day parameters and the incident list up front (O(N + corridors * days + incidents)
memory) and computes any step range with `speed(t0, t1)`. The series is produced in fixed
blocks of one day of steps: the noise and the missing-reading runs of block b come from an
RNG seeded by (seed, b), and every value of a block is computed the same way whichever range
asked for it, so the output is deterministic in `seed` and bit-for-bit independent of how a
range is chunked. `write_synthetic` streams a dataset into an HDF5 file slab by slab, so the
year-long 11,160-sensor `pems` preset (4.7 GB) is written with a few hundred MB of RAM.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hvd_stgnn.data.dataset import TrafficData, weekday

STEPS_PER_DAY_5MIN = 288
# 2024-01-01 00:00:00 UTC, a Monday.
DEFAULT_START = 1_704_067_200
_YEAR_5MIN = 365 * STEPS_PER_DAY_5MIN  # 105,120


@dataclass(frozen=True)
class Preset:
    num_nodes: int
    num_steps: int
    description: str


PRESETS: dict[str, Preset] = {
    "tiny": Preset(50, 14 * STEPS_PER_DAY_5MIN, "50 sensors x 2 weeks of 5-minute steps (the default `make run` data)"),
    "metr-la": Preset(207, 34_272, "METR-LA's shape: 207 sensors x 119 days of 5-minute steps (28 MB)"),
    "pems-bay": Preset(325, 52_116, "PEMS-BAY's shape: 325 sensors x 181 days of 5-minute steps (68 MB)"),
    "pems-all-la": Preset(2_716, _YEAR_5MIN, "PeMS-All-LA's shape: 2,716 sensors x a year of 5-minute steps (1.1 GB)"),
    "pems": Preset(11_160, _YEAR_5MIN, "all-California PeMS shape: 11,160 sensors x a year of 5-minute steps (4.7 GB)"),
}

WAVE_KMH = 15.0  # upstream speed of a congestion front
KERNEL_SIGMA_KM = 4.0
KERNEL_THRESHOLD = 0.1  # DCRNN drops weights below 0.1
MEAN_MISSING_RUN = 6  # steps
MAX_INCIDENT_MIN = 90.0
NOISE_MPH = 1.5
TILE_STEPS = 48  # rows computed at once inside a block (bounds the float64 temporaries)
# Independent RNG streams: one for the up-front parameters (seeded by `seed` alone), and
# per-block streams seeded by (seed, stream, block).
_NOISE_STREAM = 1
_MISSING_STREAM = 2


@dataclass
class RoadNetwork:
    corridor: np.ndarray  # (N,) corridor of each sensor; a corridor's sensors are contiguous
    position_km: np.ndarray  # (N,) position along its corridor (0 at its first sensor, increasing downstream)
    to_bottleneck_km: np.ndarray  # (N,) road distance to the corridor's downstream end
    edge_index: np.ndarray  # (2, E)
    edge_weight: np.ndarray  # (E,)
    corridor_start: np.ndarray  # (corridors + 1,) offsets: corridor c is sensors [start[c], start[c+1])


def build_network(num_nodes: int, rng: np.random.Generator) -> RoadNetwork:
    """Corridors of ~12 sensors; pairwise distances only within a corridor, so O(N) work and edges."""
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
        d = pos[None, :] - pos[:, None]  # d[i, j] = distance from i to downstream j (corridor-sized)
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
        corridor_start=offsets.astype(np.int64),
    )


class SyntheticTraffic:
    """A deterministic synthetic dataset of `num_steps` x `num_nodes` speeds, computed on demand.

    `speed(t0, t1)` returns steps [t0, t1) as a (t1 - t0, N) float32 array; the values do not
    depend on how the range is split (speed(0, T) == concatenation of speed over any split).
    """

    def __init__(
        self,
        num_nodes: int,
        num_steps: int,
        seed: int = 0,
        interval_s: int = 300,
        start: int = DEFAULT_START,
        missing_rate: float = 0.02,
    ):
        if num_nodes < 2 or num_steps < 1:
            raise ValueError(f"need at least 2 sensors and 1 step (got {num_nodes} x {num_steps})")
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive (got {interval_s})")
        if not 0.0 <= missing_rate < 1.0:
            raise ValueError(f"missing_rate must be in [0, 1) (got {missing_rate})")
        self.num_nodes = int(num_nodes)
        self.num_steps = int(num_steps)
        self.seed = int(seed)
        self.interval_s = int(interval_s)
        self.start = int(start)
        self.missing_rate = float(missing_rate)
        # Block = one day of steps: the unit of the per-block RNG streams and of computation.
        self.block_steps = max(1, 86_400 // self.interval_s)

        rng = np.random.default_rng(self.seed)
        net = build_network(self.num_nodes, rng)
        self.network = net
        num_corridors = len(net.corridor_start) - 1
        self._step_min = self.interval_s / 60.0
        # Minutes are counted from the UTC midnight of the first day, so time of day is wall-clock.
        self._offset_min = (self.start % 86_400) / 60.0
        last_min = self._offset_min + (self.num_steps - 1) * self._step_min
        num_days = int(last_min // 1440) + 1
        self._num_days = num_days
        start_dow = int(weekday(self.start))

        self.free_flow = rng.uniform(60.0, 70.0, size=self.num_nodes)
        severity = rng.uniform(0.45, 0.75, size=num_corridors)
        queue_km = rng.uniform(4.0, 10.0, size=num_corridors)
        day_amplitude = rng.uniform(0.7, 1.2, size=(num_corridors, num_days))
        workday = ((np.arange(num_days) + start_dow) % 7) < 5
        # (corridors, days) commute amplitude including the weekday/weekend factor.
        self._day_factor = day_amplitude * np.where(workday, 1.0, 0.3)[None, :]

        self._delay_min = net.to_bottleneck_km / WAVE_KMH * 60.0  # (N,)
        reach = np.exp(-net.to_bottleneck_km / queue_km[net.corridor])
        self._peak_slowdown = severity[net.corridor] * reach  # (N,) slowdown at full congestion

        # Incidents: a slowdown at one sensor that spreads upstream along its corridor.
        num_incidents = rng.poisson(0.4 * num_corridors * num_days)
        node = rng.integers(0, self.num_nodes, size=num_incidents)
        begin = self._offset_min + rng.uniform(0, self.num_steps * self._step_min, size=num_incidents)
        duration = rng.uniform(20, MAX_INCIDENT_MIN, size=num_incidents)
        depth = rng.uniform(0.3, 0.6, size=num_incidents)
        order = np.argsort(begin, kind="stable")
        self._inc_node, self._inc_begin = node[order], begin[order]
        self._inc_duration, self._inc_depth = duration[order], depth[order]
        # Longest upstream spread delay: from a corridor's last sensor to its first.
        self._max_spread_min = float(net.position_km.max()) / WAVE_KMH * 60.0
        self._cache: tuple[int, np.ndarray] | None = None

    # --- metadata -----------------------------------------------------------------------

    @property
    def num_edges(self) -> int:
        return int(self.network.edge_index.shape[1])

    @property
    def num_incidents(self) -> int:
        return int(len(self._inc_node))

    def timestamps(self) -> np.ndarray:
        return self.start + np.arange(self.num_steps, dtype=np.int64) * self.interval_s

    def metadata(self, speed: np.ndarray | None = None, preset: str | None = None) -> TrafficData:
        """A TrafficData with everything but the series (`speed` is a (0, N) placeholder unless given)."""
        attrs: dict = {
            "synthetic_seed": self.seed,
            "synthetic_num_nodes": self.num_nodes,
            "synthetic_num_steps": self.num_steps,
        }
        if preset:
            attrs["synthetic_preset"] = preset
        return TrafficData(
            speed=np.empty((0, self.num_nodes), dtype=np.float32) if speed is None else speed,
            timestamps=self.timestamps(),
            sensor_ids=[f"{400000 + i}" for i in range(self.num_nodes)],
            edge_index=self.network.edge_index,
            edge_weight=self.network.edge_weight,
            interval_s=self.interval_s,
            source=f"hvd_stgnn synthetic (seed={self.seed})",
            attrs=attrs,
        )

    # --- the series ---------------------------------------------------------------------

    def speed(self, t0: int, t1: int) -> np.ndarray:
        """Speeds of steps [t0, t1) as (t1 - t0, N) float32 mph, 0.0 where missing."""
        t0, t1 = int(t0), int(t1)
        if not 0 <= t0 <= t1 <= self.num_steps:
            raise ValueError(f"step range [{t0}, {t1}) outside [0, {self.num_steps})")
        B = self.block_steps
        if t1 == t0:
            return np.empty((0, self.num_nodes), dtype=np.float32)
        first, last = t0 // B, (t1 - 1) // B
        if first == last and t0 == first * B and t1 == min(t0 + B, self.num_steps):
            # Exactly one whole block (the streaming writer's case): no copy, no cache.
            if self._cache is not None and self._cache[0] == first:
                return self._cache[1].copy()
            return self._compute_block(first)
        out = np.empty((t1 - t0, self.num_nodes), dtype=np.float32)
        for b in range(first, last + 1):
            lo = b * B
            a, z = max(t0, lo), min(t1, lo + B)
            out[a - t0 : z - t0] = self._block(b)[a - lo : z - lo]
        return out

    def _block(self, b: int) -> np.ndarray:
        """Block b, kept in a one-block cache so unaligned consecutive ranges compute it once."""
        if self._cache is not None and self._cache[0] == b:
            return self._cache[1]
        self._cache = None  # let the previous block go before computing the next
        block = self._compute_block(b)
        self._cache = (b, block)
        return block

    def _compute_block(self, b: int) -> np.ndarray:
        """Steps [b*B, min((b+1)*B, T)) for all sensors; depends only on (parameters, seed, b).

        The deterministic part is computed TILE_STEPS rows at a time (fixed tiles within the
        block) so the float64 temporaries stay a fraction of a day's array.
        """
        B, N = self.block_steps, self.num_nodes
        lo = b * B
        hi = min(lo + B, self.num_steps)
        n = hi - lo
        speed = np.empty((n, N), dtype=np.float32)
        # The noise of a block is one stream, drawn tile after tile in a fixed order.
        noise_rng = np.random.default_rng([self.seed, _NOISE_STREAM, b])
        for r0 in range(0, n, TILE_STEPS):
            r1 = min(r0 + TILE_STEPS, n)
            tile = self._mean_speed(lo + r0, lo + r1)  # (r1 - r0, N) float64
            noise = noise_rng.standard_normal((r1 - r0, N), dtype=np.float32)
            noise *= np.float32(NOISE_MPH)
            tile += noise
            del noise
            np.clip(tile, 3.0, 85.0, out=tile)
            speed[r0:r1] = tile
            del tile

        # Missing readings: runs of 0.0 (PeMS marks gaps with zeros). Runs start in this block
        # or the previous one (a run is at most one block long), so they cross block boundaries.
        if self.missing_rate > 0:
            rows, cols = [], []
            for src_block in (b - 1, b):
                if src_block < 0:
                    continue
                starts, sensors, lengths = self._missing_runs(src_block)
                r0 = np.clip(starts, lo, hi)
                r1 = np.clip(starts + lengths, lo, hi)
                r, c = _expand_ranges(r0 - lo, r1 - r0, sensors)
                rows.append(r)
                cols.append(c)
            speed[np.concatenate(rows), np.concatenate(cols)] = 0.0
        return speed

    def _mean_speed(self, lo: int, hi: int) -> np.ndarray:
        """Noise-free speeds of steps [lo, hi), (hi - lo, N) float64: free flow x (1 - slowdown)."""
        net = self.network
        minutes = self._offset_min + np.arange(lo, hi, dtype=np.float64) * self._step_min  # (n,)

        # Commute congestion at the bottleneck, seen at each sensor `delay` minutes later.
        tod = minutes[:, None] - self._delay_min[None, :]  # (n, N) shifted minutes
        day = np.floor_divide(tod, 1440.0)
        tod -= day * 1440.0
        day = np.clip(day.astype(np.int64), 0, self._num_days - 1)
        demand = self._day_factor[net.corridor[None, :], day]  # (n, N) amplitude x weekday factor
        del day
        peaks = _gauss(tod.copy(), 8 * 60, 50.0)
        peaks *= 0.9
        peaks += _gauss(tod, 17.5 * 60, 70.0)
        del tod
        demand *= peaks
        del peaks
        # A queue forms once demand passes capacity; soft threshold keeps it smooth.
        demand -= 0.55
        demand *= -10.0
        np.exp(demand, out=demand)
        demand += 1.0
        slowdown = np.divide(self._peak_slowdown[None, :], demand, out=demand)

        self._apply_incidents(slowdown, lo, hi)

        np.subtract(1.0, slowdown, out=slowdown)
        slowdown *= self.free_flow[None, :]
        return slowdown

    def _missing_runs(self, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Runs of missing readings that start in block b: (global start step, sensor, length)."""
        B, N = self.block_steps, self.num_nodes
        rng = np.random.default_rng([self.seed, _MISSING_STREAM, b])
        count = rng.poisson(self.missing_rate * B * N / MEAN_MISSING_RUN)
        starts = b * B + rng.integers(0, B, size=count)
        sensors = rng.integers(0, N, size=count)
        lengths = np.minimum(rng.geometric(1.0 / MEAN_MISSING_RUN, size=count), B)
        return starts, sensors, lengths

    def _apply_incidents(self, slowdown: np.ndarray, lo: int, hi: int) -> None:
        """slowdown[t - lo, u] = max(slowdown, incident effect) for incidents touching [lo, hi)."""
        net = self.network
        step = self._step_min
        m0 = self._offset_min + lo * step
        m1 = self._offset_min + hi * step
        # Every incident that can reach this block began after this bound (with a step of slack).
        earliest = m0 - self._max_spread_min - MAX_INCIDENT_MIN - step
        i0, i1 = np.searchsorted(self._inc_begin, [earliest, m1], side="left")
        if i1 <= i0:
            return
        k = self._inc_node[i0:i1]
        first = net.corridor_start[net.corridor[k]]
        # (incident, upstream sensor) pairs: sensors first..k of k's corridor (contiguous, upstream of k).
        u, inc = _expand_ranges(first, k - first + 1, np.arange(i1 - i0))
        inc += i0
        dist = net.position_km[self._inc_node[inc]] - net.position_km[u]
        onset = self._inc_begin[inc] + dist / WAVE_KMH * 60.0
        end = onset + self._inc_duration[inc]
        magnitude = self._inc_depth[inc] * np.exp(-dist / 3.0)
        # Active at global steps t with onset <= minute(t) < end; computed from the incident
        # alone, so the same whichever block asks.
        s0 = np.ceil((onset - self._offset_min) / step).astype(np.int64)
        s1 = np.ceil((end - self._offset_min) / step).astype(np.int64)
        s0, s1 = np.clip(s0, lo, hi), np.clip(s1, lo, hi)
        keep = s1 > s0
        rows, idx = _expand_ranges(s0[keep] - lo, s1[keep] - s0[keep], np.flatnonzero(keep))
        np.maximum.at(slowdown, (rows, u[idx]), magnitude[idx])


def _gauss(x: np.ndarray, mu: float, sigma: float) -> np.ndarray:
    y = x - mu
    y /= sigma
    np.square(y, out=y)
    y *= -0.5
    return np.exp(y, out=y)


def _expand_ranges(starts: np.ndarray, lengths: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For ranges [starts[i], starts[i] + lengths[i]) return (values, labels[i] per value)."""
    lengths = np.maximum(np.asarray(lengths, dtype=np.int64), 0)
    total = int(lengths.sum())
    owner = np.repeat(np.arange(len(lengths)), lengths)
    offset = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.asarray(starts, dtype=np.int64)[owner] + offset, np.asarray(labels)[owner]


def generate(
    num_nodes: int,
    num_steps: int,
    seed: int = 0,
    interval_s: int = 300,
    start: int = DEFAULT_START,
    missing_rate: float = 0.02,
) -> TrafficData:
    """Synthesize speeds (T, N) in mph and the sensor graph, in memory. Deterministic in `seed`."""
    traffic = SyntheticTraffic(num_nodes, num_steps, seed, interval_s, start, missing_rate)
    return traffic.metadata(speed=traffic.speed(0, num_steps))


@dataclass
class SynthSummary:
    """What `write_synthetic` wrote."""

    path: Path
    num_steps: int
    num_nodes: int
    num_edges: int
    seed: int
    missing_share: float  # share of readings that are 0.0
    nbytes: int  # size of /speed in bytes
    seconds: float


def write_synthetic(
    path: str | os.PathLike,
    num_nodes: int,
    num_steps: int,
    seed: int = 0,
    progress: bool = True,
    chunk_steps: int = STEPS_PER_DAY_5MIN,
    preset: str | None = None,
    interval_s: int = 300,
    start: int = DEFAULT_START,
    missing_rate: float = 0.02,
) -> SynthSummary:
    """Stream a synthetic dataset into an HDF5 file (docs/data-format.md), `chunk_steps` per write.

    Memory is O(N * chunk_steps + network), not O(T * N); the file content equals
    `generate(num_nodes, num_steps, seed, ...)`. The file appears only on success.
    """
    from hvd_stgnn.data.hdf5 import dataset_writer

    if chunk_steps < 1:
        raise ValueError(f"chunk_steps must be >= 1 (got {chunk_steps})")
    t_begin = time.perf_counter()
    traffic = SyntheticTraffic(num_nodes, num_steps, seed, interval_s, start, missing_rate)
    meta = traffic.metadata(preset=preset)
    missing = 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(
            total=num_steps * num_nodes * 4, unit="B", unit_scale=True, unit_divisor=1024,
            desc=f"synth {Path(path).name}", smoothing=0.1,
        )
    try:
        with dataset_writer(path, meta, num_steps) as dset:
            for t0 in range(0, num_steps, chunk_steps):
                t1 = min(t0 + chunk_steps, num_steps)
                slab = traffic.speed(t0, t1)
                missing += int(np.count_nonzero(slab == 0))
                dset[t0:t1] = slab
                if bar is not None:
                    bar.update(slab.nbytes)
    finally:
        if bar is not None:
            bar.close()
    return SynthSummary(
        path=Path(path),
        num_steps=num_steps,
        num_nodes=num_nodes,
        num_edges=traffic.num_edges,
        seed=seed,
        missing_share=missing / (num_steps * num_nodes),
        nbytes=num_steps * num_nodes * 4,
        seconds=time.perf_counter() - t_begin,
    )
