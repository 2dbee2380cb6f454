"""Where training stands: what a checkpoint saves besides the model and optimizer.

Every rank holds the same TrainState (the validation MAE that picks the best epoch is
reduced over ranks, so all ranks agree on it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from hvd_stgnn.results import EpochRecord


@dataclass
class TrainState:
    epoch: int = 1  # the next epoch to run (1-based)
    step: int = 0  # the next optimizer step within it (0-based)
    global_step: int = 0  # optimizer steps done since the run began (resumes included)
    history: list[EpochRecord] = field(default_factory=list)
    best_val_mae: float = math.inf
    best_epoch: int = 0
    best_params: dict | None = None  # CPU copy of the best epoch's state_dict

    def finish_step(self) -> None:
        self.step += 1
        self.global_step += 1

    def finish_epoch(self, record: EpochRecord, model: torch.nn.Module) -> bool:
        """Append the epoch's record, keep the model if it is the best so far (True then),
        and move on to the next epoch."""
        self.history.append(record)
        improved = record.val_mae < self.best_val_mae
        if improved:
            self.best_val_mae, self.best_epoch = record.val_mae, record.epoch
            self.best_params = {name: t.detach().cpu().clone() for name, t in model.state_dict().items()}
        self.epoch, self.step = record.epoch + 1, 0
        return improved

    # The checkpoint file's layout (FORMAT_VERSION 1): flat keys, history as dicts, best as a dict.
    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch, "step": self.step, "global_step": self.global_step,
            "history": [vars(r).copy() for r in self.history],
            "best": {"val_mae": self.best_val_mae, "epoch": self.best_epoch, "state": self.best_params},
        }

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.step, self.global_step = state["epoch"], state["step"], state["global_step"]
        self.history = [EpochRecord(**r) for r in state["history"]]
        best = state["best"]
        self.best_val_mae, self.best_epoch, self.best_params = best["val_mae"], best["epoch"], best["state"]
