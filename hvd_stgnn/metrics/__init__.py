"""Masked forecasting metrics (sums and counts, exact across ranks)."""

from hvd_stgnn.metrics.masked import HorizonErrorSums, masked_mae_loss

__all__ = ["HorizonErrorSums", "masked_mae_loss"]
