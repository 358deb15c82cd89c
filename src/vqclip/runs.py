"""Run folders, the unit of record (DESIGN "Run folder"; nanoGPT keeps the config beside every checkpoint).

`output/<YYYYmmddTHHMMSS>-<8 url-safe chars>/` holds output.png, anim.mp4, details.json, state.pt and copies of
input images. A run is assembled in a hidden `.tmp-<id>` folder and renamed into place at the end, so a crash
never leaves a half-written run folder; every file inside is itself written to a temporary name and renamed.
The writer records itself in `.tmp-<id>/.owner` (pid, host) and holds a lock on it, so a temp folder left by a
killed process can be told from a run in progress (`vqclip runs list` counts them, `vqclip runs clean` removes
them).

Reading is defensive: a run folder, details.json or output.png that is a symlink is never followed (it could
lead out of the run or the output folder), and a FIFO or folder where a file belongs is named as such.
Imports nothing heavy (the gallery and `runs list` must not import torch).
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
import socket
import string
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from vqclip.errors import VqclipError
from vqclip.files import atomic_write_json, is_plain_file, path_problem, read_regular

DETAILS = "details.json"
IMAGE = "output.png"
VIDEO = "anim.mp4"
STATE = "state.pt"
SCHEMA = 1
TMP_PREFIX = ".tmp-"  # a run being written: `<output>/.tmp-<id>/`
OWNER = ".owner"  # inside a temp run folder: {"pid", "host"} of the writer, which holds a lock on it
STALE_AFTER_S = 600.0  # a temp folder with no owner record counts as abandoned after this long without a write

_ALPHABET = string.ascii_letters + string.digits + "-_"
RUN_ID_RE = re.compile(r"^\d{8}T\d{6}-[A-Za-z0-9_-]{8}$")


_last_id_time: datetime | None = None  # the newest id this process made


def new_run_id(now: datetime | None = None) -> str:
    """`20261125T101500-042k3J9a`: the time to the millisecond (the suffix's three digits), then 30 random bits.
    Names sort in creation order, also for the stages of a chain made within one second: a process never hands
    out the same or an earlier millisecond twice."""
    global _last_id_time
    if now is None:
        now = datetime.now()
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)
        if _last_id_time is not None and now <= _last_id_time:
            now = _last_id_time + timedelta(milliseconds=1)
        _last_id_time = now
    ms = f"{now.microsecond // 1000:03d}"
    return now.strftime("%Y%m%dT%H%M%S") + "-" + ms + "".join(secrets.choice(_ALPHABET) for _ in range(5))


def is_run_id(text: str) -> bool:
    return bool(RUN_ID_RE.match(text))


def check_output_dir(output_dir: str | Path) -> Path:
    """The output folder, or a one-line error when something other than a folder is in its place."""
    out = Path(output_dir)
    problem = path_problem(out, "folder")
    if problem:
        raise VqclipError(f"output folder {out} {problem}; pass --output-dir a folder")
    return out


class RunFolder:
    """A run being written: files go to `<output>/.tmp-<id>/`; `commit()` renames it to `<output>/<id>/`."""

    def __init__(self, output_dir: str | Path, run_id: str | None = None) -> None:
        self.output_dir = Path(output_dir)
        self.id = run_id or new_run_id()
        self.final = self.output_dir / self.id
        self.path = self.output_dir / f"{TMP_PREFIX}{self.id}"
        self.committed = False
        self._lock: int | None = None

    def create(self) -> RunFolder:
        problem = path_problem(self.output_dir, "folder")
        if problem:
            raise VqclipError(f"output folder {self.output_dir} {problem}; pass --output-dir a folder")
        try:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self.path.mkdir()
        except OSError as e:
            raise VqclipError(f"cannot create a run folder in {self.output_dir} ({e.strerror}); "
                              "pass --output-dir to a writable folder") from None
        self._lock = _claim(self.path)
        return self

    def file(self, name: str) -> Path:
        return self.path / name

    def write_details(self, details: dict[str, Any]) -> None:
        atomic_write_json(self.file(DETAILS), details)

    def commit(self) -> Path:
        """Move the finished folder into place; the id is unique so nothing is ever overwritten."""
        if self.final.exists():
            raise VqclipError(f"{self.final} already exists; refusing to overwrite it")
        (self.path / OWNER).unlink(missing_ok=True)  # the lock stays held (open) until the rename is done
        os.replace(self.path, self.final)
        self._release()
        self.committed = True
        self.path = self.final
        return self.final

    def discard(self) -> None:
        if not self.committed:
            shutil.rmtree(self.path, ignore_errors=True)
        self._release()

    def _release(self) -> None:
        fd = getattr(self, "_lock", None)
        self._lock = None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass


# ---------------------------------------------------------------------------------------------------------
# Temporary run folders left behind by a killed process (`vqclip runs clean`)


def _claim(folder: Path) -> int | None:
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


def now_iso() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------------------
# Reading runs back


@dataclass
class RunInfo:
    """A run folder read back from disk; `details` is the parsed details.json."""

    path: Path
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def status(self) -> str:
        return str(self.details.get("status", "unknown"))

    @property
    def prompt(self) -> str:
        prompt = self.details.get("prompt")
        if not isinstance(prompt, str):
            config = self.details.get("config")
            prompt = config.get("prompt") if isinstance(config, dict) else None
        return prompt if isinstance(prompt, str) else ""

    @property
    def parent(self) -> str | None:
        parent = self.details.get("parent")
        return parent if isinstance(parent, str) and is_run_id(parent) else None

    @property
    def root(self) -> str:
        root = self.details.get("root")
        return root if isinstance(root, str) and is_run_id(root) else self.id

    @property
    def stage(self) -> int:
        stage = self.details.get("stage")
        return stage if isinstance(stage, int) and not isinstance(stage, bool) and stage >= 1 else 1

    @property
    def image(self) -> Path:
        return self.path / IMAGE

    @property
    def has_state(self) -> bool:
        return is_plain_file(self.path / STATE)


class BadRun(VqclipError):
    """A folder that looks like a run but whose details.json is missing or corrupt."""

    def __init__(self, message: str, path: Path | None = None, reason: str = "corrupt") -> None:
        # reason: "missing" | "corrupt" | "symlink" (a linked folder or details.json, never followed) | "not-file"
        super().__init__(message)
        self.path = path
        self.reason = reason


def read_details(folder: Path) -> dict[str, Any]:
    """details.json parsed; it must be a regular file inside the folder (a symlink is never followed)."""
    path = folder / DETAILS
    try:
        raw = read_regular(path)
    except FileNotFoundError:
        raise BadRun(f"{path} is missing; {folder} is not a vqclip run folder", folder, "missing") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise BadRun(f"{path} is a symlink, which vqclip does not follow; replace it with the file itself or "
                         "remove that run folder", folder, "symlink") from None
        why = e.strerror or type(e).__name__
        reason = "not-file" if e.errno in (errno.EINVAL, errno.EISDIR) else "corrupt"
        raise BadRun(f"{path} {why if reason == 'not-file' else f'is unreadable ({why})'}; fix or remove that "
                     "run folder", folder, reason) from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # ValueError: also a 5,000-digit number
        first = (str(e).splitlines() or [""])[0][:120]
        raise BadRun(f"{path} is corrupt ({type(e).__name__}: {first}); fix or remove that run folder",
                     folder) from None
    if not isinstance(data, dict):
        raise BadRun(f"{path} is corrupt (not a JSON object); fix or remove that run folder", folder)
    return data


def run_folders(output_dir: str | Path, links: list[Path] | None = None) -> list[Path]:
    """Candidate run folders (named like run ids), newest first; hidden/temporary folders are skipped, and so
    are symlinks (a linked run folder would let a run lead out of the output folder): those go to `links`."""
    out = Path(output_dir)
    found = []
    try:
        with os.scandir(out) as it:
            for entry in it:
                if not is_run_id(entry.name):
                    continue
                try:
                    if entry.is_symlink():
                        if links is not None:
                            links.append(Path(entry.path))
                    elif entry.is_dir(follow_symlinks=False):
                        found.append(Path(entry.path))
                except OSError:
                    continue
    except OSError:
        return []
    if links is not None:
        links.sort(key=lambda p: p.name, reverse=True)
    return sorted(found, key=lambda p: p.name, reverse=True)


def _linked(folder: Path) -> BadRun:
    return BadRun(f"{folder} is a symlink, which vqclip does not follow out of the output folder; move the run "
                  f"folder itself into {folder.parent}", folder, "symlink")


def scan_runs(output_dir: str | Path) -> tuple[list[RunInfo], list[BadRun]]:
    """All readable runs (newest first) and the problems met on the way (for counted warnings)."""
    good: list[RunInfo] = []
    bad: list[BadRun] = []
    links: list[Path] = []
    for folder in run_folders(output_dir, links):
        try:
            good.append(RunInfo(folder, read_details(folder)))
        except BadRun as e:
            bad.append(e)
    bad += [_linked(p) for p in links]
    return good, bad


def find_run(ref: str, output_dir: str | Path) -> RunInfo:
    """A run by id, unique id prefix, or run-folder path. Errors list what would have helped."""
    ref = ref.strip()
    if not ref:
        raise VqclipError("empty run reference; give a run id (see `vqclip runs list`)")
    as_path = Path(ref)
    if os.sep in ref or "/" in ref or ref.startswith(".") or as_path.is_absolute():
        if ".." in as_path.parts and not as_path.exists():
            raise VqclipError(f"{ref!r} is not a run id or a run folder; see `vqclip runs list`")
        if as_path.is_symlink() and is_run_id(as_path.name):
            raise _linked(as_path)
        if as_path.is_dir():
            if not (as_path / DETAILS).exists() and not (as_path / DETAILS).is_symlink():
                raise VqclipError(f"{as_path} is not a run folder (no {DETAILS}); see `vqclip runs list`")
            return RunInfo(as_path, read_details(as_path))
        problem = path_problem(as_path, "folder")
        if problem and as_path.exists():
            raise VqclipError(f"{as_path} {problem.replace('folder', 'run folder')}; give a run folder or a run id "
                              "(see `vqclip runs list`)")
        raise VqclipError(f"{ref!r} is not a run id or an existing run folder; see `vqclip runs list`")
    if not re.fullmatch(r"[A-Za-z0-9_-]+", ref) and not re.fullmatch(r"[0-9T-]+", ref):
        raise VqclipError(f"{ref!r} is not a run id; see `vqclip runs list`")
    check_output_dir(output_dir)
    links: list[Path] = []
    folders = run_folders(output_dir, links)
    exact = [p for p in folders + links if p.name == ref]
    matches = exact or [p for p in folders + links if p.name.startswith(ref)]
    if len(matches) == 1 and matches[0] in links:
        raise _linked(matches[0])
    if not matches:
        newest = ", ".join(p.name for p in folders[:5]) or "none yet"
        raise VqclipError(f"no run {ref!r} in {output_dir}; newest runs: {newest}")
    if len(matches) > 1:
        shown = ", ".join(p.name for p in matches[:10])
        more = f" (+{len(matches) - 10} more)" if len(matches) > 10 else ""
        raise VqclipError(f"run prefix {ref!r} is ambiguous: {shown}{more}; give more characters")
    return RunInfo(matches[0], read_details(matches[0]))


def lineage(run: RunInfo, output_dir: str | Path) -> list[RunInfo]:
    """The chain root → … → run, following `parent` links (stops at a missing or looping parent)."""
    chain = [run]
    seen = {run.id}
    while chain[0].parent and chain[0].parent not in seen:
        folder = Path(output_dir) / chain[0].parent
        if folder.is_symlink():
            break
        try:
            chain.insert(0, RunInfo(folder, read_details(folder)))
        except BadRun:
            break
        seen.add(chain[0].id)
    return chain
