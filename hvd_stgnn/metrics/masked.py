"""Masked forecasting metrics as sums and counts, reduced across ranks, divided once.

Per horizon step h: sum |e|, sum e^2, sum |e| / |y| and the count of valid targets
(missing readings masked). MAE = sum|e| / n, RMSE = sqrt(sum e^2 / n), MAPE (percent) =
100 * sum(|e| / |y|) / n. Means of per-batch means are never taken, so the result is the
same whatever the batch size or the number of ranks.
"""

from __future__ import annotations

import math

import torch

_ROWS = ("abs", "sq", "ape", "count")


class HorizonErrorSums:
    """Running sums for predictions and targets shaped (B, H, N)."""

    def __init__(self, horizon: int, sums: torch.Tensor | None = None) -> None:
        self.horizon = horizon
        self.sums = torch.zeros(len(_ROWS), horizon, dtype=torch.float64) if sums is None else sums

    def update(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> None:
        """pred, target: (B, H, N) de-normalized speed; mask: (B, H, N) bool."""
        with torch.no_grad():
            m = mask.to(torch.float64)
            err = (pred.to(torch.float64) - target.to(torch.float64)) * m
            abs_err = err.abs()
            # masked_fill with a Python number: no CPU tensor in a device op
            safe_target = target.to(torch.float64).abs().masked_fill(~mask, 1.0)
            batch = torch.stack(
                [
                    abs_err.sum(dim=(0, 2)),
                    (err * err).sum(dim=(0, 2)),
                    (abs_err / safe_target).sum(dim=(0, 2)),
                    m.sum(dim=(0, 2)),
                ]
            )
            if self.sums.device != batch.device:  # accumulate where the batch lives: no sync per batch
                self.sums = self.sums.to(batch.device)
            self.sums += batch

    def reduced(self, allreduce_sum) -> "HorizonErrorSums":
        """Sums over all ranks, through the backend's `allreduce_sum` (collective)."""
        return HorizonErrorSums(self.horizon, allreduce_sum(self.sums.cpu()))

    def _per_step(self, steps: slice | int) -> dict[str, float]:
        s = self.sums.cpu()[:, steps]
        if s.dim() == 2:
            s = s.sum(dim=1)
        abs_, sq, ape, n = (float(v) for v in s)
        if n == 0:
            return {"mae": math.nan, "rmse": math.nan, "mape": math.nan, "count": 0}
        return {"mae": abs_ / n, "rmse": math.sqrt(sq / n), "mape": 100.0 * ape / n, "count": int(n)}

    @property
    def mae(self) -> float:
        return self._per_step(slice(None))["mae"]

    def table(self, interval_s: int, report_minutes: tuple[int, ...] = (15, 30, 60)) -> dict[str, dict[str, float]]:
        """{"mae": {"15min": .., "30min": .., "60min": .., "avg": ..}, "rmse": {..}, "mape": {..}}.

        Step h (1-based) forecasts h * interval ahead; minutes the horizon does not reach,
        or that fall between steps, are left out.
        """
        columns: dict[str, dict[str, float]] = {}
        for minutes in report_minutes:
            step, rest = divmod(minutes * 60, interval_s)
            if rest == 0 and 1 <= step <= self.horizon:
                columns[f"{minutes}min"] = self._per_step(step - 1)
        columns["avg"] = self._per_step(slice(None))
        return {metric: {col: vals[metric] for col, vals in columns.items()} for metric in ("mae", "rmse", "mape")}


def masked_mae_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean |pred - target| over valid entries (0 when a batch has none)."""
    m = mask.to(pred.dtype)
    return ((pred - target).abs() * m).sum() / m.sum().clamp_min(1.0)
