"""CLI: subcommands work; bad input gives one clear line and a non-zero exit."""

import json

import numpy as np
import pytest

from helpers import SHARED_DATA, our_error_lines, run_cli, run_mpi


def test_data_synth_and_info(tmp_path):
    out = tmp_path / "d.h5"
    r = run_cli("data", "synth", "--preset", "tiny", "--nodes", "8", "--steps", "600", "--seed", "3", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "T=600 N=8" in r.stdout
    r = run_cli("data", "info", str(out), "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert (info["steps"], info["sensors"], info["interval_s"]) == (600, 8, 300)
    assert info["start"] == "2024-01-01 00:00"


def _assert_one_line(r, *fragments):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in r.stderr


def test_missing_data_file(tmp_path):
    missing = tmp_path / "nope.h5"
    _assert_one_line(run_cli("train", "--data", str(missing)), str(missing), "no such file")


def test_unknown_model(small_h5):
    _assert_one_line(run_cli("train", "--data", str(small_h5), "--model", "gcnn"), "--model", "invalid choice: 'gcnn'")


@pytest.mark.parametrize(
    "flags,fragment",
    [
        (["--epochs", "0"], "--epochs must be >= 1"),
        (["--batch-size", "x"], "--batch-size"),
        (["--split", "0.5,0.5"], "--split"),
        (["--backend", "nccl"], "--backend"),
    ],
)
def test_bad_flags(small_h5, flags, fragment):
    _assert_one_line(run_cli("train", "--data", str(small_h5), *flags), fragment)


def test_data_not_hdf5(tmp_path):
    bad = tmp_path / "speed.csv"
    bad.write_text("a,b\n1,2\n")
    _assert_one_line(run_cli("train", "--data", str(bad)), str(bad), "not a readable HDF5 file")


def test_series_too_short_for_a_split(tmp_path):
    out = tmp_path / "short.h5"
    assert run_cli("data", "synth", "--nodes", "4", "--steps", "25", "--out", str(out)).returncode == 0
    _assert_one_line(run_cli("train", "--data", str(out), "--backend", "single"), str(out), "cannot be split")


@pytest.mark.mpi
@pytest.mark.parametrize("flags,fragment", [(["--model", "gcnn"], "invalid choice"), ([], "no such file")])
def test_bad_input_under_mpirun_prints_once_and_every_rank_fails(tmp_path, flags, fragment):
    r = run_mpi(2, "train", "--data", str(tmp_path / "nope.h5"), *flags, timeout=60)
    assert r.returncode != 0
    lines = our_error_lines(r.stderr)
    assert len(lines) == 1 and fragment in lines[0], r.stderr
    assert "Traceback" not in r.stderr


METR_LA_WEEK = SHARED_DATA / "metr-la-week"


def test_data_import_both_real_formats_give_the_same_speeds(tmp_path):
    a, b = tmp_path / "dcrnn.h5", tmp_path / "tgcn.h5"
    r = run_cli("data", "import", "--format", "dcrnn-h5", "--speed", str(METR_LA_WEEK / "metr-la-week.h5"),
                "--graph", str(METR_LA_WEEK / "adj_mx.pkl"), "--out", str(a))
    assert r.returncode == 0, r.stderr
    assert "T=2016 N=207 E=1515" in r.stdout
    r = run_cli("data", "import", "--format", "tgcn-csv", "--speed", str(METR_LA_WEEK / "los_speed.csv"),
                "--graph", str(METR_LA_WEEK / "los_adj.csv"), "--start", "2012-03-01 00:00", "--out", str(b))
    assert r.returncode == 0, r.stderr
    from hvd_stgnn.data import read_dataset

    da, db = read_dataset(a), read_dataset(b)
    assert da.sensor_ids == db.sensor_ids and da.sensor_ids[0] == "773869"
    np.testing.assert_array_equal(da.speed, db.speed)
    np.testing.assert_array_equal(da.timestamps, db.timestamps)
    info = json.loads(run_cli("data", "info", str(a), "--json").stdout)
    assert (info["start"], info["end"], info["interval_s"]) == ("2012-03-01 00:00", "2012-03-07 23:55", 300)


def test_data_import_needs_start_for_csv(tmp_path):
    _assert_one_line(
        run_cli("data", "import", "--format", "tgcn-csv", "--speed", str(METR_LA_WEEK / "los_speed.csv"),
                "--graph", str(METR_LA_WEEK / "los_adj.csv"), "--out", str(tmp_path / "x.h5")),
        "--start is required",
    )
    assert not (tmp_path / "x.h5").exists()


def test_data_import_mismatched_sensors_is_one_line(tmp_path):
    import pickle

    ids, id_map, adj = pickle.load(open(METR_LA_WEEK / "adj_mx.pkl", "rb"), encoding="latin1")
    ids = ["999999", *ids[1:]]
    bad = tmp_path / "adj.pkl"
    bad.write_bytes(pickle.dumps((ids, {s: i for i, s in enumerate(ids)}, adj)))
    r = run_cli("data", "import", "--format", "dcrnn-h5", "--speed", str(METR_LA_WEEK / "metr-la-week.h5"),
                "--graph", str(bad), "--out", str(tmp_path / "x.h5"))
    _assert_one_line(r, "sensor ids differ", "999999")
    assert not (tmp_path / "x.h5").exists()


def test_data_info_counts_nan_as_missing(tmp_path):
    import h5py

    out = tmp_path / "d.h5"
    assert run_cli("data", "synth", "--nodes", "5", "--steps", "100", "--out", str(out), "--quiet").returncode == 0
    with h5py.File(out, "a") as f:
        f["speed"][0:10, 0] = np.nan
    info = json.loads(run_cli("data", "info", str(out), "--json").stdout)
    assert info["nonfinite_readings"] == 10 and info["missing_share"] >= 10 / 500


def test_bench_batching_and_memory_print_their_figures(small_h5):
    r = run_cli("bench", "batching", "--nodes", "30", "--repeats", "5", "--json")
    assert r.returncode == 0, r.stderr
    (row,) = json.loads(r.stdout)
    assert row["nodes"] == 30 and row["memcpy_ms"] > 0 and row["gather_over_memcpy"] > 0
    r = run_cli("bench", "memory", "--data", str(small_h5), "--np", "1,2", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    one, two = res["rows"]
    assert one["index_node_bytes"] == two["index_node_bytes"] == res["series_bytes"]
    assert two["index_rank_bytes_max"] < one["index_rank_bytes_max"]
    assert two["materialized_node_bytes"] > one["materialized_node_bytes"] > 30 * one["index_node_bytes"]


# --- the dispatcher and the packages' parsers (in-process) ---------------------------------


def _walk(parser, path=("hvd-stgnn",)):
    """(path, parser) of the parser and of every subcommand parser below it."""
    import argparse

    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, (*path, name))


def test_every_subcommand_parser_gives_one_line_usage_errors(capsys):
    from hvd_stgnn.cli import SUBCOMMANDS, _Parser, build_parser

    parser = build_parser()
    parsers = dict(_walk(parser))
    assert set(SUBCOMMANDS) == {"data", "bench", "train", "plan", "profiling"}
    for path in [("data", "import"), ("bench", "models"), ("bench", "compare"), ("train",), ("plan",), ("timeline",),
                 ("plot",)]:
        assert ("hvd-stgnn", *path) in parsers, path
    assert all(isinstance(p, _Parser) for p in parsers.values())
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["bench", "memory", "--np", "0"])
    assert exit_.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("hvd-stgnn bench memory: error: argument --np") and line.endswith("(see --help)")


def test_train_config_file_is_read_by_the_reparse_hook_and_flags_win(tmp_path):
    from hvd_stgnn.cli import build_parser

    path = tmp_path / "run.toml"
    path.write_text('[model]\nhidden = 16\n[train]\nepochs = 7\n')
    parser = build_parser()
    argv = ["train", "--config", str(path), "--epochs", "3"]
    args = parser.parse_args(argv)
    assert vars(args)["model.hidden"] == 64  # the first parse knows nothing of the file
    args = args.reparse(parser, argv, args)
    assert (vars(args)["model.hidden"], vars(args)["train.epochs"]) == (16, 3)
    plain = parser.parse_args(["train"])
    assert plain.reparse(parser, ["train"], plain) is plain  # no --config: nothing to do


@pytest.mark.parametrize("toml, fragment", [("[train]\nepochs = 0\n", "--epochs must be >= 1"),
                                            ("[train\n", "not a valid TOML")])
def test_bad_config_file_is_one_line_from_main(tmp_path, capsys, toml, fragment):
    from hvd_stgnn.cli import main

    path = tmp_path / "run.toml"
    path.write_text(toml)
    assert main(["train", "--config", str(path), "--data", str(tmp_path / "d.h5")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("hvd-stgnn train: error: ") and fragment in line, line


def test_import_flags_come_from_the_importer_registry(tmp_path):
    from hvd_stgnn.cli import build_parser
    from hvd_stgnn.data.cli import importer_kwargs
    from hvd_stgnn.errors import ConfigError

    parse = lambda *flags: build_parser().parse_args(  # noqa: E731
        ["data", "import", "--speed", "s", "--graph", "g", "--out", "o", *flags])
    assert importer_kwargs(parse("--format", "dcrnn-h5", "--start", "2012-03-01 00:00")) == {
        "key": None, "fill_gaps": False}
    assert importer_kwargs(parse("--format", "pgt-npy", "--start", "2012-03-01", "--feature", "1")) == {
        "start": "2012-03-01", "interval_s": 300, "feature": 1}
    assert importer_kwargs(parse("--format", "tgcn-csv", "--start", "x", "--interval", "60", "--key", "k")) == {
        "start": "x", "interval_s": 60}
    with pytest.raises(ConfigError, match=r"^--start is required for --format pgt-npy \(the files carry no timestamps\)$"):
        importer_kwargs(parse("--format", "pgt-npy"))


def test_bench_models_options_are_parsed_by_the_benchmark():
    from hvd_stgnn.bench.models import parse_hidden, parse_models
    from hvd_stgnn.errors import ConfigError
    from hvd_stgnn.models import MODELS

    assert parse_models("") == list(MODELS) and parse_models("dcrnn,tgcn") == ["dcrnn", "tgcn"]
    assert parse_hidden("") == {"a3tgcn": 32}
    assert parse_hidden("tgcn=16,a3tgcn=8") == {"a3tgcn": 8, "tgcn": 16}
    for flag, parse, bad in [("--models", parse_models, "tgcn,lstm"), ("--hidden", parse_hidden, "tgcn"),
                             ("--hidden", parse_hidden, "tgcn=x"), ("--hidden", parse_hidden, "lstm=8")]:
        with pytest.raises(ConfigError, match=f"^{flag}"):
            parse(bad)


def test_bench_tables_keep_their_layout(capsys):
    from hvd_stgnn.bench.cli import MODELS_COLUMNS, print_rows

    row = {"model": "tgcn", "nodes": 207, "batch_size": 64, "hidden": 64, "graph": "dense", "parameters": 12345,
           "step_ms": 3.14159}
    print_rows([row], MODELS_COLUMNS, as_json=False)
    assert capsys.readouterr().out.splitlines() == [
        "   model       N    B hidden  graph    params   step ms",
        "    tgcn     207   64     64  dense    12,345       3.1",
    ]
    print_rows([row], MODELS_COLUMNS, as_json=True)
    assert json.loads(capsys.readouterr().out) == [row]
