"""compile_model (torch.compile with inductor's CPU backend) and bf16 autocast on the CPU.

Compiled against eager on one fixed batch, forward and backward, for every model in both
graph modes; bf16 autocast: finite loss close to float32's. Compiling takes tens of seconds on
the CPU (gcc builds each fused loop), so the comparisons are `slow`; the bf16 ones are not."""

from __future__ import annotations

import pytest
import torch

from hvd_stgnn.data import generate
from hvd_stgnn.models import MODELS, ModelInputs, build_model, compile_model, prefers_cudnn_benchmark

N, B, L, H = 14, 3, 12, 4


def _model(name: str, mode: str, seed: int = 0) -> torch.nn.Module:
    data = generate(N, 10, seed=5)
    torch.manual_seed(seed)
    return build_model(name, ModelInputs(torch.from_numpy(data.edge_index), torch.from_numpy(data.edge_weight), N,
                                         in_features=2, input_steps=L, horizon=H, hidden=6, graph_mode=mode,
                                         layers=2 if name == "dcrnn" else 1))


def _batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(B, L, N, 2, generator=gen), torch.randn(B, H, N, generator=gen)


def _loss_and_grads(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
    model.zero_grad()
    out = model(x, y)
    loss = (out - y).abs().mean()
    loss.backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _assert_compiled_matches_eager(eager, compiled, x, y, label: str) -> None:
    """Two training steps (the second runs the compiled graphs without compiling), the same
    seed before each, then evaluation: outputs and gradients equal."""
    for step in range(2):
        torch.manual_seed(step)
        out_e, grads_e = _loss_and_grads(eager, x, y)
        torch.manual_seed(step)
        out_c, grads_c = _loss_and_grads(compiled, x, y)
        torch.testing.assert_close(out_c, out_e, rtol=1e-5, atol=1e-6)
        for n, g in grads_e.items():
            torch.testing.assert_close(grads_c[n], g, rtol=1e-4, atol=1e-6, msg=f"{label}: grad of {n}")
    compiled.eval()
    eager.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), eager(x), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sparse", "dense"])
@pytest.mark.parametrize("name", list(MODELS))
def test_compiled_model_matches_eager_forward_and_backward(name, mode):
    import torch._dynamo
    import torch._inductor.config as inductor_config
    from torch._dynamo.utils import counters

    counters.clear()
    eager = _model(name, mode)
    compiled = compile_model(_model(name, mode))  # same seed, same weights (CSR buffers cannot be deep-copied)
    assert compiled.state_dict().keys() == eager.state_dict().keys()  # compiled in place: same names
    x, y = _batch()
    # Graph WaveNet's dropout: inductor draws its own random numbers unless told to use eager's.
    # Hitting the recompile limit would fall back to eager mode silently: fail instead.
    with inductor_config.patch(fallback_random=True), torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        _assert_compiled_matches_eager(eager, compiled, x, y, f"{name} {mode}")
    assert counters["stats"]["unique_graphs"] > 0  # it did compile
    assert not counters["graph_break"], dict(counters["graph_break"])  # the sparse products included


def _dcrnn(hidden: int, layers: int, mode: str, teacher_decay: int = 0) -> torch.nn.Module:
    data = generate(N, 10, seed=5)
    torch.manual_seed(0)
    return build_model("dcrnn", ModelInputs(torch.from_numpy(data.edge_index), torch.from_numpy(data.edge_weight), N,
                                            in_features=2, input_steps=L, horizon=H, hidden=hidden, layers=layers,
                                            graph_mode=mode, teacher_decay=teacher_decay))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sparse", "dense"])
def test_thin_dcrnn_compiles_channel_major_and_matches_eager(mode):
    """DCRNN at hidden 2, 1 layer (the PGT-I paper's size, 4 channels a cell) compiles
    channel-major on the CPU (models/dcrnn.py): same numbers as the node-major eager model,
    training with scheduled sampling (the same coins) and evaluation, no graph break."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    counters.clear()
    eager, compiled = _dcrnn(2, 1, mode, teacher_decay=2), compile_model(_dcrnn(2, 1, mode, teacher_decay=2))
    assert compiled.channel_major and not eager.channel_major
    x, y = _batch()
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        _assert_compiled_matches_eager(eager, compiled, x, y, "dcrnn channel-major")
    assert not counters["graph_break"], dict(counters["graph_break"])


@pytest.mark.parametrize("mode", ["sparse", "dense"])
@pytest.mark.parametrize("name", list(MODELS))
def test_bf16_autocast_runs_on_the_cpu_close_to_fp32(name, mode):
    model = _model(name, mode)
    x, y = _batch()
    torch.manual_seed(0)
    ref = (model(x, y) - y).abs().mean()
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, y)
    loss = (out.float() - y).abs().mean()
    assert torch.isfinite(loss)
    # bf16 keeps 8 bits of mantissa: products good to ~0.4%; the loss to about as much.
    assert abs(loss.item() - ref.item()) <= 0.02 * ref.item(), (loss.item(), ref.item())
    loss.backward()
    for n, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
        assert p.grad.dtype == torch.float32, n


def test_sparse_products_run_in_float32_under_autocast():
    from hvd_stgnn.models.graph import GCNOperator

    data = generate(N, 10, seed=5)
    op = GCNOperator(torch.from_numpy(data.edge_index), torch.from_numpy(data.edge_weight), N, mode="sparse")
    x = torch.randn(N, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = op.nodes_first(x.bfloat16())
    assert out.dtype == torch.bfloat16  # the caller's dtype back; the CSR kernel ran in float32
    torch.testing.assert_close(out.float(), op.op.to_dense() @ x.detach(), rtol=1e-2, atol=1e-2)
    out.float().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_cudnn_benchmark_is_asked_for_by_graph_wavenet_only():
    assert prefers_cudnn_benchmark(_model("gwnet", "sparse"))
    assert not any(prefers_cudnn_benchmark(_model(n, "sparse")) for n in ("tgcn", "a3tgcn", "dcrnn"))
