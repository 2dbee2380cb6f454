"""The `hvd-stgnn timeline --png` chart: where the time goes, as horizontal bars.

Top panel: the slowest tensors (DDP: buckets / collectives) plus the total, one stacked bar
each, split into the report's categories (negotiate, wait/queue, memcpy in, collective,
memcpy out, other; a category with no DDP counterpart is drawn as 0 and its legend entry
says n/a). Bottom panel: every activity found, summed over tensors/calls (light) and as
wall time (dark). Input is the dict of `report.build_report`, either format; matplotlib runs
headless (Agg).
"""

from __future__ import annotations

from pathlib import Path

from hvd_stgnn.errors import ConfigError
from hvd_stgnn.profiling.trace import CATEGORIES, CATEGORY_LABELS

COLORS = {
    "negotiate": "#9e9e9e",
    "wait": "#f4a259",
    "memcpy_in": "#8cb369",
    "collective": "#3d5a80",
    "memcpy_out": "#5b8e7d",
    "other": "#d8c99b",
}


def plot_report(report: dict, out: str | Path) -> Path:
    """Draw the chart for a report dict; returns the PNG path."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ConfigError(f"--png needs matplotlib ({exc}); run `make setup`") from None

    out = Path(out)
    if out.parent and not out.parent.exists():
        raise ConfigError(f"--png {out}: directory {out.parent} does not exist")

    tensors = report["tensors"]
    total = report["tensors_total"]
    unit = report.get("unit", "tensor")
    ddp = report.get("format") == "torch.profiler"
    rows = [(t["name"], t["categories_ms"]) for t in tensors]
    rows.append((f"all {total['tensors']} {unit}s", total["categories_ms"]))
    acts = report["activities"]
    absent = {cat for cat in CATEGORIES if all(cats.get(cat) is None for _, cats in rows)}

    height = 1.6 + 0.32 * len(rows) + 0.28 * max(1, len(acts)) + 1.4
    fig, (ax1, ax2) = plt.subplots(
        2, 1, figsize=(10, max(4.0, height)),
        gridspec_kw={"height_ratios": [max(1, len(rows)), max(1, len(acts))]},
    )

    # Per tensor: stacked categories. Names top to bottom, total last.
    labels = [_short(name) for name, _ in rows][::-1]
    values = [cats for _, cats in rows][::-1]
    left = [0.0] * len(rows)
    for cat in CATEGORIES:
        widths = [v.get(cat) or 0.0 for v in values]
        label = CATEGORY_LABELS[cat] + (" (n/a)" if cat in absent else "")
        ax1.barh(range(len(rows)), widths, left=left, color=COLORS[cat], label=label, height=0.7)
        left = [a + b for a, b in zip(left, widths)]
    for y, x in enumerate(left):
        ax1.text(x, y, f" {x:.1f}", va="center", fontsize=7)
    ax1.set_yticks(range(len(rows)), labels, fontsize=7)
    what = "memcpy in + wait + collective" if ddp else "negotiate + processing"
    ax1.set_title(f"slowest {len(tensors)} {unit}s + total: {what} (ms, summed over calls)", fontsize=9)
    ax1.legend(fontsize=7, ncol=len(CATEGORIES), loc="upper center", bbox_to_anchor=(0.5, -0.12), frameon=False)
    ax1.set_xlim(0, max(left + [1e-3]) * 1.15)

    # Per activity: summed over tensors vs wall (union).
    names = [("  " * a["level"]) + a["name"] for a in acts][::-1]
    summed = [a["sum_ms"] for a in acts][::-1]
    wall = [a["wall_ms"] for a in acts][::-1]
    ys = range(len(acts))
    ax2.barh(ys, summed, color="#b0c4de", height=0.8, label=f"summed over {unit}s" if not ddp else "summed over calls")
    ax2.barh(ys, wall, color="#3d5a80", height=0.45, label="wall (union)")
    for y, x in zip(ys, summed):
        ax2.text(x, y, f" {x:.2f}", va="center", fontsize=7)
    ax2.set_yticks(list(ys), names, fontsize=7, fontfamily="monospace")
    ax2.set_xlabel("ms")
    comm = report["comm"]
    basis = {"window": "window", "profiler_span": "profiler span"}.get(comm["basis"], "trace span")
    share = comm["allreduce_share"]
    ax2.set_title(
        f"per activity, all {unit}s (allreduce wall {comm['allreduce_wall_ms']:.1f} ms"
        + (f" = {100 * share:.1f}% of the {basis})" if share is not None else ")"),
        fontsize=9,
    )
    ax2.legend(fontsize=7, loc="lower right")
    ax2.set_xlim(0, max(summed + [1e-3]) * 1.15)

    fig.suptitle(Path(report["file"]).name, fontsize=10)
    fig.tight_layout()
    try:
        fig.savefig(out, dpi=110, bbox_inches="tight")
    except OSError as exc:
        raise ConfigError(f"--png {out}: cannot write it ({exc.strerror or exc})") from None
    finally:
        plt.close(fig)
    return out


def _short(name: str, width: int = 40) -> str:
    return name if len(name) <= width else "..." + name[-(width - 3):]
