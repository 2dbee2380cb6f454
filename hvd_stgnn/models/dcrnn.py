"""DCRNN (Li et al., ICLR 2018): a seq2seq GRU whose matrix products are diffusion convolutions.

Input x: (B, L, N, F); output: (B, H, N) predictions of normalized speed. The encoder
(`layers` stacked DCGRU cells) reads all F features of the L input steps; the decoder
(`layers` stacked DCGRU cells, started from the encoder's final hidden states) runs H
steps on a one-value-per-node input: zeros (the GO symbol) first, then its own previous
prediction, or, with scheduled sampling in training, sometimes the ground truth.

Everything is batched: one node-major (N, B, C) tensor per step (models/tgcn.py), the
graph applied to all B samples at once by the shared sparse or dense operators of
models/graph.py, both diffusion directions in one product (graph.DirectionStack). The
input is permuted once per forward and the output once.

Compiled on the CPU, a model with thin cells (at most CHANNEL_MAJOR_MAX_WIDTH input plus
hidden channels: the PGT-I paper's hidden 2) runs channel-major instead, (N, C, B): inductor
vectorizes every loop along its innermost axis, and with C = 4 innermost its loops ran
scalar; with B = 64 there they run 16 lanes wide. The graph products are the same (they act
on axis 0). `DCRNN.before_compile` makes the choice; `use_layout` sets it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

from hvd_stgnn.models.checkpointing import region
from hvd_stgnn.models.graph import DirectionStack, PropagationMatrix, random_walk_operators
from hvd_stgnn.models.ops import linear, mix_channels, tanh

if TYPE_CHECKING:  # models/__init__.py imports this module
    from hvd_stgnn.models import ModelInputs

# Channel-major (N, C, B) for compiled CPU cells up to this many input + hidden channels.
# Measured (DCRNN, 1 layer, N = 207, B = 64, 1 thread, compiled train step, node-major vs
# channel-major in one process): hidden 2 (4 channels) 84.5 vs 53.1 and 94.2 vs 61.9 ms;
# hidden 8 (10) 224 vs 224; hidden 16 581 vs 620; hidden 32 1411 vs 1685; hidden 64 3669 vs
# 4155 ms (one GEMM over N B rows beats N small ones). In eager mode channel-major is slower
# (hidden 2: 97 vs 165 ms, 115 vs 154 with a batched matmul): a compiled layout only. Widths
# 5-8 lie between the two measured points (4 and 10 channels). Batches of fewer than 16 (a
# last partial batch) fill less than one vector along B: correct, no faster.
CHANNEL_MAJOR_MAX_WIDTH = 8


class DiffusionConv(nn.Module):
    """K-hop bidirectional diffusion convolution: (B, N, C) -> (B, N, out).

    The terms are X, then T_1(P) X .. T_K(P) X for each operator P (forward, backward),
    so 1 + 2K terms, concatenated term-major on the feature axis ((B, N, T * C)) and
    projected by one Linear. T_k is the recurrence DCRNN's code uses,
    T_0 X = X, T_1 X = P X, T_k X = 2 P T_{k-1} X - T_{k-2} X (Chebyshev polynomials of P);
    it spans the same polynomials as the paper's plain powers P^k. The recurrence restarts
    from X for each direction (the reference code carries its x0 over from the forward
    direction into the backward one, a known bug we do not copy).

    `forward` evaluates the same sum projection first. The Chebyshev weights are mapped
    to the power basis once per call (sum_k T_k(P) X W_k = sum_j P^j X V_j, a fixed
    (T, T) mix of the weights), then Y_j = X V_j (B, N, out) all in one GEMM, and
    sum_j P^j Y_j by Horner's rule: K operator applications and K additions per
    direction (P acts on nodes, V on features, so they commute). Same operator
    applications and GEMM flops as the definition, but autograd keeps only X (B, N, C)
    instead of the (B, N, T * C) concatenation: 2.5x less activation memory for the
    whole model at the defaults (2.2 vs 5.5 GB at N = 11,160, B = 2), and fewer
    memory-bound passes than the three-term recurrence. `reference` is the literal
    concatenate-then-project form, kept for tests. The directions' Horner steps run together
    (`nodes_first`): K products per call whatever the number of directions, not 2K.
    """

    def __init__(self, operators: list[PropagationMatrix], in_features: int, out_features: int,
                 diffusion_steps: int = 2, bias_start: float = 0.0, stack: DirectionStack | None = None) -> None:
        super().__init__()
        self.operators = nn.ModuleList(operators)  # shared with the other cells: buffers only
        # The operators applied together (graph.DirectionStack): shared too when given.
        self.stack = stack if stack is not None else DirectionStack(operators)
        self.k = diffusion_steps
        self.in_features = in_features
        self.out_features = out_features
        self.num_terms = 1 + len(operators) * diffusion_steps
        self.linear = nn.Linear(self.num_terms * in_features, out_features)
        nn.init.xavier_normal_(self.linear.weight)  # as the reference code
        nn.init.constant_(self.linear.bias, bias_start)
        self.register_buffer("to_powers", self._chebyshev_to_powers(len(operators), diffusion_steps), persistent=False)
        self.channel_major = False  # x (N, C, B) in nodes_first: DCRNN.use_layout

    @staticmethod
    def _chebyshev_to_powers(directions: int, K: int) -> torch.Tensor:
        """(T, T) matrix M with sum_t M[s, t] W_t = V_s: term t = T_k of a direction,
        term s = P^j of that direction (s = 0: the identity, shared by all directions)."""
        cheb = [[1.0], [0.0, 1.0]]  # coefficients of x^j in T_k
        for k in range(2, K + 1):
            two_x = [0.0] + [2.0 * c for c in cheb[k - 1]]
            cheb.append([a - (cheb[k - 2][j] if j < len(cheb[k - 2]) else 0.0) for j, a in enumerate(two_x)])
        T = 1 + directions * K
        M = torch.zeros(T, T)
        M[0, 0] = 1.0
        for d in range(directions):
            for k in range(1, K + 1):
                for j, c in enumerate(cheb[k]):
                    M[0 if j == 0 else 1 + d * K + j - 1, 1 + d * K + k - 1] += c
        return M

    def terms(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, N, C) -> (B, N, T, C): X, then T_1..T_K of each operator applied to X."""
        out = [x]
        for op in self.operators:
            prev, cur = None, x  # T_{k-1} X, T_k X
            for k in range(1, self.k + 1):
                prev, cur = cur, (op(cur) if k == 1 else 2.0 * op(cur) - prev)
                out.append(cur)
        return torch.stack(out, dim=-2)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """The definition: concatenate the terms, project by one Linear. (B, N, C) -> (B, N, out)."""
        return self.linear(self.terms(x).flatten(-2))

    def power_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The Linear's weight in the power basis, one (T * O, C) matrix, and its bias padded to T * O.

        The Chebyshev weights map to the power basis by a fixed (T, T) mix; the bias rides on
        the identity term so that the GEMM adds it. A recurrent model computes this once per
        forward pass and hands it to every step (`nodes_first`)."""
        T, C, O = self.num_terms, self.in_features, self.out_features
        w = torch.einsum("st,otc->soc", self.to_powers, self.linear.weight.view(O, T, C)).reshape(T * O, C)
        return w, F.pad(self.linear.bias, (0, (T - 1) * O))

    def nodes_first(self, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """x (N, B, C) node-major -> (N, B, out), with (w, bias) = power_weights();
        channel-major (`channel_major`): x (N, C, B) -> (N, out, B)."""
        T, O, K, D = self.num_terms, self.out_features, self.k, len(self.operators)
        # Every term's projection in one product; unbind, not indexing: its backward stacks the T
        # gradients once, where each slice's backward would zero-fill a whole (N, B, T, O) tensor.
        if self.channel_major:
            y = mix_channels(x, w, bias).unflatten(1, (T, O)).unbind(1)  # T x (N, O, B)
        else:
            y = linear(x, w, bias).unflatten(-1, (T, O)).unbind(-2)  # T x (N, B, O)
        if K == 0 or D == 0:
            return y[0]
        # Horner over all directions at once, stacked on the node axis (D * N, B * O): Y_K, then
        # Y_j + P acc for j = K-1..1 (P_d on block d: one block-diagonal product), then the sum
        # over d of P_d acc_d (one product with [P_1 ... P_D]).
        acc = self._level(y, K)  # the products act on axis 0, whatever the other two are
        for j in range(K - 1, 0, -1):
            acc = self._level(y, j) + self.stack.each(acc.flatten(1)).view_as(acc)
        return y[0] + self.stack.total(acc.flatten(1)).view_as(y[0])

    def _level(self, y: tuple, j: int) -> torch.Tensor:
        """The power-j terms of every direction, (D * N, B, O) (or (D * N, O, B)), direction-major."""
        return torch.cat([y[1 + d * self.k + j - 1] for d in range(len(self.operators))])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, N, C) -> (B, N, out), in either layout; equal to `reference(x)` up to rounding."""
        if self.channel_major:
            return self.nodes_first(x.permute(1, 2, 0), *self.power_weights()).permute(2, 0, 1)
        return self.nodes_first(x.transpose(0, 1), *self.power_weights()).transpose(0, 1)


