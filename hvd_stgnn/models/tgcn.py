"""T-GCN (Zhao et al., 2019): a GRU whose gates are graph convolutions.

Input x: (B, L, N, F); output: (B, H, N) predictions of normalized speed. The GRU runs
over the L input steps with the hidden state carried from step to step; a linear layer
maps the last hidden state of each node to its H future steps.

Inside, tensors are node-major, (N, B, C): the graph operator then multiplies one
(N, B * C) matrix (models/graph.py, `nodes_first`) with no transposition or copy per
step, and every Linear is one GEMM over the N * B rows. The input is permuted once per
forward and the output once. compile_model compiles the cell (models/compile.py).
"""

from __future__ import annotations

import torch
from torch import nn

from hvd_stgnn.models.checkpointing import region
from hvd_stgnn.models.graph import GCNOperator
from hvd_stgnn.models.ops import linear, tanh


class TGCNCell(nn.Module):
    def __init__(self, graph: GCNOperator, in_features: int, hidden: int) -> None:
        super().__init__()
        self.graph = graph
        self.hidden = hidden
        self.gates = nn.Linear(in_features + hidden, 2 * hidden)
        self.candidate = nn.Linear(in_features + hidden, hidden)
        # Gates start open-ish (bias 1), as in the reference implementation.
        nn.init.constant_(self.gates.bias, 1.0)

    def forward(self, x_t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """x_t: (N, B, F), h: (N, B, hidden) -> new h (N, B, hidden), node-major."""
        # Â (X W) == (Â X) W: propagate the narrower concatenation, then project.
        a = self.graph.nodes_first(torch.cat([x_t, h], dim=-1))
        r, u = torch.sigmoid(linear(a, self.gates.weight, self.gates.bias)).chunk(2, dim=-1)
        a = self.graph.nodes_first(torch.cat([x_t, r * h], dim=-1))
        c = tanh(linear(a, self.candidate.weight, self.candidate.bias))
        # u * h + (1 - u) * c in one pass. Under autocast the products come in bf16/fp16 and the
        # state stays in its own dtype (float32): no-op casts otherwise.
        return torch.lerp(c.to(h.dtype), h, u.to(h.dtype))

    def run(self, x: torch.Tensor, checkpointing: bool = False) -> list[torch.Tensor]:
        """x (B, L, N, F) -> the L hidden states, each (N, B, hidden), from a zero state;
        `checkpointing`: each step recomputed in the backward pass (models/checkpointing.py)."""
        B, L, N, _ = x.shape
        steps = x.permute(1, 2, 0, 3).contiguous()  # (L, N, B, F): steps[t] is contiguous
        h = x.new_zeros(N, B, self.hidden)
        states = []
        for t in range(L):
            h = region(self, steps[t], h, enabled=checkpointing)
            states.append(h)
        return states


class TGCN(nn.Module):
    compile_targets = ("cell",)  # compile_model: the per-step function (models/compile.py)
    checkpointing = False  # --activation-checkpointing step (models/checkpointing.py)

    def __init__(self, graph: GCNOperator, in_features: int, horizon: int, hidden: int = 64) -> None:
        super().__init__()
        self.cell = TGCNCell(graph, in_features, hidden)
        self.head = nn.Linear(hidden, horizon)

    def forward(self, x: torch.Tensor, teacher: torch.Tensor | None = None) -> torch.Tensor:
        h = self.cell.run(x, self.checkpointing)[-1]
        return self.head(h).permute(1, 2, 0)  # (N, B, H) -> (B, H, N)
