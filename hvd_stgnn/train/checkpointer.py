"""The checkpoint manager the trainer calls: when to save, what, and how to resume.

The trainer is Stateful (`state_dict()` / `load_state_dict()`: model, optimizer, LR
schedule and TrainState); the checkpointer adds what is the job's rather than the
trainer's (every rank's RNG state, the config, world size, normalization, the data file's
fingerprint) and writes the file on rank 0 through checkpoint.py (atomic, last.pt rotated
to prev.pt). A resume is loaded by rank 0 and broadcast (RunDir.open); every rank restores
its own RNG stream when the world size is unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from hvd_stgnn.config import Config
from hvd_stgnn.parallel import Backend
from hvd_stgnn.train import checkpoint as ckpt


class Stateful(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class Checkpointer:
    def __init__(self, cfg: Config, backend: Backend, run_dir: Path | None, normalization: dict) -> None:
        self.cfg, self.backend = cfg, backend
        self.dir = run_dir if backend.is_root else None  # only rank 0 writes
        self.normalization = normalization
        self.fingerprint = ckpt.data_fingerprint(cfg.data.path) if self.dir is not None else None

    def save(self, trainer: Stateful) -> None:
        """Collective (the RNG states are gathered): RUN_DIR/checkpoints/last.pt."""
        rngs = self.backend.allgather_object(ckpt.rng_state())
        if self.dir is None:
            return
        ckpt.save_atomic(ckpt.checkpoint_path(self.dir, ckpt.LAST), keep_previous=True, state={
            **trainer.state_dict(), "rng": rngs, "config": self.cfg.to_dict(), "world_size": self.backend.size,
            "normalization": self.normalization, "data_fingerprint": self.fingerprint,
        })

    def should_save(self, epoch: int, last: bool) -> bool:
        """After epoch `epoch`: at the end of training and every --checkpoint-every epochs."""
        every = self.cfg.train.checkpoint_every
        return last or bool(every and epoch % every == 0)

    def save_best(self, best_params: dict, epoch: int, val_mae: float) -> None:
        """Rank 0: RUN_DIR/checkpoints/best.pt, the model of the best validation epoch."""
        if self.dir is None:
            return
        ckpt.save_atomic(ckpt.checkpoint_path(self.dir, ckpt.BEST), {
            "model": best_params, "epoch": epoch, "val_mae": val_mae,
            "config": self.cfg.to_dict(), "normalization": self.normalization,
        })

    def restore(self, trainer: Stateful, state: dict) -> None:
        """Every rank: the trainer's state from `state` (rank 0's, broadcast), then this
        rank's RNG stream (rank 0's when the world size changed)."""
        trainer.load_state_dict(state)
        rngs = state["rng"]
        ckpt.set_rng_state(rngs[self.backend.rank] if len(rngs) == self.backend.size else rngs[0])
