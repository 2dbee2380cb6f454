"""Graph operators, built once per model from (edge_index, edge_weight).

The normalization is done here, once, not on every forward call; the operator is a
buffer that moves with the model to its device. Each operator is stored dense for small
or dense graphs and as a sparse CSR matrix otherwise (`mode="auto"`, see
prefer_dense), never as a dense N x N at PeMS scale; the two give the same output.

A sparse operator also keeps the CSR of its transpose, built once: the backward of
P @ x is P^T @ grad, which torch's own CSR matmul backward would re-sort on every call
(0.7 ms per call at N = 207, most of a small DCRNN's step). The product (SparseMatrix) runs
through an autograd.Function in eager mode (the cheapest dispatch) and through the custom
op `hvd_stgnn::csr_matmul` under torch.compile, which keeps the sparse kernel outside
the compiled code without a graph break (inductor calls it as an opaque kernel). Under
bf16/fp16 autocast the sparse product runs in float32 and is cast back (CSR kernels lack
reduced-precision support on CPU); a dense operator is an ordinary matmul, which autocast
runs in the reduced precision.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn
from torch_geometric.nn.conv.gcn_conv import gcn_norm
from torch_geometric.utils import add_remaining_self_loops, remove_self_loops, scatter, to_undirected

# `auto` stores an operator dense only where that is cheaper, and that depends on the device.
#
# CPU (measured here, 2-core AMD EPYC, torch 2.13): T-GCN train step, 1 thread: N = 50 dense
# 50 ms vs sparse 52 ms; N = 100 (14% non-zero) 112 vs 79 ms; N = 207 (7%) 775 vs 410 ms.
# One product P @ X, X (207, 2048), T-GCN's Â of the METR-LA-shaped graph (3% non-zero):
# CSR 0.33 ms, dense 2.3 ms. Road graphs have a handful of neighbours per sensor, so sparse wins from ~64
# sensors on: dense only up to DENSE_ALWAYS_NODES or from DENSE_MIN_DENSITY non-zeros.
#
# CUDA (an ASSUMPTION, not measured: no GPU has run this code): a dense product is one
# tensor-core GEMM, 2 N^2 K flops, while a CSR product reads ~8 bytes per non-zero and column
# at a fraction of the memory bandwidth; with ~7 neighbours per sensor the estimate puts the
# crossover at a few thousand sensors, and small sparse kernels are launch-bound. So on CUDA
# every graph up to DENSE_MAX_NODES is dense. `hvd-stgnn bench models --device cuda
# --graph-mode dense|sparse` measures both (tools/gpu_check.sh runs `--device cuda`).
DENSE_MAX_NODES = 2048  # never dense above this (N x N floats; no dense matrix at PeMS scale)
DENSE_ALWAYS_NODES = 64
DENSE_MIN_DENSITY = 0.15
GRAPH_MODES = ("auto", "dense", "sparse")


def prefer_dense(num_nodes: int, nnz: int, device: str | torch.device = "cpu") -> bool:
    """The `auto` choice for an operator of `nnz` non-zeros that will run on `device`:
    CPU, dense for small or dense graphs (measured); CUDA, dense up to DENSE_MAX_NODES (assumed)."""
    if num_nodes > DENSE_MAX_NODES:
        return False
    if torch.device(device).type == "cuda":
        return True
    return num_nodes <= DENSE_ALWAYS_NODES or nnz >= DENSE_MIN_DENSITY * num_nodes * num_nodes


def _check_mode(mode: str) -> None:
    if mode not in GRAPH_MODES:
        raise ValueError(f"graph mode must be one of {GRAPH_MODES} (got {mode!r})")


# --- the sparse product -------------------------------------------------------------------


def _compute_dtype(op_dtype: torch.dtype, x_dtype: torch.dtype) -> torch.dtype:
    """float32 or wider: CSR kernels have no bf16/fp16 on the CPU, and sums of many products
    lose less in float32 anyway."""
    dtype = torch.promote_types(op_dtype, x_dtype)
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


def _spmm(op: Tensor, x: Tensor) -> Tensor:
    """op @ x for a CSR `op` (R, C), x (C, K) dense -> (R, K) in x's dtype."""
    if x.dtype == op.dtype and not torch.is_autocast_enabled(x.device.type):  # the common case, no casts
        return op @ x.contiguous()
    dtype = _compute_dtype(op.dtype, x.dtype)
    with torch.autocast(x.device.type, enabled=False):  # autocast would cast the product to bf16
        return (op.to(dtype) @ x.to(dtype).contiguous()).to(x.dtype)


