"""The report of `hvd-stgnn bench allreduce` (bench/allreduce.py): the fit lines, the
osu_allreduce-like table, allreduce.md, .csv, .png and .json, and the median table over
several runs (`python -m hvd_stgnn.bench.allreduce DIR_OR_JSON ...`)."""

from __future__ import annotations

import json
from pathlib import Path

from hvd_stgnn.bench.allreduce_fit import FLOAT32, algbw, busbw, format_size, ring_factor, ring_time
from hvd_stgnn.bench.report import fmt_num, write_csv

FILES = ("allreduce.json", "allreduce.csv", "allreduce.md", "allreduce.png")
CSV_COLUMNS = ("backend", "size_bytes", "count", "iterations", "warmup", "latency_us", "latency_max_us",
               "algbw_gb_per_s", "busbw_gb_per_s", "fit_latency_us", "fit_relative_residual")
POOR_FIT_RMS = 0.25  # the .md says so when a fit's rms relative residual is above this


# --- text (pure) ----------------------------------------------------------------------------------


def fit_line(backend: str, fit: dict, np_: int) -> str:
    """'horovod: alpha = 120 us, beta = 2.31 GB/s; t(n) = ...; relative residuals max 35 %, rms 12 % over 17 sizes'."""
    if "error" in fit:
        return f"{backend}: no fit ({fit['error']})"
    sizes = fit["sizes"]
    line = (f"{backend}: alpha = {fmt_num(fit['alpha_s'] * 1e6)} us, beta = {fmt_num(fit['beta_bytes_per_s'] / 1e9)} GB/s "
            f"(t(n) = 2 (P-1) alpha + 2 (P-1)/P n / beta, P = {np_}: {fmt_num(2 * (np_ - 1) * fit['alpha_s'] * 1e6)} us "
            f"+ n / {fmt_num(fit['beta_bytes_per_s'] / ring_factor(np_) / 1e9)} GB/s); relative residuals max "
            f"{100 * fit['relative_residual_max']:.0f} %, rms {100 * fit['relative_residual_rms']:.0f} % over "
            f"{len(sizes)} sizes ({format_size(min(sizes))}..{format_size(max(sizes))})")
    if fit.get("note"):
        line += f"; {fit['note']}"
    return line


def markdown_table(rows: list[dict], backends: list[str], with_fit: bool = True) -> str:
    """osu_allreduce's size and latency, nccl-tests' algbw and busbw, one column group per backend
    (and the fit's relative residual unless `with_fit` is False)."""
    by_key = {(r["backend"], r["size_bytes"]): r for r in rows}
    sizes = sorted({r["size_bytes"] for r in rows})
    head = "| size | bytes | count (float32) |"
    for b in backends:
        head += f" {b} us | {b} algbw GB/s | {b} busbw GB/s |" + (f" {b} fit resid |" if with_fit else "")
    head += " iters |"
    lines = [head, "|" + " --- |" * head.count(" |")]
    for size in sizes:
        line = f"| {format_size(size)} | {size} | {size // FLOAT32} |"
        iters = ""
        for b in backends:
            r = by_key.get((b, size))
            if r is None:
                line += " - | - | - |" + (" - |" if with_fit else "")
                continue
            line += f" {fmt_num(r['latency_us'])} | {fmt_num(r['algbw_gb_per_s'])} | {fmt_num(r['busbw_gb_per_s'])} |"
            if with_fit:
                resid = r.get("fit_relative_residual")
                line += f" {'-' if resid is None else f'{100 * resid:+.0f} %'} |"
            iters = iters or str(r["iterations"])
        lines.append(line + f" {iters} |")
    return "\n".join(lines)


def gradient_table(grad: dict, backends: list[str]) -> str:
    head = ("| backend | messages | message MB | measured ms | ring model ms | measured / model |")
    lines = [head, "| --- | --- | --- | --- | --- | --- |"]
    for b in backends:
        g = grad.get(b)
        if not g:
            continue
        model = g.get("predicted_s")
        ratio = "-" if not model else f"{g['seconds'] / model:.2f}x"
        what = "fused buffer" if b == "horovod" else "bucket"
        lines.append(f"| {b} | {len(g['message_bytes'])} {what}{'s' * (len(g['message_bytes']) != 1)} "
                     f"| {', '.join(fmt_num(m / 1e6) for m in g['message_bytes'])} | {fmt_num(g['seconds'] * 1e3)} "
                     f"| {'-' if model is None else fmt_num(model * 1e3)} | {ratio} |")
    return "\n".join(lines)


