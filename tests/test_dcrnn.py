"""DCRNN: diffusion convolution, DCGRU, seq2seq with scheduled sampling."""

import math

import numpy as np
import pytest
import torch

from hvd_stgnn.data import generate
from hvd_stgnn.models import ModelInputs
from hvd_stgnn.models.dcrnn import DCRNN, DiffusionConv, build_dcrnn
from hvd_stgnn.models.graph import random_walk_operators


def _graph(N=12, seed=2):
    data = generate(N, 10, seed=seed)
    return torch.from_numpy(data.edge_index), torch.from_numpy(data.edge_weight)


def _model(N=12, F=2, L=6, H=4, hidden=8, mode="auto", decay=0, layers=2, K=2, seed=0):
    ei, ew = _graph(N)
    torch.manual_seed(seed)
    return build_dcrnn(ModelInputs(ei, ew, N, in_features=F, input_steps=L, horizon=H, hidden=hidden,
                                   graph_mode=mode, layers=layers, diffusion_steps=K, teacher_decay=decay))


@pytest.mark.parametrize("K", [0, 1, 2, 3])
def test_diffusion_conv_is_the_bidirectional_chebyshev_sum(K):
    N, C, O = 15, 3, 5
    ei, ew = _graph(N, seed=4)
    A = np.zeros((N, N))
    for (s, t), w in zip(ei.T.numpy(), ew.numpy()):
        if s != t:
            A[s, t] += w  # A[i, j]: weight of edge i -> j
    out_deg, in_deg = A.sum(1, keepdims=True), A.sum(0)[:, None]
    P_f = np.divide(A, out_deg, out=np.zeros_like(A), where=out_deg > 0)  # D_O^-1 A
    P_b = np.divide(A.T, in_deg, out=np.zeros_like(A), where=in_deg > 0)  # D_I^-1 A^T
    x = torch.randn(2, N, C, dtype=torch.float64)
    expected = [x.numpy()]
    for P in (P_f, P_b):  # T_0 = I, T_1 = P, T_k = 2 P T_{k-1} - T_{k-2}, restarted per direction
        T_prev, T = np.eye(N), P
        for k in range(1, K + 1):
            if k > 1:
                T_prev, T = T, 2 * P @ T - T_prev
            expected.append(np.einsum("ij,bjc->bic", T, x.numpy()))
    expected = np.stack(expected, axis=-2)  # (B, N, 1 + 2K, C)

    conv = DiffusionConv(random_walk_operators(ei, ew, N, mode="dense"), C, O, K).double()
    assert conv.num_terms == 1 + 2 * K
    for op in conv.operators:
        op.op = op.op.double()
    np.testing.assert_allclose(conv.terms(x).numpy(), expected, rtol=1e-6, atol=1e-6)
    W, b = conv.linear.weight.detach().numpy(), conv.linear.bias.detach().numpy()
    ref = expected.reshape(2, N, -1) @ W.T + b  # concatenated terms, one Linear
    np.testing.assert_allclose(conv.reference(x).detach().numpy(), ref, rtol=1e-6, atol=1e-6)
    # The projection-first (Clenshaw) forward is the same function.
    np.testing.assert_allclose(conv(x).detach().numpy(), ref, rtol=1e-6, atol=1e-6)


def test_gate_bias_starts_at_one_and_decoder_input_is_one_value():
    model = _model(F=3)
    assert isinstance(model, DCRNN) and DCRNN.uses_teacher is True
    for stack in (model.encoder, model.decoder):
        for cell in stack:
            assert torch.all(cell.gates.linear.bias == 1.0) and torch.all(cell.candidate.linear.bias == 0.0)
    assert model.encoder[0].gates.in_features == 3 + 8 and model.decoder[0].gates.in_features == 1 + 8
    assert model.encoder[1].gates.in_features == 8 + 8 and model.decoder[1].gates.in_features == 8 + 8
    assert model.encoder[0].gates.linear.in_features == 5 * (3 + 8)  # 2K + 1 terms, K = 2


