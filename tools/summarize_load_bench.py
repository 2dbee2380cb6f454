"""Median table of repeated `hvd-stgnn bench load --out FILE` runs (markdown).

usage: python tools/summarize_load_bench.py RUN1.json RUN2.json ... (same preset)
"""

import json
import statistics
import sys

runs = [json.load(open(p)) for p in sys.argv[1:]]
first = runs[0]
print(f"`{first['file']}`: data {first['data_mb']:.1f} MB, file {first['file_bytes'] / 1e6:.1f} MB, {len(runs)} runs (medians)\n")
print("| ranks | mode | read s | read MB/s | broadcast s | load s | data copies on node | node PSS MB |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
for k, row in enumerate(first["runs"]):
    rows = [r["runs"][k] for r in runs]

    def med(f):
        return statistics.median(f(r) for r in rows)

    print(
        f"| {row['np']} | {row['mode']} | {med(lambda r: r['read_seconds']):.3f} | {med(lambda r: r['read_mb_per_s']):.0f} "
        f"| {med(lambda r: r['broadcast_seconds']):.4f} | {med(lambda r: r['load_seconds']):.3f} "
        f"| {med(lambda r: sum(r['data_copies_per_node'].values())):.3f} | {med(lambda r: r['node_pss_bytes']) / 1e6:.1f} |"
    )
