"""Graph operator and T-GCN."""

import numpy as np
import pytest
import torch

from hvd_stgnn.data import generate
from hvd_stgnn.models import MODELS, ModelInputs, build_model
from hvd_stgnn.models.graph import GCNOperator


def _graph(N=30):
    data = generate(N, 10, seed=2)
    return torch.from_numpy(data.edge_index), torch.from_numpy(data.edge_weight)


def test_gcn_operator_matches_the_formula_and_dense_equals_sparse():
    N = 30
    ei, ew = _graph(N)
    A = np.zeros((N, N))
    for (s, t), w in zip(ei.T.numpy(), ew.numpy()):
        A[t, s] = max(A[t, s], w)
        A[s, t] = max(A[s, t], w)  # symmetric: each edge's reverse added
    A += 2 * np.eye(N)  # improved GCN: self-loops of weight 2
    d = A.sum(1)
    expected = A / np.sqrt(d[:, None] * d[None, :])
    x = torch.randn(4, N, 7)
    dense = GCNOperator(ei, ew, N, mode="dense")
    sparse = GCNOperator(ei, ew, N, mode="sparse")
    assert dense.dense and not sparse.dense
    ref = torch.from_numpy(np.einsum("ij,bjc->bic", expected, x.double().numpy())).float()
    torch.testing.assert_close(dense(x), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sparse(x), ref, rtol=1e-5, atol=1e-5)


def test_directed_operator_aggregates_from_sources():
    ei = torch.tensor([[0], [1]])  # 0 -> 1
    op = GCNOperator(ei, torch.ones(1), 2, symmetric=False, mode="dense")
    x = torch.tensor([[[1.0], [0.0]]])
    out = op(x)
    assert out[0, 1, 0] > 0 and out[0, 0, 0] == pytest.approx(1.0)


@pytest.mark.parametrize("name", ["tgcn", "a3tgcn"])
@pytest.mark.parametrize("mode", ["dense", "sparse"])
def test_gcn_models_shapes_and_gradients(name, mode):
    ei, ew = _graph(12)
    model = build_model(name, ModelInputs(ei, ew, 12, in_features=2, input_steps=6, horizon=4, hidden=8, graph_mode=mode))
    x = torch.randn(3, 6, 12, 2)
    out = model(x)
    assert out.shape == (3, 4, 12)
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", ["tgcn", "a3tgcn"])
def test_gcn_models_dense_equals_sparse(name):
    ei, ew = _graph(15)
    make = lambda mode: build_model(name, ModelInputs(ei, ew, 15, 2, 5, 3, hidden=8, graph_mode=mode))  # noqa: E731
    dense, sparse = make("dense"), make("sparse")
    sparse.load_state_dict(dense.state_dict())
    x = torch.randn(4, 5, 15, 2)
    torch.testing.assert_close(dense(x), sparse(x), rtol=1e-5, atol=1e-5)


def real_batch(N=10, B=8, L=6, H=3, seed=0):
    """One batch of synthetic traffic windows: normalized x, normalized targets."""
    from hvd_stgnn.batching import WindowGather

    data = generate(N, 600, seed=seed)
    speed = torch.from_numpy(data.speed)
    gather = WindowGather(speed, data.timestamps, L, H, mean=60.0, std=8.0)
    batch = gather(torch.arange(100, 100 + 40 * B, 40))
    return (torch.from_numpy(data.edge_index), torch.from_numpy(data.edge_weight),
            batch.x, ((batch.y - 60.0) / 8.0).masked_fill(~batch.mask, 0.0), batch.mask)


@pytest.mark.parametrize("name", ["tgcn", "a3tgcn"])
def test_gcn_models_overfit_one_batch(name):
    # Without edges Â = I: the GCN's neighbour averaging (which by design cannot separate a
    # node from its neighbours) is out of the way, so this tests that the recurrent model
    # itself can fit: gradients flow through all L steps and the head.
    torch.manual_seed(0)
    _, _, x, y, mask = real_batch(B=4)
    no_edges = torch.zeros(2, 0, dtype=torch.long), torch.zeros(0)
    model = build_model(name, ModelInputs(*no_edges, 10, 2, 6, 3, hidden=32))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for _ in range(500):
        loss = ((model(x) - y).abs() * mask).sum() / mask.sum()
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < 0.25 * losses[0], (losses[0], losses[-1])


def test_a3tgcn_carries_its_recurrent_state():
    # The prediction must depend on early input steps through the hidden state.
    torch.manual_seed(0)
    ei, ew = _graph(8)
    model = build_model("a3tgcn", ModelInputs(ei, ew, 8, 2, 6, 2, hidden=8))
    x = torch.randn(2, 6, 8, 2)
    x2 = x.clone()
    x2[:, 0] += 1.0
    assert not torch.allclose(model(x), model(x2))


def test_registry_is_a_dict_and_rejects_unknown_names():
    assert "tgcn" in MODELS
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        build_model("nope", None)


def test_random_walk_operators_match_the_dcrnn_paper_formula():
    from hvd_stgnn.models.graph import random_walk_operators

    N = 25
    ei, ew = _graph(N)
    W = np.zeros((N, N))
    W[ei[0].numpy(), ei[1].numpy()] = ew.numpy()
    d_out, d_in = W.sum(1), W.sum(0)
    fwd = np.divide(W, d_out[:, None], out=np.zeros_like(W), where=d_out[:, None] > 0)
    bwd = np.divide(W.T, d_in[:, None], out=np.zeros_like(W), where=d_in[:, None] > 0)
    x = torch.randn(3, N, 4)
    for mode in ("dense", "sparse"):
        f, b = random_walk_operators(ei, ew, N, mode=mode)
        for op, ref in ((f, fwd), (b, bwd)):
            expected = torch.from_numpy(np.einsum("ij,bjc->bic", ref, x.double().numpy())).float()
            torch.testing.assert_close(op(x), expected, rtol=1e-5, atol=1e-5)


def test_sparse_operator_gradient_equals_dense():
    from hvd_stgnn.models.graph import random_walk_operators

    ei, ew = _graph(20)
    for dense, sparse in zip(random_walk_operators(ei, ew, 20, "dense"), random_walk_operators(ei, ew, 20, "sparse")):
        x1 = torch.randn(3, 20, 4, requires_grad=True)
        x2 = x1.detach().clone().requires_grad_(True)
        w = torch.randn(3, 20, 4)
        (dense(x1) * w).sum().backward()
        (sparse(x2) * w).sum().backward()
        torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-5, atol=1e-6)
