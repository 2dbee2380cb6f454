"""`hvd-stgnn bench allreduce` (hvd_stgnn/bench/allreduce*.py): sizes,
the bandwidth formulas, the ring-model fit, message grouping, the report files, the launcher
choice and flags; and one real 2-rank job over a small size range."""

from __future__ import annotations

import argparse
import importlib
import json
import math
import random

import pytest

from helpers import our_error_lines, run_cli

from hvd_stgnn.bench import allreduce as ar
from hvd_stgnn.bench.allreduce import add_allreduce_parser, choose_launcher, job_command, resolve_np
from hvd_stgnn.bench.allreduce_fit import (
    algbw, busbw, ddp_buckets, fit_ring, fit_rows, format_size, horovod_fusion, iterations_for, make_row, parse_size,
    predicted_seconds, ring_time, size_sweep, warmup_for,
)
from hvd_stgnn.bench.allreduce_report import CSV_COLUMNS, markdown, median_table, write_csv_rows, write_outputs
from hvd_stgnn.bench.jobs import available_cores
from hvd_stgnn.bench.report import read_csv
from hvd_stgnn.errors import ConfigError

KB, MB = 1 << 10, 1 << 20


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="hvd-stgnn bench")
    add_allreduce_parser(parser.add_subparsers(dest="bench_command"))
    return parser.parse_args(["allreduce", *argv])


# --- sizes and iterations -------------------------------------------------------------------------


@pytest.mark.parametrize("text, size", [
    ("4KB", 4096), ("4kb", 4096), ("4 KiB", 4096), ("4K", 4096), ("256MB", 256 * MB), ("1GiB", 1 << 30),
    ("4096", 4096), ("4B", 4), ("1.5KB", 1536), ("0.5MB", 512 * KB),
])
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text, match", [
    ("", "expected a size"), ("abc", "expected a size"), ("4 XB", "expected a size"), ("-4KB", "expected a size"),
    ("0", "multiple of 4"), ("6", "multiple of 4"), ("1.3B", "whole number"), ("5GB", "over 4 GiB"),
])
def test_parse_size_refuses(text, match):
    with pytest.raises(ConfigError, match=match):
        parse_size(text, "--min-size")


def test_size_sweep_doubles_and_ends_at_the_maximum():
    assert size_sweep(4 * KB, 1 * MB) == [4 * KB << i for i in range(9)]
    assert len(size_sweep(4 * KB, 256 * MB)) == 17
    assert size_sweep(4 * KB, 12 * KB) == [4 * KB, 8 * KB, 12 * KB]  # the maximum appended
    assert size_sweep(64, 64) == [64]
    with pytest.raises(ConfigError, match="--min-size .* larger than --max-size"):
        size_sweep(1 * MB, 4 * KB)


def test_format_size_reads_back():
    for n in (4, 4 * KB, 256 * MB, 1 << 30, 12 * KB):
        assert parse_size(format_size(n).replace(" ", "")) == n
    assert format_size(4 * KB) == "4 KB" and format_size(256 * MB) == "256 MB" and format_size(6) == "6 B"
    assert format_size(1536) == "1.5 KB"


def test_iterations_scale_down_for_large_messages():
    budget = 1 << 30
    assert iterations_for(4 * KB, 100, 5, budget) == 100
    assert iterations_for(16 * MB, 100, 5, budget) == 64
    assert iterations_for(256 * MB, 100, 5, budget) == 5  # 4 by the budget, but at least min_iters
    assert warmup_for(100, 100, 5) == 5
    assert warmup_for(5, 100, 5) == 1  # at least one (the checked one)
    assert warmup_for(64, 100, 0) == 1


# --- bandwidth and the fit ---------------------------------------------------------------------------


