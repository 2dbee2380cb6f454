"""Graph WaveNet: shapes, gradients, dense == sparse, overfitting, the large-N rule."""

import pytest
import torch

from hvd_stgnn.data import generate
from hvd_stgnn.models import ModelInputs
from hvd_stgnn.models.gwnet import GraphWaveNet, build_gwnet


def _inputs(N=16, L=12, H=12, F=2, mode="dense", adaptive=True, **kw) -> ModelInputs:
    data = generate(N, 10, seed=3)
    ei, ew = torch.from_numpy(data.edge_index), torch.from_numpy(data.edge_weight)
    return ModelInputs(ei, ew, N, in_features=F, input_steps=L, horizon=H, graph_mode=mode,
                       adaptive_adjacency=adaptive, **kw)


@pytest.mark.parametrize("L,H", [(12, 12), (12, 3), (5, 3), (16, 4)])
def test_output_shape(L, H):
    torch.manual_seed(0)
    model = build_gwnet(_inputs(N=10, L=L, H=H))
    assert isinstance(model, GraphWaveNet) and model.receptive_field == 13
    out = model(torch.randn(3, L, 10, 2))
    assert out.shape == (3, H, 10) and torch.isfinite(out).all()


def test_reference_sizes_and_hidden_is_ignored():
    a, b = build_gwnet(_inputs(hidden=8)), build_gwnet(_inputs(hidden=64))
    assert [p.shape for p in a.parameters()] == [p.shape for p in b.parameters()]
    assert a.start_conv.out_channels == 32 and a.filter_convs[0].out_channels == 32
    assert a.skip_convs[0].out_channels == 256 and a.end_conv_1.out_channels == 512
    assert [c.dilation[1] for c in a.filter_convs] == [1, 2] * 4
    # forward, backward, adaptive supports; x plus K = 2 diffusion steps each.
    assert a.gconvs[0].mlp.in_channels == (2 * 3 + 1) * 32
    assert build_gwnet(_inputs(adaptive=False, diffusion_steps=3)).gconvs[0].mlp.in_channels == (3 * 2 + 1) * 32


@pytest.mark.parametrize("adaptive", [True, False])
def test_gradients_reach_every_parameter(adaptive):
    torch.manual_seed(0)
    model = build_gwnet(_inputs(adaptive=adaptive))
    assert model.adaptive == adaptive
    names = {n for n, _ in model.named_parameters()}
    assert ({"nodevec1", "nodevec2"} <= names) == adaptive
    model(torch.randn(4, 12, 16, 2)).pow(2).mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_adaptive_support_is_a_row_softmax_applied_transposed():
    model = build_gwnet(_inputs(N=9))
    A = model.adaptive_support()  # applied as x' = A x with A = softmax(relu(E1 E2^T), dim=1)^T
    assert A.shape == (9, 9) and (A >= 0).all()
    torch.testing.assert_close(A.sum(0), torch.ones(9))


def test_dense_and_sparse_operators_give_the_same_output():
    torch.manual_seed(0)
    dense = build_gwnet(_inputs(N=20, mode="dense", adaptive=False))
    sparse = build_gwnet(_inputs(N=20, mode="sparse", adaptive=False))
    assert all(op.dense for op in dense.operators) and not any(op.dense for op in sparse.operators)
    # Random, non-trivial batch-norm statistics so that eval mode does not hide differences.
    for bn in dense.bns:
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    sparse.load_state_dict(dense.state_dict())
    dense.eval()
    sparse.eval()
    x = torch.randn(3, 12, 20, 2)
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), dense(x), rtol=1e-5, atol=1e-5)


def test_overfits_one_small_batch():
    torch.manual_seed(0)
    model = build_gwnet(_inputs(N=8, H=3))
    x, y = torch.randn(4, 12, 8, 2), torch.randn(4, 3, 8)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(200):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # Train mode (dropout on) is noisy: compare means over the first and last 10 steps.
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.1 * first, (first, last)


def test_large_sparse_graph_has_no_adaptive_adjacency_and_no_dense_n_by_n():
    from hvd_stgnn.models.graph import DENSE_MAX_NODES

    N = DENSE_MAX_NODES + 52
    torch.manual_seed(0)
    model = build_gwnet(_inputs(N=N, mode="auto", adaptive=True))
    assert not model.adaptive and not any(op.dense for op in model.operators)
    assert not hasattr(model, "nodevec1") and not hasattr(model, "nodevec2")
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        assert t.layout != torch.strided or t.numel() < N * N, name
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 12, N, 2))
    assert out.shape == (1, 12, N) and torch.isfinite(out).all()


def _reference_forward(model: GraphWaveNet, x: torch.Tensor) -> torch.Tensor:
    """The reference code's forward (nnzhan/Graph-WaveNet model.py) on this model's weights:
    nconv as einsum('ncvl,vw->ncwl'), skips over all steps then truncated, input padded."""
    F_ = torch.nn.functional
    nconv = lambda h, A: torch.einsum("ncvl,vw->ncwl", h, A)  # noqa: E731
    # The reference applies A^T; feed it P^T so that it applies the given-graph P.
    supports = [op.op.t() for op in model.operators]
    if model.adaptive:
        supports.append(F_.softmax(F_.relu(model.nodevec1 @ model.nodevec2.t()), dim=1))
    x = x.permute(0, 3, 2, 1)
    x = F_.pad(x, (model.receptive_field - x.shape[3], 0, 0, 0))
    x = model.start_conv(x)
    skip = 0
    for i in range(len(model.filter_convs)):
        residual = x
        x = torch.tanh(model.filter_convs[i](residual)) * torch.sigmoid(model.gate_convs[i](residual))
        s = model.skip_convs[i](x)
        skip = s + (skip[:, :, :, -s.size(3):] if torch.is_tensor(skip) else 0)
        if i == len(model.gconvs):
            break  # the reference's last graph conv, residual and batch norm feed nothing
        g = model.gconvs[i]
        out = [x]
        for A in supports:
            x1 = nconv(x, A)
            out.append(x1)
            for _ in range(2, g.order + 1):
                x1 = nconv(x1, A)
                out.append(x1)
        x = g.mlp(torch.cat(out, dim=1))
        x = model.bns[i](x + residual[:, :, :, -x.size(3):])
    x = model.end_conv_2(F_.relu(model.end_conv_1(F_.relu(skip))))
    return x.squeeze(-1)


@pytest.mark.parametrize("adaptive", [True, False])
def test_matches_the_reference_forward(adaptive):
    torch.manual_seed(0)
    model = build_gwnet(_inputs(N=11, H=5, adaptive=adaptive)).eval()
    for bn in model.bns:
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 12, 11, 2)
    with torch.no_grad():
        torch.testing.assert_close(model(x), _reference_forward(model, x), rtol=1e-5, atol=1e-5)


def test_adaptive_adjacency_stays_on_for_a_sparse_stored_small_graph():
    model = build_gwnet(_inputs(N=300, mode="sparse", adaptive=True))
    assert model.adaptive and not any(op.dense for op in model.operators)
