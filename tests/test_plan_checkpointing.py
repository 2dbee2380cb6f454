"""The planner with activation checkpointing, precision and the host allocator: the
activation model per mode, `plan --max-batch`, the trainer's refusal, and the predicted step
peak against peak RSS measured in a fresh process (within 20%, each model and mode, jemalloc)."""

from __future__ import annotations

import glob
import json
import subprocess
import sys

import pytest

from helpers import REPO, run_cli, subprocess_env
from hvd_stgnn.config import Config
from hvd_stgnn.data.synthetic import PRESETS
from hvd_stgnn.errors import ConfigError
from hvd_stgnn.models.checkpointing import CHECKPOINT_UNITS
from hvd_stgnn.plan import PlanInputs, check_fits
from hvd_stgnn.plan.estimate import (
    NODE_MEMORY_ENV,
    PEAK_FACTOR,
    estimate,
    max_batch,
    peak_factor,
    preloaded_allocator,
)

METR = PRESETS["metr-la"]
MODELS = list(CHECKPOINT_UNITS)


def _plan(model: str, mode: str = "none", precision: str = "fp32", batch: int = 8, device: str = "cpu", **kw):
    inputs = PlanInputs(model=model, batch_size=batch, activation_checkpointing=mode, precision=precision,
                        device=device, **kw)
    return estimate(inputs, METR.num_steps, METR.num_nodes, 1500, 2, 2)


@pytest.mark.parametrize("model", MODELS)
def test_checkpointing_cuts_the_saved_activation_bytes(model):
    plain, ckpt = _plan(model), _plan(model, CHECKPOINT_UNITS[model])
    # saved = what the forward stores + one region's recomputation (plan/activations.py)
    assert ckpt.activation_saved_bytes < plain.activation_saved_bytes / 2
    assert ckpt.peak_factor == peak_factor(model, "step")
    bf16 = _plan(model, precision="bf16")
    assert bf16.activation_saved_bytes < plain.activation_saved_bytes


def test_device_and_allocator_choose_the_factor_table():
    assert _plan("dcrnn").peak_factor == PEAK_FACTOR["glibc"]["none"]["dcrnn"]
    assert _plan("dcrnn", allocator="jemalloc").peak_factor == PEAK_FACTOR["jemalloc"]["none"]["dcrnn"]
    assert _plan("dcrnn", "step", device="cuda").peak_factor == PEAK_FACTOR["jemalloc"]["checkpointed"]["dcrnn"]
    assert preloaded_allocator({"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"}) == "jemalloc"
    assert preloaded_allocator({}) == "glibc"


def test_max_batch_is_the_largest_batch_that_fits():
    T, N = METR.num_steps, METR.num_nodes
    inputs = PlanInputs(model="dcrnn", activation_checkpointing="none")
    limit = _plan("dcrnn", batch=40).node_bytes
    b = max_batch(inputs, T, N, 1500, 2, 2, limit)
    assert b >= 40
    fits = [estimate(PlanInputs(model="dcrnn", batch_size=x), T, N, 1500, 2, 2).fits(limit) for x in (b, b + 1)]
    assert fits == [True, False]
    assert max_batch(inputs, T, N, 1500, 2, 2, 1) == 0
    ckpt = max_batch(PlanInputs(model="dcrnn", activation_checkpointing="step"), T, N, 1500, 2, 2, limit)
    assert ckpt > b


def test_plan_cli_max_batch_text_and_json():
    argv = ["plan", "--preset", "pems", "--np", "4", "--ranks-per-node", "4", "--device", "cuda",
            "--device-memory-gb", "80", "--model", "gwnet", "--batch-size", "64", "--max-batch"]
    r = run_cli(*argv)
    assert r.returncode in (0, 1), r.stderr
    assert "largest per-rank --batch-size that fits 80.00 GiB per GPU" in r.stdout
    assert "--activation-checkpointing none" in r.stdout and "--activation-checkpointing block" in r.stdout
    r = run_cli(*argv, "--activation-checkpointing", "block", "--json")
    out = json.loads(r.stdout)
    assert set(out["max_batch"]) == {"none", "block"} and out["max_batch"]["block"] > out["max_batch"]["none"] > 0
    assert out["plans"]["index"]["inputs"]["activation_checkpointing"] == "block"


def test_plan_cli_refuses_a_mode_the_model_has_not():
    r = run_cli("plan", "--preset", "tiny", "--model", "gwnet", "--activation-checkpointing", "step")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--activation-checkpointing step" in lines[0] and "use block" in lines[0]


def test_train_refusal_names_the_largest_batch_per_mode(monkeypatch):
    cfg = Config()
    cfg.model.name, cfg.train.batch_size, cfg.data.path = "dcrnn", 512, "x.h5"
    monkeypatch.setenv(NODE_MEMORY_ENV, "3")
    with pytest.raises(ConfigError) as info:
        check_fits(cfg, METR.num_steps, METR.num_nodes, 1500, 2, 2, "cpu")
    msg = str(info.value)
    assert "--activation-checkpointing step" in msg and "largest --batch-size that fits: " in msg
    assert "(--activation-checkpointing none)" in msg and "\n" not in msg


# --- predicted vs measured step peak -------------------------------------------------------

def _jemalloc() -> str:
    found = sorted(glob.glob("/usr/lib/*-linux-gnu/libjemalloc.so.2") + glob.glob("/usr/lib64/libjemalloc.so.2"))
    assert found, "libjemalloc.so.2 not found: tools/setup.sh installs Debian's libjemalloc2"
    return found[0]


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_predicted_step_peak_within_20_percent(model):
    """plan/activations.measure_step_peak in a fresh process (N = 207, B = 16, hidden 64, one
    thread) for both modes: peak RSS growth of a training step vs saved bytes x the factor,
    with jemalloc (the allocator whose RSS follows the live tensors, and the planner's stand-in
    for a GPU's caching allocator). glibc's factors hold at N >= 1000 only (docs/PLANNER.md);
    its no-checkpointing prediction is checked on real training runs in tests/test_plan.py."""
    allocator = "jemalloc"
    env = {**subprocess_env(), "OMP_NUM_THREADS": "1", "LD_PRELOAD": _jemalloc(),
           "MALLOC_CONF": "dirty_decay_ms:-1,muzzy_decay_ms:-1"}
    for mode in ("none", CHECKPOINT_UNITS[model]):
        code = ("import json; from hvd_stgnn.plan.activations import measure_step_peak as m; "
                f"print(json.dumps(m({model!r}, 207, 16, steps=4, checkpointing={mode!r})))")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO,
                           timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        got = json.loads(r.stdout.strip().splitlines()[-1])
        measured = got["peak_growth_bytes"][-1]
        predicted = got["saved_bytes"] * peak_factor(model, mode, "cpu", allocator)
        assert abs(predicted - measured) <= 0.2 * measured, (
            f"{model} {mode} {allocator}: predicted {predicted / 2**20:.1f} MiB, measured {measured / 2**20:.1f} MiB "
            f"(factor {got['factor']})")
