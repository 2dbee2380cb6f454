"""Masked forecasting metrics (sums and counts, exact across ranks) and baselines."""

from hvd_stgnn.metrics.baselines import HistoricalAverage, persistence, slot_sums, slots_of
from hvd_stgnn.metrics.masked import HorizonErrorSums, masked_mae_loss

__all__ = ["HistoricalAverage", "HorizonErrorSums", "masked_mae_loss", "persistence", "slot_sums", "slots_of"]
