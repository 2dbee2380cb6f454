"""Activation checkpointing (`--activation-checkpointing none|step|block`, models/checkpointing.py).

Recomputing instead of storing must not change what a model computes: for every model and
both graph storages, one training step with checkpointing gives the same prediction and the
same gradients as without it (they are bit-equal; the contract is 1e-6 relative), leaves the
RNG stream, DCRNN's `batches_seen` and Graph WaveNet's batch-norm statistics as a plain step
does, and changes nothing outside training. It must save memory: what the planner's probe
(plan/activations.count_saved) counts as kept for the backward pass drops by 3-6x. A mode a
model has no unit for is one clear error, from the API and from `hvd-stgnn train`; an
end-to-end run and a compiled model train to the same parameters with and without it.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from helpers import our_error_lines, run_cli
from hvd_stgnn.models import MODELS, ModelInputs, build_model, compile_model
from hvd_stgnn.models import checkpointing as ckpt
from hvd_stgnn.models.checkpointing import (CHECKPOINT_UNITS, checkpointing_error, probing,
                                            set_activation_checkpointing)
from hvd_stgnn.plan.activations import SavedTensorCount, _random_graph, _saved_bytes, count_saved

N, B, L, H, HIDDEN, F = 30, 3, 12, 12, 16, 2
TEACHER_DECAY = 2  # DCRNN: sampling probability 2 / (2 + e^0) = 2/3 at the first batch: coins of both kinds
GRAPH = _random_graph(N, 3)


def _model(name: str, checkpointing: bool, graph_mode: str = "sparse", *, num_nodes: int = N, hidden: int = HIDDEN,
           graph=None, seed: int = 0) -> torch.nn.Module:
    """`name` built from `seed` (the same weights with and without checkpointing), in train mode."""
    edge_index, edge_weight = graph if graph is not None else GRAPH
    torch.manual_seed(seed)
    model = build_model(name, ModelInputs(
        edge_index, edge_weight, num_nodes, in_features=F, input_steps=L, horizon=H, hidden=hidden,
        graph_mode=graph_mode, teacher_decay=TEACHER_DECAY if name == "dcrnn" else 0,
        activation_checkpointing=CHECKPOINT_UNITS[name] if checkpointing else "none"))
    assert model.checkpointing is checkpointing
    return model.train()


def _batch(num_nodes: int = N, batch_size: int = B, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(batch_size, L, num_nodes, F, generator=gen),
            torch.randn(batch_size, H, num_nodes, generator=gen))


def _step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int = 7):
    """One training forward + backward from RNG seed `seed`: prediction, gradients, RNG state after."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    pred = model(x, y)
    (pred - y).abs().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return pred.detach(), grads, torch.get_rng_state()


def _assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, what: str, rel: float = 1e-6) -> None:
    scale = expected.abs().max().item()
    err = (actual - expected).abs().max().item()
    assert err <= rel * max(scale, 1e-30), f"{what}: max |diff| {err:.3g} > {rel:g} x max |value| {scale:.3g}"


# --- 1. the same prediction and gradients --------------------------------------------------


@pytest.mark.parametrize("graph_mode", ["dense", "sparse"])
@pytest.mark.parametrize("name", list(MODELS))
def test_checkpointed_step_gives_the_same_prediction_and_gradients(name, graph_mode):
    assert set(CHECKPOINT_UNITS) == set(MODELS)  # every registered model has a unit to checkpoint
    x, y = _batch()
    plain, checkpointed = _model(name, False, graph_mode), _model(name, True, graph_mode)
    pred_p, grads_p, rng_p = _step(plain, x, y)
    pred_c, grads_c, rng_c = _step(checkpointed, x, y)
    assert pred_p.shape == (B, H, N)
    _assert_rel_close(pred_c, pred_p, f"{name} {graph_mode}: prediction")
    assert grads_c.keys() == grads_p.keys() and grads_p
    for n, g in grads_p.items():
        # (Graph WaveNet's gconvs.*.mlp.bias feed a train-mode batch norm: their true gradient is 0,
        # these are rounding residues, equal here because the passes are bit-equal.)
        assert g.abs().max() > 0, f"{name}: {n} got no gradient"
        _assert_rel_close(grads_c[n], g, f"{name} {graph_mode}: grad of {n}")
    # Same operations in the same order, and dropout / coins from the restored RNG state: bit-equal.
    assert torch.equal(pred_c, pred_p)
    assert all(torch.equal(grads_c[n], g) for n, g in grads_p.items())
    assert torch.equal(rng_c, rng_p)


