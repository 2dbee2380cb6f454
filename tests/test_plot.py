"""`hvd-stgnn plot`: metrics.jsonl (+ results.json) -> a PNG of the loss and MAE curves."""

import argparse
import json
import math
import struct

import numpy as np
import pytest

from hvd_stgnn.errors import ConfigError, DataError, UserError
from hvd_stgnn.profiling.cli import add_plot_parser
from hvd_stgnn.profiling.curves import (
    best_epoch,
    horizon_mae_series,
    moving_average,
    plot_run,
    read_metrics,
    read_results,
)
from hvd_stgnn.results import Results

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _step(gs, loss, epoch=1, lr=1e-3):
    return {"event": "step", "epoch": epoch, "step": gs, "global_step": gs, "loss": loss, "lr": lr, "time": gs * 0.1}


def _epoch(e, train, val):
    return {"event": "epoch", "epoch": e, "train_mae": train, "val_mae": val, "seconds": 2.0, "lr": 1e-3}


def _records(epochs=4, steps_per_epoch=30, every=5):
    out = []
    for e in range(1, epochs + 1):
        for s in range(every, steps_per_epoch + 1, every):
            gs = (e - 1) * steps_per_epoch + s
            out.append(_step(gs, 5.0 / math.sqrt(gs) + 0.1 * math.sin(gs), epoch=e, lr=1e-3 * 0.5 ** (e - 1)))
        out.append(_epoch(e, 4.0 - 0.5 * e, 4.2 - 0.4 * e + (0.5 if e == epochs else 0.0)))
    return out


def _write(path, records, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return path


RESULTS = {
    "model": "tgcn",
    "tested_epoch": 3,
    "test": {"mae": {"15min": 2.5, "30min": 3.0, "60min": 3.6, "avg": 3.0}, "rmse": {}, "mape": {}},
    "baselines": {
        "persistence": {"mae": {"15min": 2.9, "30min": 3.6, "60min": 4.8, "avg": 3.8}},
        "historical_average": {"mae": {"15min": 4.1, "30min": 4.1, "60min": 4.1, "avg": float("nan")}},
    },
}


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, data[:16]
    assert len(data) > 10_000, len(data)  # a drawn figure, not an empty canvas
    return struct.unpack(">II", data[16:24])  # IHDR width, height


def _run_cli(*argv):
    """The subcommand as cli.py builds it: parse, then call args.func."""
    parser = argparse.ArgumentParser(prog="hvd-stgnn")
    add_plot_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    assert args.command == "plot"
    return args.func(args)


# --- figures ----------------------------------------------------------------------------


def test_plot_with_results_has_three_panels(tmp_path):
    run = tmp_path / "run-a"
    run.mkdir()
    _write(run / "metrics.jsonl", _records())
    (run / "results.json").write_text(json.dumps(RESULTS))
    out, metrics = plot_run(run)
    assert out == run / "curves.png"
    width, height = _png_size(out)
    assert (width, height) == (1800, 450)
    assert len(metrics.steps) == 24 and len(metrics.epochs) == 4


def test_plot_without_results_has_two_panels(tmp_path):
    run = tmp_path / "run-b"
    run.mkdir()
    _write(run / "metrics.jsonl", _records())
    out, _ = plot_run(run, tmp_path / "sub" / "c.png")
    assert out == tmp_path / "sub" / "c.png"
    assert _png_size(out) == (1200, 450)


def test_cli_writes_default_path_and_prints_it(tmp_path, capsys):
    run = tmp_path / "run-c"
    run.mkdir()
    _write(run / "metrics.jsonl", _records(), tail='{"event": "step", "epo')
    assert _run_cli("plot", str(run)) == 0
    out = capsys.readouterr().out
    assert str(run / "curves.png") in out
    assert "skipped 1 truncated line" in out
    _png_size(run / "curves.png")

    assert _run_cli("plot", str(run), "--out", str(tmp_path / "x.png")) == 0
    assert str(tmp_path / "x.png") in capsys.readouterr().out
    _png_size(tmp_path / "x.png")


def test_partial_runs_still_plot(tmp_path):
    """Killed in epoch 1 (steps only), or epochs without step records, or a NaN loss."""
    only_steps = tmp_path / "steps"
    only_steps.mkdir()
    _write(only_steps / "metrics.jsonl", [_step(1, 3.0), _step(2, float("nan")), _step(3, 2.0)])
    _png_size(plot_run(only_steps)[0])

    only_epochs = tmp_path / "epochs"
    only_epochs.mkdir()
    _write(only_epochs / "metrics.jsonl", [_epoch(1, 3.0, float("nan")), _epoch(2, 2.5, 2.7)])
    _png_size(plot_run(only_epochs)[0])


# --- reading ----------------------------------------------------------------------------


def test_resume_keeps_the_last_record_per_epoch_and_step(tmp_path):
    first = _records(epochs=3)           # killed after epoch 3 ...
    resumed = [r for r in _records(epochs=4) if r.get("epoch", 0) >= 3]  # ... resumed from epoch 2's checkpoint
    for r in resumed:
        if r["event"] == "epoch":
            r["val_mae"] = 1.0 + r["epoch"]          # tell the rerun's records apart
        else:
            r["loss"] = -1.0
    path = _write(tmp_path / "metrics.jsonl", first + [{"event": "checkpoint", "epoch": 2}] + resumed)
    m = read_metrics(path)
    assert [r["epoch"] for r in m.epochs] == [1, 2, 3, 4]
    assert [r["val_mae"] for r in m.epochs][2:] == [4.0, 5.0]
    gs = [r["global_step"] for r in m.steps]
    assert gs == sorted(set(gs)) and len(gs) == 24
    assert all(r["loss"] == -1.0 for r in m.steps if r["global_step"] > 60)
    assert all(r["loss"] != -1.0 for r in m.steps if r["global_step"] <= 60)


def test_resume_drops_the_killed_runs_stale_tail(tmp_path):
    """Steps the killed run logged past the resume point, and not logged again, are dropped."""
    records = [_step(g, 9.0) for g in (10, 20, 30, 40)] + [_step(g, 1.0) for g in (25, 35)]
    m = read_metrics(_write(tmp_path / "metrics.jsonl", records))
    assert [(r["global_step"], r["loss"]) for r in m.steps] == [(10, 9.0), (20, 9.0), (25, 1.0), (35, 1.0)]


def test_truncated_last_line_is_skipped(tmp_path):
    path = _write(tmp_path / "metrics.jsonl", _records(epochs=1), tail='{"event": "epoch", "epoch": 2, "train_m')
    m = read_metrics(path)
    assert m.skipped == 1 and [r["epoch"] for r in m.epochs] == [1]


def test_truncated_line_then_resumed_append_is_recovered(tmp_path):
    """A killed job's half line, then the resumed run's first record on the same line."""
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps(_step(10, 3.0)) + "\n" + '{"event": "step", "glo' + json.dumps(_step(20, 2.0)) + "\n"
                    + json.dumps(_step(30, 1.0)) + "\n")
    m = read_metrics(path)
    assert [r["global_step"] for r in m.steps] == [10, 20, 30] and m.skipped == 1