def markdown(result: dict) -> str:
    """allreduce.md: header (machine, versions, command), the table, the fits, the gradient set."""
    m, v = result["machine"], result["versions"]
    backends = result["backends"]
    np_ = result["np"]
    per_node = ", ".join(f"`{h}`: {n}" for h, n in result["ranks_per_node"].items())
    lines = [
        "# Allreduce: `hvd-stgnn bench allreduce`",
        "",
        f"- date: {result['date']}",
        f"- command: `{result['command']}`",
    ]
    if result.get("job_command"):
        lines.append(f"- job: `{result['job_command']} python -m hvd_stgnn.bench.allreduce_worker ...` (every rank "
                     "runs the sweep; rank 0 writes these files)")
    lines += [
        f"- machine (rank 0's node): host `{m['host']}`, {m['cores']} cores, {m['cpu']}, "
        f"{m['ram_bytes'] / 2**30:.1f} GiB RAM",
        f"- versions: Python {v['python']}, torch {v['torch']}, Horovod {v['horovod']}, mpi4py {v['mpi4py']}, "
        f"{v['mpi_library']}" + (f", NCCL {v['nccl']}" if v.get("nccl") else ""),
        f"- ranks: {np_} on {result['nodes']} node(s) ({per_node}), launcher {result['launcher']}, device "
        f"{result['device']}, {result['threads']} torch thread(s) per rank"
        + (f", CPUs per rank {result['rank_cpus']}" if result.get("rank_cpus") else ""),
        "- backends: " + ", ".join(f"{b} ({result['backend_detail'][b]})" for b in backends),
        f"- float32 messages, KB = 1024 B, MB = 1024^2 B; GB/s = 1e9 B/s. Latency: median over the timed "
        f"iterations of each iteration's time averaged over the ranks (after {result['warmup']} warm-up iterations, "
        f"scaled down like the timed ones); iterations {result['iters']} scaled down to keep at most "
        f"{format_size(result['bytes_per_size'])} per size, at least {result['min_iters']}. "
        "busbw = algbw * 2 (P-1) / P. fit resid: (ring model - measured) / measured; the fit is least squares "
        "of log(ring model / measured)" + (f" over {format_size(result['fits_range'][0])}.."
                                         f"{format_size(result['fits_range'][1])}" if result.get("fits_range") else ""),
        "",
        "## Latency and bandwidth",
        "",
        markdown_table(result["rows"], backends),
        "",
        "## Ring-model fits",
        "",
    ]
    lines += [f"- {fit_line(b, result['fits'][b], np_)}" for b in backends if b in result["fits"]]
    poor = [b for b in backends if result["fits"].get(b, {}).get("relative_residual_rms", 0) > POOR_FIT_RMS]
    if poor:
        lines += ["", f"The ring model describes {', '.join(poor)} poorly here (rms relative residual above "
                  f"{100 * POOR_FIT_RMS:.0f} %): see the fit resid column for where; `--fit-min-size` / `--fit-max-size` "
                  "fit the range of the messages you care about (e.g. a model's gradient buckets)."]
    grad = result.get("gradient_set")
    if grad:
        lines += [
            "",
            f"## Gradient set: {grad['model']}",
            "",
            f"{grad['model']} (hidden {grad['hidden']}"
            + (f", {grad['layers']} layers" if grad["model"] == "dcrnn" else "")
            + f", {grad['nodes']} sensors): {grad['tensors']} gradient tensors, {fmt_num(grad['bytes'] / 1e6)} MB "
            f"(largest {fmt_num(grad['largest_bytes'] / 1e6)} MB). One allreduce of all of them, median of "
            f"{grad['iterations']} (after {grad['warmup']} warm-up): Horovod as its DistributedOptimizer sends them "
            "(allreduce_async_ of every gradient, op Average, then synchronize; fused up to the fusion threshold "
            "within one cycle), torch.distributed as DDP does (buckets of bucket_cap_mb, each divided by P and "
            "allreduced async, then waited for). Ring model: the fit above, summed over the messages.",
            "",
            gradient_table(grad, backends),
        ]
    return "\n".join(lines) + "\n"


# --- files ----------------------------------------------------------------------------------------


def write_csv_rows(rows: list[dict], path: Path) -> None:
    write_csv(rows, path, CSV_COLUMNS)


