"""tools/gpu_check.sh (the one-GPU check), tools/horovod_check.py and tools/setup.sh's Horovod
decision, on a machine without a GPU: the dry run, the CLI accepting every command the check
would run, the summary writer on made-up step records, and whole runs of the check in a copy of
the tools against stand-ins for python, hvd-stgnn, mpirun, torchrun and nvidia-smi (so the
recording, the expectations and the skipping are exercised without CUDA)."""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from helpers import REPO

GPU_CHECK = REPO / "tools" / "gpu_check.sh"
HOROVOD_CHECK = REPO / "tools" / "horovod_check.py"
SETUP = REPO / "tools" / "setup.sh"

STEPS = [
    "setup", "env-nvidia-smi-L", "env-nvidia-smi", "env-torch", "env-horovodrun", "env-horovod", "env-horovod-nccl",
    "data-tiny", "data-metr-la", "pytest-gpu", "sync-debug", "train-tgcn", "train-a3tgcn", "train-dcrnn", "train-gwnet",
    "train-materialized", "train-global-sync-timings", "train-bf16", "train-fp16", "resume-stop", "resume-continue",
    "refuse-2-ranks-1-gpu", "refuse-no-visible-gpu", "ddp-cpu-1-rank", "ddp-cpu-2-ranks", "hvd-np1", "hvd-np1-timeline",
    "ddp-mpirun", "ddp-mpirun-timeline", "ddp-torchrun", "ddp-torchrun-timeline", "bench-batching", "bench-models",
    "bench-models-bf16", "bench-models-sparse", "train-compile", "bench-models-compile",
]


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GPU_CHECK_", "DRY_RUN", "OUT", "HOROVOD_", "FAKE_", "CUDA_VISIBLE_DEVICES"))}
    env.update(extra)
    return env


def _dry_run(*args, **env) -> dict[str, list[str]]:
    """`tools/gpu_check.sh --dry-run`: step name -> its command's words (comments dropped)."""
    r = subprocess.run(["bash", str(GPU_CHECK), "--dry-run", *args], capture_output=True, text=True,
                       env=_env(**env), timeout=60, cwd=REPO)
    assert r.returncode == 0, r.stderr
    steps = {}
    for line in r.stdout.splitlines():
        if line.startswith("#"):
            continue
        name, _, command = line.partition(": ")
        assert name not in steps, f"step {name} listed twice"
        steps[name] = shlex.split(command, comments=True)
    return steps


def _flag(words, flag):
    return words[words.index(flag) + 1]


# ---- the scripts ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [GPU_CHECK, SETUP, HOROVOD_CHECK])
def test_tools_parse_and_say_what_they_do(path):
    if path.suffix == ".py":
        subprocess.run([sys.executable, "-m", "py_compile", str(path)], check=True)
    else:
        r = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    assert os.access(path, os.X_OK) or path == SETUP
    head = path.read_text().splitlines()[:20]
    assert any("Usage" in line for line in head)


def test_gpu_check_rejects_bad_usage(tmp_path):
    for args, env, words in [
        (["--bogus"], {}, "unknown option '--bogus'"),
        ([str(tmp_path / "a"), str(tmp_path / "b")], {}, "one OUTDIR only"),
        (["--dry-run"], {"GPU_CHECK_BUDGET_S": "soon"}, "GPU_CHECK_BUDGET_S must be a positive integer"),
        (["--summarize", str(tmp_path)], {}, "no LOGDIR/steps.tsv"),
    ]:
        r = subprocess.run(["bash", str(GPU_CHECK), *args], capture_output=True, text=True, env=_env(**env), timeout=60)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert words in r.stderr.splitlines()[0], r.stderr
    assert not (tmp_path / "a").exists()


# ---- the dry run ------------------------------------------------------------------------------


