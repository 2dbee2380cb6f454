"""The arithmetic of `hvd-stgnn bench allreduce` (bench/allreduce.py), all pure: message
sizes and iteration counts, algorithm and bus bandwidth, the ring model and its fit, how DDP
and Horovod group a gradient set into messages, and one row of the report per size.
The conventions are in bench/allreduce.py's docstring."""

from __future__ import annotations

import math
import re

from hvd_stgnn.errors import ConfigError

FLOAT32 = 4  # bytes per element
UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20,
         "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30}
MAX_SIZE = 4 << 30  # one message of at most 4 GiB per rank
HOROVOD_DEFAULT_FUSION_BYTES = 128 << 20  # Horovod 0.28's default HOROVOD_FUSION_THRESHOLD
HOROVOD_DEFAULT_CYCLE_MS = 1.0  # Horovod 0.28's default HOROVOD_CYCLE_TIME
DDP_DEFAULT_BUCKET_MB = 25.0  # torch's bucket_cap_mb (parallel/ddp_backend.py)


# --- sizes and iterations (pure) ---------------------------------------------------------------


def parse_size(text: str, flag: str = "--size") -> int:
    """'4KB' -> 4096, '256MB' -> 268435456, '1GiB', '4096' (bytes); KB = 1024 B as in
    nccl-tests. A float32 message: a multiple of 4 bytes, 4 B .. 4 GiB. ConfigError otherwise."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(text))
    unit = m.group(2).lower() if m else ""
    if not m or unit not in UNITS:
        raise ConfigError(f"{flag}: expected a size like 4KB, 1MB, 256MB or a byte count (got {text!r})")
    value = float(m.group(1)) * UNITS[unit]
    if value != int(value):
        raise ConfigError(f"{flag}: {text!r} is not a whole number of bytes")
    size = int(value)
    if size < FLOAT32 or size % FLOAT32:
        raise ConfigError(f"{flag}: {text!r} is {size} bytes; a float32 message needs a positive multiple of 4 bytes")
    if size > MAX_SIZE:
        raise ConfigError(f"{flag}: {text!r} is over {MAX_SIZE >> 30} GiB, the largest message this benchmark sends")
    return size


def size_sweep(min_size: int, max_size: int) -> list[int]:
    """min, 2 min, 4 min, ... up to max (max itself appended when the doubling misses it)."""
    if min_size > max_size:
        raise ConfigError(f"--min-size ({format_size(min_size)}) is larger than --max-size ({format_size(max_size)})")
    sizes = []
    n = min_size
    while n <= max_size:
        sizes.append(n)
        n *= 2
    if sizes[-1] != max_size:
        sizes.append(max_size)
    return sizes


def format_size(n: int) -> str:
    """4096 -> '4 KB', 268435456 -> '256 MB', 6 -> '6 B' (binary units, as parse_size reads them)."""
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"


def iterations_for(size: int, iters: int, min_iters: int, bytes_per_size: int) -> int:
    """Timed iterations at `size`: `iters`, scaled down so that at most `bytes_per_size` are
    reduced per size, but never fewer than `min_iters`."""
    return max(min_iters, min(iters, bytes_per_size // size))


def warmup_for(iterations: int, iters: int, warmup: int) -> int:
    """Warm-up iterations, scaled down with the timed ones (at least 1)."""
    return max(1, math.ceil(warmup * iterations / max(1, iters)))


# --- bandwidth and the ring model (pure) -------------------------------------------------------


def ring_factor(np_: int) -> float:
    """2 (P - 1) / P: the share of the message each rank sends (and receives) in a ring allreduce."""
    return 2 * (np_ - 1) / np_


def algbw(size: int, seconds: float) -> float:
    """Algorithm bandwidth, bytes/s: size / time."""
    return size / seconds


def busbw(size: int, seconds: float, np_: int) -> float:
    """Bus bandwidth, bytes/s: algbw * 2 (P - 1) / P (nccl-tests' allreduce convention)."""
    return algbw(size, seconds) * ring_factor(np_)


def ring_time(size: float, np_: int, alpha_s: float, beta_bytes_per_s: float) -> float:
    """t(n) = 2 (P - 1) alpha + 2 (P - 1) / P * n / beta (seconds)."""
    return 2 * (np_ - 1) * alpha_s + ring_factor(np_) * size / beta_bytes_per_s


MAX_BETA = 1e18  # bytes/s: a fitted bandwidth above this means the times do not grow with the size


def fit_ring(sizes: list[int], seconds: list[float], np_: int) -> dict:
    """Fit t(n) = 2 (P-1) alpha + 2 (P-1)/P n / beta by least squares of log(t_fit / t), alpha >= 0.

    Log residuals weigh every size alike and a factor too fast like a factor too slow (plain
    least squares lets the largest message decide everything; residuals (t_fit - t) / t
    favour predicting too fast). The model is linear in (alpha, 1/beta): the start is the
    linear least-squares solution of the rows [2 (P-1), 2 (P-1)/P n] / t = 1, refined by
    Gauss-Newton on the log residuals with alpha kept >= 0 (at 0 the result says so).
    Returns alpha_s, beta_bytes_per_s, sizes, relative_residuals (t_fit - t) / t per size,
    relative_residual_max (of |r|), relative_residual_rms. ValueError when there is nothing
    to fit or the times do not grow with the size."""
    import numpy as np

    if np_ < 2:
        raise ValueError("the ring model needs at least 2 ranks")
    if len(sizes) != len(seconds) or len(sizes) < 2:
        raise ValueError(f"a fit needs at least 2 sizes with times (got {len(sizes)} sizes, {len(seconds)} times)")
    n = np.asarray(sizes, dtype=np.float64)
    t = np.asarray(seconds, dtype=np.float64)
    if np.any(t <= 0) or np.any(n <= 0):
        raise ValueError("sizes and times must be positive")
    cols = np.column_stack([np.full_like(n, 2.0 * (np_ - 1)), ring_factor(np_) * n])  # t = cols @ (alpha, 1/beta)
    x, *_ = np.linalg.lstsq(cols / t[:, None], np.ones_like(t), rcond=None)
    if x[0] < 0 or x[1] <= 0:  # start inside the bounds
        x = np.array([max(x[0], 0.0), max(x[1], float(np.max(t / cols[:, 1])))])

    def resid(v):
        return np.log(cols @ v) - np.log(t)

    cost = float(resid(x) @ resid(x))
    for _ in range(200):
        model = cols @ x
        jac = cols / model[:, None]
        scale = np.abs(jac).max(axis=0)
        step, *_ = np.linalg.lstsq(jac / scale, -resid(x), rcond=None)
        step /= scale
        length = 1.0
        while length > 1e-12:
            trial = x + length * step
            trial[0] = max(trial[0], 0.0)
            trial[1] = max(trial[1], 1.0 / MAX_BETA / 10)
            trial_cost = float(resid(trial) @ resid(trial))
            if trial_cost < cost:
                break
            length /= 2
        else:
            break
        done = np.all(np.abs(trial - x) <= 1e-13 * np.abs(x))
        x, cost = trial, trial_cost
        if done:
            break
    alpha, inv_beta = float(x[0]), float(x[1])
    if inv_beta * MAX_BETA <= 1:
        raise ValueError("the fitted bandwidth is not finite: the times do not grow with the size")
    beta = 1.0 / inv_beta
    fitted = np.array([ring_time(s, np_, alpha, beta) for s in n])
    rel = (fitted - t) / t
    out = {
        "model": "t(n) = 2 (P-1) alpha + 2 (P-1)/P n / beta",
        "method": "least squares of log(t_fit / t) over the sizes, alpha >= 0",
        "alpha_s": alpha,
        "beta_bytes_per_s": beta,
        "sizes": [int(v) for v in sizes],
        "relative_residuals": [float(v) for v in rel],
        "relative_residual_max": float(np.max(np.abs(rel))),
        "relative_residual_rms": float(np.sqrt(np.mean(rel ** 2))),
    }
    if alpha == 0.0:
        out["note"] = "alpha at its bound 0 (the times leave no room for a latency)"
    return out


# --- grouping a gradient set into messages (pure) ------------------------------------------------


def ddp_buckets(nbytes: list[int], cap_bytes: int) -> list[list[int]]:
    """Indices of `nbytes` (in the order gradients become ready) grouped as DDP's reducer
    does (torch's _compute_bucket_assignment_by_size, one dtype and device): a bucket is
    closed once it holds at least `cap_bytes`."""
    buckets: list[list[int]] = []
    current: list[int] = []
    size = 0
    for i, b in enumerate(nbytes):
        current.append(i)
        size += b
        if size >= cap_bytes:
            buckets.append(current)
            current, size = [], 0
    if current:
        buckets.append(current)
    return buckets


def horovod_fusion(nbytes: list[int], threshold_bytes: int) -> list[list[int]]:
    """Indices of `nbytes` (tensors ready together, in order) grouped into Horovod's fused
    responses: tensors are added while the buffer stays within the threshold; one larger
    than the threshold (or a threshold of 0: fusion off) goes alone."""
    groups: list[list[int]] = []
    current: list[int] = []
    size = 0
    for i, b in enumerate(nbytes):
        if current and size + b > threshold_bytes:
            groups.append(current)
            current, size = [], 0
        current.append(i)
        size += b
    if current:
        groups.append(current)
    return groups


def predicted_seconds(message_bytes: list[int], np_: int, fit: dict | None) -> float | None:
    """What the fitted ring model says the messages take, one after the other."""
    if not fit:
        return None
    return sum(ring_time(b, np_, fit["alpha_s"], fit["beta_bytes_per_s"]) for b in message_bytes)


# --- one row of the report (pure) ------------------------------------------------------------------


def make_row(backend: str, size: int, np_: int, iter_seconds_mean: list[float], iter_seconds_max: list[float],
             warmup: int) -> dict:
    """One (backend, size) row from the per-iteration times (mean and max over ranks)."""
    import statistics

    lat = statistics.median(iter_seconds_mean)
    return {
        "backend": backend, "size_bytes": size, "count": size // FLOAT32, "iterations": len(iter_seconds_mean),
        "warmup": warmup, "latency_us": lat * 1e6, "latency_max_us": statistics.median(iter_seconds_max) * 1e6,
        "algbw_gb_per_s": algbw(size, lat) / 1e9, "busbw_gb_per_s": busbw(size, lat, np_) / 1e9,
    }


def fit_rows(rows: list[dict], np_: int, fit_min: int = 0, fit_max: int = 0) -> dict:
    """{backend: fit} over each backend's rows with fit_min <= size <= fit_max (0: no bound);
    adds fit_latency_us and fit_relative_residual to every row of a fitted backend (in place,
    rows outside the range too). A backend whose times cannot be fitted gets {"error": why}."""
    fits: dict = {}
    for backend in dict.fromkeys(r["backend"] for r in rows):
        mine = [r for r in rows if r["backend"] == backend]
        used = [r for r in mine if r["size_bytes"] >= fit_min and (not fit_max or r["size_bytes"] <= fit_max)]
        try:
            fit = fit_ring([r["size_bytes"] for r in used], [r["latency_us"] * 1e-6 for r in used], np_)
        except ValueError as exc:
            fits[backend] = {"error": str(exc), "sizes": [r["size_bytes"] for r in used]}
            continue
        for r in mine:
            r["fit_latency_us"] = ring_time(r["size_bytes"], np_, fit["alpha_s"], fit["beta_bytes_per_s"]) * 1e6
            r["fit_relative_residual"] = r["fit_latency_us"] / r["latency_us"] - 1
        fits[backend] = fit
    return fits