def test_bus_bandwidth_formula():
    # nccl-tests: busbw = algbw * 2 (P - 1) / P
    assert algbw(1_000_000, 1e-3) == pytest.approx(1e9)
    assert busbw(1_000_000, 1e-3, 2) == pytest.approx(1e9)  # factor 1 at P = 2
    assert busbw(1_000_000, 1e-3, 4) == pytest.approx(1.5e9)
    assert busbw(1_000_000, 1e-3, 8) == pytest.approx(1.75e9)
    row = make_row("ddp", 4 * MB, 4, [2e-3, 1e-3, 3e-3], [2e-3, 2e-3, 4e-3], 2)
    assert row["latency_us"] == pytest.approx(2000) and row["latency_max_us"] == pytest.approx(2000)
    assert row["count"] == MB and row["iterations"] == 3
    assert row["busbw_gb_per_s"] == pytest.approx(4 * MB / 2e-3 * 1.5 / 1e9)


def test_ring_time():
    # t(n) = 2 (P-1) alpha + 2 (P-1)/P n / beta
    assert ring_time(0, 2, 10e-6, 1e9) == pytest.approx(20e-6)
    assert ring_time(1e9, 4, 0, 1e9) == pytest.approx(1.5)
    assert ring_time(1e6, 8, 5e-6, 2e9) == pytest.approx(14 * 5e-6 + 1.75 * 1e6 / 2e9)


@pytest.mark.parametrize("np_", [2, 3, 4, 64])
def test_fit_recovers_alpha_and_beta_exactly(np_):
    alpha, beta = 23e-6, 3.7e9
    sizes = size_sweep(4 * KB, 256 * MB)
    times = [ring_time(n, np_, alpha, beta) for n in sizes]
    fit = fit_ring(sizes, times, np_)
    assert fit["alpha_s"] == pytest.approx(alpha, rel=1e-9)
    assert fit["beta_bytes_per_s"] == pytest.approx(beta, rel=1e-9)
    assert fit["relative_residual_max"] < 1e-9 and fit["relative_residual_rms"] < 1e-9
    assert fit["sizes"] == sizes and "note" not in fit


def test_fit_weighs_sizes_alike_and_reports_residuals():
    sizes = size_sweep(4 * KB, 64 * MB)
    rng = random.Random(0)
    times = [ring_time(n, 2, 50e-6, 2e9) * (1 + rng.uniform(-0.1, 0.1)) for n in sizes]
    fit = fit_ring(sizes, times, 2)
    # 10 % noise on every size: both parameters within ~15 %, alpha too (plain least squares
    # of absolute times would leave it to the noise of the largest message)
    assert fit["alpha_s"] == pytest.approx(50e-6, rel=0.15)
    assert fit["beta_bytes_per_s"] == pytest.approx(2e9, rel=0.15)
    resid = [(ring_time(n, 2, fit["alpha_s"], fit["beta_bytes_per_s"]) - t) / t for n, t in zip(sizes, times)]
    assert fit["relative_residuals"] == pytest.approx(resid)
    assert fit["relative_residual_max"] == pytest.approx(max(map(abs, resid)))
    assert 0 < fit["relative_residual_rms"] <= fit["relative_residual_max"] < 0.2


def test_fit_is_symmetric_in_factors():
    # two sizes on a flat latency, one 4x too slow and one 4x too fast around a line: the log
    # fit splits the difference (a fit of (t_fit - t) / t leans towards predicting too fast)
    sizes = [4 * KB, 8 * KB, 16 * MB, 32 * MB]
    true = [ring_time(n, 2, 100e-6, 1e9) for n in sizes]
    times = [true[0], true[1], true[2] * 4, true[3] / 4]
    fit = fit_ring(sizes, times, 2)
    r2, r3 = fit["relative_residuals"][2:]
    assert (1 + r2) * (1 + r3) == pytest.approx(1, rel=0.05)  # t_fit/t: 1/4 and 4, geometrically even


def test_fit_clamps_a_negative_latency():
    sizes = [1 * MB, 4 * MB, 16 * MB]
    times = [ring_time(n, 2, -20e-6, 1e9) for n in sizes]  # an intercept below zero
    fit = fit_ring(sizes, times, 2)
    assert fit["alpha_s"] == 0.0 and "bound 0" in fit["note"]
    assert fit["beta_bytes_per_s"] > 0


