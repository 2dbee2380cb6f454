"""A3T-GCN (Bai et al., 2021): T-GCN plus attention over its hidden states.

The T-GCN cell runs over all L input steps with its hidden state carried from step to step
(PyTorch Geometric Temporal's batched A3TGCN2 restarts it from zero at every step, which
turns the GRU into L independent graph convolutions). Attention scores every hidden
state with a small MLP, e_t = v^T tanh(W h_t + b), softmax over t per node and sample;
the context sum_t a_t h_t goes through a linear layer to the H future steps.

Input x: (B, L, N, F); output: (B, H, N) normalized speed.
"""

from __future__ import annotations

import torch
from torch import nn

from hvd_stgnn.models.graph import GCNOperator
from hvd_stgnn.models.tgcn import TGCNCell


class A3TGCN(nn.Module):
    def __init__(self, graph: GCNOperator, in_features: int, horizon: int, hidden: int = 64, attention: int = 0) -> None:
        super().__init__()
        self.cell = TGCNCell(graph, in_features, hidden)
        attention = attention or hidden
        self.score = nn.Sequential(nn.Linear(hidden, attention), nn.Tanh(), nn.Linear(attention, 1, bias=False))
        self.head = nn.Linear(hidden, horizon)

    def forward(self, x: torch.Tensor, teacher: torch.Tensor | None = None) -> torch.Tensor:
        B, L, N, _ = x.shape
        h = x.new_zeros(B, N, self.cell.hidden)
        states = []
        for t in range(L):
            h = self.cell(x[:, t], h)
            states.append(h)
        hs = torch.stack(states, dim=1)  # (B, L, N, hidden)
        weights = torch.softmax(self.score(hs), dim=1)  # (B, L, N, 1), over time
        context = (weights * hs).sum(dim=1)  # (B, N, hidden)
        return self.head(context).transpose(1, 2)  # (B, H, N)
