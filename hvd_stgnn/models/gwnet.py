"""Graph WaveNet (Wu et al., IJCAI 2019), following the authors' reference code (nnzhan/Graph-WaveNet).

Input x: (B, L, N, F); output: (B, H, N) predictions of normalized speed. Internally the
layout is (B, C, N, T), as in the reference: every temporal convolution is a Conv2d with
kernel (1, k) over the time axis, every 1x1 convolution a per-node, per-step linear map.

    start conv 1x1: F -> residual channels
    blocks x layers of (layer i, dilation d = 1, 2, ..., 2^(layers-1) within each block):
        z = tanh(filter_conv_d(x)) * sigmoid(gate_conv_d(x))        kernel (1, 2), no padding
        skip += skip_conv(z)                                        1x1 -> skip channels
        x = batch_norm(graph_conv(z) + x[..., -T':])                residual connection
    y = end_conv_2(relu(end_conv_1(relu(skip))))                    1x1 -> end channels -> H

graph_conv(z) = 1x1 conv of concat[z, P z, P^2 z, ..., P^K z for each support P], then
dropout; K = `diffusion_steps`. The supports are the forward and backward random-walk
operators of the given graph (models/graph.py) and, when enabled, the adaptive adjacency
softmax(relu(E1 E2^T)) (row softmax) with node embeddings E1, E2 of size 10, randomly
initialized as in the reference.

Sizes are the reference's and fixed: residual and dilation channels 32, skip 256, end 512,
dropout 0.3, 4 blocks x 2 layers, kernel 2. ModelInputs.hidden is NOT used: it is the
recurrent models' state size (CLI default 64), and mapping it here would silently double
the reference's residual width under the default configuration.

Receptive field: 1 + blocks * (2^layers - 1) * (kernel - 1) = 13 for the defaults. An
input shorter than that is left-padded with zeros to it (the reference pads L = 12 by one
step), so the last layer leaves exactly one time step, from which the H outputs come as
channels. A longer input is cut to its last 13 steps: the output step sees only those.

Adaptive adjacency on/off: it is a dense N x N softmax, built every forward pass. It is on
when `adaptive_adjacency` is True and N <= graph.DENSE_MAX_NODES (2,048), however the
sparse road graph itself is stored. Above that (PeMS scale, e.g. N = 11,160) it is off
automatically: no E1, E2 parameters and no N x N tensor exist, and the model uses the two
given supports only.

Differences from the reference, none of which changes the function computed:
- The reference's nconv applies each support as x' = A^T x (einsum 'ncvl,vw->ncwl'); the
  given-graph supports here are applied as graph.random_walk_operators defines them
  (D_O^-1 W and D_I^-1 W^T, x' = P x; the same known difference as DCRNN's code). The
  adaptive support is applied exactly as the reference does, x' = softmax(...)^T x.
- The reference computes the last layer's graph conv, residual and batch norm and then
  discards them (only its skip is used); they are not built here, so every parameter gets
  a gradient (no dead parameters for Horovod's allreduce) and no compute is wasted.
- The reference computes each skip conv over all time steps and then keeps only the last
  one(s); a 1x1 conv is per-step, so here it is applied to the last step only.
- The reference builds residual convs that are unused whenever graph convs are on (always,
  here); they are not built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from hvd_stgnn.models.checkpointing import region
from hvd_stgnn.models.graph import DENSE_MAX_NODES, PropagationMatrix, random_walk_operators
from hvd_stgnn.models.ops import tanh

if TYPE_CHECKING:  # models/__init__.py imports this module
    from hvd_stgnn.models import ModelInputs

# Reference node-embedding size for the adaptive adjacency.
EMBED_DIM = 10


class DiffusionGraphConv(nn.Module):
    """concat[x, P x, ..., P^K x for each support P] -> 1x1 conv -> dropout.

    x: (B, C, N, T) -> (B, c_out, N, T).
    """

    def __init__(self, c_in: int, c_out: int, num_supports: int, order: int, dropout: float) -> None:
        super().__init__()
        self.order = order
        self.dropout = dropout
        self.mlp = nn.Conv2d((order * num_supports + 1) * c_in, c_out, kernel_size=(1, 1))

    def forward(self, x: torch.Tensor, supports: list) -> torch.Tensor:
        B, C, N, T = x.shape
        out = [x]
        for apply in supports:
            # (B, C, N, T) viewed as (B*C, N, T) is already the (B', N, C') an operator takes.
            h = x.reshape(B * C, N, T)
            for _ in range(self.order):
                h = apply(h)
                out.append(h.reshape(B, C, N, T))
        h = self.mlp(torch.cat(out, dim=1))
        return F.dropout(h, self.dropout, training=self.training)


class GraphWaveNet(nn.Module):
    """Graph WaveNet; see the module docstring. x: (B, L, N, F) -> (B, H, N)."""

    compile_targets = ("self",)  # compile_model: the whole forward (no recurrence)
    # Fixed-shape dilated convolutions: cuDNN's algorithm search pays off (compile.prefers_cudnn_benchmark).
    cudnn_benchmark = True
    # --activation-checkpointing block: each residual block recomputed in the backward pass
    # (models/checkpointing.py); batch norm stays outside (its running statistics update once).
    checkpointing = False

    def __init__(
        self,
        operators: list[PropagationMatrix],
        num_nodes: int,
        in_features: int,
        horizon: int,
        diffusion_steps: int = 2,
        adaptive_adjacency: bool = True,
        residual_channels: int = 32,
        dilation_channels: int = 32,
        skip_channels: int = 256,
        end_channels: int = 512,
        blocks: int = 4,
        layers: int = 2,
        kernel_size: int = 2,
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        if diffusion_steps < 1:
            raise ValueError(f"diffusion_steps must be >= 1 (got {diffusion_steps})")
        self.operators = nn.ModuleList(operators)
        # A dense N x N softmax is affordable up to DENSE_MAX_NODES, and never built beyond
        # (whatever storage the sparse road graph itself gets).
        self.adaptive = bool(adaptive_adjacency) and num_nodes <= DENSE_MAX_NODES
        if self.adaptive:
            self.nodevec1 = nn.Parameter(torch.randn(num_nodes, EMBED_DIM))
            self.nodevec2 = nn.Parameter(torch.randn(num_nodes, EMBED_DIM))
        num_supports = len(operators) + int(self.adaptive)

        self.start_conv = nn.Conv2d(in_features, residual_channels, kernel_size=(1, 1))
        self.filter_convs = nn.ModuleList()
        self.gate_convs = nn.ModuleList()
        self.skip_convs = nn.ModuleList()
        self.gconvs = nn.ModuleList()
        self.bns = nn.ModuleList()
        self.receptive_field = 1
        n_layers = blocks * layers
        for i in range(n_layers):
            dilation = 2 ** (i % layers)
            temporal = dict(kernel_size=(1, kernel_size), dilation=dilation)
            self.filter_convs.append(nn.Conv2d(residual_channels, dilation_channels, **temporal))
            self.gate_convs.append(nn.Conv2d(residual_channels, dilation_channels, **temporal))
            self.skip_convs.append(nn.Conv2d(dilation_channels, skip_channels, kernel_size=(1, 1)))
            self.receptive_field += dilation * (kernel_size - 1)
            if i < n_layers - 1:  # the last layer's residual path feeds nothing
                self.gconvs.append(
                    DiffusionGraphConv(dilation_channels, residual_channels, num_supports, diffusion_steps, dropout)
                )
                self.bns.append(nn.BatchNorm2d(residual_channels))
        self.end_conv_1 = nn.Conv2d(skip_channels, end_channels, kernel_size=(1, 1))
        self.end_conv_2 = nn.Conv2d(end_channels, horizon, kernel_size=(1, 1))

    def adaptive_support(self) -> torch.Tensor:
        """S = softmax(relu(E1 E2^T), dim=1)^T, (N, N), applied as x' = S x (the reference's nconv)."""
        return F.softmax(F.relu(self.nodevec1 @ self.nodevec2.t()), dim=1).t()

    def forward(self, x: torch.Tensor, teacher: torch.Tensor | None = None) -> torch.Tensor:
        x = x.permute(0, 3, 2, 1)  # (B, L, N, F) -> (B, F, N, L)
        L = x.shape[-1]
        if L < self.receptive_field:
            x = F.pad(x, (self.receptive_field - L, 0))
        elif L > self.receptive_field:
            x = x[..., -self.receptive_field:]
        x = self.start_conv(x)

        supports: list = list(self.operators)
        if self.adaptive:
            adp = self.adaptive_support()
            supports.append(lambda h: torch.matmul(adp, h))

        skip = 0
        for i in range(len(self.filter_convs)):
            out, skip_i = region(self.block, i, x, supports, enabled=self.checkpointing)
            skip = skip + skip_i
            if out is not None:
                x = self.bns[i](out)

        y = self.end_conv_2(F.relu(self.end_conv_1(F.relu(skip))))  # (B, H, N, 1)
        return y.squeeze(-1)

    def block(self, i: int, x: torch.Tensor, supports: list) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Residual block i without its batch norm: x (B, C, N, T) -> (graph conv + residual,
        (B, C, N, T - d), or None for the last block; skip contribution (B, skip, N, 1))."""
        z = tanh(self.filter_convs[i](x)) * torch.sigmoid(self.gate_convs[i](x))
        # Only the last step reaches the output; a 1x1 conv is per-step, so cut first.
        skip = self.skip_convs[i](z[..., -1:])
        if i >= len(self.gconvs):
            return None, skip
        out = self.gconvs[i](z, supports)
        return out + x[..., -out.shape[-1]:], skip


def build_gwnet(m: ModelInputs) -> nn.Module:
    """Builder for the MODELS registry: ModelInputs -> GraphWaveNet with the reference sizes.

    Uses edge_index, edge_weight, num_nodes, graph_mode, in_features, horizon,
    diffusion_steps and adaptive_adjacency; `hidden` is ignored (see the module docstring).
    """
    operators = random_walk_operators(m.edge_index, m.edge_weight, m.num_nodes, mode=m.graph_mode, device=m.device)
    return GraphWaveNet(
        operators,
        m.num_nodes,
        m.in_features,
        m.horizon,
        diffusion_steps=m.diffusion_steps,
        adaptive_adjacency=m.adaptive_adjacency,
    )
