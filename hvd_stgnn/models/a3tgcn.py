"""A3T-GCN (Bai et al., 2021): T-GCN plus attention over its hidden states.

The T-GCN cell runs over all L input steps with its hidden state carried from step to step
(PyTorch Geometric Temporal's batched A3TGCN2 restarts it from zero at every step, which
turns the GRU into L independent graph convolutions). Attention scores every hidden
state with a small MLP, e_t = v^T tanh(W h_t + b), softmax over t per node and sample;
the context sum_t a_t h_t goes through a linear layer to the H future steps.

Input x: (B, L, N, F); output: (B, H, N) normalized speed. Inside, tensors are node-major
(models/tgcn.py). Each state is scored in the step that makes it (`step`: the cell and the
score together, one compiled region under compile_model), so the score's (L, N, B, hidden)
intermediate never exists as a whole; `attend` takes the L states and scores (no stacked copy).
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from hvd_stgnn.models.checkpointing import region
from hvd_stgnn.models.graph import GCNOperator
from hvd_stgnn.models.ops import linear, tanh
from hvd_stgnn.models.tgcn import TGCNCell


class A3TGCN(nn.Module):
    compile_targets = ("step", "attend")  # compile_model (models/compile.py)
    checkpointing = False  # --activation-checkpointing step: `step` recomputed (models/checkpointing.py)

    def __init__(self, graph: GCNOperator, in_features: int, horizon: int, hidden: int = 64, attention: int = 0) -> None:
        super().__init__()
        self.cell = TGCNCell(graph, in_features, hidden)
        attention = attention or hidden
        self.score = nn.Sequential(nn.Linear(hidden, attention), nn.Tanh(), nn.Linear(attention, 1, bias=False))
        self.head = nn.Linear(hidden, horizon)

    def score_of(self, h: torch.Tensor) -> torch.Tensor:
        """e = v^T tanh(W h + b): (..., hidden) -> (..., 1), with `score`'s parameters (the last
        product as a multiply-and-sum, which compiles into the tanh's loop)."""
        first = self.score[0]
        return (tanh(linear(h, first.weight, first.bias)) * self.score[2].weight[0]).sum(-1, keepdim=True)

    def step(self, x_t: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One recurrent step, node-major: the new state (N, B, hidden) and its score (N, B, 1)."""
        h = self.cell(x_t, h)
        return h, self.score_of(h)

    def forward(self, x: torch.Tensor, teacher: torch.Tensor | None = None) -> torch.Tensor:
        B, L, N, _ = x.shape
        steps = x.permute(1, 2, 0, 3).contiguous()  # (L, N, B, F): steps[t] is contiguous
        h = x.new_zeros(N, B, self.cell.hidden)
        states, scores = [], []
        for t in range(L):
            h, e = region(self.step, steps[t], h, enabled=self.checkpointing)
            states.append(h)
            scores.append(e)
        return self.attend(states, scores)

    def attend(self, states: list[torch.Tensor], scores: list[torch.Tensor]) -> torch.Tensor:
        """The L states (N, B, hidden) and their scores (N, B, 1) -> (B, H, N).

        The softmax over time written out over the lists, never stacked: compiled, it is one
        loop that reads each state where it lies. torch.stack copied the L states, (L, N, B,
        hidden), 40 MB at N = 207, B = 64, hidden 32, and autograd kept the copy (measured,
        compiled train step, 2 threads: 155.7 -> 147.2 ms)."""
        top = functools.reduce(torch.maximum, scores)  # (N, B, 1): exp cannot overflow
        weights = [torch.exp(e - top) for e in scores]
        total = functools.reduce(torch.add, weights)
        context = functools.reduce(torch.add, [w * h for w, h in zip(weights, states)]) / total  # (N, B, hidden)
        return self.head(context).permute(1, 2, 0)  # (N, B, H) -> (B, H, N)
