"""Who holds a row of a batch: the driving process, named so that a claim outlives no process.

A claim records the process id, the host, the kernel's boot id and the process's start time (clock ticks since
boot, field 22 of `/proc/PID/stat`). A claim is live while a process with that pid runs on this host, in this
boot, and started at that time: a pid reused after a crash or a reboot is not mistaken for the claimant. A claim
from another host cannot be checked from here and counts as live. Imports nothing heavy.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def boot_id() -> str:
    """This boot's id (Linux), else ""."""
    try:
        return _BOOT_ID.read_text(encoding="ascii").strip()
    except OSError:
        return ""


def start_ticks(pid: int) -> int | None:
    """When process `pid` started, in clock ticks since boot (Linux `/proc`); None when it is not running or
    this system has no `/proc`."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    try:  # the command name (field 2) is in parentheses and may hold spaces: the fields after the last ')'
        return int(stat[stat.rindex(")") + 2:].split()[19])
    except (ValueError, IndexError):
        return None


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, another user's (or cannot tell: assume it runs)
    return True


@dataclass(frozen=True)
class Owner:
    pid: int
    host: str
    boot: str
    start: int | None

    @classmethod
    def me(cls) -> Owner:
        pid = os.getpid()
        return cls(pid, socket.gethostname(), boot_id(), start_ticks(pid))

    def to_text(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_text(cls, text: Any) -> Owner | None:
        """None for anything that is not a claim this module wrote (a journal from before claims)."""
        try:
            data = json.loads(text)
            owner = cls(int(data["pid"]), str(data["host"]), str(data.get("boot") or ""),
                        None if data.get("start") is None else int(data["start"]))
        except (TypeError, ValueError, KeyError):
            return None
        return owner if owner.pid > 0 else None

    def alive(self) -> bool:
        """Is the process that made this claim still running?"""
        if self.host != socket.gethostname():
            return True  # cannot be checked from here
        here = boot_id()
        if self.boot and here and self.boot != here:
            return False  # this machine rebooted since: every process of that boot is gone
        if Path("/proc/self/stat").exists():
            started = start_ticks(self.pid)
            return started is not None and (self.start is None or started == self.start)
        return _pid_running(self.pid)

    def describe(self) -> str:
        here = self.host == socket.gethostname()
        return f"process {self.pid}" + ("" if here else f" on {self.host}")


__all__ = ["Owner", "boot_id", "start_ticks"]
