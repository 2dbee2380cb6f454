"""The DDP baseline: same math as Horovod, launched by mpirun or torchrun."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO, our_error_lines, run_cli, run_mpi, subprocess_env

TINY = ["--model", "tgcn", "--hidden", "8", "--batch-size", "16", "--threads", "1", "--no-baselines", "--epochs", "3",
        "--lr", "0.01"]


def _curve(path: Path) -> list[float]:
    res = json.loads(path.read_text())
    return [e["train_mae"] for e in res["epochs"]] + [e["val_mae"] for e in res["epochs"]]


@pytest.mark.mpi
@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["--backward-passes-per-step", "2"], ["--data-mode", "materialized"],
                                   ["--graph-mode", "sparse"]])
def test_ddp_and_horovod_give_the_same_loss_curve(tiny_h5, tmp_path, extra):
    """Same seed, data, global batch and LR: the two backends differ only in how the
    gradient mean is computed (Horovod: sum then scale; DDP: scale then sum). On 2 ranks
    both are one float add and one multiply by 0.5 of the same two numbers, so the curves
    agree to rounding; seen: bit-identical. Tolerance 1e-6 relative leaves room for a
    different summation order in future versions, and is far below any real divergence
    (a missing or double gradient average moves the first epoch's MAE by > 1%)."""
    curves = {}
    for backend in ("horovod", "ddp"):
        out = tmp_path / f"{backend}.json"
        r = run_mpi(2, "train", "--data", str(tiny_h5), *TINY, *extra, "--backend", backend, "--results", str(out))
        assert r.returncode == 0, r.stdout + r.stderr
        res = json.loads(out.read_text())
        assert res["backend"] == backend and res["world_size"] == 2 and len(set(res["param_digests"])) == 1
        curves[backend] = _curve(out)
    assert curves["ddp"] == pytest.approx(curves["horovod"], rel=1e-6)


@pytest.mark.mpi
@pytest.mark.slow
def test_ddp_under_torchrun(tiny_h5, tmp_path):
    """torchrun: env:// rendezvous, no MPI; every rank reads the file itself."""
    out = tmp_path / "r.json"
    r = subprocess.run(
        [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "hvd_stgnn",
         "train", "--data", str(tiny_h5), *TINY, "--backend", "ddp", "--results", str(out)],
        capture_output=True, text=True, timeout=300, env=subprocess_env(), cwd=REPO,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(out.read_text())
    assert res["world_size"] == 2 and len(set(res["param_digests"])) == 1
    assert res["load"]["ranks_on_node"] == 1  # no MPI shared window under torchrun
    assert r.stdout.count("config: ") == 1  # rank 0 alone prints


@pytest.mark.mpi
def test_ddp_refuses_adasum(tiny_h5):
    r = run_mpi(2, "train", "--data", str(tiny_h5), *TINY, "--backend", "ddp", "--reduce-op", "adasum", timeout=120)
    assert r.returncode == 2
    assert our_error_lines(r.stderr) == ["hvd-stgnn train: error: --reduce-op adasum: Horovod only (--backend horovod)"]


@pytest.mark.slow
def test_single_process_ddp(tiny_h5, tmp_path):
    """One process without a launcher: a world of one (gloo over a local TCP port)."""
    out = tmp_path / "r.json"
    r = run_cli("train", "--data", str(tiny_h5), *TINY, "--backend", "ddp", "--results", str(out))
    assert r.returncode == 0, r.stderr
    assert json.loads(out.read_text())["world_size"] == 1


_COLLECTIVES_WORKER = """
import torch
from hvd_stgnn.parallel.ddp_backend import DDPBackend

b = DDPBackend(device="cpu")
r = b.rank
for dtype in (torch.float32, torch.float64, torch.int64, torch.bfloat16):
    t = torch.arange(6, dtype=dtype).reshape(2, 3).t() + r  # non-contiguous, rank-dependent
    before = t.clone()
    s = b.allreduce_sum(t)
    assert torch.equal(t, before), "input changed"
    assert s.dtype == dtype and s.shape == (3, 2), (s.dtype, s.shape)
    assert torch.equal(s, 2 * torch.arange(6, dtype=dtype).reshape(2, 3).t() + 1), s
obj = b.broadcast_object({"from": r, "t": torch.ones(2) * r})
assert obj["from"] == 0 and torch.equal(obj["t"], torch.zeros(2)), obj
got = b.allgather_object(("rank", r))
assert got == [("rank", 0), ("rank", 1)], got
assert b.any_rank(r == 1) and not b.any_rank(False)
b.shutdown()
print("collectives ok", r)
"""


@pytest.mark.mpi
def test_ddp_small_collectives_under_mpirun():
    """The DDP backend's metric sums and object collectives on 2 mpirun ranks: sums exact in
    every dtype (bf16 goes over gloo, the rest over MPI), inputs untouched, rank 0's object
    broadcast, every rank's object gathered in rank order."""
    r = subprocess.run(["bash", str(REPO / "jobs" / "local.sh"), "-np", "2", sys.executable, "-c", _COLLECTIVES_WORKER],
                       capture_output=True, text=True, timeout=120, env=subprocess_env(), cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(re.findall(r"collectives ok (\d)", r.stdout)) == ["0", "1"]  # the ranks' lines may interleave
