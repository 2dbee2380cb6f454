"""`hvd-stgnn bench memory-step` (hvd_stgnn/bench/memory_step.py): flags, ratios and targets,
the report; the measurement in-process for every model (checkpointed saves less), and one
real run of the command (a fresh worker process per model and mode) at a tiny size."""

from __future__ import annotations

import json
import sys

import pytest

from helpers import run_cli

from hvd_stgnn.bench import memory_step as ms
from hvd_stgnn.bench.report import read_csv
from hvd_stgnn.cli import main
from hvd_stgnn.errors import ConfigError
from hvd_stgnn.models.checkpointing import CHECKPOINT_UNITS

TINY = ("--nodes", "40", "--batch-size", "2", "--steps", "1", "--hidden", "8", "--threads", "1")


def _row(model, mode, saved, peak, seconds, recompute=None):
    return {"model": model, "mode": mode, "saved_bytes": saved, "recompute_bytes": recompute,
            "peak_growth_bytes": peak, "step_seconds": seconds}


# --- flags --------------------------------------------------------------------------------------


def test_units_match_the_models_checkpointing():
    assert ms.UNITS == CHECKPOINT_UNITS
    assert set(ms.TARGETS) == set(ms.MODELS) == set(CHECKPOINT_UNITS)
    assert ms.modes_for("gwnet") == ("none", "block") and ms.modes_for("dcrnn") == ("none", "step")


def test_parse_models():
    assert ms.parse_models("dcrnn,gwnet") == ["dcrnn", "gwnet"]
    assert ms.parse_models(" tgcn ") == ["tgcn"]
    for text, match in (("foo", "'foo' is not a model"), ("tgcn,,dcrnn", "is not a model"), ("", "is not a model"),
                        ("tgcn,tgcn", "appears twice")):
        with pytest.raises(ConfigError, match=f"^--models: .*{match}"):
            ms.parse_models(text)


@pytest.mark.parametrize("field, value, flag", [
    ("nodes", 1, "--nodes must be at least 2"), ("batch_size", 0, "--batch-size must be a positive integer"),
    ("steps", 0, "--steps"), ("hidden", -1, "--hidden"), ("layers", 0, "--layers"), ("degree", 0, "--degree"),
    ("threads", -2, "--threads"), ("mmap_threshold", -1, "--malloc-mmap-threshold must be 0 or more"),
])
def test_check_settings_names_the_flag(field, value, flag):
    with pytest.raises(ConfigError, match=f"^{flag}.*got {value}"):
        ms.check_settings(ms.Settings(**{field: value}))
    ms.check_settings(ms.Settings())


@pytest.mark.parametrize("argv, flag", [
    (["--models", "tgcn,lstm"], "--models: 'lstm' is not a model"), (["--nodes", "0"], "--nodes must be"),
    (["--batch-size", "0"], "--batch-size must be"), (["--steps", "-1"], "--steps must be"),
    (["--threads", "0"], "--threads must be"), (["--degree", "0"], "--degree must be"),
    (["--nodes", "many"], "argument --nodes: invalid int value"),
])
def test_bad_flags_one_line_exit_2(argv, flag, capsys):
    try:
        status = main(["bench", "memory-step", *argv])
    except SystemExit as exc:  # a usage error (argparse) ends in the parser
        status = exc.code
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and (err[0].startswith("hvd-stgnn bench: error: " + flag)
                              or err[0].startswith("hvd-stgnn bench memory-step: error: " + flag)), err


def test_bad_flag_in_a_real_process(tmp_path):
    r = run_cli("bench", "memory-step", "--hidden", "0", "--out", str(tmp_path / "o"), timeout=120)
    assert r.returncode == 2 and r.stderr.strip() == "hvd-stgnn bench: error: --hidden must be a positive integer (got 0)"
    assert not (tmp_path / "o").exists()


# --- ratios and targets ---------------------------------------------------------------------------


