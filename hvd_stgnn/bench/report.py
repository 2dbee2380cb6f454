"""What benchmark reports share: the machine and versions in their header, number formats,
CSV files, the command as typed, a one-line summary of the data file."""

from __future__ import annotations

import csv
import platform
import shlex
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from hvd_stgnn.bench.jobs import available_cores, job_environment


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":")[0].strip() in ("model name", "Model", "cpu model"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _total_ram_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def machine_info() -> dict:
    return {"host": socket.gethostname(), "cores": available_cores(), "cpu": _cpu_model(),
            "ram_bytes": _total_ram_bytes()}


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def versions(env: dict | None = None) -> dict:
    try:
        proc = subprocess.run(["mpirun", "--version"], capture_output=True, text=True, timeout=30,
                              env=env or job_environment(1))
        mpi = (proc.stdout.strip().splitlines() or ["unknown"])[0]
    except (OSError, subprocess.SubprocessError):
        mpi = "mpirun not found"
    return {"python": platform.python_version(), "torch": _version("torch"), "horovod": _version("horovod"),
            "mpi4py": _version("mpi4py"), "mpirun": mpi}


def fmt_num(x: float) -> str:
    """About 3 significant digits, never in exponent form: 0.0123, 1.23, 12.3, 1234."""
    x = float(x)
    if x != x:
        return "n/a"
    if x == 0 or abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    if abs(x) >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}" if abs(x) >= 1e-3 else f"{x:.1e}"


def fmt_mb(n: float) -> str:
    return fmt_num(n / 1e6)


def fmt_pct(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None else f"{100 * x:.{digits}f} %"


def write_csv(rows: list[dict], path: Path, columns: tuple[str, ...]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow(row)


def read_csv(path: Path, text_columns: tuple[str, ...] = ("name", "backend", "data_mode")) -> list[dict]:
    """A CSV written by write_csv back into rows (numbers as int / float)."""
    rows = []
    with open(path, newline="") as f:
        for raw in csv.DictReader(f):
            row: dict = {}
            for key, value in raw.items():
                if key in text_columns:
                    row[key] = value
                else:
                    try:
                        row[key] = int(value)
                    except ValueError:
                        row[key] = float(value)
            rows.append(row)
    return rows


def data_summary(path: Path) -> str:
    try:
        from hvd_stgnn.data.hdf5 import read_metadata

        meta = read_metadata(path)
        return f"`{path}` ({meta.num_nodes} sensors x {meta.num_steps} steps)"
    except Exception:  # noqa: BLE001 - the report should not fail on the summary
        return f"`{path}`"


def header_lines(title: str, *, date: str, command: str, invoked: str, machine: dict, vers: dict) -> list[str]:
    """The top of a job benchmark's .md (compare, scaling): title, date, the command as typed
    and with every setting explicit, machine, versions."""
    lines = [f"# {title}", "", f"- date: {date}", f"- command: `{invoked or command}`"]
    if invoked and invoked != command:
        lines.append(f"- with every setting explicit: `{command}`")
    return lines + [
        f"- machine: host `{machine['host']}`, {machine['cores']} cores (`nproc`), {machine['cpu']}, "
        f"{machine['ram_bytes'] / 2**30:.1f} GiB RAM",
        f"- versions: Python {vers['python']}, torch {vers['torch']}, Horovod {vers['horovod']}, "
        f"mpi4py {vers['mpi4py']}, {vers['mpirun']}",
    ]


def invoked_command() -> str:
    """The command line as typed, when this process is the hvd-stgnn CLI."""
    argv0 = Path(sys.argv[0]).name if sys.argv else ""
    if argv0 == "hvd-stgnn" or (argv0 == "__main__.py" and "hvd_stgnn" in sys.argv[0]):
        return shlex.join(["hvd-stgnn", *sys.argv[1:]])
    return ""
