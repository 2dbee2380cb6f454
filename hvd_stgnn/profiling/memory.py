"""Memory as the kernel accounts it (Linux /proc), for per-node totals that count shared
pages once: PSS (proportional set size) splits each shared page among the processes
mapping it, so the sum of PSS over a node's ranks is the node's real footprint.
"""

from __future__ import annotations

import resource
import socket
from dataclasses import dataclass

from hvd_stgnn.results import RankMemory


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


_pss_peak_bytes = 0  # the largest PSS sample this process took (PSS has no kernel-kept peak)


def sample_pss() -> int:
    """This process's PSS now, kept as the process's PSS peak if it is the largest so far.
    Called where a transient peak is (e.g. while materialized windows are being built) as
    well as after loading and after each epoch."""
    global _pss_peak_bytes
    pss = process_pss_bytes()
    _pss_peak_bytes = max(_pss_peak_bytes, pss)
    return pss


def pss_peak_bytes() -> int:
    """The largest PSS `sample_pss` saw in this process (0 before the first sample)."""
    return _pss_peak_bytes


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (ru_maxrss, KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class MemoryMonitor:
    """One rank's memory over a job: the PSS peak of the samples taken (`sample_pss`: after
    loading, after each epoch, and inside data preparation at its transient peak), the
    kernel's peak RSS, and the CUDA allocator's peak on a GPU."""

    def __init__(self, device) -> None:
        self.device = device

    def sample(self) -> int:
        return sample_pss()

    def reset_device_peak(self) -> None:
        """Start the GPU peak here (after data preparation)."""
        if self.device.type == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)

    def record(self) -> RankMemory:
        allocated = reserved = 0
        if self.device.type == "cuda":
            import torch

            allocated = torch.cuda.max_memory_allocated(self.device)
            reserved = torch.cuda.max_memory_reserved(self.device)
        return RankMemory(host=socket.gethostname(), peak_rss_bytes=peak_rss_bytes(), pss_peak_bytes=pss_peak_bytes(),
                          cuda_peak_bytes=allocated, cuda_peak_reserved_bytes=reserved)
