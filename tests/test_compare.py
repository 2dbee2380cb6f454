"""`hvd-stgnn bench compare` (hvd_stgnn/bench/compare.py): the arithmetic on synthetic rows,
argument checking, a failing job, and one real end-to-end run of the 4-job matrix."""

from __future__ import annotations

import argparse
import json
import math

import pytest

from hvd_stgnn.bench import compare
from hvd_stgnn.bench.compare import (
    CSV_COLUMNS, METRICS, VARIANTS, Settings, add_compare_parser, cmd_compare, job_command, markdown_table,
    median_rows, parse_np_list, ratios, ratios_table, row_from_results,
)
from hvd_stgnn.bench.report import read_csv, write_csv
from hvd_stgnn.errors import ConfigError, UserError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hvd-stgnn bench")
    add_compare_parser(parser.add_subparsers(dest="bench_command"))
    return parser


def _args(*argv: str) -> argparse.Namespace:
    return _parser().parse_args(["compare", *argv])


def _row(name: str, np_: int, *, seconds=10.0, node=1_000_000_000, mae=3.0, data=100_000_000, **kw) -> dict:
    v = next(v for v in VARIANTS if v.name == name)
    row = {"name": name, "backend": v.backend, "data_mode": v.data_mode, "np": np_, "repeats": 1,
           "end_to_end_seconds": seconds, "prepare_seconds": 1.0, "epoch_seconds_median": 5.0,
           "samples_per_second": 1000.0, "peak_rss_bytes": 500_000_000, "node_memory_bytes": node,
           "data_bytes_per_rank": data, "gpu_peak_bytes": 0, "final_val_mae": mae}
    row.update(kw)
    return row


# --- pure arithmetic ----------------------------------------------------------------------


def test_parse_np_list():
    assert parse_np_list("1,2") == [1, 2]
    assert parse_np_list("4, 2") == [2, 4]
    assert parse_np_list("2") == [2]
    for bad in ["", "0", "1,x", "2,2", "-1", "1,,2"]:
        with pytest.raises(ConfigError, match="--np"):
            parse_np_list(bad)


def test_default_threads_split_the_cores():
    assert compare.default_threads(1, 2) == 2
    assert compare.default_threads(2, 2) == 1
    assert compare.default_threads(4, 2) == 1  # never 0
    assert Settings(data="x", cores=8).threads_for(2) == 4
    assert Settings(data="x", cores=8, threads=3).threads_for(2) == 3


def test_row_from_results_takes_maxima_over_ranks():
    results = {
        "timing": {"prepare_seconds": 2.5, "train_loop_seconds": 9.0, "epoch_seconds_median": 4.5,
                   "samples_per_second": 321.0},
        "memory": {"per_rank": [{"host": "a", "peak_rss_bytes": 10, "pss_peak_bytes": 7, "cuda_peak_bytes": 0},
                                {"host": "a", "peak_rss_bytes": 30, "pss_peak_bytes": 6, "cuda_peak_bytes": 5}],
                   "node_pss_peak_bytes": {"a": 13}, "max_node_pss_peak_bytes": 13},
        "batching": {"device_bytes_per_rank": [100, 120]},
        "epochs": [{"epoch": 1, "train_mae": 5.0, "val_mae": 4.0, "seconds": 4.0},
                   {"epoch": 2, "train_mae": 4.0, "val_mae": 3.5, "seconds": 5.0}],
    }
    row = row_from_results(VARIANTS[3], 2, results, 17.0)
    assert row["name"] == "ddp+materialized" and row["backend"] == "ddp" and row["data_mode"] == "materialized"
    assert row["end_to_end_seconds"] == 17.0 and row["prepare_seconds"] == 2.5
    assert row["peak_rss_bytes"] == 30 and row["node_memory_bytes"] == 13
    assert row["data_bytes_per_rank"] == 120 and row["gpu_peak_bytes"] == 5
    assert row["final_val_mae"] == 3.5  # the last epoch, not the best one
    assert set(CSV_COLUMNS) <= set(row)


def test_median_over_repeats_and_order():
    rows = [
        _row("ddp+materialized", 2, seconds=30.0, mae=3.0),
        _row("horovod+index", 2, seconds=12.0, node=400),
        _row("horovod+index", 1, seconds=8.0),
        _row("horovod+index", 2, seconds=10.0, node=300),
        _row("horovod+index", 2, seconds=99.0, node=200),   # an outlier: the median ignores it
        _row("ddp+materialized", 2, seconds=20.0, mae=3.2),
    ]
    merged = median_rows(rows)
    assert [(r["name"], r["np"]) for r in merged] == [
        ("horovod+index", 1), ("horovod+index", 2), ("ddp+materialized", 2)]
    ours = merged[1]
    assert ours["repeats"] == 3
    assert ours["end_to_end_seconds"] == 12.0
    assert ours["node_memory_bytes"] == 300 and isinstance(ours["node_memory_bytes"], int)
    ddp = merged[2]
    assert ddp["repeats"] == 2
    assert ddp["end_to_end_seconds"] == 25.0          # even count: mean of the middle two
    assert ddp["final_val_mae"] == pytest.approx(3.1)