def test_dry_run_lists_every_step_and_runs_nothing(tmp_path):
    out = tmp_path / "out"
    steps = _dry_run(str(out))
    assert list(steps) == STEPS
    assert not out.exists()  # nothing written, nothing run (no CUDA here)
    assert steps == _dry_run(str(out), DRY_RUN="1")  # DRY_RUN=1 is the same (the argument still wins)
    assert steps["setup"] == ["env", "HOROVOD_GPU_OPERATIONS=NCCL", "bash", "tools/setup.sh"]
    assert steps["env-nvidia-smi-L"] == ["nvidia-smi", "-L"] and steps["env-horovodrun"] == ["horovodrun", "--check-build"]
    assert "torch.backends.cudnn.version()" in steps["env-torch"][-1] and "c.nccl.version()" in steps["env-torch"][-1]
    assert steps["env-horovod-nccl"] == ["python", "tools/horovod_check.py", "--need-nccl"]
    assert steps["pytest-gpu"][:6] == ["python", "-m", "pytest", "-m", "gpu", "-rs"]
    tiny, metr = _flag(steps["data-tiny"], "--out"), _flag(steps["data-metr-la"], "--out")
    assert _flag(steps["data-tiny"], "--preset") == "tiny" and _flag(steps["data-metr-la"], "--preset") == "metr-la"

    def train(name):
        words = steps[name]
        i = words.index("hvd-stgnn") if "hvd-stgnn" in words else words.index("hvd_stgnn")
        assert words[i + 1] == "train", name
        return words

    assert "--sync-debug" in train("sync-debug") and _flag(train("sync-debug"), "--device") == "cuda"
    for model in ("tgcn", "a3tgcn", "dcrnn", "gwnet"):
        words = train(f"train-{model}")
        assert _flag(words, "--model") == model and _flag(words, "--device") == "cuda"
        assert _flag(words, "--data") == metr and int(_flag(words, "--max-steps-per-epoch")) <= 50
    assert _flag(train("train-materialized"), "--data-mode") == "materialized"
    assert _flag(train("train-global-sync-timings"), "--shuffle") == "global"
    assert "--sync-timings" in train("train-global-sync-timings")
    assert _flag(train("train-bf16"), "--precision") == "bf16" and _flag(train("train-fp16"), "--precision") == "fp16"
    assert "--compile" in train("train-compile")
    stop, cont = train("resume-stop"), train("resume-continue")
    assert _flag(stop, "--stop-after-epochs") == "1" and _flag(cont, "--resume") == "auto"
    assert _flag(stop, "--run-dir") == _flag(cont, "--run-dir")
    # The launchers, each with a timeline of steps 2:5 and the report on that file with its results.
    assert steps["hvd-np1"][:3] == ["jobs/local.sh", "-np", "1"] and _flag(steps["hvd-np1"], "--backend") == "horovod"
    assert steps["ddp-mpirun"][:3] == ["jobs/local.sh", "-np", "1"] and _flag(steps["ddp-mpirun"], "--backend") == "ddp"
    assert steps["ddp-torchrun"][:7] == ["torchrun", "--standalone", "--nproc_per_node", "1", "-m", "hvd_stgnn", "train"]
    for run in ("hvd-np1", "ddp-mpirun", "ddp-torchrun"):
        words = train(run)
        assert _flag(words, "--timeline-steps") == "2:5" and _flag(words, "--device") == "cuda"
        report = steps[f"{run}-timeline"]
        assert report[:2] == ["hvd-stgnn", "timeline"]
        assert report[2] == _flag(words, "--timeline") and _flag(report, "--results") == _flag(words, "--results")
    # What must refuse with one line, and what must work on a GPU node.
    two = steps["refuse-2-ranks-1-gpu"]
    assert two[:5] == ["env", "CUDA_VISIBLE_DEVICES=0", "jobs/local.sh", "-np", "2"] and _flag(two, "--device") == "cuda"
    none = steps["refuse-no-visible-gpu"]
    assert none[:2] == ["env", "CUDA_VISIBLE_DEVICES="] and _flag(none, "--device") == "cuda"
    for name in ("ddp-cpu-1-rank", "ddp-cpu-2-ranks"):
        assert _flag(train(name), "--backend") == "ddp" and _flag(train(name), "--device") == "cpu"
    assert steps["ddp-cpu-2-ranks"][:3] == ["jobs/local.sh", "-np", "2"]
    for name in ("train-tgcn", "sync-debug", "train-materialized", "refuse-no-visible-gpu"):
        assert _flag(steps[name], "--data") in (tiny, metr)
    # Benchmarks on CUDA, as JSON: batching, models, and models with bf16 and with --compile.
    assert steps["bench-batching"] == ["hvd-stgnn", "bench", "batching", "--device", "cuda", "--json"]
    for name, extra in (("bench-models", None), ("bench-models-bf16", "--precision"), ("bench-models-compile", "--compile")):
        words = steps[name]
        assert words[:3] == ["hvd-stgnn", "bench", "models"] and _flag(words, "--device") == "cuda" and "--json" in words
        assert extra is None or extra in words