def test_unknown_events_and_blank_lines_are_ignored(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"event": "start", "model": "dcrnn", "world_size": 2}\n\n'
                    + json.dumps(_step(1, 2.0)) + "\n" + '{"event": "future", "x": {"y": 1}}\n')
    m = read_metrics(path)
    assert len(m.steps) == 1 and m.epochs == [] and m.model == "dcrnn"


def test_results_series_and_best_epoch():
    horizons, series = horizon_mae_series(Results.from_dict(RESULTS))
    assert horizons == ["15min", "30min", "60min", "avg"]
    assert list(series) == ["tgcn", "persistence", "historical average"]
    assert math.isnan(series["historical average"][3])
    epochs = [_epoch(1, 3, 3.0), _epoch(2, 2, float("nan")), _epoch(3, 1, 2.5), _epoch(4, 1, 2.5)]
    assert best_epoch(epochs)["epoch"] == 3
    assert best_epoch([_epoch(1, 1, float("nan"))]) is None


def test_moving_average_skips_non_finite():
    ma = moving_average([1.0, 3.0, float("nan"), 5.0, 7.0], 2)
    np.testing.assert_allclose(ma, [1.0, 2.0, 3.0, 5.0, 6.0])
    assert np.isnan(moving_average([float("nan")], 3)[0])


# --- errors: one UserError line naming the file -----------------------------------------


def test_missing_run_dir_and_metrics(tmp_path):
    with pytest.raises(UserError, match="nope: no such run directory"):
        plot_run(tmp_path / "nope")
    with pytest.raises(UserError, match=r"metrics\.jsonl: no such file"):
        plot_run(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="file: not a directory"):
        plot_run(tmp_path / "file")


@pytest.mark.parametrize("text, fragment", [
    ("", "empty file"),
    ("\n  \n", "empty file"),
    ('{"event": "step", "glob', "no valid step or epoch records (line 1"),
    ('{"event": "start"}\n{"event": "other"}\n', "no valid step or epoch records"),
    (json.dumps(_step(1, 2.0)) + "\nnot json\n" + json.dumps(_step(2, 2.0)) + "\n", "metrics.jsonl:2: not a JSON object"),
    ("[1, 2]\n" + json.dumps(_step(1, 2.0)) + "\n", "metrics.jsonl:1: not a JSON object"),
    ('{"event": "step", "global_step": "ten", "loss": 1}\n', "metrics.jsonl:1: step record: 'global_step' must be an integer"),
    ('{"event": "step", "global_step": 3}\n', "metrics.jsonl:1: step record: 'loss' must be a number"),
    ('{"event": "epoch", "epoch": 1.5}\n', "metrics.jsonl:1: epoch record: 'epoch' must be an integer"),
])
def test_bad_metrics_files(tmp_path, text, fragment):
    (tmp_path / "metrics.jsonl").write_text(text)
    with pytest.raises(DataError) as info:
        plot_run(tmp_path)
    message = str(info.value)
    assert fragment in message and "metrics.jsonl" in message and "\n" not in message
    assert not (tmp_path / "curves.png").exists()


@pytest.mark.parametrize("text, fragment", [
    ("{", "not valid JSON"),
    ("[]", "expected a JSON object"),
    ('{"model": "tgcn"}', "no test MAE table"),
])
def test_bad_results_file(tmp_path, text, fragment):
    _write(tmp_path / "metrics.jsonl", _records(epochs=1))
    (tmp_path / "results.json").write_text(text)
    with pytest.raises(DataError, match="results.json: " + fragment):
        plot_run(tmp_path)
    assert read_results(tmp_path / "absent.json") is None


def test_bad_out_suffix(tmp_path):
    _write(tmp_path / "metrics.jsonl", _records(epochs=1))
    with pytest.raises(ConfigError, match=r"--out .*curves\.xyz: unknown image type"):
        _run_cli("plot", str(tmp_path), "--out", str(tmp_path / "curves.xyz"))