class DCGRUCell(nn.Module):
    """GRU with diffusion convolutions for its two matrix products.

    r, u = sigmoid(conv([x, h])), c = tanh(conv([x, r * h])), h' = u * h + (1 - u) * c.
    """

    def __init__(self, operators: list[PropagationMatrix], in_features: int, hidden: int,
                 diffusion_steps: int = 2, stack: DirectionStack | None = None) -> None:
        super().__init__()
        self.hidden = hidden
        stack = stack if stack is not None else DirectionStack(operators)
        # Gate bias 1.0 (gates start mostly open), as the reference implementation.
        self.gates = DiffusionConv(operators, in_features + hidden, 2 * hidden, diffusion_steps, 1.0, stack)
        self.candidate = DiffusionConv(operators, in_features + hidden, hidden, diffusion_steps, 0.0, stack)
        self.channel_major = False  # (N, C, B) tensors: DCRNN.use_layout

    def power_weights(self) -> tuple:
        """Both convolutions' power_weights(), for `forward`'s `weights`."""
        return self.gates.power_weights(), self.candidate.power_weights()

    def forward(self, x_t: torch.Tensor, h: torch.Tensor, weights: tuple | None = None) -> torch.Tensor:
        """x_t: (N, B, in_features), h: (N, B, hidden) -> new h (N, B, hidden), node-major;
        channel-major (`channel_major`): (N, in_features, B), (N, hidden, B) -> (N, hidden, B).
        `weights`: power_weights(), computed here when not given (DCRNN computes it once per pass)."""
        (wg, bg), (wc, bc) = weights if weights is not None else self.power_weights()
        dim = 1 if self.channel_major else -1
        r, u = torch.sigmoid(self.gates.nodes_first(torch.cat([x_t, h], dim=dim), wg, bg)).chunk(2, dim=dim)
        c = tanh(self.candidate.nodes_first(torch.cat([x_t, r * h], dim=dim), wc, bc))
        # u * h + (1 - u) * c in one pass; lerp saves only c, h, u, which autograd keeps anyway.
        # Under autocast the state stays in its own dtype (float32).
        return torch.lerp(c.to(h.dtype), h, u.to(h.dtype))