def test_every_command_the_check_runs_parses_with_the_cli():
    """A renamed or mistyped flag would fail on the GPU node only: parse each hvd-stgnn command here."""
    from hvd_stgnn.cli import build_parser

    def subparser(parser, *names):
        for name in names:
            action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
            parser = action.choices[name]
        return parser

    parser = build_parser()
    bench_models = {opt for a in subparser(parser, "bench", "models")._actions for opt in a.option_strings}
    checked, pending = 0, []
    for name, words in _dry_run().items():
        if "hvd-stgnn" in words:
            argv = words[words.index("hvd-stgnn") + 1:]
        elif "hvd_stgnn" in words:
            argv = words[words.index("hvd_stgnn") + 1:]
        else:
            continue
        if argv[:2] == ["bench", "models"] and not {"--device", "--precision", "--compile"} <= bench_models:
            pending.append(name)  # those flags are being added to `bench models`
            continue
        try:
            build_parser().parse_args(argv)
        except SystemExit as exc:
            pytest.fail(f"step {name}: `hvd-stgnn {shlex.join(argv)}` does not parse (exit {exc.code})")
        checked += 1
    assert checked >= 25
    if pending:
        pytest.skip(f"bench models has no --device/--precision/--compile yet: {', '.join(pending)} not checked")


# ---- the summary writer -----------------------------------------------------------------------


def _record(logdir: Path, rows: list[dict]) -> None:
    fields = ["step", "expect", "state", "rc", "seconds", "log", "out", "key", "limit", "reason", "command"]
    with open(logdir / "steps.tsv", "w") as f:
        for row in rows:
            f.write("\t".join(str(row.get(k, "")) for k in fields) + "\n")


def _log(logdir: Path, name: str, *lines: str, rc: int = 0) -> str:
    (logdir / name).write_text("\n".join(["$ some command", *lines, f"# exit status {rc} after 1.0 s"]) + "\n")
    return name


def _summarize(logdir: Path, outdir: Path) -> tuple[int, dict, str]:
    r = subprocess.run(["bash", str(GPU_CHECK), "--summarize", str(logdir), str(outdir)], capture_output=True,
                       text=True, env=_env(), timeout=60)
    summary = json.loads((outdir / "summary.json").read_text())
    return r.returncode, summary, (outdir / "summary.md").read_text()


