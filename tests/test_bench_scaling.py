"""`hvd-stgnn bench scaling` (hvd_stgnn/bench/scaling.py, scaling_report.py): the arithmetic on
synthetic results (step split, speedup, efficiency, strong-mode batch division, the single-rank
reference), argument checking, job command lines, one real np=1,2 run and a failing job."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys

import pytest

from helpers import REPO, run_cli
from hvd_stgnn.bench import scaling, scaling_report
from hvd_stgnn.bench.compare import Variant
from hvd_stgnn.bench.report import read_csv, write_csv
from hvd_stgnn.bench.scaling import (
    CSV_COLUMNS, TEXT_COLUMNS, Job, Settings, add_scaling_parser, add_speedup, cmd_scaling, job_command,
    job_metrics, median_jobs, parse_choices, per_rank_batches, plan_jobs, scaling_rows, single_rank_reference,
    split_step,
)
from hvd_stgnn.bench.scaling_report import markdown_table, split_table
from hvd_stgnn.errors import ConfigError, UserError
from hvd_stgnn.results import Results

HI = Variant("horovod+index", "horovod", "index")
DM = Variant("ddp+materialized", "ddp", "materialized")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hvd-stgnn bench")
    add_scaling_parser(parser.add_subparsers(dest="bench_command"))
    return parser


def _args(*argv: str) -> argparse.Namespace:
    return _parser().parse_args(["scaling", *argv])


def _results(np_=2, batch=16, *, phases=(1.0, 10.0, 20.0, 2.0), rate=1000.0, k=1, node=500_000_000,
             prepare=0.5) -> dict:
    """A results.json as the trainer writes it (the entries bench scaling reads)."""
    def stats(median):
        return {"min": median * 0.9, "median": median, "max": median * 1.1}

    b, f, w, o = phases
    return {
        "world_size": np_,
        "phase_timings": [
            {"epoch": 1, "steps": 7, "batch_ms": stats(99), "forward_ms": stats(99), "backward_ms": stats(99),
             "optimizer_ms": stats(99), "step_ms": stats(396)},  # an earlier epoch: ignored
            {"epoch": 2, "steps": 8, "batch_ms": stats(b), "forward_ms": stats(f), "backward_ms": stats(w),
             "optimizer_ms": stats(o), "step_ms": stats(b + f + w + o)},
        ],
        "timing": {"prepare_seconds": prepare, "train_loop_seconds": 3.0, "epoch_seconds_median": 1.5,
                   "samples_per_second": rate},
        "memory": {"per_rank": [], "node_pss_peak_bytes": {"h": node}, "max_node_pss_peak_bytes": node},
        "config": {"train": {"batch_size": batch}, "parallel": {"backward_passes_per_step": k}},
    }


def _job_row(role, variant, np_, batch, threads, repeat=1, *, forward, backward, rate, batch_ms=1.0,
             optimizer=2.0, wall=10.0) -> dict:
    m = job_metrics(_results(np_, batch, phases=(batch_ms, forward, backward, optimizer), rate=rate), wall)
    return {"role": role, "name": variant.name, "backend": variant.backend, "data_mode": variant.data_mode,
            "np": np_, "threads": threads, "batch_per_rank": batch, "repeat": repeat, **m}


# --- strong / weak batches ----------------------------------------------------------------


def test_strong_mode_divides_the_global_batch():
    assert per_rank_batches("strong", [1, 2, 4], 16) == {1: 64, 2: 32, 4: 16}   # default: max(np) x batch
    assert per_rank_batches("strong", [1, 2, 4], 16, global_batch=128) == {1: 128, 2: 64, 4: 32}
    assert per_rank_batches("weak", [1, 2, 4], 16) == {1: 16, 2: 16, 4: 16}
    assert scaling.global_batch_for("strong", [1, 3], 8) == 24
    assert scaling.global_batch_for("weak", [1, 3], 8) == 0
    assert per_rank_batches("strong", [1, 3], 8) == {1: 24, 3: 8}


def test_strong_mode_refuses_a_global_batch_np_does_not_divide():
    with pytest.raises(ConfigError) as info:
        per_rank_batches("strong", [1, 2, 3], 16, global_batch=64)
    message = str(info.value)
    assert "\n" not in message
    assert "global batch 64 does not split evenly over np=3" in message
    assert "e.g. 60" in message                                       # a multiple of lcm(1, 2, 3)
    with pytest.raises(ConfigError, match="np=4"):
        per_rank_batches("strong", [1, 4], 1, global_batch=2)          # fewer windows than ranks
    with pytest.raises(ConfigError, match="np=3"):
        cmd_scaling(_args("--np", "1,2,3", "--global-batch", "64", "--out", "/nonexistent/never"))


def test_threads_per_rank():
    s = Settings(data="d", cores=2)
    assert [s.threads_for(n) for n in (1, 2, 4)] == [2, 1, 1]               # cores // np, at least 1
    assert Settings(data="d", cores=2, threads=1).threads_for(1) == 1        # --threads wins
    srun = Settings(data="d", cores=32, launcher="srun", nodes=4)
    assert srun.threads_for(16) == 8 and srun.threads_for(6) == 16          # ranks per node = ceil(np / nodes)
    assert Settings(data="d", cores=32, launcher="srun", nodes=4, cpus_per_task=7).threads_for(16) == 7


# --- the single-rank references ----------------------------------------------------------


def test_plan_runs_a_reference_at_every_per_rank_batch_and_thread_count():
    s = Settings(data="d", mode="strong", batch_size=16, threads=1, cores=2)
    jobs, refs = plan_jobs(s, [1, 2, 4], [HI, DM])
    assert [(j.variant.name, j.np, j.batch) for j in jobs] == [
        ("horovod+index", 1, 64), ("ddp+materialized", 1, 64), ("horovod+index", 2, 32),
        ("ddp+materialized", 2, 32), ("horovod+index", 4, 16), ("ddp+materialized", 4, 16)]
    # The np=1 jobs are their own reference; the other per-rank batches get one each.
    assert [(r.variant.name, r.np, r.batch, r.threads) for r in refs] == [
        ("horovod+index", 1, 32, 1), ("ddp+materialized", 1, 32, 1),
        ("horovod+index", 1, 16, 1), ("ddp+materialized", 1, 16, 1)]
    assert all(r.role == "reference" for r in refs)
    # Weak scaling, default threads on 2 cores: np=1 runs 2 threads, np=2 and 4 run 1, so the
    # reference for them is an np=1 job at 1 thread (once).
    jobs, refs = plan_jobs(Settings(data="d", mode="weak", batch_size=16, cores=2), [1, 2, 4], [HI])
    assert [(j.np, j.batch, j.threads) for j in jobs] == [(1, 16, 2), (2, 16, 1), (4, 16, 1)]
    assert [(r.np, r.batch, r.threads) for r in refs] == [(1, 16, 1)]
    # Weak, one thread everywhere: the np=1 job is every row's reference.
    assert plan_jobs(Settings(data="d", mode="weak", threads=1, cores=2), [1, 2, 4], [HI])[1] == []
    # Without np=1 in the list the references are still run.
    _, refs = plan_jobs(Settings(data="d", mode="weak", batch_size=8, threads=1), [2, 4], [HI])
    assert [(r.np, r.batch) for r in refs] == [(1, 8)]


def test_plan_scale_runs_one_reference_per_config():
    s = Settings(data="d", mode="strong", batch_size=16, threads=1)
    assert plan_jobs(s, [1, 2, 4], [HI], "scale")[1] == []                   # the np=1 job is the base
    _, refs = plan_jobs(s, [2, 4], [HI], "scale")
    assert [(r.np, r.batch, r.threads) for r in refs] == [(1, 64, 1)]        # np=1 at the global batch


def test_single_rank_reference_run_and_scale():
    singles = {("horovod+index", 64, 1): {"forward_ms": 40.0, "backward_ms": 80.0},
               ("horovod+index", 16, 1): {"forward_ms": 12.0, "backward_ms": 25.0}}
    row = {"name": "horovod+index", "batch_per_rank": 16, "threads": 1}
    assert single_rank_reference(row, singles, "run") == (12.0, 25.0, "np1-b16-t1")   # measured
    fwd, bwd, source = single_rank_reference(row, singles, "scale", base=(64, 1))
    assert (fwd, bwd) == (10.0, 20.0) and source == "np1-b64-t1 x16/64"            # linear in the batch
    assert single_rank_reference({**row, "batch_per_rank": 64}, singles, "scale", base=(64, 1))[2] == "np1-b64-t1"
    with pytest.raises(KeyError, match="batch 32/rank"):
        single_rank_reference({**row, "batch_per_rank": 32}, singles, "run")


# --- the step split, speedup, efficiency -----------------------------------------------------


def test_job_metrics_use_the_last_epoch_and_the_throughput():
    m = job_metrics(_results(2, 16, phases=(1.0, 10.0, 20.0, 2.0), rate=800.0), 12.5)
    assert (m["batch_ms"], m["forward_ms"], m["backward_ms"], m["optimizer_ms"]) == (1.0, 10.0, 20.0, 2.0)
    assert m["step_ms"] == 33.0 and m["steps"] == 8
    assert m["wall_step_ms"] == pytest.approx(1e3 * 2 * 16 / 800.0)          # 40 ms: 32 windows per step
    assert m["node_memory_bytes"] == 500_000_000 and m["prepare_seconds"] == 0.5 and m["wall_seconds"] == 12.5
    # --backward-passes-per-step K: K batches per optimizer step.
    assert job_metrics(_results(2, 16, rate=800.0, k=2), 1.0)["wall_step_ms"] == pytest.approx(80.0)
    with pytest.raises(ValueError, match="no phase_timings"):
        job_metrics(Results(), 1.0)


def test_split_step_adds_up():
    m = {"batch_ms": 1.0, "forward_ms": 12.0, "backward_ms": 30.0, "optimizer_ms": 2.0, "wall_step_ms": 50.0}
    s = split_step(m, ref_forward_ms=10.0, ref_backward_ms=20.0)
    assert s["compute_ms"] == 32.0                      # this job's forward + one rank's backward
    assert s["comm_exposed_ms"] == 10.0                 # backward + wait - one rank's backward
    assert m["batch_ms"] + s["compute_ms"] + s["comm_exposed_ms"] + m["optimizer_ms"] == 45.0  # the phases
    assert s["comm_share"] == pytest.approx(10 / 45)
    assert s["compute_slowdown"] == pytest.approx(1.2)  # the forward ran 20% slower beside the other ranks
    assert s["comm_exposed_adj_ms"] == pytest.approx(30 - 20 * 1.2)
    assert s["outside_phases_ms"] == pytest.approx(5.0)
    # The reference slower than the job's own backward: negative, reported as measured.
    assert split_step({**m, "backward_ms": 18.0}, 10.0, 20.0)["comm_exposed_ms"] == -2.0


def test_speedup_and_efficiency_strong_and_weak():
    rows = [{"name": "a", "np": n, "samples_per_second": thr} for n, thr in ((1, 100.0), (2, 180.0), (4, 300.0))]
    rows += [{"name": "b", "np": n, "samples_per_second": thr} for n, thr in ((2, 50.0), (4, 90.0))]
    add_speedup(rows, "strong")
    got = {(r["name"], r["np"]): (r["speedup"], r["efficiency"]) for r in rows}
    assert got[("a", 1)] == (1.0, 1.0)
    assert got[("a", 2)] == pytest.approx((1.8, 0.9))
    assert got[("a", 4)] == pytest.approx((3.0, 0.75))
    assert got[("b", 2)] == (1.0, 1.0)                              # the smallest np of its own config
    assert got[("b", 4)] == pytest.approx((1.8, 0.9))               # speedup / (4 / 2)
    # Weak: throughput per rank relative to the smallest np's (the same number).
    weak = add_speedup([{"name": "a", "np": 1, "samples_per_second": 100.0},
                        {"name": "a", "np": 4, "samples_per_second": 360.0}], "weak")
    assert weak[1]["efficiency"] == pytest.approx((360.0 / 4) / (100.0 / 1))
    with pytest.raises(ValueError):
        add_speedup(rows, "diagonal")


def _strong_jobs(repeats=1) -> tuple[Settings, list[dict]]:
    """Strong scaling, global batch 64 at np 1,2,4, one thread: synthetic jobs whose numbers
    follow a simple model (backward 1 ms per window alone, + 5 ms of allreduce per extra rank)."""
    s = Settings(data="d", mode="strong", batch_size=16, threads=1, cores=2)
    rows = []
    for rep in range(1, repeats + 1):
        noise = 1.0 + 0.01 * (rep - 1)
        for np_, b in ((1, 64), (2, 32), (4, 16)):
            rows.append(_job_row("scaling", HI, np_, b, 1, rep, forward=0.5 * b * noise,
                                 backward=(b + 5 * (np_ - 1)) * noise, rate=64 * 1000 / (1.5 * b + 3 + 5 * np_) / noise))
        for b in (32, 16):
            rows.append(_job_row("reference", HI, 1, b, 1, rep, forward=0.5 * b * noise, backward=b * noise,
                                 rate=b * 1000 / (1.5 * b + 8)))
    return s, rows


def test_scaling_rows_split_each_np_against_its_reference():
    s, jobs = _strong_jobs()
    rows = {r["np"]: r for r in scaling_rows(jobs, s, [1, 2, 4], "run", [HI])}
    assert sorted(rows) == [1, 2, 4]
    assert rows[1]["comm_exposed_ms"] == 0 and rows[1]["reference"] == "np1-b64-t1"
    assert rows[2]["ref_backward_ms"] == 32 and rows[2]["comm_exposed_ms"] == pytest.approx(5)
    assert rows[4]["ref_backward_ms"] == 16 and rows[4]["comm_exposed_ms"] == pytest.approx(15)
    assert rows[4]["reference"] == "np1-b16-t1" and rows[4]["compute_slowdown"] == pytest.approx(1.0)
    assert rows[4]["global_batch"] == 64 and rows[4]["batch_per_rank"] == 16 and rows[4]["mode"] == "strong"
    assert rows[2]["speedup"] == pytest.approx(rows[2]["samples_per_second"] / rows[1]["samples_per_second"])
    assert rows[4]["efficiency"] == pytest.approx(rows[4]["speedup"] / 4)
    # --reference scale: the np=1 job's backward x batch / 64 (here the model is linear: the same).
    scaled = {r["np"]: r for r in scaling_rows(jobs, s, [1, 2, 4], "scale", [HI])}
    assert scaled[4]["ref_backward_ms"] == pytest.approx(16) and scaled[4]["reference"] == "np1-b64-t1 x16/64"
    assert set(CSV_COLUMNS) <= set(rows[2])


def test_repeats_are_medians_before_the_split():
    s, jobs = _strong_jobs(repeats=3)
    medians = median_jobs(jobs)
    assert medians[("scaling", "horovod+index", 2, 32, 1)]["repeats"] == 3
    assert medians[("scaling", "horovod+index", 2, 32, 1)]["backward_ms"] == pytest.approx(37 * 1.01)
    rows = scaling_rows(jobs, s, [1, 2, 4], "run", [HI])
    assert [r["repeats"] for r in rows] == [3, 3, 3]
    r = rows[1]
    assert r["samples_per_second_min"] < r["samples_per_second"] < r["samples_per_second_max"]
    assert f"{r['samples_per_second']:.0f} ({r['samples_per_second_min']:.0f}-{r['samples_per_second_max']:.0f})" \
        in markdown_table(rows)
    assert rows[1]["comm_exposed_ms"] == pytest.approx(5 * 1.01)


def test_tables_csv_and_plot(tmp_path):
    s, jobs = _strong_jobs()
    rows = scaling_rows(jobs, s, [1, 2, 4], "run", [HI])
    for text in (markdown_table(rows), split_table(rows)):
        lines = text.splitlines()
        assert len(lines) == 2 + 3 and all(line.count("|") == lines[0].count("|") for line in lines)
    assert "| horovod+index | 2 | 1 | 32 | 64 | 8 |" in markdown_table(rows)
    assert "| np1-b16-t1 |" in split_table(rows)
    path = tmp_path / "s.csv"
    write_csv(rows, path, CSV_COLUMNS)
    back = read_csv(path, TEXT_COLUMNS)
    assert [r["np"] for r in back] == [1, 2, 4] and back[2]["comm_exposed_ms"] == pytest.approx(15)
    assert list(back[0]) == list(CSV_COLUMNS)
    scaling_report.plot(rows, tmp_path / "s.png", title="t")
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_header_explains_the_columns(tmp_path):
    s, jobs = _strong_jobs()
    s.data = tmp_path / "d.h5"
    rows = scaling_rows(jobs, s, [1, 2, 4], "run", [HI])
    text = scaling_report.report(rows, jobs, s, [1, 2, 4], 1, reference="run",
                          command="hvd-stgnn bench scaling --np 1,2,4 --mode strong --out X",
                          invoked="hvd-stgnn bench scaling --np 1,2,4 --out X",
                          machine={"host": "h", "cores": 2, "cpu": "CPU X", "ram_bytes": 2**34},
                          vers={"python": "3.11", "torch": "2", "horovod": "0.28", "mpi4py": "4",
                                "mpirun": "mpirun (Open MPI) 4.1.4"}, date="today")
    for needle in ["host `h`, 2 cores", "CPU X", "Horovod 0.28", "mpirun (Open MPI) 4.1.4",
                   "command: `hvd-stgnn bench scaling --np 1,2,4 --out X`",
                   "with every setting explicit: `hvd-stgnn bench scaling --np 1,2,4 --mode strong --out X`",
                   "global batch 64 fixed, per rank np=1: 64, np=2: 32, np=4: 16",
                   "np=4: ranks x threads exceed the cores", "## How each column is derived", "**exposed comm**",
                   "## Single-rank references", "| extra reference job | 16 | 1 |",
                   "jobs/local.sh -np 4 hvd-stgnn train", "--max-steps-per-epoch 30", "--batch-size 16",
                   "horovod+index_ref-np1-b32-t1_r1.json"]:
        assert needle in text, needle


# --- the jobs' command lines, the launcher -----------------------------------------------------


def test_job_commands_local_and_srun(tmp_path):
    s = Settings(data=tmp_path / "d.h5", hidden=8, steps=12, epochs=1, seed=3, eval_windows=32,
                 train_args=["--lr", "0.01"], cores=2)
    cmd = job_command(Job("scaling", HI, 2, 24, 1), s, tmp_path / "r.json")
    assert cmd[:4] == ["bash", str(scaling.LAUNCHER), "-np", "2"]
    text = " ".join(cmd)
    for flag in ["train --data", "--hidden 8", "--epochs 1", "--max-steps-per-epoch 12", "--batch-size 24",
                 "--seed 3", "--threads 1", "--eval-windows 32", "--fusion-threshold-mb 25", "--no-baselines",
                 "--backend horovod --data-mode index --shuffle shard", "--lr 0.01", f"--results {tmp_path}/r.json"]:
        assert flag in text, flag
    s.launcher, s.srun_args = "srun", ["--mpi=pmi2"]
    cmd = job_command(Job("scaling", DM, 8, 24, 4), s, tmp_path / "r.json")
    assert cmd[:7] == ["srun", "--mpi=pmix", "-n", "8", "--cpus-per-task=4", "--export=ALL", "--kill-on-bad-exit=1"]
    assert cmd[7] == "--mpi=pmi2"                                   # --srun-args after the defaults: they win
    assert "--backend ddp --data-mode materialized" in " ".join(cmd) and "--threads 4" in " ".join(cmd)


def test_launcher_auto_follows_slurm():
    assert scaling.resolve_launcher("auto", {"SLURM_JOB_ID": "42"}) == "srun"
    assert scaling.resolve_launcher("auto", {}) == "local"
    assert scaling.resolve_launcher("local", {"SLURM_JOB_ID": "42"}) == "local"
    assert scaling.resolve_launcher("srun", {}) == "srun"


def test_parse_choices():
    assert parse_choices("horovod,ddp", scaling.BACKENDS, "--backend") == ["horovod", "ddp"]
    assert parse_choices("materialized", scaling.DATA_MODES, "--data-mode") == ["materialized"]
    for bad in ["", "nccl", "horovod,horovod", "horovod,"]:
        with pytest.raises(ConfigError, match="--backend"):
            parse_choices(bad, scaling.BACKENDS, "--backend")


# --- argument errors (no job runs) ------------------------------------------------------------


@pytest.mark.parametrize("argv, match", [
    (["--np", "1,zero"], "--np"),
    (["--backend", "nccl"], "--backend: expected a comma-separated list of horovod, ddp"),
    (["--data-mode", "index,index"], "--data-mode: a value appears twice"),
    (["--preset", "nope"], "unknown preset 'nope'"),
    (["--model", "nope"], "unknown model 'nope'"),
    (["--steps", "2"], "--steps must be >= 3"),
    (["--repeats", "0"], "--repeats"),
    (["--mode", "weak", "--global-batch", "64"], "--global-batch: only for --mode strong"),
    (["--np", "1,2,3", "--batch-size", "5", "--global-batch", "10"], "does not split evenly over np=3"),
    (["--train-args", "--max-steps-per-epoch 5"], "--max-steps-per-epoch is set by the benchmark"),
    (["--train-args=--batch-size=3"], "--batch-size is set by the benchmark"),
    (["--train-args", "'unbalanced"], "--train-args"),
])
def test_bad_arguments_are_one_line_config_errors(tmp_path, argv, match):
    with pytest.raises(ConfigError, match=match) as info:
        cmd_scaling(_args(*argv, "--out", str(tmp_path / "out")))
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


def test_missing_data_file_and_usage_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        cmd_scaling(_args("--data", str(tmp_path / "none.h5"), "--launcher", "local", "--out", str(tmp_path / "o")))
    r = run_cli("bench", "scaling", "--mode", "diagonal", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "--mode" in r.stderr


# --- real jobs --------------------------------------------------------------------------------


@pytest.mark.mpi
def test_real_strong_scaling_np_1_2(tiny_h5, tmp_path, capsys):
    """np=1 and 2 plus the np=1 reference at the np=2 batch: three real mpirun jobs (~20 s)."""
    out = tmp_path / "out"
    assert cmd_scaling(_args("--data", str(tiny_h5), "--np", "1,2", "--mode", "strong", "--batch-size", "8",
                             "--steps", "4", "--hidden", "8", "--threads", "1", "--eval-windows", "16",
                             "--launcher", "local", "--job-timeout", "120", "--out", str(out))) == 0
    rows = read_csv(out / "scaling.csv", TEXT_COLUMNS)
    assert list(rows[0]) == list(CSV_COLUMNS)
    assert [(r["name"], r["np"], r["batch_per_rank"], r["global_batch"]) for r in rows] == [
        ("horovod+index", 1, 16, 16), ("horovod+index", 2, 8, 16)]
    for r in rows:
        for col in ("step_ms", "batch_ms", "forward_ms", "backward_ms", "optimizer_ms", "compute_ms",
                    "samples_per_second", "wall_step_ms", "prepare_seconds", "node_memory_bytes", "wall_seconds"):
            assert r[col] > 0 and math.isfinite(r[col]), (r["np"], col)
        assert r["steps"] == 4 and r["threads"] == 1 and r["mode"] == "strong"
        assert r["step_ms"] == pytest.approx(r["batch_ms"] + r["compute_ms"] + r["comm_exposed_ms"] + r["optimizer_ms"])
        assert r["wall_seconds"] > r["prepare_seconds"]
    one, two = rows
    assert one["speedup"] == 1.0 and one["efficiency"] == 1.0 and one["comm_exposed_ms"] == 0
    assert one["reference"] == "np1-b16-t1" and two["reference"] == "np1-b8-t1"
    assert two["efficiency"] == pytest.approx(two["speedup"] / 2)
    assert two["node_memory_bytes"] > one["node_memory_bytes"]      # two processes' runtimes

    raw = out / "raw"
    ref = json.loads((raw / "horovod+index_ref-np1-b8-t1_r1.json").read_text())
    assert ref["world_size"] == 1 and ref["config"]["train"]["batch_size"] == 8
    two_res = json.loads((raw / "horovod+index_np2_r1.json").read_text())
    assert two_res["world_size"] == 2 and two_res["config"]["train"]["max_steps_per_epoch"] == 4
    assert two_res["config"]["train"]["eval_windows"] == 16 and two_res["config"]["train"]["baselines"] is False
    assert len(read_csv(raw / "jobs.csv", ("role", "name", "backend", "data_mode"))) == 3
    md = (out / "scaling.md").read_text()
    for needle in ["# Strong scaling", "mpirun (Open MPI)", "--global-batch 16", "| horovod+index | 2 | 1 | 8 | 16 | 4 |",
                   "## How each column is derived", "| extra reference job | 8 | 1 |"]:
        assert needle in md, needle
    png = out / "scaling.png"
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    captured = capsys.readouterr()
    assert "[1/3] horovod+index np=1 single-rank reference (batch 8/rank, 1 thread/rank)" in captured.err
    assert "[3/3] horovod+index np=2 (batch 8/rank" in captured.err
    assert markdown_table([]).splitlines()[0] in captured.out


@pytest.mark.mpi
def test_failing_job_is_one_line_naming_it(tiny_h5, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(UserError) as info:
        cmd_scaling(_args("--data", str(tiny_h5), "--np", "1,2", "--mode", "weak", "--batch-size", "8", "--steps", "3",
                          "--hidden", "8", "--threads", "1", "--launcher", "local", "--train-args", "--lr -1",
                          "--out", str(out)))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("job horovod+index np=1 (batch 8/rank, 1 thread/rank) failed (exit status 2)")
    assert "--lr must be > 0" in message and "jobs/local.sh -np 1" in message
    log = out / "raw" / "horovod+index_np1_r1.log"
    assert str(log) in message and "--lr must be > 0" in log.read_text()
    assert "[1/2] horovod+index np=1" in capsys.readouterr().err
    assert not (out / "scaling.csv").exists()


@pytest.mark.slurm
def test_inside_a_slurm_allocation_the_jobs_run_under_srun(slurm_env, tiny_h5, tmp_path):
    """--launcher auto in an allocation (SLURM_JOB_ID set): every job is `srun --mpi=pmix -n P`,
    threads per rank from SLURM_CPUS_PER_TASK."""
    out = tmp_path / "out"
    r = subprocess.run(["salloc", "-N", "1", "-n", "2", "--cpus-per-task=1", sys.executable, "-m", "hvd_stgnn",
                        "bench", "scaling", "--data", str(tiny_h5), "--np", "1,2", "--mode", "weak", "--batch-size", "8",
                        "--steps", "3", "--hidden", "8", "--eval-windows", "16", "--out", str(out)],
                       capture_output=True, text=True, cwd=REPO, env=slurm_env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = read_csv(out / "scaling.csv", TEXT_COLUMNS)
    assert [(row["np"], row["threads"]) for row in rows] == [(1, 1), (2, 1)]
    log = (out / "raw" / "horovod+index_np2_r1.log").read_text()
    assert "# command: srun --mpi=pmix -n 2 --cpus-per-task=1" in log
    res = json.loads((out / "raw" / "horovod+index_np2_r1.json").read_text())
    assert res["launch"]["launcher"] == "srun" and res["world_size"] == 2
    assert "--launcher srun" in (out / "scaling.md").read_text()
