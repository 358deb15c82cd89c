"""Temporary run folders: a run is written in `<output>/.tmp-<id>/` and renamed into place when complete.

The writer records itself in `.tmp-<id>/.owner` (pid, host) and holds a lock on it (`claim`), so a temp folder
left by a killed process can be told from a run in progress: `vqclip runs list` counts the abandoned ones and
`vqclip runs clean` removes them (`temp_folders`, `temp_status`, `remove_temp`). Imports nothing heavy.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from vqclip.runfolder.names import OWNER, TMP_PREFIX
STALE_AFTER_S = 600.0  # a temp folder with no owner record counts as abandoned after this long without a write


def claim(folder: Path) -> int | None:
    """Write `folder/.owner` (pid, host) and hold an exclusive lock on it for as long as this process lives
    (or until commit/discard), so `runs clean` can tell a run in progress from one whose writer was killed."""
    try:
        fd = os.open(folder / OWNER, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError:
        return None
    try:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except (ImportError, OSError):
        pass  # no flock here (Windows, some network filesystems): the pid record still tells
    try:
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
    except OSError:
        pass
    return fd


@dataclass
class TempFolder:
    """A `.tmp-*` folder in the output folder, and whether its writer is gone (`stale`), with why."""

    path: Path
    stale: bool
    why: str


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, owned by someone else (or cannot tell: assume alive)
    return True


def _newest_write(folder: Path) -> float:
    newest = os.lstat(folder).st_mtime
    try:
        with os.scandir(folder) as it:
            for entry in it:
                try:
                    newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
                except OSError:
                    pass
    except OSError:
        pass
    return newest


def temp_status(folder: Path, now: float | None = None, stale_after: float = STALE_AFTER_S) -> TempFolder:
    """Is the writer of this temp run folder gone? Its lock is free and its pid is dead (or on another host
    and silent), or, with no owner record, nothing in it was written for `stale_after` seconds."""
    now = time.time() if now is None else now
    owner = folder / OWNER
    try:
        fd = os.open(owner, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        fd = None
    if fd is not None:
        try:
            try:
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                locked = False
            except BlockingIOError:
                locked = True
            except (ImportError, OSError):
                locked = None  # cannot tell from the lock: go by the pid
            try:
                record = json.loads(os.read(fd, 4096) or b"{}")
            except (OSError, ValueError):
                record = {}
        finally:
            os.close(fd)
        pid = record.get("pid") if isinstance(record, dict) else None
        host = record.get("host") if isinstance(record, dict) else None
        if locked:
            return TempFolder(folder, False, f"in use by process {pid}")
        if isinstance(pid, int) and not isinstance(pid, bool) and host == socket.gethostname():
            if locked is None and _pid_alive(pid):
                return TempFolder(folder, False, f"in use by process {pid}")
            return TempFolder(folder, True, f"its process {pid} is gone")
        if locked is False:
            return TempFolder(folder, True, "its writer is gone (lock free)")
    idle = now - _newest_write(folder)
    if idle >= stale_after:
        return TempFolder(folder, True, f"untouched for {_ago(idle)}")
    return TempFolder(folder, False, f"written {_ago(idle)} ago; may be in progress")


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"


def temp_folders(output_dir: str | Path, now: float | None = None) -> list[TempFolder]:
    """The `.tmp-*` folders (real folders, never symlinks) in the output folder, oldest name first."""
    out = Path(output_dir)
    found = []
    try:
        with os.scandir(out) as it:
            entries = [e for e in it if e.name.startswith(TMP_PREFIX) and e.is_dir(follow_symlinks=False)]
    except OSError:
        return []
    for entry in sorted(entries, key=lambda e: e.name):
        try:
            found.append(temp_status(Path(entry.path), now))
        except OSError:
            continue
    return found


def remove_temp(folder: TempFolder) -> None:
    """Delete an abandoned temp folder (its own files only: rmtree never follows symlinks inside it)."""
    shutil.rmtree(folder.path)


__all__ = ["TMP_PREFIX", "OWNER", "STALE_AFTER_S", "TempFolder", "claim", "temp_status", "temp_folders",
           "remove_temp"]