def plot(result: dict, path: Path) -> None:
    """Latency (left) and bus bandwidth (right) vs size, log-log; markers measured, lines fitted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    np_ = result["np"]
    fig, (ax_lat, ax_bw) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, backend in enumerate(result["backends"]):
        rows = sorted((r for r in result["rows"] if r["backend"] == backend), key=lambda r: r["size_bytes"])
        if not rows:
            continue
        color = f"C{i}"
        sizes = np.array([r["size_bytes"] for r in rows], dtype=float)
        ax_lat.plot(sizes, [r["latency_us"] for r in rows], "o", color=color, ms=4, label=f"{backend} measured")
        ax_bw.plot(sizes, [r["busbw_gb_per_s"] for r in rows], "o", color=color, ms=4, label=f"{backend} measured")
        fit = result["fits"].get(backend, {})
        if "alpha_s" in fit:
            grid = np.geomspace(sizes.min(), sizes.max(), 200)
            t = np.array([ring_time(n, np_, fit["alpha_s"], fit["beta_bytes_per_s"]) for n in grid])
            label = (f"{backend} fit: alpha {fmt_num(fit['alpha_s'] * 1e6)} us, "
                     f"beta {fmt_num(fit['beta_bytes_per_s'] / 1e9)} GB/s")
            ax_lat.plot(grid, t * 1e6, "-", color=color, lw=1.2, label=label)
            ax_bw.plot(grid, grid / t * ring_factor(np_) / 1e9, "-", color=color, lw=1.2, label=label)
    ticks = [2 ** k for k in range(0, 34, 2)]
    for ax, ylabel in ((ax_lat, "latency us (median)"), (ax_bw, "bus bandwidth GB/s")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        xmin, xmax = ax.get_xlim()
        ax.set_xticks([t for t in ticks if xmin <= t <= xmax], [format_size(t).replace(" ", "") for t in ticks
                                                               if xmin <= t <= xmax], fontsize=7)
        ax.set_xlabel("message size (float32)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"allreduce, {np_} ranks on {result['nodes']} node(s), {result['device']}, "
                 f"{result['machine']['host']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(result: dict, out: Path) -> None:
    """allreduce.json, .csv, .md, .png into `out` (rank 0 of the job)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "allreduce.json").write_text(json.dumps(result, indent=2) + "\n")
    write_csv_rows(result["rows"], out / "allreduce.csv")
    (out / "allreduce.md").write_text(markdown(result))
    plot(result, out / "allreduce.png")


# --- several runs -------------------------------------------------------------------------------


def median_table(results: list[dict]) -> tuple[list[dict], list[str]]:
    """Several allreduce.json results of the same sweep -> (rows whose latency is the median
    over the runs per backend and size, bandwidths recomputed from it; the fit line of every
    run). The rows carry `runs`; no fit over medians (fits stay per run)."""
    import statistics

    if not results:
        raise ValueError("no results to merge")
    np_ = results[0]["np"]
    if any(r["np"] != np_ for r in results):
        raise ValueError("the results are of different rank counts")
    groups: dict[tuple[str, int], list[dict]] = {}
    for res in results:
        for row in res["rows"]:
            groups.setdefault((row["backend"], row["size_bytes"]), []).append(row)
    rows = []
    for (backend, size), group in groups.items():
        lat = statistics.median(r["latency_us"] for r in group)
        rows.append({"backend": backend, "size_bytes": size, "count": size // FLOAT32, "runs": len(group),
                     "iterations": group[0]["iterations"], "warmup": group[0]["warmup"], "latency_us": lat,
                     "latency_max_us": statistics.median(r["latency_max_us"] for r in group),
                     "algbw_gb_per_s": algbw(size, lat * 1e-6) / 1e9, "busbw_gb_per_s": busbw(size, lat * 1e-6, np_) / 1e9})
    lines = [f"run {i}: {fit_line(b, res['fits'][b], np_)}" for i, res in enumerate(results, 1)
             for b in res["backends"] if b in res["fits"]]
    return rows, lines


def _summarize(paths: list[str]) -> int:
    """`python -m hvd_stgnn.bench.allreduce DIR_OR_JSON ...`: the median table over the runs, each run's fits."""
    results = []
    for p in paths:
        path = Path(p) / "allreduce.json" if Path(p).is_dir() else Path(p)
        results.append(json.loads(path.read_text()))
    rows, lines = median_table(results)
    backends = list(dict.fromkeys(b for res in results for b in res["backends"]))
    print(f"median of {len(results)} run(s), np {results[0]['np']}:\n")
    print(markdown_table(rows, backends, with_fit=False))
    print()
    print("\n".join(lines))
    for i, res in enumerate(results, 1):
        grad = res.get("gradient_set") or {}
        for b in res["backends"]:
            g = grad.get(b)
            if g:
                model = g.get("predicted_s")
                print(f"run {i}: {grad['model']} gradient set, {b}: {fmt_num(g['seconds'] * 1e3)} ms"
                      + (f" (ring model {fmt_num(model * 1e3)} ms)" if model else ""))
    return 0
