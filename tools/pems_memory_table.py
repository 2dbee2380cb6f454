"""The full-PeMS memory table of docs/PLANNER.md and the README: every model at B = 64 per
80 GB GPU, activation checkpointing off and on, fp32 and bf16, from `hvd-stgnn plan --json`.

    python tools/pems_memory_table.py [--batch-size 64] [--device-memory-gb 80]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from hvd_stgnn.models.checkpointing import CHECKPOINT_UNITS

GiB = 1 << 30
ROWS = [("tgcn", []), ("a3tgcn", []), ("dcrnn", []), ("gwnet", []),
        ("dcrnn", ["--hidden", "2", "--layers", "1"])]


def plan(model: str, extra: list[str], batch: int, memory_gb: float, mode: str, precision: str) -> dict:
    cmd = [sys.executable, "-m", "hvd_stgnn", "plan", "--preset", "pems", "--np", "4", "--ranks-per-node", "4",
           "--device", "cuda", "--device-memory-gb", str(memory_gb), "--model", model, "--batch-size", str(batch),
           "--activation-checkpointing", mode, "--precision", precision, "--max-batch", "--json", *extra]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode not in (0, 1):
        sys.exit(f"{' '.join(cmd)}: {r.stderr.strip()}")
    return json.loads(r.stdout)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device-memory-gb", type=float, default=80.0)
    args = p.parse_args()
    print(f"| model | checkpointing | precision | activations | GPU peak | fits {args.device_memory_gb:g} GB? "
          f"| largest B that fits |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for model, extra in ROWS:
        name = model + (" " + " ".join(extra) if extra else "")
        for mode in ("none", CHECKPOINT_UNITS[model]):
            for precision in ("fp32", "bf16"):
                out = plan(model, extra, args.batch_size, args.device_memory_gb, mode, precision)
                p_ = out["plans"]["index"]
                acts = p_["device_bytes_terms"]["activations"]
                print(f"| {name} | {mode} | {precision} | {acts / GiB:.1f} GiB | {p_['device_bytes'] / GiB:.1f} GiB "
                      f"| {'yes' if p_['fits'] else 'no'} | {out['max_batch'][mode]} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