class DCRNN(nn.Module):
    """Encoder-decoder DCRNN with optional scheduled sampling.

    Scheduled sampling (training only, teacher given, teacher_decay k > 0): at each decoder
    step the ground truth replaces the previous prediction as input with probability
    k / (k + exp(batches_seen / k)), one coin per step for the whole batch as in the
    reference. `batches_seen` is a buffer (saved in the state_dict, broadcast with it, so
    every rank decays alike), read before and incremented after each training forward.
    """

    uses_teacher = True
    compile_targets = ("encoder", "decoder")  # compile_model: every DCGRU cell (models/compile.py)
    # --activation-checkpointing step: every cell call recomputed in the backward pass
    # (models/checkpointing.py); the coins are drawn outside the cells, once per forward.
    checkpointing = False

    def __init__(self, operators: list[PropagationMatrix], in_features: int, horizon: int, hidden: int = 64,
                 layers: int = 2, diffusion_steps: int = 2, teacher_decay: int = 0) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"DCRNN needs at least one layer (got {layers})")
        self.horizon = horizon
        self.hidden = hidden
        self.teacher_decay = teacher_decay
        stack = DirectionStack(operators)  # one for every cell
        self.encoder = nn.ModuleList(
            DCGRUCell(operators, in_features if i == 0 else hidden, hidden, diffusion_steps, stack)
            for i in range(layers)
        )
        self.decoder = nn.ModuleList(
            DCGRUCell(operators, 1 if i == 0 else hidden, hidden, diffusion_steps, stack) for i in range(layers)
        )
        self.project = nn.Linear(hidden, 1)
        self.register_buffer("batches_seen", torch.zeros((), dtype=torch.long))
        self.channel_major = False

    def cell_width(self) -> int:
        """The most input + hidden channels of any cell."""
        return max(cell.gates.in_features for cell in (*self.encoder, *self.decoder))

    def use_layout(self, channel_major: bool) -> None:
        """Node-major (N, B, C) or channel-major (N, C, B) tensors inside: same numbers, same
        parameters; the input and output stay (B, L, N, F) and (B, H, N). Meant to be set
        before compile_model (which calls before_compile): flipped afterwards, every compiled
        cell compiles again for the other layout."""
        for m in self.modules():
            if isinstance(m, (DCRNN, DCGRUCell, DiffusionConv)):
                m.channel_major = channel_major

    def before_compile(self, device: torch.device) -> None:
        """compile_model's hook: channel-major for thin cells compiled for the CPU."""
        self.use_layout(device.type == "cpu" and self.cell_width() <= CHANNEL_MAJOR_MAX_WIDTH)

    def sampling_probability(self) -> torch.Tensor:
        """Probability of feeding the ground truth at the current `batches_seen` (0-dim tensor)."""
        k = float(self.teacher_decay)
        # exp overflows to inf for large batches_seen: probability 0, as it should.
        return k / (k + torch.exp(self.batches_seen.float() / k))

    def forward(self, x: torch.Tensor, teacher: torch.Tensor | None = None) -> torch.Tensor:
        B, L, N, _ = x.shape
        cm = self.channel_major
        # (L, N, B, F) node-major, (L, N, F, B) channel-major: steps[t] is contiguous
        steps = x.permute(1, 2, 3, 0).contiguous() if cm else x.permute(1, 2, 0, 3).contiguous()
        hs = [x.new_zeros((N, self.hidden, B) if cm else (N, B, self.hidden)) for _ in self.encoder]
        weights = [cell.power_weights() for cell in self.encoder]  # once per pass, not per step
        for t in range(L):
            inp = steps[t]
            for i, cell in enumerate(self.encoder):
                hs[i] = inp = region(cell, inp, hs[i], weights[i], enabled=self.checkpointing)

        sample = self.training and teacher is not None and self.teacher_decay > 0
        if sample:
            # Coins drawn on x's device and chosen by torch.where: no host sync per step.
            coins = torch.rand(self.horizon, device=x.device) < self.sampling_probability()
            # (H, N, B, 1) or (H, N, 1, B), contiguous: truth[t] may become a cell's input
            truth = teacher.permute(1, 2, 0).unsqueeze(2 if cm else -1).contiguous()
        weights = [cell.power_weights() for cell in self.decoder]
        inp = x.new_zeros((N, 1, B) if cm else (N, B, 1))  # GO symbol
        preds = []
        for t in range(self.horizon):
            out = inp
            for i, cell in enumerate(self.decoder):
                hs[i] = out = region(cell, out, hs[i], weights[i], enabled=self.checkpointing)
            # (N, B, 1), or (N, 1, B) channel-major
            pred = mix_channels(out, self.project.weight, self.project.bias) if cm else self.project(out)
            preds.append(pred)
            inp = torch.where(coins[t], truth[t], pred) if sample else pred
        if self.training:
            self.batches_seen += 1
        if cm:
            return torch.cat(preds, dim=1).permute(2, 1, 0)  # (N, H, B) -> (B, H, N)
        return torch.cat(preds, dim=-1).permute(1, 2, 0)  # (N, B, H) -> (B, H, N)


def build_dcrnn(m: ModelInputs) -> nn.Module:
    """ModelInputs -> DCRNN on the two random-walk diffusion operators of the graph."""
    operators = random_walk_operators(m.edge_index, m.edge_weight, m.num_nodes, mode=m.graph_mode, device=m.device)
    return DCRNN(operators, m.in_features, m.horizon, hidden=m.hidden, layers=m.layers,
                 diffusion_steps=m.diffusion_steps, teacher_decay=m.teacher_decay)


__all__ = ["DCGRUCell", "DCRNN", "DiffusionConv", "build_dcrnn"]
