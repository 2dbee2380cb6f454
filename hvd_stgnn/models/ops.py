"""Small numeric helpers shared by the models."""

from __future__ import annotations

import torch


class _SigmoidTanh(torch.autograd.Function):
    """tanh(x) = 2 sigmoid(2x) - 1; the backward is tanh's own, g (1 - y^2), from the output."""

    @staticmethod
    def forward(ctx, x):
        y = 2.0 * torch.sigmoid(2.0 * x) - 1.0
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return grad * (1.0 - y * y)


def tanh(x: torch.Tensor) -> torch.Tensor:
    """torch.tanh; in code compiled for the CPU, 2 sigmoid(2x) - 1 (equal to within 1.2e-7).

    Inductor's CPU tanh is slow here (AVX512, 2-core AMD EPYC): on 5 M elements, A3T-GCN's
    attention scores, 8.8 ms against 2.8 ms for this form, whose sigmoid, scale and shift fuse
    into one loop (forward + backward: 17.9 vs 11.4 ms). In eager mode the form costs three
    kernels and is no faster, and on a GPU tanh is one instruction: torch.tanh there."""
    if x.device.type == "cpu" and torch.compiler.is_compiling():
        return _SigmoidTanh.apply(x)
    return torch.tanh(x)


THIN = 16  # linear(): up to this many input columns, grad_x is computed transposed too


class _Linear(torch.autograd.Function):
    """x (M, K) @ w.T + b whose backward multiplies with M as the long output axis."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        return torch.addmm(bias, x, weight.t())

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = None
        if ctx.needs_input_grad[0]:  # transposed only for a few input columns: its copy is then small
            grad_x = torch.mm(weight.t(), grad.t()).t() if x.shape[1] <= THIN else torch.mm(grad, weight)
        grad_w = torch.mm(x.t(), grad).t() if ctx.needs_input_grad[1] else None
        grad_b = grad.sum(0) if ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """F.linear(x, weight, bias) for the recurrent cells' tall, thin products (N * B rows, a few
    to a few hundred columns), with a backward that puts the N * B axis on the output's columns
    where MKL is faster with it there: grad_W^T = x^T grad (DCRNN at hidden 2: 60-80 us against
    300-350 us per product; A3T-GCN's gates, 34 -> 64 columns: 0.76 against 1.0 ms), and for up
    to THIN input columns grad_x^T = W^T grad^T (60 against 320 us; with more columns the
    transposed result costs a slow copy later). Measured on the CPU only: on a GPU, and under
    autocast (its own casts), F.linear."""
    if x.device.type != "cpu" or torch.is_autocast_enabled("cpu") or x.dim() < 2:
        return torch.nn.functional.linear(x, weight, bias)
    flat = x.reshape(-1, x.shape[-1])
    return _Linear.apply(flat, weight, bias).view(*x.shape[:-1], weight.shape[0])


MIX_AS_SUM = 16  # mix_channels(): weights of up to this many entries as a multiply-and-sum in eager mode too


def mix_channels(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """A Linear over axis 1 of a channel-major tensor: x (N, C, B) -> (N, O, B),
    out[n, o, b] = sum_c weight[o, c] x[n, c, b] + bias[o].

    As a multiply-and-sum where it is compiled (inductor makes it one loop over B, vectorized,
    with the C terms unrolled: the layout exists for cells of a few channels, models/dcrnn.py)
    or tiny (a read-out to one value); otherwise a matmul broadcast over the N nodes. Under
    autocast the multiply-and-sum is not cast: it runs in x's dtype (float32), with weights
    that autocast may have rounded before (DCRNN's power-basis einsum)."""
    if torch.compiler.is_compiling() or weight.numel() <= MIX_AS_SUM:
        return (weight[:, :, None] * x.unsqueeze(1)).sum(2) + bias[:, None]
    return torch.matmul(weight, x) + bias[:, None]
