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


@pytest.mark.parametrize("scale", [1.0, 1e3])
def test_a3tgcn_attention_is_the_softmax_over_time_of_the_stacked_states(scale):
    """attend sums over the lists (no stacked copy); the same function, values and gradients,
    as softmax over a stack, also for scores far outside exp's range."""
    torch.manual_seed(0)
    ei, ew = _graph(8)
    model = build_model("a3tgcn", ModelInputs(ei, ew, 8, 2, 6, 2, hidden=5)).double()
    states = [torch.randn(8, 3, 5, dtype=torch.float64, requires_grad=True) for _ in range(6)]
    scores = [(scale * torch.randn(8, 3, 1, dtype=torch.float64)).requires_grad_() for _ in range(6)]
    out = model.attend(states, scores)
    weights = torch.softmax(torch.stack(scores), dim=0)
    ref = model.head((weights * torch.stack(states)).sum(0)).permute(1, 2, 0)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, states + scores, g)
    want = torch.autograd.grad(ref, states + scores, g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


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


# --- graph storage per device, node-first products, stacked directions --------------------


def test_auto_graph_storage_depends_on_the_device():
    from hvd_stgnn.models.graph import DENSE_MAX_NODES, prefer_dense

    # CPU (measured): dense only for small or dense graphs.
    assert prefer_dense(50, 100) and not prefer_dense(207, 1393)
    assert prefer_dense(207, int(0.2 * 207 * 207))
    # CUDA (assumed, not measured): every graph up to DENSE_MAX_NODES, never above.
    assert prefer_dense(207, 1393, "cuda") and prefer_dense(DENSE_MAX_NODES, 5 * DENSE_MAX_NODES, torch.device("cuda"))
    assert not prefer_dense(DENSE_MAX_NODES + 1, 10 ** 7, "cuda")
    ei, ew = _graph(100)
    for device, dense in (("cpu", False), ("cuda", True)):  # built on the CPU either way
        model = build_model("tgcn", ModelInputs(ei, ew, 100, 2, 4, 2, hidden=4, device=device))
        assert model.cell.graph.dense == dense


@pytest.mark.parametrize("mode", ["dense", "sparse"])
def test_nodes_first_is_the_same_product_without_transposes(mode):
    from hvd_stgnn.models.graph import random_walk_operators

    ei, ew = _graph(20)
    x = torch.randn(3, 20, 5)
    for op in random_walk_operators(ei, ew, 20, mode):
        torch.testing.assert_close(op.nodes_first(x.transpose(0, 1)).transpose(0, 1), op(x))
        torch.testing.assert_close(op.nodes_first(x.transpose(0, 1).contiguous()), op(x).transpose(0, 1))


@pytest.mark.parametrize("mode", ["dense", "sparse"])
def test_direction_stack_applies_every_operator_at_once(mode):
    from hvd_stgnn.models.graph import DirectionStack, random_walk_operators

    N = 20
    ei, ew = _graph(N)
    ops = random_walk_operators(ei, ew, N, mode)
    stack = DirectionStack(ops)
    a = torch.randn(2 * N, 6, requires_grad=True)
    dense = [op.op.to_dense() if not op.dense else op.op for op in ops]
    each = torch.cat([P @ part for P, part in zip(dense, a.split(N))])
    total = sum(P @ part for P, part in zip(dense, a.split(N)))
    torch.testing.assert_close(stack.each(a), each)
    torch.testing.assert_close(stack.total(a), total)
    w = torch.randn(N, 6)
    (grad,) = torch.autograd.grad((stack.total(a) * w).sum(), a)
    (expected,) = torch.autograd.grad((total * w).sum(), a)
    torch.testing.assert_close(grad, expected)


@pytest.mark.parametrize("columns", [3, 40])  # thin (transposed grad_x) and wide
def test_linear_has_the_gradients_of_f_linear(columns):
    from hvd_stgnn.models.ops import linear

    x = torch.randn(5, 7, columns, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, columns, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(linear(x, w, b), torch.nn.functional.linear(x, w, b))
    assert torch.autograd.gradcheck(linear, (x, w, b))


@pytest.mark.parametrize("out_features,in_features", [(1, 3), (5, 4), (7, 9)])
def test_mix_channels_is_a_linear_over_axis_1(out_features, in_features):
    from hvd_stgnn.models.ops import mix_channels

    x = torch.randn(6, in_features, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(out_features, in_features, dtype=torch.float64, requires_grad=True)
    b = torch.randn(out_features, dtype=torch.float64, requires_grad=True)
    ref = torch.nn.functional.linear(x.transpose(1, 2), w, b).transpose(1, 2)  # (6, O, 4)
    torch.testing.assert_close(mix_channels(x, w, b), ref)
    assert torch.autograd.gradcheck(mix_channels, (x, w, b))


def test_compiled_tanh_form_is_tanh():
    from hvd_stgnn.models.ops import _SigmoidTanh

    x = torch.randn(200, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(_SigmoidTanh.apply(x), torch.tanh(x))
    assert torch.autograd.gradcheck(_SigmoidTanh.apply, (x[:20].detach().requires_grad_(),))
    x32 = torch.linspace(-20, 20, 10001)
    assert (_SigmoidTanh.apply(x32) - torch.tanh(x32)).abs().max() < 3e-7


# --- bench models: variants, flags, the PyTorch Geometric Temporal baseline -----------------


def test_bench_models_rows_record_the_variant():
    from hvd_stgnn.bench.models import run

    rows = run("tgcn,dcrnn", [12], 2, "tgcn=4,dcrnn=3", 2, 1, precision="bf16", layers=1)
    assert [r["model"] for r in rows] == ["tgcn", "dcrnn"]
    for r in rows:
        assert r["compile"] is False and r["precision"] == "bf16" and r["device"] == "cpu"
        assert r["impl"] == "hvd_stgnn" and r["pgt_over_ours"] is None and r["step_ms"] > 0
    assert rows[1]["layers"] == 1 and rows[0]["layers"] is None


def test_bench_models_refuses_what_this_machine_cannot_run():
    from hvd_stgnn.bench.models import run
    from hvd_stgnn.errors import ConfigError

    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="^--device cuda: no GPU"):
            run("tgcn", [12], 2, "", 2, 1, device="cuda")
        with pytest.raises(ConfigError, match="^--precision fp16"):
            run("tgcn", [12], 2, "", 2, 1, precision="fp16")


def test_bench_models_flags_parse():
    from hvd_stgnn.cli import build_parser

    args = build_parser().parse_args(["bench", "models", "--compile", "--nodes", "207", "--precision", "bf16",
                                      "--device", "cpu", "--against-pgt", "--layers", "1", "--graph-mode", "dense"])
    assert (args.compile, args.nodes, args.precision, args.device, args.against_pgt, args.layers, args.graph_mode) == (
        "on", [207], "bf16", "cpu", True, 1, "dense")
    args = build_parser().parse_args(["bench", "models", "--compile=both"])
    assert args.compile == "both" and args.precision == "fp32" and not args.against_pgt
    assert build_parser().parse_args(["bench", "models"]).compile == "off"


def test_pgt_baseline_says_how_to_install_it(monkeypatch):
    from hvd_stgnn.bench import pgt
    from hvd_stgnn.errors import ConfigError

    monkeypatch.setattr(pgt, "installed_version", lambda: None)
    pgt.load.cache_clear()
    try:
        with pytest.raises(ConfigError, match="pip install --no-deps torch-geometric-temporal==0.56.2"):
            pgt.load()
    finally:
        pgt.load.cache_clear()


@pytest.mark.parametrize("name", ["a3tgcn", "dcrnn"])
def test_pgt_baselines_follow_our_model_contract(name):
    from hvd_stgnn.bench import pgt

    # make setup installs it (tools/setup.sh): a missing install fails here, as the suite's other needs do
    assert pgt.installed_version() is not None, f"PyTorch Geometric Temporal is not installed ({pgt.INSTALL})"
    ei, ew = _graph(12)
    model = pgt.build(name, ei, ew, in_features=2, input_steps=6, horizon=3, hidden=4, batch_size=2)
    out = model(torch.randn(2, 6, 12, 2))
    assert out.shape == (2, 3, 12)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
