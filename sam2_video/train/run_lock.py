"""One writer per run folder: `out_dir/.lock` names the process that trains into it.

The lock file is created atomically (O_CREAT | O_EXCL) and holds the owner's pid, host, process
start time and the time it was taken; a second `train` on the folder exits at once naming the
holder. A lock left by a process that died (same host, pid gone or reused) is reported as stale
and cleared only when asked (`--break-stale-lock`). Under `torchrun` only rank 0 takes it.
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from sam2_video.errors import UserInputError

LOCK_NAME = ".lock"
# files the trainer writes through `sam2_video.io.atomic_path`; a kill mid-write leaves `.{name}.*.tmp`
ATOMIC_OUTPUTS = ("last.pt", "best.pt", "config.yaml", "metrics.jsonl", "loss_curve.png")


def _process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (Linux /proc), telling a reused pid from the lock's owner."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _is_running(pid: int, start: str | None) -> bool:
    if pid == os.getpid():
        return False  # an earlier process that had our pid (e.g. a restarted container)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return start is None or _process_start(pid) in (None, start)


class RunLock:
    """Exclusive lock on `out_dir`; `acquire()` raises `UserInputError` naming the holder, `release()` removes it."""

    def __init__(self, out_dir: str | os.PathLike, break_stale: bool = False) -> None:
        self.path = Path(out_dir) / LOCK_NAME
        self.break_stale = break_stale
        self.held = False

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "start": _process_start(os.getpid()),
                 "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        for _ in range(2):  # a second try after clearing a stale lock
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._refuse_or_clear()
                continue
            with os.fdopen(fd, "w") as handle:
                handle.write(json.dumps(owner))
            self.held = True
            return
        raise UserInputError(f"{self.path}: another process took the lock while a stale one was cleared")

    def _read_holder(self) -> dict | None:
        """The lock file's owner record; None when the lock was released meanwhile."""
        for _ in range(20):  # the holder writes its record right after creating the file
            try:
                holder = json.loads(self.path.read_text())
                if isinstance(holder, dict) and isinstance(holder.get("pid"), int):
                    return holder
            except FileNotFoundError:
                return None
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        raise UserInputError(f"{self.path}: the run folder's lock file is unreadable; if no other train runs "
                             "on this folder, delete that file and start again")

    def _refuse_or_clear(self) -> None:
        holder = self._read_holder()
        if holder is None:
            return
        pid, host = holder["pid"], holder.get("host", "?")
        named = f"pid {pid} on host {host} since {holder.get('since', '?')} (lock file {self.path})"
        if host != socket.gethostname():
            raise UserInputError(f"train.out_dir {self.path.parent} is in use by {named}; this host cannot "
                                 "tell whether it still runs: if it does not, delete the lock file")
        if _is_running(pid, holder.get("start")):
            raise UserInputError(f"train.out_dir {self.path.parent} is in use by {named}; wait for it to end "
                                 "or choose another train.out_dir")
        if not self.break_stale:
            raise UserInputError(f"train.out_dir {self.path.parent} has a stale lock from {named}: that process "
                                 "is no longer running; pass --break-stale-lock to clear it")
        print(f"cleared the stale lock of {named}")
        self.path.unlink(missing_ok=True)

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def remove_partial_writes(out_dir: str | os.PathLike) -> list[Path]:
    """Delete the `.{name}.*.tmp` files a kill during a checkpoint or log write left in `out_dir`
    (call it only while holding the `RunLock`: a live writer's temporary files look the same)."""
    out_dir = Path(out_dir)
    removed = sorted(tmp for name in ATOMIC_OUTPUTS for tmp in out_dir.glob(f".{name}.*.tmp") if tmp.is_file())
    for tmp in removed:
        tmp.unlink()
    return removed