def test_ratios_per_np():
    rows = [
        _row("horovod+index", 2, seconds=8.0, node=250, data=10, mae=3.00),
        _row("horovod+materialized", 2, seconds=9.0, node=900, data=1000, mae=3.03),
        _row("ddp+index", 2, seconds=8.5, node=260, data=10, mae=3.00),
        _row("ddp+materialized", 2, seconds=10.0, node=1000, data=1000, mae=3.03),
        _row("horovod+index", 1, seconds=5.0, node=100, mae=3.0),  # np=1 without a DDP row
    ]
    by_np = {r["np"]: r for r in ratios(rows)}
    r2 = by_np[2]
    assert r2["node_memory_share"] == pytest.approx(0.25)
    assert r2["end_to_end_ratio"] == pytest.approx(0.8)
    assert r2["data_bytes_share"] == pytest.approx(0.01)
    assert r2["val_mae_spread"] == pytest.approx(0.01)
    assert r2["configs"] == 4
    r1 = by_np[1]
    assert r1["node_memory_share"] is None and r1["end_to_end_ratio"] is None
    assert r1["val_mae_spread"] == 0.0
    table = ratios_table(ratios(rows))
    assert "| 2 | 25.0 % | 0.80x | 1.0 % | 1.000 % |" in table
    assert "| 1 | n/a | n/a | n/a | 0.000 % |" in table


def test_mae_spread_is_none_for_nan_or_zero():
    assert ratios([_row("horovod+index", 2, mae=float("nan")), _row("ddp+index", 2)])[0]["val_mae_spread"] is None
    assert ratios([_row("horovod+index", 2, mae=0.0), _row("ddp+index", 2)])[0]["val_mae_spread"] is None


def test_markdown_table_and_csv_round_trip(tmp_path):
    rows = median_rows([_row(v.name, 2, seconds=10.0 + i, node=1_234_567_890) for i, v in enumerate(VARIANTS)])
    text = markdown_table(rows)
    lines = text.splitlines()
    assert len(lines) == 2 + len(VARIANTS)
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    assert "| horovod+index | 2 | 10.0 | 1.00 | 5.00 | 1000 | 500 | 1235 | 100 | 0 | 3.0000 |" in text
    path = tmp_path / "c.csv"
    write_csv(rows, path, CSV_COLUMNS)
    back = read_csv(path)
    assert back == [{k: r[k] for k in CSV_COLUMNS} for r in rows]


def test_plot_writes_a_png(tmp_path):
    rows = [_row(v.name, n, seconds=5.0 * n + i) for n in (1, 2) for i, v in enumerate(VARIANTS)]
    compare.plot(rows, tmp_path / "c.png", title="t")
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_has_header_table_ratios_and_jobs(tmp_path):
    rows = [_row(v.name, 2) for v in VARIANTS]
    settings = Settings(data=tmp_path / "d.h5", hidden=8, cores=2)
    text = compare.report(rows, settings, [2], 3, command="hvd-stgnn bench compare --np 2 --out X",
                          machine={"host": "h", "cores": 2, "cpu": "CPU X", "ram_bytes": 2**34},
                          vers={"python": "3.11", "torch": "2", "horovod": "0.28", "mpi4py": "4",
                                "mpirun": "mpirun (Open MPI) 4.1.4"}, date="today")
    for needle in ["host `h`, 2 cores", "CPU X", "16.0 GiB", "Horovod 0.28", "mpirun (Open MPI) 4.1.4",
                   "`hvd-stgnn bench compare --np 2 --out X`", "median over the repeats", "## Ratios",
                   "| horovod+index | 2 |", "--backend ddp --data-mode materialized", "date: today"]:
        assert needle in text, needle


# --- the jobs' command lines ----------------------------------------------------------------


def test_job_commands_differ_only_in_backend_and_data_mode(tmp_path):
    settings = Settings(data=tmp_path / "d.h5", hidden=8, epochs=2, batch_size=16, seed=3, fusion_mb=25,
                        train_args=["--lr", "0.01"], cores=2)
    cmds = {v.name: job_command(v, 2, settings, tmp_path / f"{v.name}.json") for v in VARIANTS}
    for name, cmd in cmds.items():
        assert cmd[:4] == ["bash", str(compare.LAUNCHER), "-np", "2"]
        text = " ".join(cmd)
        for flag in ["--hidden 8", "--epochs 2", "--batch-size 16", "--seed 3", "--threads 1",
                     "--fusion-threshold-mb 25", "--no-baselines", "--lr 0.01", f"--results {tmp_path / name}.json"]:
            assert flag in text, (name, flag)
    assert "--backend horovod --data-mode index --shuffle shard" in " ".join(cmds["horovod+index"])
    assert "--backend ddp --data-mode materialized" in " ".join(cmds["ddp+materialized"])
    strip = {"horovod", "ddp", "index", "materialized", "--shuffle", "shard"}
    shapes = {tuple(w for w in cmd if w not in strip and not w.endswith(".json")) for cmd in cmds.values()}
    assert len(shapes) == 1  # everything else is the same
    assert "--threads 4" in " ".join(job_command(VARIANTS[0], 1, Settings(data="d", cores=4), tmp_path / "r.json"))


