"""The project's HDF5 file format (docs/data-format.md): write, validate, read.

/speed                (T, N) float32, chunked time-major (a day of steps x all sensors)
/timestamps           (T,)   int64 seconds since epoch, strictly increasing, regular
/sensor_ids           (N,)   UTF-8 strings
/graph/edge_index     (2, E) int64, row 0 source, row 1 target
/graph/edge_weight    (E,)   float32
attributes on /: schema_version, interval_seconds, missing_value (0.0), source
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from hvd_stgnn.data.dataset import TrafficData
from hvd_stgnn.errors import DataError

SCHEMA_VERSION = 1
MISSING_VALUE = 0.0
_REQUIRED = {
    "speed": 2,
    "timestamps": 1,
    "sensor_ids": 1,
    "graph/edge_index": 2,
    "graph/edge_weight": 1,
}


def write_dataset(path: str | os.PathLike, data: TrafficData, chunk_steps: int = 288) -> None:
    """Write `data` to `path` atomically (a temp file renamed over the target)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with h5py.File(tmp, "w") as f:
            T, N = data.speed.shape
            f.create_dataset(
                "speed",
                data=data.speed.astype(np.float32, copy=False),
                chunks=(max(1, min(T, chunk_steps)), N),
            )
            f.create_dataset("timestamps", data=data.timestamps.astype(np.int64, copy=False))
            f.create_dataset("sensor_ids", data=np.array(data.sensor_ids, dtype=object), dtype=h5py.string_dtype())
            g = f.create_group("graph")
            g.create_dataset("edge_index", data=data.edge_index.astype(np.int64, copy=False))
            g.create_dataset("edge_weight", data=data.edge_weight.astype(np.float32, copy=False))
            f.attrs["schema_version"] = SCHEMA_VERSION
            f.attrs["interval_seconds"] = int(data.interval_s)
            f.attrs["missing_value"] = MISSING_VALUE
            f.attrs["source"] = data.source
            for key, value in data.attrs.items():
                f.attrs[key] = value
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _open(path: str | os.PathLike) -> h5py.File:
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file")
    if p.is_dir():
        raise DataError(f"{p}: is a directory, expected an HDF5 file")
    try:
        return h5py.File(p, "r")
    except OSError as exc:
        raise DataError(f"{p}: not a readable HDF5 file ({exc})") from None


def validate_file(path: str | os.PathLike) -> tuple[int, int]:
    """Check the schema without reading the series; returns (T, N). Raises DataError."""
    with _open(path) as f:
        return _validate(path, f)


def _validate(path, f: h5py.File) -> tuple[int, int]:
    for name, ndim in _REQUIRED.items():
        if name not in f:
            raise DataError(f"{path}: missing dataset /{name} (see docs/data-format.md)")
        if f[name].ndim != ndim:
            raise DataError(f"{path}: /{name} must have {ndim} dimension(s), has shape {f[name].shape}")
    version = int(f.attrs.get("schema_version", -1))
    if version != SCHEMA_VERSION:
        raise DataError(f"{path}: schema_version {version}, expected {SCHEMA_VERSION}")
    T, N = f["speed"].shape
    if f["speed"].dtype != np.float32:
        raise DataError(f"{path}: /speed must be float32, is {f['speed'].dtype}")
    if f["timestamps"].shape != (T,):
        raise DataError(f"{path}: /timestamps has shape {f['timestamps'].shape}, expected ({T},) to match /speed")
    if f["sensor_ids"].shape != (N,):
        raise DataError(f"{path}: /sensor_ids has shape {f['sensor_ids'].shape}, expected ({N},) to match /speed")
    E = f["graph/edge_index"].shape[1]
    if f["graph/edge_index"].shape[0] != 2 or f["graph/edge_weight"].shape != (E,):
        raise DataError(
            f"{path}: graph must be edge_index (2, E) and edge_weight (E,), got "
            f"{f['graph/edge_index'].shape} and {f['graph/edge_weight'].shape}"
        )
    if int(f.attrs.get("interval_seconds", 0)) <= 0:
        raise DataError(f"{path}: attribute interval_seconds must be a positive integer")
    return int(T), int(N)


def read_dataset(path: str | os.PathLike) -> TrafficData:
    """Read and validate a whole file. Raises DataError naming the file and the problem."""
    with _open(path) as f:
        T, N = _validate(path, f)
        interval = int(f.attrs["interval_seconds"])
        timestamps = f["timestamps"][...].astype(np.int64)
        if T > 1 and not np.all(np.diff(timestamps) == interval):
            bad = int(np.argmax(np.diff(timestamps) != interval))
            raise DataError(
                f"{path}: /timestamps must increase by interval_seconds={interval}; "
                f"step {bad} -> {bad + 1} jumps by {int(timestamps[bad + 1] - timestamps[bad])} s"
            )
        edge_index = f["graph/edge_index"][...].astype(np.int64)
        if edge_index.size and (edge_index.min() < 0 or edge_index.max() >= N):
            raise DataError(f"{path}: /graph/edge_index refers to nodes outside 0..{N - 1}")
        speed = np.empty((T, N), dtype=np.float32)
        f["speed"].read_direct(speed)
        return TrafficData(
            speed=speed,
            timestamps=timestamps,
            sensor_ids=[s.decode() if isinstance(s, bytes) else str(s) for s in f["sensor_ids"][...]],
            edge_index=edge_index,
            edge_weight=f["graph/edge_weight"][...].astype(np.float32),
            interval_s=interval,
            source=str(f.attrs.get("source", "")),
        )