def test_summary_judges_each_step_and_finds_its_key_figure(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"test": {"mae": {"avg": 3.14159}}, "timing": {"samples_per_second": 2048.4},
                                   "memory": {"per_rank": [{"cuda_peak_bytes": 300 * 2**20}]},
                                   "batching": {"device": "cuda:0"}}))
    (logs / "09-bench.json").write_text(json.dumps([{"model": "tgcn", "nodes": 207, "step_ms": 2.5},
                                                    {"model": "gwnet", "nodes": 207, "step_ms": 7.25}]))
    (logs / "10-batching.json").write_text(json.dumps([{"nodes": 207, "batch_ms": 0.0412, "batch_over_memcpy": 1.5}]))
    trace = 'Traceback (most recent call last):\n  File "x.py", line 1\nRuntimeError: CUDA error: an illegal memory access'
    rows = [
        {"step": "gpus", "expect": "warn", "state": "run", "rc": 0, "seconds": 0.1, "key": "gpus",
         "log": _log(logs, "01-gpus.log", "GPU 0: NVIDIA H200 (UUID: GPU-1234)")},
        {"step": "train", "expect": "ok", "state": "run", "rc": 0, "seconds": 12.5, "key": f"results:{results}",
         "log": _log(logs, "02-train.log", "epoch 1/1 ...")},
        {"step": "sync", "expect": "ok", "state": "run", "rc": 0, "seconds": 3, "key": "line:sync debug:",
         "log": _log(logs, "03-sync.log", "sync debug: 2 host-device synchronization(s) in 7 step(s): 2x a.py:1", "done")},
        {"step": "crash", "expect": "ok", "state": "run", "rc": 1, "seconds": 4, "key": "line:x",
         "log": _log(logs, "04-crash.log", *trace.splitlines(), rc=1)},
        {"step": "refused", "expect": "refuse", "state": "run", "rc": 2, "seconds": 2, "key": "line:(?i)rank.*GPU",
         "log": _log(logs, "05-refused.log", "hvd-stgnn train: error: 2 ranks per node but only 1 GPU", rc=2)},
        {"step": "refused-elsewise", "expect": "refuse", "state": "run", "rc": 2, "seconds": 2, "key": "line:(?i)rank.*GPU",
         "log": _log(logs, "05-refused-elsewise.log", "hvd-stgnn train: error: --data x.h5: no such file", rc=2)},
        {"step": "refused-badly", "expect": "refuse", "state": "run", "rc": 1, "seconds": 2, "key": "",
         "log": _log(logs, "06-refused-badly.log", *trace.splitlines(), rc=1)},
        {"step": "not-refused", "expect": "refuse", "state": "run", "rc": 0, "seconds": 2, "key": "",
         "log": _log(logs, "07-not-refused.log", "trained fine")},
        {"step": "slow", "expect": "ok", "state": "run", "rc": 124, "seconds": 40, "key": "", "limit": 40,
         "reason": "budget", "log": _log(logs, "08-slow.log", "compiling...", rc=124)},
        {"step": "bench", "expect": "ok", "state": "run", "rc": 0, "seconds": 9, "key": "bench-models",
         "out": "09-bench.json", "log": _log(logs, "09-bench.log")},
        {"step": "batching", "expect": "ok", "state": "run", "rc": 0, "seconds": 1, "key": "bench-batching",
         "out": "10-batching.json", "log": _log(logs, "10-batching.log")},
        {"step": "nccl", "expect": "warn", "state": "run", "rc": 1, "seconds": 1, "key": "line:^horovod",
         "log": _log(logs, "11-nccl.log", "horovod_check: error: horovod 0.28.1: ... lacks NCCL", rc=1)},
        {"step": "hvd", "expect": "ok", "state": "skip", "rc": "-", "seconds": 0, "key": "",
         "reason": "needs a Horovod built with NCCL"},
    ]
    _record(logs, rows)
    (logs / "meta.tsv").write_text("host\tgpu-node-1\nstarted\t2026-01-01T00:00:00Z\nbudget_s\t450\n")
    rc, summary, md = _summarize(logs, tmp_path / "out")
    assert rc == 1  # a step failed
    got = {s["step"]: (s["status"], s["key"]) for s in summary["steps"]}
    assert got["gpus"] == ("pass", "1 GPU(s): NVIDIA H200")
    assert got["train"] == ("pass", "test MAE 3.142, 2048 samples/s, GPU peak 300 MiB, batches on cuda:0")
    assert got["sync"] == ("pass", "sync debug: 2 host-device synchronization(s) in 7 step(s): 2x a.py:1")
    assert got["crash"][0] == "fail" and "illegal memory access" in got["crash"][1]
    assert got["refused"] == ("pass", "hvd-stgnn train: error: 2 ranks per node but only 1 GPU")
    assert got["refused-elsewise"] == ("fail", "exit status 2 without an error line that matches '(?i)rank.*GPU': "
                                                "hvd-stgnn train: error: --data x.h5: no such file")
    assert got["refused-badly"][0] == "fail" and "traceback" in got["refused-badly"][1]
    assert got["not-refused"] == ("fail", "exit status 0: expected a refusal with one line")
    assert got["slow"][0] == "fail" and got["slow"][1].startswith("timed out after 40 s (cut at the time budget)")
    assert got["bench"] == ("pass", "tgcn@207 2.50 ms; gwnet@207 7.25 ms")
    assert got["batching"] == ("pass", "N=207: batch 0.041 ms (1.5x memcpy)")
    assert got["nccl"][0] == "warn" and "lacks NCCL" in got["nccl"][1]
    assert got["hvd"] == ("skip", "needs a Horovod built with NCCL")
    assert summary["counts"] == {"pass": 6, "fail": 5, "warn": 1, "skip": 1} and summary["ok"] is False
    assert summary["host"] == "gpu-node-1" and summary["budget_s"] == "450"
    # The table: one row per step, in order, with its status, seconds, key figure and log.
    table = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith(("| #", "| ---"))]
    assert len(table) == len(rows)
    assert table[1] == ("| 2 | train | pass | 12.5 | test MAE 3.142, 2048 samples/s, GPU peak 300 MiB, "
                        "batches on cuda:0 | 02-train.log |")
    assert "| crash | FAIL |" in table[3]
    assert "- steps: 6 pass, 5 fail, 1 warn, 1 skip" in md
    # Only passes, warnings and skips: exit status 0.
    _record(logs, [rows[0], rows[1], rows[4], rows[11], rows[12]])
    rc, summary, _ = _summarize(logs, tmp_path / "out")
    assert rc == 0 and summary["ok"] is True


