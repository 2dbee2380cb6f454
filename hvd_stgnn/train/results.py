"""Results JSON and the test table printed at the end of a run."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path


def write_json_atomic(path: str | os.PathLike, obj: dict) -> None:
    """Write JSON to a temp file beside `path`, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, allow_nan=True)
        f.write("\n")
    os.replace(tmp, path)


def format_test_table(table: dict[str, dict[str, float]], world_size: int, windows: int) -> str:
    """table: {"mae": {"15min": .., ...}, "rmse": {...}, "mape": {...}} -> aligned text."""
    columns = list(table["mae"])
    lines = [
        f"test ({windows} windows, {world_size} rank(s)); masked, missing readings excluded",
        f"  {'horizon':<8}{'MAE':>9}{'RMSE':>9}{'MAPE %':>9}",
    ]
    for col in columns:
        cells = [table[m][col] for m in ("mae", "rmse", "mape")]
        lines.append(f"  {col:<8}" + "".join(f"{v:9.3f}" if not math.isnan(v) else f"{'-':>9}" for v in cells))
    return "\n".join(lines)
