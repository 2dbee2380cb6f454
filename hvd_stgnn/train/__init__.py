"""Training loop, data preparation, results."""

from hvd_stgnn.train.data_setup import plan_splits, preflight, prepare
from hvd_stgnn.train.evaluate import evaluate, param_digest
from hvd_stgnn.train.trainer import train

__all__ = ["evaluate", "param_digest", "plan_splits", "preflight", "prepare", "train"]