def test_the_stochastic_parts_are_exercised():
    """What makes test 1 meaningful: DCRNN's scheduled sampling draws coins and feeds the
    teacher; Graph WaveNet's dropout draws masks (a different seed, a different prediction)."""
    x, y = _batch()
    dcrnn = _model("dcrnn", True)
    before = torch.get_rng_state()
    with torch.no_grad():
        torch.manual_seed(7)
        a = dcrnn(x, y)
        torch.manual_seed(7)
        b = dcrnn(x, torch.zeros_like(y))  # same coins, another truth
        torch.manual_seed(7)
        c = dcrnn(x, None)  # no teacher: no coins
    assert not torch.equal(a, b), "no coin chose the teacher"
    assert not torch.equal(a, c)
    torch.manual_seed(7)
    coins = torch.rand(H) < TEACHER_DECAY / (TEACHER_DECAY + 1.0)
    assert coins.any() and not coins.all(), "seed 7 should give both kinds of coins"
    assert not torch.equal(torch.get_rng_state(), before)

    gwnet = _model("gwnet", True)
    with torch.no_grad():
        torch.manual_seed(7)
        a = gwnet(x)
        torch.manual_seed(8)
        b = gwnet(x)
    assert not torch.equal(a, b), "train-mode dropout should depend on the seed"


# --- 2. state after a step: RNG, batches_seen, batch-norm statistics -----------------------


@pytest.mark.parametrize("name", list(MODELS))
def test_rng_stream_after_a_checkpointed_step_is_the_plain_one(name):
    x, y = _batch()
    states = []
    for checkpointing in (False, True):
        model = _model(name, checkpointing)
        _step(model, x, y, seed=11)
        _step(model, x, y, seed=12)  # and the next step's draws continue from there
        states.append(torch.get_rng_state())
        states.append(torch.rand(5))
    plain_state, plain_next, ck_state, ck_next = states
    assert torch.equal(ck_state, plain_state) and torch.equal(ck_next, plain_next)


def test_dcrnn_counts_each_checkpointed_batch_once():
    x, y = _batch()
    plain, checkpointed = _model("dcrnn", False), _model("dcrnn", True)
    for step in range(1, 4):
        pred_p, grads_p, _ = _step(plain, x, y, seed=step)
        pred_c, grads_c, _ = _step(checkpointed, x, y, seed=step)
        assert int(checkpointed.batches_seen) == int(plain.batches_seen) == step
        # ... so the sampling probability, and with it the coins, decay alike
        assert torch.equal(pred_c, pred_p) and all(torch.equal(grads_c[n], g) for n, g in grads_p.items())
    checkpointed.eval()
    with torch.no_grad():
        checkpointed(x, y)
    assert int(checkpointed.batches_seen) == 3  # evaluation counts nothing


def test_graph_wavenet_batch_norm_updates_once_per_step():
    x, y = _batch()
    plain, checkpointed = _model("gwnet", False), _model("gwnet", True)
    calls = [0]
    for bn in checkpointed.bns:
        bn.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    initial_means = [bn.running_mean.clone() for bn in plain.bns]
    for step in range(1, 3):
        _step(plain, x, y, seed=step)
        _step(checkpointed, x, y, seed=step)
        assert calls[0] == step * len(checkpointed.bns)  # the backward pass ran no batch norm again
        for i, (bp, bc) in enumerate(zip(plain.bns, checkpointed.bns)):
            assert int(bc.num_batches_tracked) == int(bp.num_batches_tracked) == step
            assert torch.equal(bc.running_mean, bp.running_mean), f"bns[{i}].running_mean"
            assert torch.equal(bc.running_var, bp.running_var), f"bns[{i}].running_var"
    assert all(not torch.equal(bn.running_mean, m) for bn, m in zip(plain.bns, initial_means))


