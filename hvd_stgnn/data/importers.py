"""Importers: convert published traffic-data formats into a `TrafficData` (docs/importers.md).

Each importer is a pure function taking keyword arguments and returning a `TrafficData`;
the caller writes it with `write_dataset`. `IMPORTERS` (at the end) names each format's
function and the `data import` flags it reads, so the CLI needs no per-format code. Bad input raises `DataError` (a file's content)
or `ConfigError` (a flag's value) with one line naming the file or flag and the problem.

    dcrnn-h5  pandas HDF5 speeds (T, N) + DCRNN pickle (sensor_ids, sensor_id_to_ind, adj (N, N))
    tgcn-csv  CSV speeds: header of N ids + T rows of N values; CSV adjacency (N, N), no header
    pgt-npy   node_values.npy (T, N, F) or (T, N) + adj_mat.npy (N, N); ids "0".."N-1"

Graph rule, shared by all: adj[i, j] != 0 is the directed edge i -> j with that weight.
Self-loops (the diagonal) are dropped because graph operators add their own.
"""

from __future__ import annotations

import csv
import os
import pickle
import re
import warnings
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import h5py
import numpy as np

from hvd_stgnn.data.dataset import TrafficData
from hvd_stgnn.errors import ConfigError, DataError

PathLike = str | os.PathLike
# Seconds per unit of a numpy datetime64 unit; pandas writes the unit into axis1's `kind`.
_UNIT_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


# --- shared helpers -----------------------------------------------------------------------