# --- argument errors (no job runs) ------------------------------------------------------------


@pytest.mark.parametrize("argv, match", [
    (["--np", "1,zero"], "--np"),
    (["--np", "0"], "--np"),
    (["--preset", "nope"], "unknown preset 'nope'"),
    (["--model", "nope"], "unknown model 'nope'"),
    (["--repeats", "0"], "--repeats"),
    (["--train-args", "--backend single"], "--backend is set by the benchmark"),
    (["--train-args=--results=x.json"], "--results is set by the benchmark"),
    (["--train-args", "'unbalanced"], "--train-args"),
])
def test_bad_arguments_are_config_errors(tmp_path, argv, match):
    with pytest.raises(ConfigError, match=match):
        cmd_compare(_args(*argv, "--out", str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()


def test_missing_data_file(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        cmd_compare(_args("--data", str(tmp_path / "none.h5"), "--out", str(tmp_path / "out")))


# --- real jobs --------------------------------------------------------------------------------


@pytest.mark.mpi
def test_failing_job_names_it_and_keeps_its_log(tiny_h5, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(UserError) as info:
        cmd_compare(_args("--data", str(tiny_h5), "--np", "2", "--hidden", "8", "--threads", "1",
                          "--train-args", "--lr -1", "--out", str(out)))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("job horovod+index np=2 failed (exit status 2)")
    assert "--lr must be > 0" in message            # the trainer's own error line
    assert "jobs/local.sh -np 2" in message          # the command
    log = out / "raw" / "horovod+index_np2_r1.log"
    assert str(log) in message
    text = log.read_text()
    assert "# command: bash" in text and "## stderr" in text and "--lr must be > 0" in text
    assert "[1/4] horovod+index np=2" in capsys.readouterr().err
    assert not (out / "compare.csv").exists()


@pytest.mark.mpi
@pytest.mark.slow
def test_end_to_end_four_jobs(tiny_h5, tmp_path, capsys):
    out = tmp_path / "out"
    assert cmd_compare(_args("--data", str(tiny_h5), "--np", "2", "--epochs", "1", "--hidden", "8",
                             "--threads", "1", "--job-timeout", "240", "--out", str(out))) == 0
    rows = read_csv(out / "compare.csv")
    assert [(r["name"], r["np"], r["repeats"]) for r in rows] == [(v.name, 2, 1) for v in VARIANTS]
    for r in rows:
        for metric in METRICS:
            if metric != "gpu_peak_bytes":
                assert r[metric] > 0 and math.isfinite(r[metric]), (r["name"], metric)
        assert r["gpu_peak_bytes"] == 0  # CPU
        assert r["end_to_end_seconds"] > r["prepare_seconds"]
    by_name = {r["name"]: r for r in rows}
    # Materialized holds every window of the rank's share; index only start indices.
    assert by_name["ddp+materialized"]["data_bytes_per_rank"] > 10 * by_name["ddp+index"]["data_bytes_per_rank"]

    mae = {name: r["final_val_mae"] for name, r in by_name.items()}
    # Same data path, same seed, 2 ranks on CPU: Horovod's averaged allreduce and DDP's bucketed
    # allreduce add the same two gradients, so the runs are bit-identical.
    assert mae["horovod+index"] == mae["ddp+index"]
    assert mae["horovod+materialized"] == mae["ddp+materialized"]
    # index (each rank a contiguous shard, shuffled within) and materialized (DistributedSampler,
    # one global permutation) see the same windows in another order: same model, init and number
    # of steps, different batches. Observed spread after one epoch: ~0.02 %; allow 1 %.
    assert mae["horovod+index"] == pytest.approx(mae["ddp+materialized"], rel=0.01)

    md = (out / "compare.md").read_text()
    assert "## Ratios" in md and "| ddp+materialized | 2 |" in md and "mpirun (Open MPI)" in md
    png = out / "compare.png"
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    raw = out / "raw"
    for v in VARIANTS:
        results = json.loads((raw / f"{v.name}_np2_r1.json").read_text())
        assert results["backend"] == v.backend and results["world_size"] == 2
        assert results["config"]["data"]["data_mode"] == v.data_mode
        assert results["config"]["parallel"]["fusion_threshold_mb"] == 25.0
        assert results["config"]["train"]["threads"] == 1
        assert (raw / f"{v.name}_np2_r1.log").read_text().startswith(f"# job: {v.name} np=2")
    captured = capsys.readouterr()
    assert "[4/4] ddp+materialized np=2" in captured.err
    assert markdown_table(rows).splitlines()[0] in captured.out
