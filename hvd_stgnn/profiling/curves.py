"""The loss and MAE curves of a training run (`hvd-stgnn plot RUN_DIR [--out PNG]`, cli.py).

Reads what rank 0 writes into RUN_DIR:

- `metrics.jsonl`, one JSON object per line: `{"event": "step", "global_step", "loss", "lr", ...}`
  every few steps and `{"event": "epoch", "epoch", "train_mae", "val_mae", ...}` once per epoch.
  Other events are ignored. A resumed run appends to the same file: a record whose step
  (epoch) is not after the last one seen starts over from there, so the last record for each
  global_step (epoch) wins and the killed run's stale tail after the resume point is dropped.
  A killed job can leave a truncated last line: it is skipped (and so is a truncated line
  that a resumed run appended its first record to).
- `results.json` (optional; results.Results): the test MAE per horizon of the model and the
  baselines.

Draws (matplotlib, Agg, no display): training loss vs global step (raw + moving average) with
the learning rate on a twin axis; train / validation MAE per epoch with the best validation
epoch marked; test MAE per horizon (model vs baselines) when results.json exists.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from hvd_stgnn.errors import ConfigError, DataError
from hvd_stgnn.results import Results, ResultsFileError

METRICS_FILE = "metrics.jsonl"
RESULTS_FILE = "results.json"
DEFAULT_OUT = "curves.png"
BASELINE_NAMES = {"persistence": "persistence", "historical_average": "historical average"}


@dataclass
class RunMetrics:
    """What metrics.jsonl says, deduplicated and in order."""

    steps: list[dict] = field(default_factory=list)    # sorted by global_step
    epochs: list[dict] = field(default_factory=list)   # sorted by epoch
    skipped: int = 0                                    # truncated lines skipped
    model: str | None = None                            # if some record names it


# --- reading ----------------------------------------------------------------------------


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _parse_object(text: str) -> dict | None:
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def _recover_glued(line: str) -> dict | None:
    """A truncated record followed by a resumed run's first record on the same line:
    return the later record if one parses (`{"event"...` after the fragment)."""
    start = line.find("{", 1)
    while start != -1:
        obj = _parse_object(line[start:])
        if obj is not None and "event" in obj:
            return obj
        start = line.find("{", start + 1)
    return None


def _append_superseding(records: dict[int, dict], key: int, record: dict) -> None:
    """records is in key order; a key not after the last one restarts history from it."""
    if records and key <= next(reversed(records)):
        for stale in [k for k in records if k >= key]:
            del records[stale]
    records[key] = record


def _check_number(path: Path, lineno: int, record: dict, name: str, *, integer: bool = False) -> None:
    value = record.get(name)
    if not _is_number(value) or (integer and not float(value).is_integer()):
        kind = "an integer" if integer else "a number"
        raise DataError(f"{path}:{lineno}: {record.get('event')} record: {name!r} must be {kind} (got {value!r})")


def read_metrics(path: str | Path) -> RunMetrics:
    """Parse metrics.jsonl. Raises DataError naming the file (and line) on a missing file,
    an empty one, a corrupt line before the last, or no step/epoch record at all."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file (does the run directory hold a training run?)")
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None

    numbered = [(i + 1, line) for i, line in enumerate(lines) if line.strip()]
    if not numbered:
        raise DataError(f"{path}: empty file, no records (has the run logged its first step yet?)")

    steps: dict[int, dict] = {}
    epochs: dict[int, dict] = {}
    out = RunMetrics()
    bad_last: str | None = None
    for index, (lineno, line) in enumerate(numbered):
        record = _parse_object(line)
        if record is None:
            if index == len(numbered) - 1:  # a killed job's half-written last line
                out.skipped += 1
                bad_last = f"line {lineno} is not a complete JSON object"
                continue
            record = _recover_glued(line)
            if record is None:
                raise DataError(f"{path}:{lineno}: not a JSON object: {line[:60]!r}")
            out.skipped += 1
        if isinstance(record.get("model"), str):
            out.model = record["model"]
        event = record.get("event")
        if event == "step":
            _check_number(path, lineno, record, "global_step", integer=True)
            _check_number(path, lineno, record, "loss")
            _append_superseding(steps, int(record["global_step"]), record)
        elif event == "epoch":
            _check_number(path, lineno, record, "epoch", integer=True)
            _append_superseding(epochs, int(record["epoch"]), record)
        # unknown events: ignored

    if not steps and not epochs:
        why = f" ({bad_last})" if bad_last else ""
        raise DataError(f"{path}: no valid step or epoch records{why}")
    out.steps = list(steps.values())
    out.epochs = list(epochs.values())
    return out


