"""Checkpoints: written by rank 0 atomically, read by rank 0 and broadcast.

A checkpoint holds everything needed to continue bit-for-bit: model, optimizer, LR-schedule
and fp16 loss-scaler state, the position (epoch, step within it, global step), every rank's
RNG states (CPU, and its GPU's on CUDA), the best
validation model, the normalization statistics, the config, and a fingerprint of the data
file (a resumed run on different data is refused).
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hvd_stgnn.errors import ConfigError, UserError

CHECKPOINT_DIR = "checkpoints"
LAST = "last.pt"
PREV = "prev.pt"  # the checkpoint before last.pt: --resume auto falls back to it
BEST = "best.pt"
FORMAT_VERSION = 1


class CheckpointError(UserError):
    """A checkpoint cannot be written or read (one line, names the path)."""


def checkpoint_path(run_dir: str | Path, name: str = LAST) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / name


def resolve_resume(path: str) -> Path:
    """--resume accepts a run directory (its checkpoints/last.pt) or a checkpoint file
    (`auto` is chosen by choose_start)."""
    p = Path(path)
    if p.is_dir():
        p = checkpoint_path(p)
    if not p.is_file():
        raise ConfigError(f"--resume {path}: no checkpoint at {p}")
    return p


def data_fingerprint(path: str) -> dict:
    """Size and modification time of the data file: cheap, and enough to catch a file
    rewritten between a run and its resumption."""
    st = os.stat(path)
    return {"path": str(Path(path).resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def rng_state() -> dict:
    """This process's RNG streams: torch CPU, the current GPU's (dropout on a GPU draws from
    it; None without CUDA), numpy and Python."""
    cuda = torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return {"torch": torch.get_rng_state(), "cuda": cuda, "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def save_atomic(path: Path, state: dict[str, Any], keep_previous: bool = False) -> None:
    """torch.save to a temporary file in the same directory, fsync, then rename over
    `path`: a crash or a full disk leaves the previous checkpoint intact. `keep_previous`:
    the file `path` replaces becomes PREV (last.pt -> prev.pt), the fallback of --resume auto."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save({"format_version": FORMAT_VERSION, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        if keep_previous and path.exists():
            os.replace(path, path.with_name(PREV))
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"cannot write checkpoint {path}: {exc.strerror or exc}") from None


def load(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # truncated / not a torch file: one line, not a pickle traceback
        reason = str(exc).splitlines()[0].split(". ")[0] if str(exc) else ""  # torch appends a paragraph of advice
        raise CheckpointError(f"--resume {path}: not a readable checkpoint ({type(exc).__name__}: {reason})") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"--resume {path}: not an hvd-stgnn checkpoint (format {FORMAT_VERSION})")
    return state


def check_compatible(state: dict, cfg_dict: dict, fingerprint: dict, path: Path) -> None:
    """Refuse to resume with a different model/data setup (the training flags may change)."""
    old = state["config"]
    for section, keys in {"model": None, "data": ("path", "input_steps", "horizon", "split", "day_of_week")}.items():
        for key in keys or old[section].keys():
            if old[section].get(key) != cfg_dict[section].get(key):
                raise CheckpointError(
                    f"--resume {path}: checkpoint has {section}.{key}={old[section].get(key)!r}, "
                    f"this run {cfg_dict[section].get(key)!r}"
                )
    then = state["data_fingerprint"]
    if (then["bytes"], then["mtime_ns"]) != (fingerprint["bytes"], fingerprint["mtime_ns"]):
        raise CheckpointError(
            f"--resume {path}: data file {fingerprint['path']} changed since the checkpoint "
            f"({then['bytes']} -> {fingerprint['bytes']} bytes, mtime {then['mtime_ns']} -> {fingerprint['mtime_ns']})"
        )


def choose_start(run_dir: str, resume: str, overwrite: bool) -> tuple[Path | None, dict | None, str]:
    """Rank 0, before anything is written: which checkpoint this run starts from.

    Returns (path, loaded state, one line saying what happens); (None, None, line) for a
    fresh start. `--resume auto` takes RUN_DIR/checkpoints/last.pt, else prev.pt when
    last.pt is partial or unreadable (saying so), starts fresh when there is neither, and
    refuses when neither can be read. Without --resume, a run dir that holds checkpoints
    is refused unless --overwrite (which deletes them).
    """
    if resume and resume != "auto":
        path = resolve_resume(resume)
        return path, load(path), f"resuming from {path}"
    if not run_dir:
        return None, None, ""
    found = [checkpoint_path(run_dir, n) for n in (LAST, PREV)]
    found = [p for p in found if p.exists()]
    if resume == "auto":
        problems = []
        for path in found:
            try:
                state = load(path)
            except CheckpointError as exc:
                problems.append(f"{path.name}: {str(exc).split(': ', 1)[-1]}")
                continue
            skipped = f" ({'; '.join(problems)})" if problems else ""
            return path, state, f"--resume auto: resuming from {path}{skipped}"
        if problems:
            raise CheckpointError(f"--resume auto: no readable checkpoint in {Path(run_dir) / CHECKPOINT_DIR} "
                                  f"({'; '.join(problems)}); --overwrite starts over")
        return None, None, f"--resume auto: no checkpoint in {Path(run_dir) / CHECKPOINT_DIR}: starting fresh"
    if found and not overwrite:
        raise ConfigError(f"--run-dir {run_dir}: holds checkpoints of an earlier run ({', '.join(p.name for p in found)}); "
                          f"continue it with --resume auto, or start over with --overwrite")
    if overwrite:  # everything an earlier run left: its checkpoints, metrics and results
        earlier = [*found, checkpoint_path(run_dir, BEST), Path(run_dir) / "metrics.jsonl", Path(run_dir) / "results.json"]
        earlier = [p for p in earlier if p.exists()]
        for path in earlier:
            path.unlink()
        if earlier:
            return None, None, (f"--overwrite: removed the earlier run's {', '.join(p.name for p in earlier)} "
                                f"in {run_dir}: starting fresh")
    return None, None, ""