@pytest.mark.parametrize("mode", ["dense", "sparse"])
def test_shape_and_gradients_reach_every_parameter(mode):
    model = _model(N=12, F=3, L=6, H=4, mode=mode, decay=5)
    x = torch.randn(3, 6, 12, 3)
    out = model(x, teacher=torch.randn(3, 4, 12))
    assert out.shape == (3, 4, 12)
    (out ** 2).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_dense_and_sparse_operators_give_the_same_model():
    dense, sparse = _model(N=25, mode="dense", seed=1), _model(N=25, mode="sparse", seed=2)
    sparse.load_state_dict(dense.state_dict())
    assert all(op.dense for op in dense.encoder[0].gates.operators)
    assert not any(op.dense for op in sparse.encoder[0].gates.operators)
    x = torch.randn(2, 6, 25, 2)
    out_d, out_s = dense(x), sparse(x)
    torch.testing.assert_close(out_d, out_s, rtol=1e-5, atol=1e-5)
    out_d.square().sum().backward()
    out_s.square().sum().backward()
    for (name, pd), ps in zip(dense.named_parameters(), sparse.parameters()):
        torch.testing.assert_close(pd.grad, ps.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_overfits_one_batch():
    torch.manual_seed(0)
    model = _model(N=10, F=2, L=4, H=3, hidden=16)
    x = torch.randn(4, 4, 10, 2)
    y = torch.randn(4, 3, 10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(150):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # Reaches ~1e-5 of the start; 5% leaves a wide margin.
    assert losses[-1] < 0.05 * losses[0], (losses[0], losses[-1])


def test_scheduled_sampling_uses_the_teacher_only_in_training():
    model = _model(decay=10)
    x, t1, t2 = torch.randn(2, 6, 12, 2), torch.randn(2, 4, 12), torch.randn(2, 4, 12)

    def run(teacher, seen=0):
        model.batches_seen.fill_(seen)  # same probability
        torch.manual_seed(0)  # same coins
        with torch.no_grad():
            return model(x, teacher)

    # batches_seen = 0: the truth is fed with probability 10 / 11 per step.
    assert model.sampling_probability().item() == pytest.approx(10 / 11)
    model.train()
    assert not torch.allclose(run(t1), run(t2))
    torch.testing.assert_close(run(t1), run(t1), rtol=0, atol=0)
    free_running = run(None)  # training without a teacher feeds back predictions
    model.eval()
    torch.testing.assert_close(run(t1), run(t2), rtol=0, atol=0)
    torch.testing.assert_close(run(t1), free_running, rtol=0, atol=0)

    # Late in training the probability has decayed to ~0: the teacher is ignored.
    model.batches_seen.fill_(1000)
    assert model.sampling_probability().item() == pytest.approx(10 / (10 + math.exp(100)))
    model.train()
    torch.testing.assert_close(run(t1, seen=1000), run(t2, seen=1000), rtol=0, atol=0)
    torch.testing.assert_close(run(t1, seen=1000), free_running, rtol=0, atol=0)


def test_sampling_off_when_decay_is_zero():
    model = _model(decay=0).train()
    x = torch.randn(2, 6, 12, 2)
    with torch.no_grad():
        torch.testing.assert_close(model(x, torch.randn(2, 4, 12)), model(x, torch.randn(2, 4, 12)), rtol=0, atol=0)


def test_batches_seen_counts_training_forwards_and_is_saved():
    model = _model(decay=10)
    x, y = torch.randn(2, 6, 12, 2), torch.randn(2, 4, 12)
    assert model.batches_seen.item() == 0
    model.train()
    model(x, y)
    model(x)
    assert model.batches_seen.item() == 2
    model.eval()
    with torch.no_grad():
        model(x, y)
    assert model.batches_seen.item() == 2
    state = model.state_dict()
    assert state["batches_seen"].item() == 2
    fresh = _model(decay=10)
    fresh.load_state_dict(state)
    assert fresh.batches_seen.item() == 2


def test_runs_at_2000_nodes_with_sparse_operators_only():
    N = 2000
    model = _model(N=N, F=2, L=3, H=2, hidden=8, mode="sparse", decay=10)
    for name, buf in model.named_buffers():
        assert not (buf.layout == torch.strided and buf.dim() == 2 and buf.shape == (N, N)), name
    ops = {id(op): op for m in model.modules() if isinstance(m, DiffusionConv) for op in m.operators}
    assert len(ops) == 2  # both directions, shared by every cell
    assert all(not op.dense and op.op.layout == torch.sparse_csr for op in ops.values())
    x = torch.randn(2, 3, N, 2)
    out = model(x, torch.randn(2, 2, N))
    assert out.shape == (2, 2, N) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("mode", ["sparse", "dense"])
@pytest.mark.parametrize("layers,K", [(1, 2), (2, 1), (2, 3), (1, 0)])
def test_channel_major_layout_is_the_same_model(mode, layers, K):
    """use_layout(True) ((N, C, B) inside, what compile_model picks for thin cells on the CPU)
    gives the node-major model's outputs and gradients, scheduled sampling included."""
    model = _model(N=13, hidden=3, mode=mode, decay=2, layers=layers, K=K)
    model.train()
    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(5, 6, 13, 2, generator=gen), torch.randn(5, 4, 13, generator=gen)
    results = []
    for channel_major in (False, True):
        model.use_layout(channel_major)
        assert all(m.channel_major == channel_major for m in model.modules() if hasattr(m, "channel_major"))
        model.zero_grad()
        model.batches_seen.zero_()
        torch.manual_seed(7)  # the same coins
        out = model(x, y)
        (out - y).abs().mean().backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (out_n, grads_n), (out_c, grads_c) = results
    assert out_c.shape == (5, 4, 13)
    torch.testing.assert_close(out_c, out_n, rtol=1e-5, atol=1e-6)
    for n, g in grads_n.items():
        torch.testing.assert_close(grads_c[n], g, rtol=1e-4, atol=1e-6, msg=f"grad of {n}")


def test_before_compile_picks_channel_major_only_for_thin_cells_on_the_cpu():
    from hvd_stgnn.models.dcrnn import CHANNEL_MAJOR_MAX_WIDTH

    thin, wide = _model(hidden=2, layers=1), _model(hidden=8, layers=2)
    assert thin.cell_width() == 4 <= CHANNEL_MAJOR_MAX_WIDTH < wide.cell_width() == 16
    thin.before_compile(torch.device("cpu"))
    wide.before_compile(torch.device("cpu"))
    assert thin.channel_major and not wide.channel_major
    thin.before_compile(torch.device("cuda"))  # a device only, nothing runs there
    assert not thin.channel_major


def test_channel_major_diffusion_conv_and_bf16():
    """A channel-major DiffusionConv still takes (B, N, C); under bf16 autocast a channel-major
    model stays close to float32 (its channel mixing runs in float32: models/ops.py) and its
    gradients are float32."""
    model = _model(N=13, hidden=2, layers=1)
    conv = model.encoder[0].gates
    x = torch.randn(5, 13, conv.in_features)
    node_major = conv(x)
    model.use_layout(True)
    torch.testing.assert_close(conv(x), node_major, rtol=1e-5, atol=1e-6)
    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(5, 6, 13, 2, generator=gen), torch.randn(5, 4, 13, generator=gen)
    ref = (model(x) - y).abs().mean()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    loss = (out.float() - y).abs().mean()
    assert abs(loss.item() - ref.item()) <= 0.02 * ref.item(), (loss.item(), ref.item())
    loss.backward()
    for n, p in model.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all(), n