def test_fit_refuses_what_it_cannot_fit():
    with pytest.raises(ValueError, match="at least 2"):
        fit_ring([4096], [1e-5], 2)
    with pytest.raises(ValueError, match="2 ranks"):
        fit_ring([4096, 8192], [1e-5, 2e-5], 1)
    with pytest.raises(ValueError, match="do not grow with the size"):
        fit_ring([4096, 8192, 16384], [3e-3, 2e-3, 1e-3], 2)  # times fall with size
    rows = [make_row("horovod", n, 2, [t], [t], 1) for n, t in ((4096, 3e-3), (8192, 2e-3))]
    assert "error" in fit_rows(rows, 2)["horovod"]


def test_fit_rows_per_backend_and_range():
    sizes = size_sweep(4 * KB, 16 * MB)
    rows = [make_row(b, n, 4, [ring_time(n, 4, a, be)], [ring_time(n, 4, a, be)], 1)
            for b, a, be in (("horovod", 500e-6, 5e9), ("ddp", 100e-6, 1e9)) for n in sizes]
    fits = fit_rows(rows, 4)
    assert fits["horovod"]["alpha_s"] == pytest.approx(500e-6) and fits["ddp"]["beta_bytes_per_s"] == pytest.approx(1e9)
    assert all(abs(r["fit_relative_residual"]) < 1e-9 for r in rows)
    ranged = fit_rows([dict(r) for r in rows], 4, fit_min=64 * KB, fit_max=4 * MB)
    assert ranged["ddp"]["sizes"] == [n for n in sizes if 64 * KB <= n <= 4 * MB]


# --- gradient sets -------------------------------------------------------------------------------


def test_ddp_buckets_match_torch():
    import torch
    import torch.distributed as dist

    rng = random.Random(1)
    numels = [rng.choice([1, 7, 64, 1000, 30_000, 300_000, 2_000_000]) for _ in range(40)]
    cap = 1 * MB
    mine = ddp_buckets([4 * n for n in numels], cap)
    assert [i for b in mine for i in b] == list(range(len(numels)))
    if hasattr(dist, "_compute_bucket_assignment_by_size"):  # DDP's own assignment, when torch has it
        theirs, _ = dist._compute_bucket_assignment_by_size([torch.empty(n) for n in numels], [cap])
        assert [list(b) for b in theirs] == mine
    assert ddp_buckets([10, 10, 10], 25) == [[0, 1, 2]]
    assert ddp_buckets([10, 20, 5], 25) == [[0, 1], [2]]  # closed once at least the cap


def test_horovod_fusion_groups():
    assert horovod_fusion([10, 20, 30], 30) == [[0, 1], [2]]
    assert horovod_fusion([10, 20, 30], 128) == [[0, 1, 2]]
    assert horovod_fusion([50, 10], 30) == [[0], [1]]  # larger than the threshold: alone
    assert horovod_fusion([10, 20], 0) == [[0], [1]]  # fusion off
    fit = {"alpha_s": 1e-4, "beta_bytes_per_s": 1e9}
    assert predicted_seconds([30, 30], 2, fit) == pytest.approx(2 * ring_time(30, 2, 1e-4, 1e9))
    assert predicted_seconds([30], 2, None) is None


# --- the report files -----------------------------------------------------------------------------


