"""Graph operators, built once per model from (edge_index, edge_weight).

The normalization is done here, once, not on every forward call; the operator is a
buffer that moves with the model to its device.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torch_geometric.nn.conv.gcn_conv import gcn_norm
from torch_geometric.utils import to_undirected

# Above this many nodes a dense N x N operator costs more than it saves.
DENSE_MAX_NODES = 2048


class GCNOperator(nn.Module):
    """Â = D^-1/2 (A + I) D^-1/2 applied over the node axis: x (B, N, C) -> (B, N, C).

    Messages flow source -> target (PyG's convention): out[target] += w * x[source].
    `symmetric=True` first adds every edge's reverse (T-GCN's GCN is defined on an
    undirected graph). `mode` is "dense", "sparse" or "auto" (dense up to DENSE_MAX_NODES).
    """

    def __init__(
        self,
        edge_index: torch.Tensor,
        edge_weight: torch.Tensor,
        num_nodes: int,
        symmetric: bool = True,
        mode: str = "auto",
    ) -> None:
        super().__init__()
        if mode not in ("auto", "dense", "sparse"):
            raise ValueError(f"graph mode must be auto, dense or sparse (got {mode!r})")
        edge_index = torch.as_tensor(edge_index, dtype=torch.long)
        edge_weight = torch.as_tensor(edge_weight, dtype=torch.float32)
        if symmetric:
            edge_index, edge_weight = to_undirected(edge_index, edge_weight, num_nodes=num_nodes, reduce="max")
        edge_index, edge_weight = gcn_norm(
            edge_index, edge_weight, num_nodes=num_nodes, add_self_loops=True, flow="source_to_target"
        )
        self.num_nodes = num_nodes
        self.dense = mode == "dense" or (mode == "auto" and num_nodes <= DENSE_MAX_NODES)
        # Row = target, column = source, so out = P @ x.
        op = torch.sparse_coo_tensor(
            edge_index.flip(0), edge_weight, (num_nodes, num_nodes), check_invariants=True
        ).coalesce()
        if not self.dense:
            with warnings.catch_warnings():  # "CSR support is in beta": CSR spmm is what we want
                warnings.simplefilter("ignore", UserWarning)
                op = op.to_sparse_csr()
        self.register_buffer("op", op.to_dense() if self.dense else op, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dense:
            return torch.matmul(self.op, x)
        B, N, C = x.shape
        flat = x.transpose(0, 1).reshape(N, B * C)
        return (self.op @ flat).reshape(N, B, C).transpose(0, 1)