def _existing(path: PathLike, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file ({what})")
    if p.is_dir():
        raise DataError(f"{p}: is a directory, expected the {what} file")
    return p


def timestamps_from_start(start: str, num_steps: int, interval_s: int) -> np.ndarray:
    """(num_steps,) int64 seconds since epoch: `start` + k * `interval_s`.

    `start` is "YYYY-MM-DD HH:MM" or any ISO 8601 string; without a UTC offset it is read
    as UTC wall-clock (as the published files store local time as if it were UTC).
    """
    if isinstance(interval_s, bool) or not isinstance(interval_s, (int, np.integer)) or interval_s <= 0:
        raise ConfigError(f"--interval: must be a positive whole number of seconds, got {interval_s!r}")
    try:
        t0 = datetime.fromisoformat(str(start).strip())
    except ValueError:
        raise ConfigError(f"--start: {start!r} is not a date like '2012-03-01 00:00'") from None
    if t0.tzinfo is None:
        t0 = t0.replace(tzinfo=timezone.utc)
    return int(t0.timestamp()) + np.arange(num_steps, dtype=np.int64) * np.int64(interval_s)


def _edges(adj: np.ndarray, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Dense (N, N) adjacency -> edge_index (2, E) int64 (source, target), edge_weight (E,) float32.

    Validates before anything is dropped, so a bad diagonal entry is reported too.
    Reported positions are rows/columns of the matrix as stored in `path`.
    """
    if adj.ndim != 2 or adj.shape[0] != adj.shape[1]:
        raise DataError(f"{path}: adjacency must be a square (N, N) matrix, has shape {adj.shape}")
    try:
        adj = np.asarray(adj, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{path}: adjacency is not numeric (dtype {adj.dtype})") from None
    for bad, what in ((~np.isfinite(adj), "NaN or infinite"), (adj < 0, "negative")):
        if bad.any():
            i, j = (int(x) for x in np.argwhere(bad)[0])
            raise DataError(f"{path}: {int(bad.sum())} {what} edge weight(s), first at row {i}, column {j} (0-based) = {adj[i, j]}")
    nz = adj != 0
    np.fill_diagonal(nz, False)
    src, dst = np.nonzero(nz)  # row-major: edges sorted by source, then target
    return np.stack([src, dst]).astype(np.int64), adj[src, dst].astype(np.float32)


def _check_speed(speed: np.ndarray, path: Path) -> np.ndarray:
    if speed.ndim != 2 or speed.shape[0] < 1 or speed.shape[1] < 1:
        raise DataError(f"{path}: speeds must be a non-empty (T, N) array, have shape {speed.shape}")
    if not np.issubdtype(speed.dtype, np.number) or np.issubdtype(speed.dtype, np.complexfloating):
        raise DataError(f"{path}: speeds must be real numbers, are {speed.dtype}")
    # NaN/inf are kept: like 0.0 they count as missing downstream.
    return speed.astype(np.float32)


def _text(x) -> str:
    return x.decode("utf-8") if isinstance(x, (bytes, np.bytes_)) else str(x)


def _unique_ids(ids: list[str], path: Path) -> None:
    dup = next((s for s, n in Counter(ids).items() if n > 1), None)
    if dup is not None:
        raise DataError(f"{path}: sensor id {dup!r} appears more than once")


# --- dcrnn-h5 -----------------------------------------------------------------------------


def _axis1_seconds(ds: h5py.Dataset, path: Path) -> np.ndarray:
    """pandas DatetimeIndex (int64 in the unit named by attribute `kind`) -> int64 seconds."""
    kind = _text(ds.attrs.get("kind", b"datetime64"))
    m = re.fullmatch(r"datetime64(?:\[(\w+)\])?", kind)
    if m is None:
        raise DataError(f"{path}: {ds.name} is not a datetime index (kind {kind!r})")
    unit = m.group(1) or "ns"  # classic pandas (DCRNN's files) writes plain 'datetime64' = ns
    if unit not in _UNIT_PER_SECOND:
        raise DataError(f"{path}: {ds.name} has unsupported time unit {unit!r} (supported: s, ms, us, ns)")
    raw = ds[...].astype(np.int64)
    per_s = _UNIT_PER_SECOND[unit]
    if np.any(raw % per_s):
        raise DataError(f"{path}: {ds.name} timestamps are not whole seconds (unit {unit})")
    return raw // per_s


def _regular(ts: np.ndarray, speed: np.ndarray, path: Path, name: str, fill_gaps: bool):
    """-> (timestamps, speed, interval_s, filled): the time axis checked to be regular.

    With `fill_gaps`, steps that skip whole intervals get NaN rows (missing) inserted:
    PEMS-BAY's index, in local time, jumps 01:55 -> 03:00 at the 2017-03-12 DST change.
    """
    if ts.size < 2:
        raise DataError(f"{path}: {name} has {ts.size} timestamp(s); need at least 2 to know the interval")
    steps = np.diff(ts)
    if np.any(steps <= 0):
        k = int(np.argmax(steps <= 0))
        raise DataError(f"{path}: {name} timestamps must increase; step {k} -> {k + 1} is {int(steps[k])} s")
    values, counts = np.unique(steps, return_counts=True)
    interval = int(values[np.argmax(counts)])  # the most common step, not a stray odd one
    if np.all(steps == interval):
        return ts, speed, interval, 0
    k = int(np.argmax(steps != interval))
    where = f"step {k} -> {k + 1} is {int(steps[k])} s, the usual step is {interval} s"
    if not fill_gaps:
        raise DataError(f"{path}: {name} timestamps are not regular: {where} (fill_gaps / --fill-gaps inserts missing steps)")
    pos = (ts - ts[0]) // interval
    if np.any(steps % interval) or pos[-1] + 1 > 2 * ts.size:
        raise DataError(f"{path}: {name} gaps are not a few whole steps: {where}")
    full = np.full((int(pos[-1]) + 1, speed.shape[1]), np.nan, dtype=np.float32)
    full[pos] = speed
    return ts[0] + np.arange(full.shape[0], dtype=np.int64) * interval, full, interval, full.shape[0] - ts.size


def _read_pandas_h5(path: Path, key: str | None, fill_gaps: bool):
    """-> (sensor ids (N,), timestamps (T,) int64 s, speed (T, N) float32, interval s, steps filled)."""
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{path}: not a readable HDF5 file ({exc})") from None
    with f:
        if key is None:
            key = next((k for k in ("df", "speed") if k in f), None)
            if key is None:
                raise DataError(f"{path}: no group 'df' or 'speed' (has {sorted(f.keys())}); pass --key")
        if key not in f or not isinstance(f[key], h5py.Group):
            raise DataError(f"{path}: no group {key!r} (has {sorted(f.keys())})")
        g = f[key]
        for name in ("block0_values", "axis0", "axis1"):
            if name not in g:  # e.g. pandas format="table" files, which keep /<key>/table instead
                raise DataError(f"{path}: missing /{key}/{name}; not a pandas fixed-format DataFrame")
        if int(g.attrs.get("nblocks", 1)) != 1:
            raise DataError(f"{path}: /{key} has {int(g.attrs['nblocks'])} value blocks; only 1 (all-float frame) is supported")
        values = g["block0_values"]
        ids = [_text(s) for s in g["axis0"][...]]
        if values.ndim != 2 or values.shape != (g["axis1"].shape[0], len(ids)):
            raise DataError(
                f"{path}: /{key}/block0_values has shape {values.shape}, expected "
                f"(len(axis1), len(axis0)) = ({g['axis1'].shape[0]}, {len(ids)})"
            )
        if "block0_items" in g and [_text(s) for s in g["block0_items"][...]] != ids:
            raise DataError(f"{path}: /{key}/block0_items differs from /{key}/axis0 (columns out of order)")
        ts = _axis1_seconds(g["axis1"], path)
        speed = _check_speed(values[...], path)
    _unique_ids(ids, path)
    return (ids, *_regular(ts, speed, path, f"/{key}/axis1", fill_gaps))


def _read_dcrnn_pickle(path: Path) -> tuple[list[str], np.ndarray]:
    """DCRNN graph pickle -> (sensor ids (N,), adj (N, N)) in the pickle's order."""
    raw = path.read_bytes()
    try:
        # DCRNN's pickles were written by Python 2: latin1 turns its str into str.
        obj = pickle.loads(raw, encoding="latin1")
    except Exception as exc:  # pickle raises many types for a bad file
        try:  # a text-protocol pickle checked out with CRLF line ends (git autocrlf) fails so
            obj = pickle.loads(raw.replace(b"\r\n", b"\n"), encoding="latin1")
        except Exception:
            raise DataError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc})") from None
    if not (isinstance(obj, (tuple, list)) and len(obj) == 3):
        raise DataError(f"{path}: expected DCRNN's (sensor_ids, sensor_id_to_ind, adj_mx), got {type(obj).__name__}")
    ids, id_to_ind, adj = [_text(s) for s in obj[0]], obj[1], np.asarray(obj[2])
    if adj.shape != (len(ids), len(ids)):
        raise DataError(f"{path}: adj_mx has shape {adj.shape}, expected ({len(ids)}, {len(ids)}) for {len(ids)} sensor ids")
    _unique_ids(ids, path)
    # adj rows are indexed by sensor_id_to_ind; DCRNN builds it from the list order. Check it.
    if isinstance(id_to_ind, dict):
        wrong = [s for i, s in enumerate(ids) if id_to_ind.get(s, id_to_ind.get(s.encode(), i)) != i]
        if wrong:
            raise DataError(f"{path}: sensor_id_to_ind disagrees with sensor_ids order (e.g. {wrong[0]!r})")
    return ids, adj