def _result(np_: int = 2) -> dict:
    sizes = size_sweep(4 * KB, 1 * MB)
    rows = [make_row(b, n, np_, [ring_time(n, np_, a, be) * f] * 3, [ring_time(n, np_, a, be) * f * 1.1] * 3, 2)
            for b, a, be in (("horovod", 500e-6, 4e9), ("ddp", 150e-6, 1e9)) for n, f in zip(sizes, [1, 1.2] * 5)]
    fits = fit_rows(rows, np_)
    grad = {"model": "tgcn", "hidden": 64, "layers": 2, "nodes": 207, "tensors": 6, "bytes": 54_600,
            "largest_bytes": 33_024, "iterations": 5, "warmup": 3}
    for b in ("horovod", "ddp"):
        grad[b] = {"seconds": 1.1e-3, "seconds_max": 1.2e-3, "message_bytes": [54_600], "iterations": 5, "warmup": 3,
                   "predicted_s": predicted_seconds([54_600], np_, fits[b])}
    return {
        "benchmark": "allreduce", "date": "2026-01-01 00:00 UTC", "command": "hvd-stgnn bench allreduce --np 2 --out X",
        "job_command": "jobs/local.sh -np 2",
        "machine": {"host": "box", "cores": 2, "cpu": "AMD EPYC", "ram_bytes": 24 << 30},
        "versions": {"python": "3.11.7", "torch": "2.13.0+cpu", "horovod": "0.28.1", "mpi4py": "4.1.2",
                     "mpi_library": "Open MPI v4.1.4", "nccl": None},
        "np": np_, "nodes": 1, "ranks_per_node": {"box": np_}, "rank_cpus": [[0], [1]], "launcher": "mpirun",
        "device": "cpu", "device_name": "cpu", "threads": 1, "dtype": "float32", "backends": ["horovod", "ddp"],
        "backend_detail": {"horovod": "hvd.allreduce_ over MPI", "ddp": "torch.distributed.all_reduce over gloo"},
        "sizes": sizes, "iters": 100, "min_iters": 5, "warmup": 5, "bytes_per_size": 1 << 30,
        "fits": fits, "rows": rows, "gradient_set": grad,
    }


def test_markdown_has_the_table_the_fits_and_the_gradient_set():
    res = _result()
    text = markdown(res)
    assert text.startswith("# Allreduce: `hvd-stgnn bench allreduce`")
    assert "hvd-stgnn bench allreduce --np 2 --out X" in text and "jobs/local.sh -np 2" in text
    assert "Open MPI v4.1.4" in text and "2 on 1 node(s)" in text
    table = [line for line in text.splitlines() if line.startswith(("| 4 KB", "| 8 KB", "| 16 KB", "| 32 KB", "| 64 KB",
                                                                     "| 128 KB", "| 256 KB", "| 512 KB", "| 1 MB"))]
    assert len(table) == len(res["sizes"])
    head = next(line for line in text.splitlines() if line.startswith("| size |"))
    assert "horovod us" in head and "ddp busbw GB/s" in head and "iters" in head
    assert "| 4 KB | 4096 | 1024 |" in text
    for b in ("horovod", "ddp"):
        assert f"- {b}: alpha = " in text
    assert "alpha = 500 us, beta = 4.00 GB/s" not in text  # noisy times: not the exact parameters
    assert "## Gradient set: tgcn" in text and "| horovod | 1 fused buffer |" in text and "| ddp | 1 bucket |" in text


def test_markdown_says_when_the_fit_is_poor():
    res = _result()
    assert "describes" not in markdown(res)  # 20 % noise: rms below the threshold
    res["fits"]["ddp"]["relative_residual_rms"] = 0.6
    assert "The ring model describes ddp poorly" in markdown(res)


def test_csv_round_trip(tmp_path):
    res = _result()
    path = tmp_path / "allreduce.csv"
    write_csv_rows(res["rows"], path)
    back = read_csv(path)
    assert list(back[0]) == list(CSV_COLUMNS)
    assert len(back) == len(res["rows"])
    for got, want in zip(back, res["rows"]):
        assert got["backend"] == want["backend"] and got["size_bytes"] == want["size_bytes"]
        assert got["latency_us"] == pytest.approx(want["latency_us"])
        assert got["fit_relative_residual"] == pytest.approx(want["fit_relative_residual"])


def test_write_outputs_and_median_table(tmp_path):
    res = _result()
    write_outputs(res, tmp_path)
    for name in ar.FILES:
        assert (tmp_path / name).stat().st_size > 0
    back = json.loads((tmp_path / "allreduce.json").read_text())
    assert back["fits"]["horovod"]["alpha_s"] > 0 and back["np"] == 2
    slow = json.loads(json.dumps(res))
    for r in slow["rows"]:
        r["latency_us"] *= 3
    rows, lines = median_table([res, slow, res])
    assert {(r["backend"], r["size_bytes"]) for r in rows} == {(r["backend"], r["size_bytes"]) for r in res["rows"]}
    assert all(r["runs"] == 3 for r in rows)
    by_key = {(r["backend"], r["size_bytes"]): r for r in res["rows"]}
    for r in rows:
        assert r["latency_us"] == pytest.approx(by_key[(r["backend"], r["size_bytes"])]["latency_us"])
    assert len(lines) == 6 and lines[0].startswith("run 1: horovod: alpha")