class _SparseMatmul(torch.autograd.Function):
    """op @ x in eager mode, with op's transpose given (CSR, built once) for the backward."""

    @staticmethod
    def forward(ctx, op, op_t, x):
        ctx.ops = (op_t, op)
        return _spmm(op, x)

    @staticmethod
    def backward(ctx, grad):
        return None, None, _SparseMatmul.apply(*ctx.ops, grad)


@torch.library.custom_op("hvd_stgnn::csr_matmul", mutates_args=())
def _csr_matmul_op(crow: Tensor, col: Tensor, val: Tensor, crow_t: Tensor, col_t: Tensor, val_t: Tensor,
                   x: Tensor) -> Tensor:
    """The same product under torch.compile, where a sparse tensor cannot be an input: the CSR
    as its three plain tensors (P's and P^T's), the product an opaque kernel to inductor."""
    op = torch.sparse_csr_tensor(crow, col, val, (crow.shape[0] - 1, x.shape[0]), check_invariants=False)
    return _spmm(op, x)


@_csr_matmul_op.register_fake
def _(crow, col, val, crow_t, col_t, val_t, x):
    return x.new_empty((crow.shape[0] - 1, x.shape[1]))


def _csr_matmul_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs[:6])


def _csr_matmul_backward(ctx, grad):
    crow, col, val, crow_t, col_t, val_t = ctx.saved_tensors
    return None, None, None, None, None, None, _csr_matmul_op(crow_t, col_t, val_t, crow, col, val, grad)


_csr_matmul_op.register_autograd(_csr_matmul_backward, setup_context=_csr_matmul_setup)


class SparseMatrix(nn.Module):
    """A fixed sparse (R, C) matrix, stored as CSR with its transpose's CSR (built once):
    `forward(x)`, x (C, K) -> (R, K), differentiable in x. In eager mode the product goes
    through an autograd.Function on the two CSR tensors (the cheapest dispatch); under
    torch.compile through the custom op hvd_stgnn::csr_matmul on their plain parts."""

    def __init__(self, row: Tensor, col: Tensor, value: Tensor, shape: tuple[int, int]) -> None:
        super().__init__()
        coo = torch.sparse_coo_tensor(torch.stack([row, col]), value.to(torch.float32), shape,
                                      check_invariants=True).coalesce()
        with warnings.catch_warnings():  # "CSR support is in beta": CSR spmm is what we want
            warnings.simplefilter("ignore", UserWarning)
            csr, csr_t = coo.to_sparse_csr(), coo.t().coalesce().to_sparse_csr()
        self.shape = tuple(shape)
        for name, m in (("", csr), ("_t", csr_t)):
            self.register_buffer("crow" + name, m.crow_indices().clone(), persistent=False)
            self.register_buffer("col" + name, m.col_indices().clone(), persistent=False)
            self.register_buffer("val" + name, m.values().clone(), persistent=False)

    def nnz(self) -> int:
        return self.val.numel()

    def csr(self, transposed: bool = False) -> Tensor:
        """The matrix (or its transpose) as a CSR tensor over the buffers' memory."""
        t = "_t" if transposed else ""
        shape = self.shape[::-1] if transposed else self.shape
        return torch.sparse_csr_tensor(getattr(self, "crow" + t), getattr(self, "col" + t), getattr(self, "val" + t),
                                       shape, check_invariants=False)

    def forward(self, x: Tensor) -> Tensor:
        if torch.compiler.is_compiling():
            return _csr_matmul_op(self.crow, self.col, self.val, self.crow_t, self.col_t, self.val_t, x)
        return _SparseMatmul.apply(*self._csr_pair(), x)

    def _csr_pair(self) -> tuple[Tensor, Tensor]:
        """(CSR, its transpose's CSR) over the current buffers, built again only after they
        change (.to(device), .double())."""
        key = (self.val.data_ptr(), self.val_t.data_ptr(), self.crow.data_ptr(), self.crow_t.data_ptr())
        if getattr(self, "_pair_key", None) != key:
            self._pair, self._pair_key = (self.csr(), self.csr(True)), key
        return self._pair


# --- operators ----------------------------------------------------------------------------


