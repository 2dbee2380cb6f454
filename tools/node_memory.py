#!/usr/bin/env python3
"""Run a command and report the peak memory of it and all its descendants on this node.

    tools/node_memory.py [--interval 0.5] [--json OUT] -- jobs/local.sh -np 2 hvd-stgnn train ...

Samples every process in the command's tree: the sum of PSS (/proc/PID/smaps_rollup:
shared pages, such as the node-shared series, count once across the ranks) and of RSS
(shared pages counted once per process). Prints the peaks and the command's exit status;
exits with the command's status.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def _tree(root: int) -> list[int]:
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(_children(pid))
    return out


def _rollup(pid: int) -> tuple[int, int]:
    pss = rss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
                elif line.startswith("Rss:"):
                    rss = int(line.split()[1]) * 1024
    except OSError:
        pass
    return pss, rss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--json", default="", help="also write the peaks here")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    t0 = time.perf_counter()
    proc = subprocess.Popen(command)
    peak_pss = peak_rss = 0
    while proc.poll() is None:
        samples = [_rollup(pid) for pid in _tree(proc.pid)]
        peak_pss = max(peak_pss, sum(s[0] for s in samples))
        peak_rss = max(peak_rss, sum(s[1] for s in samples))
        time.sleep(args.interval)
    result = {"command": command, "returncode": proc.returncode, "seconds": time.perf_counter() - t0,
              "peak_node_pss_bytes": peak_pss, "peak_node_rss_sum_bytes": peak_rss}
    print(f"node memory: peak PSS {peak_pss / 2**30:.2f} GiB (sum of RSS {peak_rss / 2**30:.2f} GiB), "
          f"{result['seconds']:.0f} s, exit {proc.returncode}", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