# --- launching ------------------------------------------------------------------------------------


def test_choose_launcher():
    assert choose_launcher("auto", {})[0] == "local"
    assert choose_launcher("auto", {"SLURM_JOB_ID": "7", "SLURMD_NODENAME": "n1"})[0] == "srun"
    launcher, why = choose_launcher("auto", {"SLURM_JOB_ID": "7"})  # salloc's shell on a login node
    assert launcher == "local" and "login node" in why
    assert choose_launcher("local", {"SLURM_JOB_ID": "7", "SLURMD_NODENAME": "n1"})[0] == "local"
    assert choose_launcher("srun", {"SLURM_JOB_ID": "7"})[0] == "srun"
    with pytest.raises(ConfigError, match="--launcher srun: not inside a Slurm allocation"):
        choose_launcher("srun", {})


def test_resolve_np():
    assert resolve_np(0, "local", {}) == 2
    assert resolve_np(4, "local", {}) == 4
    assert resolve_np(0, "srun", {"SLURM_NTASKS": "8"}) == 8
    with pytest.raises(ConfigError, match="SLURM_NTASKS"):
        resolve_np(0, "srun", {})
    with pytest.raises(ConfigError, match="--np 1: an allreduce over one rank moves no data"):
        resolve_np(1, "local", {})


def test_job_commands():
    local = job_command("local", 2, 1, ["--out", "X"], env={})
    assert local[0] == "bash" and local[1].endswith("jobs/local.sh") and local[2:4] == ["-np", "2"]
    assert local[-4:] == ["-m", "hvd_stgnn.bench.allreduce_worker", "--out", "X"]
    srun = job_command("srun", 8, 4, ["--out", "X"], env={"SRUN_ARGS": "--exclusive"}, srun_args=["--nodes=2"])
    assert srun[:3] == ["srun", "--mpi=pmix", "--cpu-bind=cores"]
    assert "-n" in srun and srun[srun.index("-n") + 1] == "8" and "--cpus-per-task=4" in srun
    assert "--kill-on-bad-exit=1" in srun and "--exclusive" in srun and "--nodes=2" in srun
    assert job_command("srun", 2, 1, [], env={"SRUN_MPI": "pmi2"})[1] == "--mpi=pmi2"


def test_flags_and_worker_arguments():
    args = _args("--np", "2", "--min-size", "8KB", "--max-size", "2MB", "--backends", "ddp", "--out", "o")
    assert args.min_size == 8 * KB and args.max_size == 2 * MB and args.backends == ["ddp"]
    assert args.fit_min_size == 0 and args.threads == 1 and args.launcher == "auto"
    worker = ar.worker_args(args, 2, "cmd", "jobs/local.sh -np 2")
    importlib.import_module("hvd_stgnn.bench.allreduce_worker")  # importable without MPI
    parser = argparse.ArgumentParser()
    ar.add_sweep_flags(parser)
    for extra in ("--out", "--expect-np", "--command", "--job-command"):
        parser.add_argument(extra)
    back = parser.parse_args(worker)
    assert back.min_size == 8 * KB and back.max_size == 2 * MB and back.backends == ["ddp"] and back.fit_max_size == 0
    assert "--min-size 8KB --max-size 2MB" in ar.explicit_command(args, 2)