def import_dcrnn_h5(
    speed_path: PathLike, graph_path: PathLike, key: str | None = None, fill_gaps: bool = False
) -> TrafficData:
    """DCRNN/PGT pandas HDF5 speeds + DCRNN adjacency pickle (METR-LA, PEMS-BAY).

    speed file: /<key>/block0_values (T, N), /<key>/axis0 (N,) sensor ids,
    /<key>/axis1 (T,) int64 datetimes in the unit of its `kind` attribute.
    graph file: pickle (sensor_ids (N,), sensor_id_to_ind, adj_mx (N, N)); matched by id.
    fill_gaps: insert NaN rows where the time axis skips whole intervals (else DataError).
    """
    sp, gp = _existing(speed_path, "speed"), _existing(graph_path, "graph")
    ids, ts, speed, interval, filled = _read_pandas_h5(sp, key, fill_gaps)
    g_ids, adj = _read_dcrnn_pickle(gp)
    col = {s: i for i, s in enumerate(ids)}
    if set(ids) != set(g_ids):
        only_s = [s for s in ids if s not in set(g_ids)]
        only_g = [s for s in g_ids if s not in col]
        raise DataError(
            f"{sp} and {gp}: sensor ids differ: {len(only_s)} only in the speed file {only_s[:3]}, "
            f"{len(only_g)} only in the graph file {only_g[:3]}"
        )
    # Validate in the pickle's own order (positions in messages then match the file), then
    # relabel graph nodes to speed-file column indices.
    edge_index, edge_weight = _edges(adj, gp)
    if g_ids != ids:
        edge_index = np.array([col[s] for s in g_ids], dtype=np.int64)[edge_index]
        order = np.lexsort((edge_index[1], edge_index[0]))  # keep edges sorted by (source, target)
        edge_index, edge_weight = edge_index[:, order], edge_weight[order]
    return TrafficData(
        speed=speed, timestamps=ts, sensor_ids=ids, edge_index=edge_index, edge_weight=edge_weight,
        interval_s=interval, source=f"dcrnn-h5: {sp} + {gp}" + (f" ({filled} missing steps filled with NaN)" if filled else ""),
    )


