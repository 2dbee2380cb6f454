"""Memory as the kernel accounts it (Linux /proc), for per-node totals that count shared
pages once: PSS (proportional set size) splits each shared page among the processes
mapping it, so the sum of PSS over a node's ranks is the node's real footprint.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass


@dataclass
class Mapping:
    start: int
    end: int
    name: str
    size_bytes: int
    rss_bytes: int
    pss_bytes: int


def _mappings(smaps: str = "/proc/self/smaps"):
    current: dict | None = None
    with open(smaps) as f:
        for line in f:
            head = line.split(None, 1)[0]
            if "-" in head and not head.endswith(":"):
                if current:
                    yield Mapping(**current)
                lo, hi = (int(x, 16) for x in head.split("-"))
                parts = line.split()
                current = {"start": lo, "end": hi, "name": parts[5] if len(parts) > 5 else "", "size_bytes": 0, "rss_bytes": 0, "pss_bytes": 0}
            elif current is not None and head in ("Size:", "Rss:", "Pss:"):
                key = {"Size:": "size_bytes", "Rss:": "rss_bytes", "Pss:": "pss_bytes"}[head]
                current[key] = int(line.split()[1]) * 1024
    if current:
        yield Mapping(**current)


def memory_of_range(address: int, nbytes: int) -> Mapping:
    """Size/RSS/PSS summed over the mappings that overlap [address, address + nbytes),
    e.g. an array's data. One allocation can span several mappings (numpy's
    madvise(MADV_HUGEPAGE) splits large ones), so they are added up."""
    end = address + max(1, nbytes)
    hits = [m for m in _mappings() if m.start < end and address < m.end]
    if not hits:
        raise LookupError(f"no mapping overlaps {address:#x}..{end:#x}")
    return Mapping(
        start=min(m.start for m in hits),
        end=max(m.end for m in hits),
        name=",".join(sorted({m.name for m in hits})),
        size_bytes=sum(m.size_bytes for m in hits),
        rss_bytes=sum(m.rss_bytes for m in hits),
        pss_bytes=sum(m.pss_bytes for m in hits),
    )


def process_pss_bytes() -> int:
    """This process's PSS: its private pages plus its share of shared ones."""
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no Pss line in /proc/self/smaps_rollup")


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (ru_maxrss, KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
