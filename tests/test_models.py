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
    A += np.eye(N)
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


@pytest.mark.parametrize("mode", ["dense", "sparse"])
def test_tgcn_shapes_and_gradients(mode):
    ei, ew = _graph(12)
    model = build_model("tgcn", ModelInputs(ei, ew, 12, in_features=2, input_steps=6, horizon=4, hidden=8, graph_mode=mode))
    x = torch.randn(3, 6, 12, 2)
    out = model(x)
    assert out.shape == (3, 4, 12)
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_registry_is_a_dict_and_rejects_unknown_names():
    assert "tgcn" in MODELS
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        build_model("nope", None)