# --- tgcn-csv -----------------------------------------------------------------------------


def import_tgcn_csv(speed_path: PathLike, adj_path: PathLike, start: str, interval_s: int = 300) -> TrafficData:
    """T-GCN CSVs (los_speed.csv / los_adj.csv, sz_speed.csv / sz_adj.csv).

    speed file: header row of N sensor ids, then T rows of N speeds.
    adj file: N rows of N weights, no header, same sensor order as the speed header.
    Timestamps: `start` (UTC wall-clock) + k * `interval_s`.
    """
    sp, ap = _existing(speed_path, "speed"), _existing(adj_path, "adjacency")
    with open(sp, newline="", encoding="utf-8-sig") as fh:  # -sig: tolerate an Excel BOM
        header = next(csv.reader(fh), None)
    if not header:
        raise DataError(f"{sp}: empty file; expected a header row of sensor ids")
    ids = [s.strip() for s in header]
    if any(not s for s in ids):
        raise DataError(f"{sp}: header has an empty sensor id (column {ids.index('')})")
    _unique_ids(ids, sp)
    speed = _load_csv(sp, skiprows=1)
    if speed.size == 0:
        raise DataError(f"{sp}: no data rows after the header")
    if speed.shape[1] != len(ids):
        raise DataError(f"{sp}: rows have {speed.shape[1]} values but the header names {len(ids)} sensors")
    adj = _load_csv(ap, skiprows=0)
    if adj.shape != (len(ids), len(ids)):
        raise DataError(f"{ap}: adjacency has shape {adj.shape}, expected ({len(ids)}, {len(ids)}) for the {len(ids)} sensors of {sp}")
    edge_index, edge_weight = _edges(adj, ap)
    return TrafficData(
        speed=_check_speed(speed, sp), timestamps=timestamps_from_start(start, speed.shape[0], interval_s),
        sensor_ids=ids, edge_index=edge_index, edge_weight=edge_weight, interval_s=int(interval_s),
        source=f"tgcn-csv: {sp} + {ap}",
    )


