"""The project's HDF5 file format (docs/data-format.md): write, validate, read.

/speed                (T, N) float32, chunked time-major (a day of steps x all sensors)
/timestamps           (T,)   int64 seconds since epoch, strictly increasing, regular
/sensor_ids           (N,)   UTF-8 strings
/graph/edge_index     (2, E) int64, row 0 source, row 1 target
/graph/edge_weight    (E,)   float32
attributes on /: schema_version, interval_seconds, missing_value (0.0), source
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from hvd_stgnn.data.dataset import TrafficData, is_present
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


@contextlib.contextmanager
def dataset_writer(
    path: str | os.PathLike,
    meta: TrafficData,
    num_steps: int,
    chunk_steps: int = 288,
) -> Iterator[h5py.Dataset]:
    """Create a file with every dataset of the schema and yield the empty /speed dataset
    (num_steps, N) float32 to fill (e.g. slab by slab, for data larger than memory).

    `meta` supplies timestamps, sensor ids, graph, interval, source and extra attrs; its
    `speed` is not used. The file appears at `path` only when the block exits without error
    (written to a temp file beside it, then renamed), so no half-written file is left.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    num_nodes = len(meta.sensor_ids)
    try:
        with h5py.File(tmp, "w") as f:
            speed = f.create_dataset(
                "speed",
                shape=(num_steps, num_nodes),
                dtype=np.float32,
                chunks=(max(1, min(num_steps, chunk_steps)), num_nodes),
            )
            f.create_dataset("timestamps", data=np.asarray(meta.timestamps, dtype=np.int64))
            f.create_dataset("sensor_ids", data=np.array(meta.sensor_ids, dtype=object), dtype=h5py.string_dtype())
            g = f.create_group("graph")
            g.create_dataset("edge_index", data=np.asarray(meta.edge_index, dtype=np.int64).reshape(2, -1))
            g.create_dataset("edge_weight", data=np.asarray(meta.edge_weight, dtype=np.float32))
            f.attrs["schema_version"] = SCHEMA_VERSION
            f.attrs["interval_seconds"] = int(meta.interval_s)
            f.attrs["missing_value"] = MISSING_VALUE
            f.attrs["source"] = meta.source
            for key, value in meta.attrs.items():
                f.attrs[key] = value
            yield speed
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_dataset(path: str | os.PathLike, data: TrafficData, chunk_steps: int = 288) -> None:
    """Write an in-memory dataset to `path` atomically."""
    with dataset_writer(path, data, data.num_steps, chunk_steps) as speed:
        speed.write_direct(np.ascontiguousarray(data.speed, dtype=np.float32))


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
        if not isinstance(f[name], h5py.Dataset):
            raise DataError(f"{path}: /{name} must be a dataset, is a group")
        if f[name].ndim != ndim:
            raise DataError(f"{path}: /{name} must have {ndim} dimension(s), has shape {f[name].shape}")
    version = int(f.attrs.get("schema_version", -1))
    if version != SCHEMA_VERSION:
        raise DataError(f"{path}: schema_version {version}, expected {SCHEMA_VERSION}")
    T, N = f["speed"].shape
    for name, kind in (("speed", "f"), ("timestamps", "i"), ("graph/edge_index", "i"), ("graph/edge_weight", "f")):
        if f[name].dtype.kind != kind:
            want = {"f": "float", "i": "integer"}[kind]
            raise DataError(f"{path}: /{name} must be {want}, is {f[name].dtype}")
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