class PropagationMatrix(nn.Module):
    """A fixed (N, N) matrix P applied over the node axis: x (B, N, C) -> P @ x, (B, N, C);
    `nodes_first` applies it to x (N, ...) without any transposition.

    Built from COO entries (row, col, value): out[row] += value * x[col]. `device`: where the
    model will run, for the `auto` choice (prefer_dense). `op` is the matrix, dense or CSR.
    """

    def __init__(self, row: torch.Tensor, col: torch.Tensor, value: torch.Tensor, num_nodes: int, mode: str = "auto",
                 device: str | torch.device = "cpu"):
        super().__init__()
        _check_mode(mode)
        self.num_nodes = num_nodes
        sparse = SparseMatrix(row, col, value, (num_nodes, num_nodes))
        self.dense = mode == "dense" or (mode == "auto" and prefer_dense(num_nodes, sparse.nnz(), device))
        if self.dense:
            self.register_buffer("op", sparse.csr().to_dense(), persistent=False)
        else:
            self.sparse = sparse
            self.register_buffer("op", sparse.csr(), persistent=False)

    def nodes_first(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, ...) -> P @ x over the first axis, (N, ...): one product, no copies."""
        flat = x.reshape(x.shape[0], -1)
        out = torch.matmul(self.op, flat) if self.dense else self.sparse(flat)
        return out.view(out.shape[0], *x.shape[1:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dense:
            return torch.matmul(self.op, x)
        return self.nodes_first(x.transpose(0, 1)).transpose(0, 1)

    def coo(self) -> tuple[Tensor, Tensor, Tensor]:
        """(row, col, value) of the non-zeros."""
        op = self.op.to_sparse_coo().coalesce() if not self.dense else self.op.to_sparse().coalesce()
        return op.indices()[0], op.indices()[1], op.values()


class DirectionStack(nn.Module):
    """D operators P_1..P_D of one graph (DCRNN's diffusion directions) applied together, one
    product instead of D, for inputs stacked direction-major on the node axis, (D * N, K):

    `each(a)`: (P_1 a_1; ...; P_D a_D), the block-diagonal diag(P_1, ..., P_D);
    `total(a)`: P_1 a_1 + ... + P_D a_D, the row [P_1 ... P_D], -> (N, K).

    Dense operators: one batched matmul over a (D, N, N) copy of them; sparse ones: the two
    block matrices, built once (2 x the non-zeros)."""

    def __init__(self, operators: list[PropagationMatrix]) -> None:
        super().__init__()
        self.directions, self.num_nodes = len(operators), operators[0].num_nodes if operators else 0
        self.dense = all(op.dense for op in operators)
        if not operators:
            return
        if self.dense:
            self.register_buffer("stacked", torch.stack([op.op for op in operators]), persistent=False)
            return
        n, D = self.num_nodes, self.directions
        rows, cols, vals = zip(*(op.coo() for op in operators))
        shift = [d * n for d in range(D)]
        self.block = SparseMatrix(torch.cat([r + s for r, s in zip(rows, shift)]),
                                  torch.cat([c + s for c, s in zip(cols, shift)]), torch.cat(vals), (D * n, D * n))
        self.row = SparseMatrix(torch.cat(rows), torch.cat([c + s for c, s in zip(cols, shift)]), torch.cat(vals),
                                (n, D * n))

    def each(self, a: Tensor) -> Tensor:
        """a (D * N, K) -> (D * N, K): block d multiplied by P_d."""
        if self.dense:
            return torch.bmm(self.stacked, a.view(self.directions, self.num_nodes, -1)).view(a.shape)
        return self.block(a)

    def total(self, a: Tensor) -> Tensor:
        """a (D * N, K) -> (N, K): sum over d of P_d times block d."""
        if self.dense:
            return torch.bmm(self.stacked, a.view(self.directions, self.num_nodes, -1)).sum(0)
        return self.row(a)


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
                 self_loop_weight: float = 2.0, device: str | torch.device = "cpu") -> None:
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
        super().__init__(edge_index[1], edge_index[0], edge_weight, num_nodes, mode, device)


def random_walk_operators(edge_index, edge_weight, num_nodes: int, mode: str = "auto",
                          device: str | torch.device = "cpu") -> list[PropagationMatrix]:
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
    forward = PropagationMatrix(src, dst, edge_weight / out_degree[src], num_nodes, mode, device)
    backward = PropagationMatrix(dst, src, edge_weight / in_degree[dst], num_nodes, mode, device)
    return [forward, backward]
