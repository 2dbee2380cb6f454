"""Reading a trace file: its text (gzip is fine), which format it is, and its parse.

    load_trace(path)     -> HorovodTrace | TorchTrace, told apart by content: torch writes one
                            JSON object with `traceEvents` and its header keys, Horovod an array
    load_timeline(path)  -> HorovodTrace (a torch.profiler trace is an error)
    read_events(path)    -> (Horovod events, cut short?)

Every problem is a one-line DataError that starts with the path.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from hvd_stgnn.errors import DataError
from hvd_stgnn.profiling.horovod_trace import events_from_body, not_a_timeline, parse_events
from hvd_stgnn.profiling.torch_trace import is_torch_trace, parse_torch_trace
from hvd_stgnn.profiling.trace import HorovodTrace, TorchTrace


def read_body(path: str | Path) -> str:
    """The text of a trace file (gzip-compressed is fine), stripped; one-line DataError otherwise."""
    p = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{p}: is a directory, not a timeline file") from None
    except OSError as exc:
        raise DataError(f"{p}: cannot read it ({exc.strerror or exc})") from None
    if raw[:2] == b"\x1f\x8b":  # torch.profiler's tensorboard handler can write .json.gz
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DataError(f"{p}: a gzip file that cannot be decompressed ({exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise not_a_timeline(p, "not UTF-8 text") from None
    body = text.strip()
    if not body:
        raise DataError(f"{p}: empty: no events were written (nothing was recorded, or the job died before the first one)")
    return body


def _parse_json(body: str) -> Any:
    """The document, or None when the text is not one whole JSON value (a cut-short timeline)."""
    try:
        return json.loads(body)
    except json.JSONDecodeError:
        return None


def read_events(path: str | Path) -> tuple[list, bool]:
    """The trace events of a Horovod timeline file, and whether the file was cut short.

    Accepts a complete JSON array, or one with its closing `]` missing and/or its last event
    truncated (a killed job). Raises DataError with one line for anything else.
    """
    body = read_body(path)
    return events_from_body(str(path), body, _parse_json(body))


def load_timeline(path: str | Path) -> HorovodTrace:
    """A Horovod timeline (see load_trace for either format)."""
    events, truncated = read_events(path)
    return parse_events(events, str(path), truncated)


def load_trace(path: str | Path) -> HorovodTrace | TorchTrace:
    """A Horovod timeline or a torch.profiler trace (the DDP backend's)."""
    body = read_body(path)
    doc = _parse_json(body)
    if is_torch_trace(doc):
        return parse_torch_trace(doc, str(path))
    events, truncated = events_from_body(str(path), body, doc)
    return parse_events(events, str(path), truncated)