@pytest.mark.parametrize("argv, match", [
    (["--np", "1"], "--np 1: an allreduce over one rank moves no data"),
    (["--min-size", "3B"], "--min-size"),
    (["--max-size", "lots"], "--max-size"),
    (["--backends", "nccl"], "--backends"),
    (["--min-size", "1MB", "--max-size", "4KB"], "larger than --max-size"),
    (["--threads", "0"], "--threads"),
    (["--model", "lstm"], "--model"),
    (["--launcher", "srun"], "--launcher srun: not inside a Slurm allocation"),
])
def test_bad_input_is_one_line(argv, match, tmp_path, monkeypatch, capsys):
    from hvd_stgnn.cli import main

    monkeypatch.delenv("SLURM_JOB_ID", raising=False)  # --launcher auto: jobs/local.sh, whatever the suite runs in
    try:
        status = main(["bench", "allreduce", *argv, "--out", str(tmp_path / "o")])
    except SystemExit as exc:  # usage errors
        status = exc.code
    err = capsys.readouterr().err
    assert status == 2, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("hvd-stgnn bench"), err
    assert match in err
    assert not (tmp_path / "o" / "allreduce.log").exists()  # no job was started


def test_cuda_without_a_gpu_is_one_line(tmp_path, monkeypatch, capsys):
    import torch

    from hvd_stgnn.cli import main

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: --device cuda would start a real job")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert main(["bench", "allreduce", "--device", "cuda", "--out", str(tmp_path / "o")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("hvd-stgnn bench: error: --device cuda: no GPU to run on here")


def test_np1_refused_by_the_command(tmp_path):
    r = run_cli("bench", "allreduce", "--np", "1", "--out", str(tmp_path / "o"), timeout=120)
    assert r.returncode == 2
    assert our_error_lines(r.stderr) == [r.stderr.strip()]
    assert "moves no data" in r.stderr


# --- a real job -----------------------------------------------------------------------------------


@pytest.mark.mpi
def test_real_run_at_np2(tmp_path):
    out = tmp_path / "ar"
    r = run_cli("bench", "allreduce", "--np", "2", "--min-size", "4KB", "--max-size", "8MB", "--iters", "10",
                "--min-iters", "3", "--warmup", "2", "--bytes-per-size", "16MB", "--grad-iters", "3",
                "--launcher", "local", "--out", str(out), timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    for name in ar.FILES + ("allreduce.log",):
        assert (out / name).stat().st_size > 0, name
    assert not (out / "allreduce.progress").exists()
    assert "bench allreduce: horovod    4 KB:" in r.stderr  # progress lines, echoed while the job ran
    res = json.loads((out / "allreduce.json").read_text())
    assert res["np"] == 2 and res["nodes"] == 1 and res["device"] == "cpu" and res["launcher"] == "mpirun"
    assert res["backends"] == ["horovod", "ddp"]
    for key in ("machine", "versions", "command", "rows", "fits", "gradient_set", "sizes"):
        assert key in res, key
    assert res["command"].startswith("hvd-stgnn bench allreduce --np 2")
    sizes = size_sweep(4 * KB, 8 * MB)
    for b in ("horovod", "ddp"):
        fit = res["fits"][b]
        assert fit["alpha_s"] > 0 and fit["beta_bytes_per_s"] > 0, fit
        assert fit["sizes"] == sizes and fit["relative_residual_max"] >= 0
        rows = [row for row in res["rows"] if row["backend"] == b]
        assert [row["size_bytes"] for row in rows] == sizes
        assert all(row["latency_us"] > 0 and row["busbw_gb_per_s"] > 0 for row in rows)
        g = res["gradient_set"][b]
        assert g["seconds"] > 0 and g["predicted_s"] > 0 and sum(g["message_bytes"]) == res["gradient_set"]["bytes"]
    assert res["gradient_set"]["model"] == "tgcn" and res["gradient_set"]["hidden"] == 64
    assert len(read_csv(out / "allreduce.csv")) == 2 * len(sizes)
    assert "horovod: alpha = " in r.stdout and "ddp: alpha = " in r.stdout
    assert not math.isnan(res["rows"][0]["latency_us"])
    if available_cores() <= 2:  # jobs/local.sh sets it when the ranks' threads fill the cores
        assert res["environment"].get("OMPI_MCA_mpi_yield_when_idle") == "1"
    assert not any(k.startswith("OMPI_MCA_orte") for k in res["environment"])  # no launcher internals
    assert len(res["rank_cpus"]) == 2
