"""T-GCN (Zhao et al., 2019): a GRU whose gates are graph convolutions.

Input x: (B, L, N, F); output: (B, H, N) predictions of normalized speed. The GRU runs
over the L input steps with the hidden state (B, N, hidden) carried from step to step;
a linear layer maps the last hidden state of each node to its H future steps.
"""

from __future__ import annotations

import torch
from torch import nn

from hvd_stgnn.models.graph import GCNOperator


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
        """x_t: (B, N, F), h: (B, N, hidden) -> new h (B, N, hidden)."""
        # Â (X W) == (Â X) W: propagate the narrower concatenation, then project.
        r, u = torch.sigmoid(self.gates(self.graph(torch.cat([x_t, h], dim=-1)))).chunk(2, dim=-1)
        c = torch.tanh(self.candidate(self.graph(torch.cat([x_t, r * h], dim=-1))))
        return u * h + (1.0 - u) * c


class TGCN(nn.Module):
    def __init__(self, graph: GCNOperator, in_features: int, horizon: int, hidden: int = 64) -> None:
        super().__init__()
        self.cell = TGCNCell(graph, in_features, hidden)
        self.head = nn.Linear(hidden, horizon)

    def forward(self, x: torch.Tensor, teacher: torch.Tensor | None = None) -> torch.Tensor:
        B, L, N, _ = x.shape
        h = x.new_zeros(B, N, self.cell.hidden)
        for t in range(L):
            h = self.cell(x[:, t], h)
        return self.head(h).transpose(1, 2)  # (B, N, H) -> (B, H, N)
