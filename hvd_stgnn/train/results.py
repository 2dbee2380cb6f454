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


def format_test_table(table: dict, world_size: int, windows: int | str, baselines: dict | None = None) -> str:
    """table: {"mae": {"15min": .., ...}, "rmse": {...}, "mape": {...}} -> aligned text,
    with the MAE of each baseline ({"persistence": table, ...}) beside the model's."""
    baselines = {k: v for k, v in (baselines or {}).items() if isinstance(v, dict)}
    columns = list(table["mae"])
    names = {"persistence": "persist.", "historical_average": "hist.avg"}
    head = f"  {'horizon':<8}{'MAE':>9}{'RMSE':>9}{'MAPE %':>9}" + "".join(f"{names.get(b, b)[:9] + ' MAE':>15}" for b in baselines)
    lines = [f"test ({windows} windows, {world_size} rank(s)); masked, missing readings excluded", head]

    def cell(v: float, width: int = 9) -> str:
        return f"{v:{width}.3f}" if not math.isnan(v) else f"{'-':>{width}}"

    for col in columns:
        row = f"  {col:<8}" + "".join(cell(table[m][col]) for m in ("mae", "rmse", "mape"))
        row += "".join(cell(b["mae"][col], 15) for b in baselines.values())
        lines.append(row)
    return "\n".join(lines)