# ---- whole runs against stand-ins ------------------------------------------------------------

# What the stand-ins do: python answers the probes; hvd-stgnn refuses --device cuda with an
# empty CUDA_VISIBLE_DEVICES or 2 ranks (FAKE_NP, set by the fake mpirun), crashes training
# Graph WaveNet unless FAKE_OK=1, writes --results; horovod_check --need-nccl passes only with
# FAKE_NCCL=1.
FAKE_PYTHON = r"""#!/usr/bin/env bash
case "$1" in
    -c) echo "versions: python 3.11 torch 2.5.1+cu124 CUDA 12.4 cuDNN 90100 NCCL 2.21.5 | 1 GPU(s): NVIDIA H200 sm_90 140 GiB, bf16 True"; exit 0 ;;
    -m) case "$2" in pytest) echo "4 passed, 1 skipped in 3.21s"; exit 0 ;; pip) exit 0 ;; esac ;;
    tools/horovod_check.py)
        if [ "${2:-}" = --need-nccl ] && [ "${FAKE_NCCL:-0}" != 1 ]; then
            echo "horovod_check: error: horovod 0.28.1: MPI yes, Gloo yes, CUDA no, NCCL no, ROCm no: lacks NCCL" >&2; exit 1
        fi
        echo "horovod 0.28.1: MPI yes, Gloo yes, CUDA ${FAKE_NCCL:-0}, NCCL ${FAKE_NCCL:-0}, ROCm no"; exit 0 ;;
esac
echo "fake python: unexpected $*" >&2; exit 3
"""
FAKE_HVD_STGNN = r"""#!/usr/bin/env bash
echo "$*" >> "$FAKE_CALLS"
case "$1" in
    data) echo "wrote fake data"; exit 0 ;;
    timeline) echo "timeline: $2"; echo "  allreduce wall 1.500 ms = 12.0% of the window"; exit 0 ;;
    bench)
        if [ "$2" = batching ]; then echo '[{"nodes": 207, "batch_ms": 0.05, "batch_over_memcpy": 1.2}]'
        else echo '[{"model": "tgcn", "nodes": 207, "step_ms": 3.0}]'; fi
        exit 0 ;;
esac
results="" device="" model="" rundir=""
prev=""
for w in "$@"; do
    case "$prev" in --results) results=$w ;; --device) device=$w ;; --model) model=$w ;; --run-dir) rundir=$w ;; esac
    prev=$w
done
if [ "$device" = cuda ] && [ "${CUDA_VISIBLE_DEVICES-unset}" = "" ]; then
    echo "hvd-stgnn train: error: --device cuda: CUDA_VISIBLE_DEVICES is empty, no GPU is visible" >&2; exit 2
fi
if [ "$device" = cuda ] && [ "${FAKE_NP:-1}" -gt 1 ]; then
    echo "hvd-stgnn train: error: 2 ranks on this node but only 1 GPU visible" >&2; exit 2
fi
if [ "$model" = gwnet ] && [ "${FAKE_OK:-0}" != 1 ]; then
    echo "Traceback (most recent call last):"; echo "RuntimeError: CUDA error: device-side assert triggered"; exit 1
fi
case " $* " in *" --sync-debug "*) echo "sync debug: 0 host-device synchronization(s) in 10 step(s)" ;; esac
case " $* " in *" --stop-after-epochs "*) echo "stopping after 1 epoch(s) (--stop-after-epochs)" ;; esac
case " $* " in *" --resume auto "*) echo "resumed from $rundir/checkpoints/last.pt: epoch 1" ;; esac
[ -n "$results" ] || results="$rundir/results.json"
mkdir -p "$(dirname "$results")"
echo '{"test": {"mae": {"avg": 2.5}}, "timing": {"samples_per_second": 1000}, "batching": {"device": "'"$device"'"}}' > "$results"
"""
FAKE_SETUP = r"""#!/usr/bin/env bash
# stand-in tools/setup.sh: makes .venv from the fakes, notes the GPU setting it was given
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
echo "HOROVOD_GPU_OPERATIONS=${HOROVOD_GPU_OPERATIONS:-}" > "$ROOT/setup-env.txt"
mkdir -p "$ROOT/.venv/bin"
cp "$FAKE_VENV"/* "$ROOT/.venv/bin/"
echo "[setup] Horovod: horovod 0.28.1: ...: rebuilding"
echo "[setup] ready: $ROOT/.venv"
"""
FAKE_TOOLS = {
    "mpirun": 'np=1\nwhile [[ "$1" == -* ]]; do case "$1" in -np) np=$2; shift 2 ;; --bind-to|-x) shift 2 ;; *) shift ;; esac; done\n'
              'FAKE_NP=$np exec "$@"\n',
    "torchrun": 'while [ "$1" != -m ]; do shift; done\nshift 2\nexec hvd-stgnn "$@"\n',
    "nvidia-smi": 'if [ "${1:-}" = -L ]; then echo "GPU 0: NVIDIA H200 (UUID: GPU-fake)"; exit 0; fi\n'
                  'echo "| NVIDIA-SMI 550.54.15    Driver Version: 550.54.15    CUDA Version: 12.4 |"\n',
    "horovodrun": 'echo "Available Tensor Operations:"; echo "    [ ] NCCL"; echo "    [X] MPI"\n',
}


