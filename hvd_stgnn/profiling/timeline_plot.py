"""The `hvd-stgnn timeline --png` chart: where the time goes, as horizontal bars.

Top panel: the slowest tensors plus the all-tensor total, one stacked bar each, split into
the report's categories (negotiate, wait/queue, memcpy in, collective, memcpy out, other).
Bottom panel: every activity found, summed over tensors (light) and as wall time (dark).
Input is the dict of `timeline.build_report`; matplotlib runs headless (Agg).
"""

from __future__ import annotations

from pathlib import Path

from hvd_stgnn.errors import ConfigError
from hvd_stgnn.profiling.timeline import CATEGORIES, CATEGORY_LABELS

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
    rows = [(t["name"], t["categories_ms"]) for t in tensors]
    rows.append((f"all {total['tensors']} tensors", total["categories_ms"]))
    acts = report["activities"]

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
        widths = [v[cat] for v in values]
        ax1.barh(range(len(rows)), widths, left=left, color=COLORS[cat], label=CATEGORY_LABELS[cat], height=0.7)
        left = [a + b for a, b in zip(left, widths)]
    for y, x in enumerate(left):
        ax1.text(x, y, f" {x:.1f}", va="center", fontsize=7)
    ax1.set_yticks(range(len(rows)), labels, fontsize=7)
    ax1.set_title(f"slowest {len(tensors)} tensors + total: negotiate + processing (ms, summed over calls)", fontsize=9)
    ax1.legend(fontsize=7, ncol=len(CATEGORIES), loc="upper center", bbox_to_anchor=(0.5, -0.12), frameon=False)
    ax1.set_xlim(0, max(left + [1e-3]) * 1.15)

    # Per activity: summed over tensors vs wall (union).
    names = [("  " * a["level"]) + a["name"] for a in acts][::-1]
    summed = [a["sum_ms"] for a in acts][::-1]
    wall = [a["wall_ms"] for a in acts][::-1]
    ys = range(len(acts))
    ax2.barh(ys, summed, color="#b0c4de", height=0.8, label="summed over tensors")
    ax2.barh(ys, wall, color="#3d5a80", height=0.45, label="wall (union)")
    for y, x in zip(ys, summed):
        ax2.text(x, y, f" {x:.2f}", va="center", fontsize=7)
    ax2.set_yticks(list(ys), names, fontsize=7, fontfamily="monospace")
    ax2.set_xlabel("ms")
    comm = report["comm"]
    basis = "window" if comm["basis"] == "window" else "trace span"
    share = comm["allreduce_share"]
    ax2.set_title(
        f"per activity, all tensors (allreduce wall {comm['allreduce_wall_ms']:.1f} ms"
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