def test_ratios():
    c = ms.compare(_row("dcrnn", "none", 800, 1000, 2.0), _row("dcrnn", "step", 100, 400, 2.5, recompute=100))
    assert c == {"model": "dcrnn", "mode": "step", "saved_ratio": 8.0, "activation_ratio": 4.0, "peak_ratio": 2.5,
                 "time_ratio": 1.25}
    assert ms.ratio(1, 0) is None and ms.ratio(None, 2) is None and ms.ratio(3, 2) == 1.5
    c = ms.compare(_row("tgcn", "none", 800, 0, 1.0), _row("tgcn", "step", 0, 0, 1.0, recompute=0))
    assert c["saved_ratio"] is None and c["peak_ratio"] is None and c["time_ratio"] == 1.0


@pytest.mark.parametrize("model, saved, slower, saved_ok, time_ok, ok", [
    ("dcrnn", 4.0, 1.5, True, True, True),        # both at the edge
    ("dcrnn", 3.99, 1.2, False, True, False),
    ("gwnet", 5.0, 1.51, True, False, False),
    ("gwnet", None, 1.0, False, True, False),
    ("tgcn", 3.0, 9.0, True, None, True),        # no time target for the recurrent GCNs
    ("a3tgcn", 2.9, 1.0, False, None, False),
])
def test_targets(model, saved, slower, saved_ok, time_ok, ok):
    t = ms.check_targets(model, {"saved_ratio": saved, "time_ratio": slower})
    assert (t["saved_ok"], t["time_ok"], t["ok"]) == (saved_ok, time_ok, ok)
    assert t["saved_target"] == (4.0 if model in ("dcrnn", "gwnet") else 3.0)


def test_summarize_and_tables():
    rows = [_row("tgcn", "none", 3 << 30, 5 << 30, 4.0), _row("tgcn", "step", 1 << 29, 1 << 30, 5.0, 1 << 20),
            _row("gwnet", "none", 100, 10, 1.0)]  # gwnet without its block row: no comparison
    comparisons, targets = ms.summarize(rows)
    assert [c["model"] for c in comparisons] == ["tgcn"] and comparisons[0]["saved_ratio"] == 6.0
    assert targets[0]["ok"] is True
    text = ms.tables({"rows": rows, "comparisons": comparisons, "targets": targets})
    assert "| T-GCN | none | 3.00 GiB | - | 5.00 GiB | 4.00 s |" in text
    assert "| T-GCN | step | 512 MiB | 1.00 MiB | 1.00 GiB | 5.00 s |" in text
    assert "| T-GCN | ratio | none/step 6.00x | (saved + recompute) 5.99x | none/step 5.00x | step/none 1.25x |" in text
    assert "| T-GCN | 6.00x | >= 3x | yes | 1.25x | - | - |" in text
    assert ms.fmt_bytes(1536) == "1.50 KiB" and ms.fmt_bytes(12) == "12 B" and ms.fmt_bytes(None) == "-"


# --- the measurement ------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ms.MODELS)
def test_checkpointing_saves_less_for_every_model(model):
    """In-process (the same code a worker runs), tiny: the checkpointed forward keeps fewer
    saved bytes, and one region's recomputation is measured."""
    s = ms.Settings(nodes=40, batch_size=2, steps=1, hidden=8, threads=1)
    none, unit = (ms.measure(model, mode, s) for mode in ms.modes_for(model))
    assert none["mode"] == "none" and unit["mode"] == CHECKPOINT_UNITS[model]
    assert 0 < unit["saved_bytes"] < none["saved_bytes"], (none["saved_bytes"], unit["saved_bytes"])
    assert none["recompute_bytes"] is None and 0 < unit["recompute_bytes"] < none["saved_bytes"]
    for row in (none, unit):
        assert row["peak_rss_bytes"] >= row["rss_before_bytes"] > 0 and row["peak_growth_bytes"] >= 0
        assert row["step_seconds"] > 0 and len(row["step_seconds_all"]) == 1 and row["parameters"] > 0