def _executable(path: Path, text: str) -> None:
    path.write_text(text if text.startswith("#!") else "#!/usr/bin/env bash\n" + text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


@pytest.fixture
def fake_repo(tmp_path):
    """A copy of the check (and the launcher it uses) in a repository without .venv, whose
    tools/setup.sh makes one from stand-ins; stand-in launchers and nvidia-smi on PATH."""
    repo = tmp_path / "repo"
    (repo / "tools").mkdir(parents=True)
    (repo / "jobs").mkdir()
    for rel in ("tools/gpu_check.sh", "jobs/common.sh", "jobs/local.sh"):
        _executable(repo / rel, (REPO / rel).read_text())
    _executable(repo / "tools" / "setup.sh", FAKE_SETUP)
    venv = tmp_path / "fake-venv"
    venv.mkdir()
    _executable(venv / "python", FAKE_PYTHON)
    _executable(venv / "hvd-stgnn", FAKE_HVD_STGNN)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in FAKE_TOOLS.items():
        _executable(bin_dir / name, body)
    env = _env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", FAKE_VENV=str(venv),
               FAKE_CALLS=str(tmp_path / "calls.txt"), GPU_CHECK_WORK=str(tmp_path / "work"))
    return repo, env


def _check(repo, env, *args, **extra):
    return subprocess.run(["bash", str(repo / "tools" / "gpu_check.sh"), *args], capture_output=True, text=True,
                          env={**env, **extra}, timeout=300, cwd=repo)


