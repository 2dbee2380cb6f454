"""The CUDA path's logic, tested where there is no GPU: device choice from faked GPU counts
and launcher variables, GPU sharing across ranks, process groups, RNG state in checkpoints,
the one normalization formula, mixed precision on the CPU. What needs a real GPU is in the
`gpu` tests and tools/gpu_check.sh (docs/GPU.md)."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
import torch

from helpers import our_error_lines, run_cli, subprocess_env
from hvd_stgnn.batching import Scaler
from hvd_stgnn.errors import ConfigError
from hvd_stgnn.parallel import device as device_mod
from hvd_stgnn.parallel.ddp_backend import DDPBackend, tensors_to_cpu
from hvd_stgnn.parallel.device import choose_device, gpu_sharing
from hvd_stgnn.parallel.launcher import (
    launcher_local_rank, launcher_local_size, launcher_name, launcher_rank, launcher_size, slurm_tasks_on_node,
)
from hvd_stgnn.results import Results
from hvd_stgnn.train import checkpoint as ckpt
from hvd_stgnn.train.precision import Precision

# --- 1. one normalization formula on CPU and GPU ---------------------------------------------


def test_scaler_multiplies_by_the_reciprocal():
    """CUDA turns x / python_float into x * (1 / python_float); the CPU divides exactly. The
    scaler writes the multiplication itself, so both compute the same float32 products."""
    x = torch.from_numpy(np.random.default_rng(0).uniform(0, 80, 100_000).astype(np.float32))
    mean, std = 58.123, 12.345
    expected = (x.numpy() - np.float32(mean)) * np.float32(1.0 / std)
    assert np.array_equal(Scaler(mean, std).transform(x).numpy(), expected)
    divided = ((x - mean) / std).numpy()
    assert not np.array_equal(divided, expected)  # the two formulas do differ somewhere (1 ulp)


# --- 2-4, 9. the device of a rank -----------------------------------------------------------


def test_choose_device_rules():
    assert choose_device("cpu", 3, gpus=4).name == "cpu"  # --device cpu on a GPU node: the CPU
    assert choose_device("auto", 3, gpus=4).name == "cuda:3"
    assert choose_device("cuda", 1, gpus=1).name == "cuda:0"  # per-task binding: each rank sees its own GPU
    assert choose_device("auto", 0, gpus=0) == device_mod.DeviceChoice("cpu")  # no GPU: silent CPU
    fallback = choose_device("auto", 0, gpus=0, cuda_problem="CUDA driver version is insufficient")
    assert fallback.name == "cpu" and fallback.note == (
        "--device auto: CUDA failed to initialise (CUDA driver version is insufficient); training on the CPU")
    with pytest.raises(ConfigError, match=r"^--device cuda: no CUDA device is available$"):
        choose_device("cuda", 0, gpus=0)
    with pytest.raises(ConfigError, match=r"^--device cuda: CUDA failed to initialise \(driver too old\)$"):
        choose_device("cuda", 0, gpus=0, cuda_problem="driver too old")


def test_cuda_state_reports_why_cuda_failed(monkeypatch):
    def broken():
        warnings.warn("CUDA initialization: The NVIDIA driver on your system is too old (found version 11040)")
        return False

    monkeypatch.setattr(torch.cuda, "is_available", broken)
    assert device_mod.cuda_state() == (0, "CUDA initialization: The NVIDIA driver on your system is too old "
                                          "(found version 11040)")
    device, note = device_mod.resolve_device("auto", 0)
    assert device.type == "cpu" and note.startswith("--device auto: CUDA failed to initialise (CUDA initialization")


def test_gpu_sharing_names_the_ranks():
    assert gpu_sharing([("a", "GPU-0"), ("a", "GPU-1"), ("b", "GPU-0"), ("b", "GPU-1")]) == ""
    line = gpu_sharing([("a", "GPU-0"), ("a", "GPU-0"), ("b", "GPU-5"), ("b", "GPU-6")])
    assert line.startswith("--device cuda: ranks 0, 1 on a share one GPU (2 ranks on a node, 1 GPU(s) among them)")
    assert "\n" not in line and "--device cpu" in line


@pytest.mark.parametrize("env, expected", [
    # srun starting torchrun: torchrun's variables are this process's, not srun's task
    ({"SLURM_PROCID": "1", "SLURM_STEP_ID": "0", "SLURM_LOCALID": "0", "SLURM_NTASKS": "2",
      "TORCHELASTIC_RUN_ID": "x", "RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"},
     ("torchrun", 5, 8, 1, 4)),
    # mpirun inside a Slurm allocation (its daemons are started by srun)
    ({"SLURM_PROCID": "0", "SLURM_STEP_ID": "3", "SLURM_LOCALID": "0", "OMPI_COMM_WORLD_RANK": "3",
      "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_RANK": "1", "OMPI_COMM_WORLD_LOCAL_SIZE": "2"},
     ("mpirun", 3, 4, 1, 2)),
    ({"SLURM_PROCID": "5", "SLURM_STEP_ID": "0", "SLURM_LOCALID": "1", "SLURM_STEP_NUM_TASKS": "6",
      "SLURM_NTASKS": "8", "SLURM_STEP_TASKS_PER_NODE": "2(x2),1,1", "SLURM_NODEID": "1", "PMIX_RANK": "5"},
     ("srun", 5, 6, 1, 2)),
    ({"PALS_RANKID": "6", "PALS_LOCAL_RANKID": "2", "PMI_SIZE": "8", "PALS_LOCAL_SIZE": "4"},
     ("mpiexec", 6, 8, 2, 4)),
    ({}, ("none", 0, 1, 0, 1)),
])
def test_the_launcher_that_started_the_process_wins(monkeypatch, env, expected):
    for name in list(os.environ):
        if name.startswith(("SLURM_", "OMPI_", "PMI", "PALS_", "TORCHELASTIC_")) or name in (
                "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert (launcher_name(), launcher_rank(), launcher_size(), launcher_local_rank(), launcher_local_size()) == expected


def test_slurm_tasks_per_node_list():
    assert [slurm_tasks_on_node("2(x3),1", n) for n in range(5)] == [2, 2, 2, 1, 1]
    assert slurm_tasks_on_node("4", 0) == 4 and slurm_tasks_on_node("", 0) == 1 and slurm_tasks_on_node("x", 0) == 1


def test_ddp_process_group_follows_the_training_device():
    ddp = DDPBackend.__new__(DDPBackend)  # the property alone: no process group here
    ddp.device = torch.device("cpu")
    assert ddp.process_group_backend == "gloo"  # --device cpu on a GPU node too
    ddp.device = torch.device("cuda", 1)
    assert ddp.process_group_backend == "nccl"


# --- 5. tests run on the CPU -----------------------------------------------------------------


def test_subprocesses_of_the_suite_see_no_gpu():
    assert subprocess_env()["CUDA_VISIBLE_DEVICES"] == ""
    assert subprocess_env(gpu=True).get("CUDA_VISIBLE_DEVICES") == os.environ.get("CUDA_VISIBLE_DEVICES")
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32


# --- 6, 7, 12. checkpoints and collectives ---------------------------------------------------


def test_checkpoint_rng_holds_the_gpu_stream(monkeypatch):
    gpu_state = torch.arange(16, dtype=torch.uint8)
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda: gpu_state.clone())
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s: restored.append(s))
    state = ckpt.rng_state()
    assert torch.equal(state["cuda"], gpu_state)
    ckpt.set_rng_state(state)
    assert len(restored) == 1 and torch.equal(restored[0], gpu_state)
    ckpt.set_rng_state({**state, "cuda": None})  # a checkpoint written on a CPU
    assert len(restored) == 1


def test_optimizer_state_is_broadcast_from_the_cpu():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    state = opt.state_dict()
    moved = tensors_to_cpu({"a": [torch.ones(2)], "b": (1, torch.zeros(1)), "state": state})
    assert isinstance(moved["b"], tuple) and moved["state"]["param_groups"] == state["param_groups"]
    assert all(t.device.type == "cpu" for t in moved["state"]["state"][0].values() if isinstance(t, torch.Tensor))


def test_ddp_collectives_leave_their_input_alone():
    ddp = DDPBackend.__new__(DDPBackend)
    ddp.device = torch.device("cpu")
    x = torch.ones(3)
    out = ddp._to_comm_device(x)
    out.add_(1)  # what an in-place all_reduce does to it
    assert torch.equal(x, torch.ones(3))


# --- mixed precision ---------------------------------------------------------------------------


def test_precision_rules():
    with pytest.raises(ConfigError, match="--precision fp16: GPU only"):
        Precision("fp16", torch.device("cpu"))
    bf16 = Precision("bf16", torch.device("cpu"))
    model = torch.nn.Linear(4, 2)
    out = bf16.forward(model, torch.randn(3, 4))
    assert out.dtype == torch.float32 and bf16.scaler is None and bf16.state_dict() is None
    with bf16.autocast():
        assert model(torch.randn(3, 4)).dtype == torch.bfloat16


@pytest.mark.slow
def test_bf16_training_on_the_cpu_is_close_to_fp32(tiny_h5, tmp_path):
    runs = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / f"{precision}.json"
        r = run_cli("train", "--data", str(tiny_h5), "--backend", "single", "--epochs", "2", "--batch-size", "16",
                    "--hidden", "16", "--threads", "1", "--precision", precision, "--results", str(out))
        assert r.returncode == 0, r.stderr
        runs[precision] = Results.read(out)
    fp32, bf16 = runs["fp32"], runs["bf16"]
    assert all(np.isfinite(e.train_mae) for e in bf16.epochs)
    assert bf16.test["mae"]["avg"] == pytest.approx(fp32.test["mae"]["avg"], rel=0.05)
    assert bf16.config["train"]["precision"] == "bf16"


def test_fp16_on_the_cpu_is_one_line(tiny_h5):
    r = run_cli("train", "--data", str(tiny_h5), "--backend", "single", "--precision", "fp16", "--device", "cpu")
    assert r.returncode == 2 and our_error_lines(r.stderr) == [
        "hvd-stgnn train: error: --precision fp16: GPU only (training on cpu); use --precision bf16 on the CPU"]


def test_device_cuda_without_a_gpu_is_one_line(tiny_h5):
    r = run_cli("train", "--data", str(tiny_h5), "--backend", "single", "--device", "cuda")
    assert r.returncode == 2 and our_error_lines(r.stderr) == [
        "hvd-stgnn train: error: --device cuda: no CUDA device is available"], r.stderr


def test_results_record_the_gpu_stack(tiny_h5, tmp_path):
    out = tmp_path / "r.json"
    r = run_cli("train", "--data", str(tiny_h5), "--backend", "single", "--epochs", "1", "--batch-size", "32",
                "--hidden", "8", "--threads", "1", "--max-steps-per-epoch", "2", "--results", str(out))
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    assert doc["launch"]["rank_devices"] == ["cpu"]
    versions = doc["launch"]["versions"]
    assert {"cuda", "cudnn", "nccl"} <= set(versions) and versions["cuda"] == torch.version.cuda
    assert set(doc["memory"]["per_rank"][0]) >= {"cuda_peak_bytes", "cuda_peak_reserved_bytes"}


# --- on a GPU only (tools/gpu_check.sh runs `pytest -m gpu`) ------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _model_and_batch(name: str, graph_mode: str):
    from hvd_stgnn.data import generate
    from hvd_stgnn.models import ModelInputs, build_model

    torch.manual_seed(0)
    data = generate(30, 10, seed=2)
    model = build_model(name, ModelInputs(torch.from_numpy(data.edge_index), torch.from_numpy(data.edge_weight), 30,
                                          in_features=2, input_steps=6, horizon=4, hidden=8, graph_mode=graph_mode))
    x, y = torch.randn(3, 6, 30, 2), torch.randn(3, 4, 30)
    return model, x, y


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("graph_mode", ["dense", "sparse"])
@pytest.mark.parametrize("name", ["tgcn", "a3tgcn", "dcrnn", "gwnet"])
def test_model_forward_backward_on_cuda_equals_cpu(name, graph_mode):
    """TF32 off (conftest): CUDA and CPU kernels differ only by summation order."""
    model, x, y = _model_and_batch(name, graph_mode)
    grads = {}
    for device in ("cpu", "cuda"):
        m = model.to(device)
        m.zero_grad()
        out = m(x.to(device), y.to(device) if getattr(m, "uses_teacher", False) else None)
        (out - y.to(device)).abs().mean().backward()
        grads[device] = (out.detach().cpu(), [p.grad.detach().cpu() for p in m.parameters() if p.grad is not None])
    torch.testing.assert_close(grads["cuda"][0], grads["cpu"][0], rtol=1e-4, atol=1e-5)
    for g_cuda, g_cpu in zip(grads["cuda"][1], grads["cpu"][1]):
        torch.testing.assert_close(g_cuda, g_cpu, rtol=1e-3, atol=1e-5)


@pytest.mark.gpu
@needs_cuda
def test_metric_sums_on_cuda_equal_cpu():
    from hvd_stgnn.metrics import HorizonErrorSums

    g = torch.Generator().manual_seed(0)
    pred, target = torch.rand(8, 12, 50, generator=g) * 70, torch.rand(8, 12, 50, generator=g) * 70
    mask = torch.rand(8, 12, 50, generator=g) > 0.1
    sums = {}
    for device in ("cpu", "cuda"):
        s = HorizonErrorSums(12)
        s.update(pred.to(device), target.to(device), mask.to(device))
        sums[device] = s.sums.cpu()
    torch.testing.assert_close(sums["cuda"], sums["cpu"], rtol=1e-12, atol=1e-9)


@pytest.mark.gpu
@needs_cuda
def test_single_process_training_on_cuda(tiny_h5, tmp_path):
    out = tmp_path / "r.json"
    r = run_cli("train", "--data", str(tiny_h5), "--backend", "single", "--device", "cuda", "--epochs", "2",
                "--batch-size", "16", "--hidden", "8", "--results", str(out), gpu=True)
    assert r.returncode == 0, r.stderr
    res = Results.read(out)
    assert res.batching.device.startswith("cuda") and res.launch["rank_devices"][0].startswith("cuda:0")
    assert res.memory.per_rank[0].cuda_peak_bytes > 0 and res.launch["versions"]["cuda"]
    assert np.isfinite(res.test["mae"]["avg"])
