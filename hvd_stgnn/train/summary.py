"""The lines a run prints on rank 0: one per epoch, and the test table at the end."""

from __future__ import annotations

import math

from hvd_stgnn.results import EpochPhases


def format_epoch_line(epoch: int, epochs: int, train_mae: float, val_mae: float, improved: bool, lr: float,
                      phases: EpochPhases, seconds: float) -> str:
    """MAEs (`*`: best so far), LR, and the median step split into its phases; max/min rank is
    the slowest rank's step time over the fastest's (load imbalance or a straggler)."""
    med = phases.median
    spread = phases.step_ms["max"] / max(phases.step_ms["min"], 1e-9)
    return (f"epoch {epoch:3d}/{epochs}  train MAE {train_mae:7.4f}  val MAE {val_mae:7.4f}"
            f"{' *' if improved else '  '} lr {lr:.2e}  step {med('step_ms'):.1f} ms "
            f"(batch {med('batch_ms'):.1f} fwd {med('forward_ms'):.1f} bwd+allreduce {med('backward_ms'):.1f} "
            f"opt {med('optimizer_ms'):.1f}; max/min rank {spread:.2f})  ({seconds:.1f} s)")


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