def read_results(path: str | Path) -> Results | None:
    """results.json, or None when there is none. Raises ResultsFileError if present but
    unusable: not a results file, or one without the test MAE table (a run stopped early)."""
    path = Path(path)
    if not path.exists():
        return None
    results = Results.read(path)
    mae = (results.test or {}).get("mae")
    if not isinstance(mae, dict) or not mae:
        raise ResultsFileError(path, "no test MAE table (expected \"test\": {\"mae\": {\"15min\": ...}})")
    return results


def horizon_mae_series(results: Results) -> tuple[list[str], dict[str, list[float]]]:
    """(horizons, {label: MAE per horizon}) for the model and each baseline in results."""
    horizons = list(results.test["mae"])

    def row(table: dict) -> list[float]:
        return [float(table[h]) if _is_number(table.get(h)) else math.nan for h in horizons]

    series = {results.model or "model": row(results.test["mae"])}
    for name, table in (results.baselines or {}).items():
        if isinstance(table, dict) and isinstance(table.get("mae"), dict):
            series[BASELINE_NAMES.get(name, name)] = row(table["mae"])
    return horizons, series


def best_epoch(epochs: list[dict]) -> dict | None:
    """The epoch record with the lowest finite val_mae (the earliest on ties), or None."""
    best = None
    for rec in epochs:
        v = rec.get("val_mae")
        if _is_number(v) and math.isfinite(v) and (best is None or v < best["val_mae"]):
            best = rec
    return best


def moving_average(values, window: int):
    """Trailing mean over the last `window` finite values (non-finite ones are left out);
    NaN where the window holds none. Same length as `values`."""
    import numpy as np

    x = np.asarray(values, dtype=float)
    window = max(1, int(window))
    ok = np.isfinite(x)
    csum = np.concatenate([[0.0], np.cumsum(np.where(ok, x, 0.0))])
    ccnt = np.concatenate([[0], np.cumsum(ok)])
    hi = np.arange(1, len(x) + 1)
    lo = np.maximum(0, hi - window)
    count = ccnt[hi] - ccnt[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, (csum[hi] - csum[lo]) / np.maximum(count, 1), np.nan)