# --- 3. outside training: a plain call -----------------------------------------------------


@pytest.mark.parametrize("name", list(MODELS))
def test_without_gradients_a_checkpointed_model_runs_plainly(name, monkeypatch):
    x, y = _batch()
    plain, checkpointed = _model(name, False).eval(), _model(name, True).eval()
    with torch.no_grad():
        expected = plain(x, y)

    def no_checkpoint(*args, **kwargs):
        raise AssertionError("torch.utils.checkpoint called without gradients")

    with monkeypatch.context() as m:
        m.setattr(ckpt, "checkpoint", no_checkpoint)
        with torch.no_grad():
            out = checkpointed(x, y)
            count = count_saved(checkpointed, x, y, backward=False)
        with torch.inference_mode():
            out_inference = checkpointed(x, y)
    assert torch.equal(out, expected) and torch.equal(out_inference, expected)
    assert not out.requires_grad
    assert count.stored_bytes == 0 and count.max_region_bytes == 0  # nothing saved, nothing held

    # Eval mode with gradients on (e.g. a gradient of the output w.r.t. the input) still
    # checkpoints, and still computes what the plain model computes with gradients on (which
    # may differ from the no-grad output in the last bit: Graph WaveNet's kernels do).
    out = checkpointed(x, y)
    assert out.requires_grad and torch.equal(out.detach(), plain(x, y).detach())


# --- 4. it saves memory --------------------------------------------------------------------


@pytest.mark.parametrize("name, factor", [("tgcn", 3.0), ("a3tgcn", 3.0), ("dcrnn", 4.0), ("gwnet", 4.0)])
def test_checkpointing_stores_several_times_less(name, factor):
    # Measured (N = 200, B = 4, hidden 64; dense and sparse alike): T-GCN 5.5x, A3T-GCN 3.9x,
    # DCRNN 6.0x, Graph WaveNet 5.7x.
    n, batch, hidden = 200, 4, 64
    graph = _random_graph(n, 3)
    x, y = _batch(n, batch)
    plain = _model(name, False, num_nodes=n, hidden=hidden, graph=graph)
    checkpointed = _model(name, True, num_nodes=n, hidden=hidden, graph=graph)
    p = count_saved(plain, x, y)
    c = count_saved(checkpointed, x, y)
    assert 0 < c.stored_bytes and c.stored_bytes * factor <= p.stored_bytes, (
        f"{name}: {p.stored_bytes} B stored plainly, {c.stored_bytes} B checkpointed "
        f"({p.stored_bytes / c.stored_bytes:.2f}x, expected >= {factor}x)")
    # Plainly, every region is counted on its own too (what one recomputation would save); it is
    # a part of the whole. Checkpointed, no region runs plainly.
    assert 0 < p.max_region_bytes < p.stored_bytes and c.max_region_bytes == 0
    if name != "gwnet":
        # What the regions keep alive (`hold`) is counted: at least the L + 1 states of (N, B, hidden) float32.
        assert c.stored_bytes >= (L + 1) * n * batch * hidden * 4


@pytest.mark.parametrize("name", list(MODELS))
def test_planner_counts_stored_bytes_plus_one_recomputation(name):
    """plan/activations._saved_bytes of a checkpointed model: what it stores plus the largest
    region's recomputation (counted on a plain run of the same model, which is left checkpointed)."""
    x, y = _batch()
    plain, checkpointed = _model(name, False), _model(name, True)
    p, c = count_saved(plain, x, y), count_saved(checkpointed, x, y)
    assert _saved_bytes(checkpointed, x, y) == c.stored_bytes + p.max_region_bytes
    assert checkpointed.checkpointing is True
    assert _saved_bytes(plain, x, y) == p.stored_bytes


