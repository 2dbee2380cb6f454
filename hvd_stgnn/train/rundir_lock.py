"""One job at a time in a run directory: a lock file that rank 0 holds for the job's life.

`RUN_DIR/lock.json` is created with O_EXCL and names its holder (host, pid, the pid's start
time, the Slurm/PBS job id). A second job finds it and stops with one line naming the
holder. A lock whose holder is gone is stale and taken over, with a note:
  - same host, and the pid is not running (kill -9, a crash) or is another process now;
  - the same scheduler job id as ours (Slurm requeued this job, maybe onto another node);
  - another Slurm job that `squeue` no longer lists as running;
  - no heartbeat: the holder touches the file every HEARTBEAT_S seconds, and a lock
    untouched for $HVD_STGNN_LOCK_STALE_S (default 180 s) is a dead node's.
The holder removes the file on every exit path it gets to run (normal end, error, SIGTERM).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from hvd_stgnn.errors import ConfigError
from hvd_stgnn.parallel.launcher import scheduler_job

LOCK_FILE = "lock.json"
HEARTBEAT_S = 30.0
STALE_ENV = "HVD_STGNN_LOCK_STALE_S"
DEFAULT_STALE_S = 180.0
_LIVE_SLURM_STATES = {"PENDING", "RUNNING", "SUSPENDED", "COMPLETING", "CONFIGURING", "RESIZING", "REQUEUED",
                      "STAGE_OUT", "SIGNALING", "STOPPED"}


class RunDirBusy(ConfigError):
    """Another live job holds the run directory."""


def pid_start_time(pid: int) -> int | None:
    """Start time of `pid` in clock ticks since boot (field 22 of /proc/PID/stat); None if
    there is no such process. With the pid, it names one process, whatever reuses the pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2 :].split()[19])


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    pid_start: int | None
    job_id: str
    started: str

    @classmethod
    def me(cls) -> "Holder":
        return cls(socket.gethostname(), os.getpid(), pid_start_time(os.getpid()), scheduler_job()["job_id"],
                   time.strftime("%Y-%m-%d %H:%M:%S"))

    def describe(self) -> str:
        job = f", job {self.job_id}" if self.job_id else ""
        return f"host {self.host}, pid {self.pid}{job}, since {self.started}"


def _slurm_job_ended(job_id: str) -> bool:
    """True only when squeue answers and does not list `job_id` as live (False if unsure).
    Slurm job ids are numbers; a PBS id ("123.server") is never asked about."""
    if not job_id.isdigit() or shutil.which("squeue") is None:
        return False
    try:
        r = subprocess.run(["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T"], capture_output=True, text=True,
                           timeout=20)
    except (OSError, subprocess.SubprocessError):
        return False
    if r.returncode != 0:
        return "Invalid job id" in r.stderr  # purged from the controller: long gone
    return not (set(r.stdout.split()) & _LIVE_SLURM_STATES)


def stale_reason(holder: Holder, lock_age_s: float, me: Holder, stale_after_s: float) -> str | None:
    """Why the lock of `holder` is stale, or None when its job may still be running."""
    if holder.host == me.host:
        start = pid_start_time(holder.pid)
        if start is None:
            return f"pid {holder.pid} on {holder.host} is gone"
        if holder.pid_start is not None and start != holder.pid_start:
            return f"pid {holder.pid} on {holder.host} is another process now"
    if holder.job_id and holder.job_id == me.job_id:
        return f"it was an earlier run of this job {me.job_id} (requeued)"
    if holder.job_id and _slurm_job_ended(holder.job_id):
        return f"Slurm job {holder.job_id} has ended"
    if lock_age_s > stale_after_s:
        return f"no heartbeat for {lock_age_s:.0f} s (> {stale_after_s:.0f} s, {STALE_ENV})"
    return None


def _read(path: Path) -> tuple[Holder | None, float]:
    """(holder, seconds since its last heartbeat); holder None if the file is unreadable."""
    age = time.time() - path.stat().st_mtime  # FileNotFoundError: released meanwhile
    try:
        return Holder(**json.loads(path.read_text())), age
    except FileNotFoundError:
        raise
    except (OSError, ValueError, TypeError):
        return None, age


class RunDirLock:
    """Held by rank 0 for the job's life. `acquire()` raises RunDirBusy (one line) when a
    live job holds the directory; `release()` is safe to call more than once."""

    def __init__(self, run_dir: str | Path) -> None:
        self.dir = Path(run_dir)
        self.path = self.dir / LOCK_FILE
        self.me = Holder.me()
        self.took_over: str | None = None  # the stale lock replaced, and why
        self._held = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> "RunDirLock":
        stale_after = float(os.environ.get(STALE_ENV, DEFAULT_STALE_S))
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--run-dir {self.dir}: cannot write ({exc.strerror or exc})") from None
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._clear_stale(stale_after)
                continue
            except OSError as exc:
                raise ConfigError(f"--run-dir {self.dir}: cannot write ({exc.strerror or exc})") from None
            with os.fdopen(fd, "w") as f:
                json.dump(asdict(self.me), f)
                f.flush()
                os.fsync(f.fileno())
            self._held = True
            self._thread = threading.Thread(target=self._heartbeat, name="run-dir-lock", daemon=True)
            self._thread.start()
            return self
        raise RunDirBusy(f"--run-dir {self.dir}: could not take {self.path} (other jobs keep taking it)")

    def _clear_stale(self, stale_after: float) -> None:
        try:
            holder, age = _read(self.path)
        except FileNotFoundError:
            return  # released meanwhile: try again
        if holder is None:
            if age < 10:  # being written right now by its holder
                time.sleep(0.5)
                return
            reason = "its lock file is unreadable"
        else:
            reason = stale_reason(holder, age, self.me, stale_after)
            if reason is None:
                raise RunDirBusy(
                    f"--run-dir {self.dir}: in use by another job ({holder.describe()}); wait for it to end or "
                    f"use another --run-dir (lock: {self.path})"
                )
        # Move it aside under a name of our own. Another job may have cleared the same stale
        # lock and taken a fresh one since we read it: then what we moved is that job's
        # lock, and it goes back (link fails only if yet another lock is there now).
        aside = self.path.with_name(f".{LOCK_FILE}.stale-{os.getpid()}")
        try:
            os.replace(self.path, aside)
        except FileNotFoundError:
            return
        try:
            moved, _ = _read(aside)
        except FileNotFoundError:
            moved = None
        if moved != holder:
            try:
                os.link(aside, self.path)
            except OSError:
                pass
            aside.unlink(missing_ok=True)
            return  # try again: the retaken lock is live, and acquire() reports its holder
        aside.unlink(missing_ok=True)
        self.took_over = f"{holder.describe() if holder else 'unknown holder'}: {reason}"

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                pass  # a full or flaky file system must not stop training; the lock just ages

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        self._stop.set()
        try:
            holder, _ = _read(self.path)
            if holder is not None and (holder.host, holder.pid) == (self.me.host, self.me.pid):
                self.path.unlink()
        except (FileNotFoundError, OSError):
            pass