def read_metadata(path: str | os.PathLike) -> TrafficData:
    """Validate the file and read everything but the series (speed=None).

    Checks the schema, regular increasing timestamps, unique sensor ids, edge indices in
    range and finite non-negative weights. Raises DataError naming the file and the problem.
    """
    with _open(path) as f:
        T, N = _validate(path, f)
        interval = int(f.attrs["interval_seconds"])
        timestamps = f["timestamps"][...].astype(np.int64)
        steps = np.diff(timestamps)
        if T > 1 and not np.all(steps == interval):
            bad = int(np.argmax(steps != interval))
            what = "increase" if steps[bad] > 0 else "strictly increase"
            raise DataError(
                f"{path}: /timestamps must {what} by interval_seconds={interval}; "
                f"step {bad} -> {bad + 1} changes by {int(steps[bad])} s"
            )
        sensor_ids = [s.decode() if isinstance(s, bytes) else str(s) for s in f["sensor_ids"][...]]
        if len(set(sensor_ids)) != N:
            dupes = sorted({s for s in sensor_ids if sensor_ids.count(s) > 1})[:3]
            raise DataError(f"{path}: /sensor_ids has duplicates, e.g. {dupes}")
        edge_index = f["graph/edge_index"][...].astype(np.int64)
        if edge_index.size and (edge_index.min() < 0 or edge_index.max() >= N):
            raise DataError(f"{path}: /graph/edge_index refers to nodes outside 0..{N - 1}")
        edge_weight = f["graph/edge_weight"][...].astype(np.float32)
        if not np.all(np.isfinite(edge_weight)):
            raise DataError(f"{path}: /graph/edge_weight has {int((~np.isfinite(edge_weight)).sum())} NaN/inf weight(s)")
        if np.any(edge_weight < 0):
            raise DataError(f"{path}: /graph/edge_weight has {int((edge_weight < 0).sum())} negative weight(s)")
        return TrafficData(
            speed=None,
            timestamps=timestamps,
            sensor_ids=sensor_ids,
            edge_index=edge_index,
            edge_weight=edge_weight,
            interval_s=interval,
            source=str(f.attrs.get("source", "")),
        )


def time_slabs(shape: tuple[int, int], slab_bytes: int) -> Iterator[tuple[int, int]]:
    """Step ranges [t0, t1) of about `slab_bytes` of float32 rows (T, N), at least one row."""
    T, N = shape
    rows = max(1, slab_bytes // max(1, N * 4))
    for t0 in range(0, T, rows):
        yield t0, min(T, t0 + rows)


def read_speed_into(path: str | os.PathLike, out: np.ndarray, slab_bytes: int = 256 << 20) -> int:
    """Read /speed (T, N) into `out` in time slabs, straight into its memory (read_direct).

    Returns the number of NaN/inf readings (treated as missing, not an error).
    """
    with _open(path) as f:
        dset = f["speed"]
        if dset.shape != out.shape or out.dtype != np.float32 or not out.flags.c_contiguous:
            raise DataError(f"{path}: /speed is {dset.shape} {dset.dtype}, destination is {out.shape} {out.dtype}")
        nonfinite = 0
        for t0, t1 in time_slabs(dset.shape, slab_bytes):
            try:
                dset.read_direct(out, np.s_[t0:t1], np.s_[t0:t1])
            except OSError as exc:
                raise DataError(f"{path}: cannot read /speed steps {t0}..{t1 - 1} ({exc})") from None
            nonfinite += count_nonfinite(out[t0:t1])
        return nonfinite


def count_nonfinite(block: np.ndarray, step: int = 1 << 20) -> int:
    """NaN/inf count, in cache-sized pieces (4x faster than one pass over a large slab)."""
    flat = block.reshape(-1)
    chunks = (flat[i : i + step] for i in range(0, flat.size, step))
    return sum(int(chunk.size - np.count_nonzero(np.isfinite(chunk))) for chunk in chunks)


def scan_missing(path: str | os.PathLike, slab_bytes: int = 256 << 20) -> tuple[float, int]:
    """(share of missing readings (0, NaN or inf), count of NaN/inf) read slab by slab."""
    with _open(path) as f:
        dset = f["speed"]
        T, N = dset.shape
        missing = nonfinite = 0
        for t0, t1 in time_slabs(dset.shape, slab_bytes):
            block = dset[t0:t1]
            finite = np.isfinite(block)
            nonfinite += int(block.size - np.count_nonzero(finite))
            missing += int(block.size - np.count_nonzero(is_present(block)))
        return (missing / (T * N) if T * N else 0.0), nonfinite


def read_dataset(path: str | os.PathLike) -> TrafficData:
    """Read and validate a whole file into process memory."""
    data = read_metadata(path)
    data.speed = np.empty((data.num_steps, data.num_nodes), dtype=np.float32)
    data.attrs["nonfinite_readings"] = read_speed_into(path, data.speed)
    return data