def test_real_run_writes_json_csv_md(tmp_path, capsys):
    """The command itself, one fresh worker per model and mode (both units: step, block)."""
    out = tmp_path / "out"
    assert main(["bench", "memory-step", "--models", "tgcn,gwnet", *TINY, "--out", str(out), "--json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    keys = [("tgcn", "none"), ("tgcn", "step"), ("gwnet", "none"), ("gwnet", "block")]
    assert [(r["model"], r["mode"]) for r in result["rows"]] == keys
    for r in result["rows"]:
        assert (r["nodes"], r["batch_size"], r["steps"], r["hidden"], r["threads"]) == (40, 2, 1, 8, 1)
    for r in result["rows"][1::2]:
        none = result["rows"][result["rows"].index(r) - 1]
        assert r["saved_bytes"] < none["saved_bytes"] and r["recompute_bytes"] > 0
    assert [c["model"] for c in result["comparisons"]] == ["tgcn", "gwnet"]
    assert all(c["saved_ratio"] > 1 for c in result["comparisons"])
    assert result["command"] == ("hvd-stgnn bench memory-step --models tgcn,gwnet --nodes 40 --batch-size 2 --steps 1 "
                                 f"--hidden 8 --layers 2 --degree 3 --threads 1 --malloc-mmap-threshold 0 --out {out}")
    assert json.loads((out / "memory_step.json").read_text())["rows"] == result["rows"]
    csv_rows = read_csv(out / "memory_step.csv", ("model", "mode", "recompute_bytes"))
    assert list(csv_rows[0]) == list(ms.CSV_COLUMNS)
    assert [(r["model"], r["mode"]) for r in csv_rows] == keys
    assert csv_rows[0]["recompute_bytes"] == "" and int(csv_rows[1]["recompute_bytes"]) > 0
    md = (out / "memory_step.md").read_text()
    for needle in ["# Activation checkpointing", "- machine: ", " cores", "- torch ", result["command"],
                   "| T-GCN | none |", "| T-GCN | step |", "| Graph WaveNet | block |", "| Graph WaveNet | ratio |",
                   "| Graph WaveNet | ", ">= 4x", "<= 1.5x"]:
        assert needle in md, needle
    assert "[1/4] tgcn none: started (N=40, B=2, 1 timed step(s), 1 thread(s))" in captured.err
    assert "[4/4] gwnet block: done in " in captured.err


@pytest.mark.parametrize("code, expect", [
    ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", "killed by SIGKILL (exit status -9; out of memory?)"),
    ("raise RuntimeError('boom')", "exit status 1: RuntimeError: boom"),
])
def test_failing_worker_is_one_line(code, expect, monkeypatch, capsys):
    monkeypatch.setattr(ms, "worker_command", lambda model, mode, s: [sys.executable, "-c", code])
    assert main(["bench", "memory-step", "--models", "dcrnn", *TINY]) == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert lines[-1] == f"hvd-stgnn bench: memory-step worker for dcrnn mode none failed: {expect}"
    assert "Traceback" not in captured.err and captured.out == ""
    assert lines[:-1] == ["bench memory-step: [1/2] dcrnn none: started (N=40, B=2, 1 timed step(s), 1 thread(s))"]


def test_mmap_threshold_reaches_the_worker(monkeypatch):
    """glibc reads MALLOC_MMAP_THRESHOLD_ when a process starts: the parent sets it for the worker."""
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    show = [sys.executable, "-c", "import json, os; print(json.dumps(os.environ.get('MALLOC_MMAP_THRESHOLD_')))"]
    assert ms.run_worker("tgcn", "none", ms.Settings(threads=1, mmap_threshold=65536), show) == "65536"
    assert ms.run_worker("tgcn", "none", ms.Settings(threads=1), show) is None