def test_a_run_records_every_step_and_goes_on_after_a_failure(fake_repo, tmp_path):
    repo, env = fake_repo
    out = tmp_path / "out"
    r = _check(repo, env, "--pack", str(out))
    assert r.returncode == 1, r.stdout + r.stderr  # Graph WaveNet crashed, and the NCCL check failed
    assert "fail" in r.stdout and "summary.md" in r.stdout
    # No .venv: setup ran, asked for an NCCL Horovod; the package was not reinstalled (setup passed).
    assert (repo / "setup-env.txt").read_text().strip() == "HOROVOD_GPU_OPERATIONS=NCCL"
    summary = json.loads((out / "summary.json").read_text())
    status = {s["step"]: s["status"] for s in summary["steps"]}
    assert list(status) == STEPS
    # The check made .venv with HOROVOD_GPU_OPERATIONS=NCCL, so a CPU-only result is a failure.
    assert status["env-horovod-nccl"] == "fail" and status["env-horovod"] == "pass"
    assert status["train-gwnet"] == "fail" and status["train-bf16"] == "fail"  # both Graph WaveNet
    # ... and every step after them still ran; without an NCCL Horovod the Horovod ones are skipped.
    assert status["hvd-np1"] == status["hvd-np1-timeline"] == "skip"
    failed = {"env-horovod-nccl", "train-gwnet", "train-bf16"}
    assert {s for s, v in status.items() if v == "pass"} == set(STEPS) - failed - {"hvd-np1", "hvd-np1-timeline"}
    keys = {s["step"]: s["key"] for s in summary["steps"]}
    assert keys["refuse-2-ranks-1-gpu"] == "hvd-stgnn train: error: 2 ranks on this node but only 1 GPU visible"
    assert keys["refuse-no-visible-gpu"].startswith("hvd-stgnn train: error: --device cuda: CUDA_VISIBLE_DEVICES")
    assert keys["train-tgcn"] == "test MAE 2.500, 1000 samples/s, batches on cuda"
    assert keys["sync-debug"].startswith("sync debug: 0 host-device")
    assert keys["resume-continue"].startswith("resumed from ") and keys["ddp-torchrun-timeline"].startswith("allreduce")
    assert keys["env-nvidia-smi-L"] == "1 GPU(s): NVIDIA H200" and keys["bench-models"] == "tgcn@207 3.00 ms"
    assert "driver 550.54.15" in keys["env-nvidia-smi"] and keys["pytest-gpu"] == "4 passed, 1 skipped in 3.21s"
    # Without an NCCL Horovod the 2-ranks check runs under DDP.
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    assert any("--device cuda --backend ddp" in c for c in calls)
    # --pack: three files to take back, every step's log in the archive.
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check_logs.tar.gz", "summary.json", "summary.md"]
    with tarfile.open(out / "gpu_check_logs.tar.gz") as tar:
        names = tar.getnames()
    assert "logs/01-setup.log" in names and "logs/steps.tsv" in names
    assert sum(n.endswith(".log") for n in names) == len(STEPS) - 2  # the two skipped steps have none
    md = (out / "summary.md").read_text()
    assert "| train-gwnet | FAIL |" in md and "- Horovod: cpu: the Horovod steps are skipped" in md