def test_probing_reports_to_the_innermost_probe_and_removes_it():
    model = _model("tgcn", True)
    x, y = _batch()
    outer, inner = SavedTensorCount(model, x), SavedTensorCount(model, x)
    with probing(outer):
        with probing(inner):
            model(x, y)
        assert ckpt._probes == [outer]
    assert ckpt._probes == [] and outer.stored_bytes == 0
    # What T-GCN's regions hold: what enters each step, the (L, N, B, F) input (one storage) and
    # the L states each step reads (the zero state and the first L - 1), (N, B, hidden) float32.
    assert inner.stored_bytes == L * N * B * (F + HIDDEN) * 4
    with pytest.raises(RuntimeError), probing(outer):
        raise RuntimeError
    assert ckpt._probes == []


def test_held_arguments_inside_tuples_are_counted(monkeypatch):
    """DCRNN hands each cell its power weights as a tuple of tuples: torch.utils.checkpoint keeps
    them alive for the recomputation but does not save them where the saved-tensor hook sees; `hold`
    counts them, each storage once."""
    x, y = _batch()
    model = _model("dcrnn", True)
    with_hold = count_saved(model, x, y).stored_bytes
    weights = sum(t.numel() * t.element_size() for cell in [*model.encoder, *model.decoder]
                  for pair in cell.power_weights() for t in pair)
    monkeypatch.setattr(SavedTensorCount, "hold", lambda self, tensors: None)
    without_hold = count_saved(_model("dcrnn", True), x, y).stored_bytes
    assert with_hold - without_hold == weights > 0


# --- 5. errors -----------------------------------------------------------------------------


def test_a_mode_the_model_has_no_unit_for_is_a_value_error():
    model = _model("tgcn", False)
    with pytest.raises(ValueError) as exc:
        set_activation_checkpointing(model, "tgcn", "block")
    assert str(exc.value) == ("--activation-checkpointing block does not apply to --model tgcn: "
                              "it checkpoints each time step's recurrent cell (use step)")
    assert model.checkpointing is False  # unchanged
    with pytest.raises(ValueError, match=r"^--activation-checkpointing step does not apply to --model gwnet: "
                                         r"it checkpoints each residual block \(use block\)$"):
        set_activation_checkpointing(_model("gwnet", False), "gwnet", "step")
    with pytest.raises(ValueError,
                       match=r"^--activation-checkpointing must be one of none, step, block \(got 'all'\)$"):
        set_activation_checkpointing(model, "tgcn", "all")
    with pytest.raises(ValueError, match="--activation-checkpointing block"):
        build_model("dcrnn", ModelInputs(*GRAPH, N, F, L, H, hidden=4, activation_checkpointing="block"))

    for name, unit in CHECKPOINT_UNITS.items():
        assert checkpointing_error(name, "none") is None and checkpointing_error(name, unit) is None
    assert set_activation_checkpointing(model, "tgcn", "step") is model and model.checkpointing is True
    assert set_activation_checkpointing(model, "tgcn", "none") is model and model.checkpointing is False


