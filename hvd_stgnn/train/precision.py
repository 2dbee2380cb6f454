"""--precision: the autocast of the model's forward pass and, for fp16, loss scaling.

bf16 autocast runs on CPU and GPU; fp16 only on a GPU, with a GradScaler (fp16's range
underflows small gradients). The model's output is cast back to float32 before it is
de-normalized: a bf16 speed near 60 mph is only good to 0.25 mph, and losses and metrics are
sums of such errors. The scaler's state is part of the trainer's checkpoint.
"""

from __future__ import annotations

import contextlib

import torch

from hvd_stgnn.errors import ConfigError

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    def __init__(self, name: str, device: torch.device) -> None:
        if name == "fp16" and device.type != "cuda":
            raise ConfigError(f"--precision fp16: GPU only (training on {device}); use --precision bf16 on the CPU",
                              all_ranks=True)
        self.name, self.dtype, self.device_type = name, DTYPES[name], device.type
        self.scaler = torch.amp.GradScaler(device.type) if name == "fp16" else None

    def autocast(self):
        """Context for the forward pass (a no-op for fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def forward(self, model, *inputs) -> torch.Tensor:
        """model(*inputs) under autocast, returned as float32."""
        with self.autocast():
            out = model(*inputs)
        return out.float()

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def state_dict(self) -> dict | None:
        return self.scaler.state_dict() if self.scaler is not None else None

    def load_state_dict(self, state: dict | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
