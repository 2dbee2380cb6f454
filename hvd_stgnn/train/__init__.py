"""Training loop and results."""

from hvd_stgnn.train.trainer import evaluate, param_digest, preflight, train

__all__ = ["evaluate", "param_digest", "preflight", "train"]