def test_train_with_a_mode_the_model_has_no_unit_for_is_one_line(tiny_h5):
    r = run_cli("train", "--data", str(tiny_h5), "--backend", "single", "--model", "tgcn",
                "--activation-checkpointing", "block")
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert our_error_lines(r.stderr) == [
        "hvd-stgnn train: error: --activation-checkpointing block does not apply to --model tgcn: "
        "it checkpoints each time step's recurrent cell (use step)"], r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_a_config_file_mode_is_validated_too(tmp_path, capsys):
    """argparse checks the flag's choices; a TOML default is checked by Config.validate."""
    from hvd_stgnn.cli import main

    path = tmp_path / "run.toml"
    path.write_text('[model]\nname = "gwnet"\n[train]\nactivation_checkpointing = "all"\n')
    assert main(["train", "--config", str(path), "--data", str(tmp_path / "d.h5")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == ("hvd-stgnn train: error: --activation-checkpointing must be one of none, step, block "
                    "(got 'all')"), line
    path.write_text('[model]\nname = "gwnet"\n[train]\nactivation_checkpointing = "step"\n')
    assert main(["train", "--config", str(path), "--data", str(tmp_path / "d.h5")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("hvd-stgnn train: error: --activation-checkpointing step does not apply to --model gwnet")


# --- 6. end to end -------------------------------------------------------------------------


def test_dcrnn_training_run_ends_with_the_same_parameters(tiny_h5, tmp_path):
    """`hvd-stgnn train` on one process, scheduled sampling on: the same final parameters
    (and batches_seen, a state_dict buffer) with and without `--activation-checkpointing step`."""
    def train(mode: str):
        out = tmp_path / f"{mode}.json"
        r = run_cli("train", "--data", str(tiny_h5), "--backend", "single", "--model", "dcrnn", "--hidden", "4",
                    "--teacher-decay", "2", "--epochs", "1", "--batch-size", "16", "--max-steps-per-epoch", "3",
                    "--threads", "1", "--no-baselines", "--eval-windows", "16",
                    "--activation-checkpointing", mode, "--results", str(out))
        assert r.returncode == 0, r.stderr
        return json.loads(out.read_text())

    with ThreadPoolExecutor(2) as pool:  # two processes at once: mostly start-up time
        plain, checkpointed = pool.map(train, ["none", "step"])
    assert plain["config"]["train"]["activation_checkpointing"] == "none"
    assert checkpointed["config"]["train"]["activation_checkpointing"] == "step"
    assert len(plain["param_digests"]) == 1
    assert checkpointed["param_digests"] == plain["param_digests"]
    assert [e["train_mae"] for e in checkpointed["epochs"]] == [e["train_mae"] for e in plain["epochs"]]
    assert checkpointed["test"] == plain["test"]


def test_the_trainer_builds_the_model_with_the_flag(tmp_path):
    """`--activation-checkpointing` reaches the model the trainer builds (trainer._model_inputs)."""
    from hvd_stgnn.cli import build_parser
    from hvd_stgnn.config import config_from_args
    from hvd_stgnn.data import generate
    from hvd_stgnn.train.trainer import _model_inputs

    data = generate(N, 10, seed=2)
    for flags, expected in [([], False), (["--activation-checkpointing", "step"], True)]:
        args = build_parser().parse_args(["train", "--model", "dcrnn", "--data", str(tmp_path / "d.h5"), *flags])
        cfg = config_from_args(args)
        cfg.validate()
        inputs = _model_inputs(cfg, data, F, "cpu")
        assert inputs.activation_checkpointing == ("step" if expected else "none")
        assert build_model("dcrnn", inputs).checkpointing is expected


# --- 7. with --compile ---------------------------------------------------------------------


@pytest.mark.slow
def test_compiled_checkpointed_tgcn_gives_the_compiled_gradients():
    from torch._dynamo.utils import counters

    counters.clear()
    x, y = _batch()
    plain = compile_model(_model("tgcn", False))
    checkpointed = compile_model(_model("tgcn", True))
    for step in range(2):  # the first compiles, the second runs the compiled graphs
        pred_p, grads_p, _ = _step(plain, x, y, seed=step)
        pred_c, grads_c, _ = _step(checkpointed, x, y, seed=step)
        _assert_rel_close(pred_c, pred_p, "compiled prediction", rel=1e-5)
        for n, g in grads_p.items():
            _assert_rel_close(grads_c[n], g, f"compiled grad of {n}", rel=1e-5)
    assert counters["stats"]["unique_graphs"] > 0 and not counters["graph_break"], dict(counters["graph_break"])
    # ... and it still checkpoints: the compiled cell's intermediates are not kept.
    assert count_saved(checkpointed, x, y).stored_bytes * 3 <= count_saved(plain, x, y).stored_bytes
    # Compiled and eager agree as well (test_compile.py's tolerance).
    eager = _model("tgcn", True)
    pred_e, grads_e, _ = _step(eager, x, y, seed=0)
    pred_c, grads_c, _ = _step(checkpointed, x, y, seed=0)
    torch.testing.assert_close(pred_c, pred_e, rtol=1e-5, atol=1e-6)
    for n, g in grads_e.items():
        torch.testing.assert_close(grads_c[n], g, rtol=1e-4, atol=1e-6)