def smoothing_window(n: int) -> int:
    """About 1/20 of the points, at least 1, at most 200."""
    return max(1, min(200, n // 20))


# --- drawing ----------------------------------------------------------------------------


def _column(records: list[dict], name: str) -> list[float]:
    return [float(r[name]) if _is_number(r.get(name)) else math.nan for r in records]


def _wide_positive(values, decades: int = 2) -> bool:
    """All finite values positive and spanning more than `decades` decades: worth a log axis."""
    finite = [v for v in values if math.isfinite(v)]
    return bool(finite) and min(finite) > 0 and max(finite) / min(finite) > 10**decades


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _panel(ax, title: str, records: list[dict], nothing: str) -> bool:
    """Title a panel; False, and say so on it, when there is nothing to draw yet."""
    ax.set_title(title)
    if not records:
        _empty(ax, nothing)
    return bool(records)


def _draw_loss(ax, steps: list[dict]) -> None:
    if not _panel(ax, "training loss", steps, "no step records yet"):
        return
    x = [int(r["global_step"]) for r in steps]
    loss = _column(steps, "loss")
    ax.plot(x, loss, color="tab:blue", alpha=0.3, linewidth=0.8, label="loss")
    window = smoothing_window(len(x))
    if window > 1:
        ax.plot(x, moving_average(loss, window), color="tab:blue", linewidth=1.8, label=f"mean of {window}")
    if _wide_positive(loss):
        ax.set_yscale("log")
    ax.set_xlabel("global step")
    ax.set_ylabel("loss")
    ax.grid(True, alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()

    lr = _column(steps, "lr")
    if any(math.isfinite(v) for v in lr):
        twin = ax.twinx()
        twin.plot(x, lr, color="tab:orange", linewidth=1.0, linestyle="--", label="learning rate")
        if _wide_positive(lr, decades=1):
            twin.set_yscale("log")
        twin.set_ylabel("learning rate", color="tab:orange")
        twin.tick_params(axis="y", colors="tab:orange")
        h2, l2 = twin.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, loc="upper right", fontsize="small")


def _draw_mae(ax, epochs: list[dict]) -> None:
    if not _panel(ax, "MAE per epoch", epochs, "no epoch finished yet"):
        return
    x = [int(r["epoch"]) for r in epochs]
    for name, label, color in (("train_mae", "train", "tab:blue"), ("val_mae", "validation", "tab:green")):
        y = _column(epochs, name)
        if any(math.isfinite(v) for v in y):
            ax.plot(x, y, marker="o", markersize=3, color=color, label=label)
    best = best_epoch(epochs)
    if best is not None:
        ax.axvline(best["epoch"], color="tab:red", linewidth=0.8, linestyle=":")
        ax.plot([best["epoch"]], [best["val_mae"]], marker="*", markersize=14, color="tab:red", linestyle="none",
                label=f"best val {best['val_mae']:.3f} (epoch {best['epoch']})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("MAE")
    if len(x) <= 20:
        ax.set_xticks(x)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize="small")


def _draw_test(ax, results: Results) -> None:
    import numpy as np

    horizons, series = horizon_mae_series(results)
    tested = results.tested_epoch
    ax.set_title("test MAE" + (f" (model of epoch {tested})" if tested is not None else ""))
    width = 0.8 / len(series)
    base = np.arange(len(horizons))
    colors = ["tab:blue", "tab:gray", "tab:olive", "tab:purple", "tab:brown"]
    for i, (label, values) in enumerate(series.items()):
        heights = [v if math.isfinite(v) else 0.0 for v in values]
        bars = ax.bar(base + (i - (len(series) - 1) / 2) * width, heights, width, label=label,
                      color=colors[i % len(colors)])
        ax.bar_label(bars, labels=[f"{v:.2f}" if math.isfinite(v) else "n/a" for v in values],
                     fontsize="x-small", padding=1)
    ax.set_xticks(base)
    ax.set_xticklabels(horizons)
    ax.set_xlabel("horizon")
    ax.set_ylabel("MAE")
    ax.margins(y=0.12)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="upper left", fontsize="small")


def render(metrics: RunMetrics, results: Results | None, title: str, out: str | Path) -> Path:
    """Draw the figure to `out` (format from its suffix; Agg, no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = Path(out)
    panels = 3 if results is not None else 2
    fig = Figure(figsize=(6.0 * panels, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, panels)
    _draw_loss(axes[0], metrics.steps)
    _draw_mae(axes[1], metrics.epochs)
    if results is not None:
        _draw_test(axes[2], results)
    fig.suptitle(title)
    fig.savefig(out, dpi=100)
    return out


def _check_out(out: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    supported = FigureCanvasAgg(Figure()).get_supported_filetypes()
    suffix = out.suffix.lower().lstrip(".")
    if suffix not in supported:
        raise ConfigError(f"--out {out}: unknown image type {out.suffix or '(no suffix)'!r} (use .png; "
                          f"also {', '.join('.' + s for s in sorted(supported) if s != 'png')})")


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> tuple[Path, RunMetrics]:
    """Read RUN_DIR/metrics.jsonl (+ results.json) and draw the curves to `out`
    (default RUN_DIR/curves.png). Returns (path written, metrics read)."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise DataError(f"{run_dir}: no such run directory")
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: not a directory (expected a run directory holding {METRICS_FILE})")
    out = Path(out) if out else run_dir / DEFAULT_OUT
    _check_out(out)
    metrics = read_metrics(run_dir / METRICS_FILE)
    results = read_results(run_dir / RESULTS_FILE)
    model = (results.model if results else "") or metrics.model
    name = run_dir.resolve().name or str(run_dir)
    title = f"{name} — {model}" if model else name
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        render(metrics, results, title, out)
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot write ({exc.strerror or exc})") from None
    return out, metrics