def _load_csv(path: Path, skiprows: int) -> np.ndarray:
    """Numeric CSV -> (rows, cols) float64; ragged rows or non-numbers become one DataError line."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an empty table is reported by the caller
            return np.loadtxt(path, delimiter=",", skiprows=skiprows, dtype=np.float64, ndmin=2)
    except ValueError:
        pass
    # Error path only: find the first bad line ourselves to report a 1-based file line number.
    with open(path, newline="", encoding="utf-8-sig") as fh:
        width = None
        for line, row in enumerate(csv.reader(fh), start=1):
            if line <= skiprows or not row:
                continue
            if width is not None and len(row) != width:
                raise DataError(f"{path}: line {line} has {len(row)} values, earlier lines have {width}")
            width = len(row)
            for col, cell in enumerate(row, start=1):
                try:
                    float(cell)
                except ValueError:
                    raise DataError(f"{path}: line {line}, column {col}: {cell!r} is not a number") from None
    raise DataError(f"{path}: not a numeric CSV table")


# --- pgt-npy ------------------------------------------------------------------------------


def import_pgt_npy(
    values_path: PathLike, adj_path: PathLike, start: str, interval_s: int = 300, feature: int = 0
) -> TrafficData:
    """PyTorch Geometric Temporal METR-LA / PEMS-BAY arrays.

    values: node_values.npy (T, N, F) (feature 0 is speed) or (T, N).
    adj: adj_mat.npy (N, N). Sensor ids are "0".."N-1" (the files carry none).
    """
    vp, ap = _existing(values_path, "node values"), _existing(adj_path, "adjacency")
    values, adj = _load_npy(vp), _load_npy(ap)
    if values.ndim == 3:
        if not 0 <= feature < values.shape[2]:
            raise ConfigError(f"feature: {feature} is out of range for {vp} with {values.shape[2]} features")
        values = values[:, :, feature]
    elif values.ndim != 2:
        raise DataError(f"{vp}: node values must be (T, N, F) or (T, N), have shape {values.shape}")
    speed = _check_speed(values, vp)
    n = speed.shape[1]
    if adj.shape != (n, n):
        raise DataError(f"{ap}: adjacency has shape {adj.shape}, expected ({n}, {n}) for the {n} nodes of {vp}")
    edge_index, edge_weight = _edges(adj, ap)
    return TrafficData(
        speed=speed, timestamps=timestamps_from_start(start, speed.shape[0], interval_s),
        sensor_ids=[str(i) for i in range(n)], edge_index=edge_index, edge_weight=edge_weight,
        interval_s=int(interval_s), source=f"pgt-npy: {vp} + {ap}",
    )


def _load_npy(path: Path) -> np.ndarray:
    with open(path, "rb") as fh:
        if fh.read(6) != b"\x93NUMPY":
            raise DataError(f"{path}: not a .npy file (no NumPy header)")
    try:
        return np.load(path, allow_pickle=False)  # no pickles: a .npy must be plain numbers
    except ValueError:
        raise DataError(f"{path}: holds Python objects, expected a numeric array") from None
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: unreadable .npy file ({exc})") from None


# --- the registry ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportOption:
    """A `data import` flag that some importers read, and the keyword they take it as.

    Declared once here because several formats share a flag (--start, --interval); the CLI
    (data/cli.py) adds each to the parser, prefixing its help with the formats that read it.
    """

    keyword: str  # the importer function's parameter
    help: str
    default: Any = None  # False: a switch (store_true)
    type: Callable[[str], Any] | None = None  # None: the string as given
    required_because: str = ""  # the reason an importer that requires it gives when it is missing


IMPORT_OPTIONS: dict[str, ImportOption] = {
    "--key": ImportOption("key", "HDF5 group, 'df' or 'speed' (default: whichever exists)"),
    "--fill-gaps": ImportOption("fill_gaps", "fill skipped time steps with NaN (PEMS-BAY's DST gap)", default=False),
    "--start": ImportOption("start", "time of the first step, 'YYYY-MM-DD HH:MM' (UTC wall-clock)", default="",
                            required_because="the files carry no timestamps"),
    "--interval": ImportOption("interval_s", "seconds per step (default: 300)", default=300, type=int),
    "--feature": ImportOption("feature", "feature index of speed (default: 0)", default=0, type=int),
}


@dataclass(frozen=True)
class Importer:
    """One input format: its function, the IMPORT_OPTIONS flags it reads and those it requires.

    Callable like its function: `IMPORTERS[fmt](speed_path, graph_path, **kwargs)`.
    """

    function: Callable[..., TrafficData]
    options: tuple[str, ...] = ()
    required: tuple[str, ...] = ()

    def __call__(self, speed_path: PathLike, graph_path: PathLike, **kwargs: Any) -> TrafficData:
        return self.function(speed_path, graph_path, **kwargs)


IMPORTERS: dict[str, Importer] = {
    "dcrnn-h5": Importer(import_dcrnn_h5, options=("--key", "--fill-gaps")),
    "tgcn-csv": Importer(import_tgcn_csv, options=("--start", "--interval"), required=("--start",)),
    "pgt-npy": Importer(import_pgt_npy, options=("--start", "--interval", "--feature"), required=("--start",)),
}
