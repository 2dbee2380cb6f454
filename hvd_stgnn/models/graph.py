"""Graph operators, built once per model from (edge_index, edge_weight).

The normalization is done here, once, not on every forward call; the operator is a
buffer that moves with the model to its device. Each operator is stored dense for small
or dense graphs and as a sparse CSR matrix otherwise (`mode="auto"`, see
prefer_dense), never as a dense N x N at PeMS scale; the two give the same output.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torch_geometric.nn.conv.gcn_conv import gcn_norm
from torch_geometric.utils import add_remaining_self_loops, remove_self_loops, scatter, to_undirected

# `auto` stores an operator dense only where that is cheaper: small graphs, or dense
# ones. Measured here (T-GCN train step, 1 thread): N = 50 dense 50 ms vs sparse 52 ms;
# N = 100 (14% non-zero) 112 vs 79 ms; N = 207 (7%) 775 vs 410 ms. Road graphs have a
# handful of neighbours per sensor, so sparse wins from ~64 sensors on.
DENSE_MAX_NODES = 2048  # never dense above this (N x N floats; no dense matrix at PeMS scale)
DENSE_ALWAYS_NODES = 64
DENSE_MIN_DENSITY = 0.15
GRAPH_MODES = ("auto", "dense", "sparse")


def prefer_dense(num_nodes: int, nnz: int) -> bool:
    """The `auto` choice: dense for small or dense graphs, sparse otherwise."""
    if num_nodes > DENSE_MAX_NODES:
        return False
    return num_nodes <= DENSE_ALWAYS_NODES or nnz >= DENSE_MIN_DENSITY * num_nodes * num_nodes


def _check_mode(mode: str) -> None:
    if mode not in GRAPH_MODES:
        raise ValueError(f"graph mode must be one of {GRAPH_MODES} (got {mode!r})")


class PropagationMatrix(nn.Module):
    """A fixed (N, N) matrix P applied over the node axis: x (B, N, C) -> P @ x, (B, N, C).

    Built from COO entries (row, col, value): out[row] += value * x[col].
    """

    def __init__(self, row: torch.Tensor, col: torch.Tensor, value: torch.Tensor, num_nodes: int, mode: str = "auto"):
        super().__init__()
        _check_mode(mode)
        self.num_nodes = num_nodes
        op = torch.sparse_coo_tensor(
            torch.stack([row, col]), value.to(torch.float32), (num_nodes, num_nodes), check_invariants=True
        ).coalesce()
        self.dense = mode == "dense" or (mode == "auto" and prefer_dense(num_nodes, op._nnz()))
        if self.dense:
            self.register_buffer("op", op.to_dense(), persistent=False)
        else:
            with warnings.catch_warnings():  # "CSR support is in beta": CSR spmm is what we want
                warnings.simplefilter("ignore", UserWarning)
                self.register_buffer("op", op.to_sparse_csr(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dense:
            return torch.matmul(self.op, x)
        B, N, C = x.shape
        flat = x.transpose(0, 1).reshape(N, B * C)
        return (self.op @ flat).reshape(N, B, C).transpose(0, 1)


def _edges(edge_index, edge_weight) -> tuple[torch.Tensor, torch.Tensor]:
    edge_index = torch.as_tensor(edge_index, dtype=torch.long)
    edge_weight = torch.as_tensor(edge_weight, dtype=torch.float32)
    return edge_index, edge_weight


class GCNOperator(PropagationMatrix):
    """Â = D^-1/2 (A + w I) D^-1/2 (Kipf & Welling), as T-GCN and A3T-GCN use it.

    Messages flow source -> target (PyG's convention): out[target] += a * x[source].
    `symmetric=True` first adds every edge's reverse (T-GCN's GCN is defined on an
    undirected graph). `self_loop_weight` w: 1 is Kipf & Welling's GCN, 2 PyG's
    "improved" GCN and what T-GCN's reference code effectively uses (its adjacency files
    hold a unit diagonal and it adds I again). On the real METR-LA graph a node's own
    reading is only ~15% (w=1) / ~26% (w=2) of Â x, so "last value, smoothed" is far worse
    than persistence (6.2 vs 3.5 mph at 15 min); larger w keeps more of the node's own
    signal (docs/RESULTS.md).
    """

    def __init__(self, edge_index, edge_weight, num_nodes: int, symmetric: bool = True, mode: str = "auto",
                 self_loop_weight: float = 2.0) -> None:
        if self_loop_weight <= 0:
            raise ValueError(f"self_loop_weight must be > 0 (got {self_loop_weight})")
        edge_index, edge_weight = _edges(edge_index, edge_weight)
        edge_index, edge_weight = remove_self_loops(edge_index, edge_weight)  # the file's diagonal is replaced by w
        if symmetric:
            edge_index, edge_weight = to_undirected(edge_index, edge_weight, num_nodes=num_nodes, reduce="max")
        edge_index, edge_weight = add_remaining_self_loops(edge_index, edge_weight, float(self_loop_weight), num_nodes)
        edge_index, edge_weight = gcn_norm(
            edge_index, edge_weight, num_nodes=num_nodes, add_self_loops=False, flow="source_to_target"
        )
        super().__init__(edge_index[1], edge_index[0], edge_weight, num_nodes, mode)


def random_walk_operators(edge_index, edge_weight, num_nodes: int, mode: str = "auto") -> list[PropagationMatrix]:
    """DCRNN's two diffusion directions, as operators applied to node features:

    forward: out[i] = sum_j A[i, j] / rowsum_i(A) * x[j]   (D_O^-1 A: i mixes what it flows into)
    backward: out[i] = sum_j A[j, i] / colsum_i(A) * x[j]  (D_I^-1 A^T: i mixes what flows into it)

    with A[i, j] the weight of edge i -> j (self-loops removed; rows without edges stay
    zero). These are the paper's D_O^-1 W and D_I^-1 W^T applied as x' = P x; DCRNN's
    reference code multiplies by their transposes instead (a known difference).
    """
    edge_index, edge_weight = _edges(edge_index, edge_weight)
    edge_index, edge_weight = remove_self_loops(edge_index, edge_weight)
    src, dst = edge_index
    out_degree = scatter(edge_weight, src, 0, dim_size=num_nodes, reduce="sum")
    in_degree = scatter(edge_weight, dst, 0, dim_size=num_nodes, reduce="sum")
    forward = PropagationMatrix(src, dst, edge_weight / out_degree[src], num_nodes, mode)
    backward = PropagationMatrix(dst, src, edge_weight / in_degree[dst], num_nodes, mode)
    return [forward, backward]