def test_a_run_on_a_ready_node_passes_and_uses_horovod(fake_repo, tmp_path):
    repo, env = fake_repo
    subprocess.run(["bash", str(repo / "tools" / "setup.sh")], env=env, check=True, capture_output=True)
    (repo / "setup-env.txt").unlink()
    out = tmp_path / "out"
    r = _check(repo, env, str(out), FAKE_NCCL="1", FAKE_OK="1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert not (repo / "setup-env.txt").exists()  # .venv was there: no setup
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] and summary["counts"]["fail"] == 0 and summary["counts"]["skip"] == 0
    assert [s["step"] for s in summary["steps"]] == STEPS[1:]
    assert (out / "summary.md").exists() and (out / "02-env-nvidia-smi.log").read_text().startswith("$ nvidia-smi\n")
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    assert any("--device cuda --backend horovod" in c for c in calls)  # the 2-ranks check under Horovod
    assert sum("--timeline " in c for c in calls) == 3


def test_a_run_out_of_time_skips_what_is_left(fake_repo, tmp_path):
    repo, env = fake_repo
    subprocess.run(["bash", str(repo / "tools" / "setup.sh")], env=env, check=True, capture_output=True)
    r = _check(repo, env, str(tmp_path / "out"), GPU_CHECK_BUDGET_S="1")
    assert r.returncode == 0, r.stdout + r.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert {s["status"] for s in summary["steps"]} == {"skip"}
    assert summary["steps"][0]["key"] == "over the time budget (GPU_CHECK_BUDGET_S=1)"


# ---- tools/horovod_check.py and tools/setup.sh ----------------------------------------------


@pytest.mark.mpi
def test_horovod_check_on_this_cpu_build():
    r = subprocess.run([sys.executable, str(HOROVOD_CHECK)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("horovod 0.28.1: MPI yes") and len(r.stdout.splitlines()) == 1
    for flag, lacks in (("--need-nccl", "NCCL (hvd.nccl_built() is 0)"), ("--need-cuda", "CUDA (hvd.cuda_built() is False)")):
        r = subprocess.run([sys.executable, str(HOROVOD_CHECK), flag], capture_output=True, text=True, timeout=120)
        assert r.returncode == 1 and r.stdout == ""
        assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith("horovod_check: error: horovod 0.28.1")
        assert lacks in r.stderr and "HOROVOD_GPU_OPERATIONS=NCCL" in r.stderr


def test_horovod_check_without_horovod(tmp_path):
    r = subprocess.run([sys.executable, "-S", str(HOROVOD_CHECK), "--need-nccl"], capture_output=True, text=True,
                       timeout=60, env={"PATH": os.environ["PATH"], "PYTHONPATH": ""})
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1
    assert r.stderr.startswith("horovod_check: error: Horovod for PyTorch does not import")


@pytest.mark.mpi
def test_setup_keeps_a_cpu_horovod_only_for_cpu_training():
    """setup --check changes nothing and says what setup would do: keep this CPU-only Horovod,
    or, with HOROVOD_GPU_OPERATIONS=NCCL, rebuild it (a GPU cache key)."""
    env = _env(VENV=sys.prefix)
    r = subprocess.run(["bash", str(SETUP), "--check"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "[setup] Horovod: horovod 0.28.1: MPI yes, Gloo yes, CUDA no, NCCL no, ROCm no: keeping it" in r.stdout
    assert "[setup] check: ready, nothing to do" in r.stdout
    r = subprocess.run(["bash", str(SETUP), "--check"], capture_output=True, text=True, timeout=300,
                       env={**env, "HOROVOD_GPU_OPERATIONS": "NCCL"})
    assert r.returncode == 1, r.stdout + r.stderr
    line = [l for l in r.stdout.splitlines() if "Horovod" in l]
    assert len(line) == 1 and line[0].startswith("[setup] check: would replace this Horovod (horovod 0.28.1")
    assert "lacks CUDA (hvd.cuda_built() is False) and NCCL (hvd.nccl_built() is 0)" in line[0]
    assert "for HOROVOD_GPU_OPERATIONS=NCCL" in line[0] and "_gpu-NCCL-default)" in line[0]
    r = subprocess.run(["bash", str(SETUP), "--bogus"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2 and r.stderr.startswith("usage: bash tools/setup.sh [--check]")
