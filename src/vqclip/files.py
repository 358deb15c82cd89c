"""Files written whole or not at all, and what is at a path (for messages that name the fix).

Every file the product writes (details.json, images, state, manifests, caches) goes through `atomic_write_bytes`
or a `temp_path` renamed into place, so a crash or a full disk never leaves half a file under the real name.
Reading is defensive: `read_regular` never follows a symlink and never waits on a FIFO. Imports nothing heavy.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import secrets
import stat
from pathlib import Path
from typing import Any

MAX_READ_BYTES = 64 << 20


def finite_json(obj: Any) -> Any:
    """`obj` with every float that is not finite (inf, nan) turned into None: JSON has no such numbers, and a
    result that overflowed must not cost the run that produced it."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_json(path: Path, obj: Any) -> None:
    """`obj` as UTF-8 JSON; a lone surrogate (not encodable as UTF-8) is written as its JSON escape
    (`\\udcff`), which reads back as the same string."""
    text = json.dumps(finite_json(obj), indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    text = _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)  # only inside strings: JSON escapes are valid
    atomic_write_bytes(path, text.encode())


_SURROGATE = re.compile("[\ud800-\udfff]")


def temp_path(path: Path) -> Path:
    """A sibling name to write to before `os.replace(tmp, path)` (for writers that need a filename)."""
    return path.with_name(f".{path.stem}.tmp-{secrets.token_hex(4)}{path.suffix}")


def path_problem(path: str | Path, want: str = "file") -> str | None:
    """None when `path` is what is wanted (`"file"`: an existing regular file, links followed; `"folder"`: an
    existing folder, or a missing one that could be created); otherwise a phrase such as "is a directory",
    "is a FIFO, not a regular file", "does not exist", "is a file, not a folder"."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            return "is a broken symlink"
        if want == "folder":
            parent = path.parent
            while parent != parent.parent and not parent.exists():
                parent = parent.parent
            if parent.exists() and not parent.is_dir():
                return f"cannot be created: {parent} is a file, not a folder"
            return None
        return "does not exist"
    except NotADirectoryError:
        return "cannot exist: a folder in its path is a file" if want == "file" else \
            "cannot be created: a folder in its path is a file, not a folder"
    except PermissionError:
        return "cannot be read (permission denied)"
    except OSError as e:
        return f"cannot be read ({e.strerror or type(e).__name__})"
    if want == "folder":
        if stat.S_ISDIR(st.st_mode):
            return None
        return "is a file, not a folder" if stat.S_ISREG(st.st_mode) else f"{_kind(st.st_mode)}, not a folder"
    if stat.S_ISREG(st.st_mode):
        return None
    if stat.S_ISDIR(st.st_mode):
        return "is a directory, not a file"
    return f"{_kind(st.st_mode)}, not a regular file"


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "is a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "is a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "is a device"
    if stat.S_ISDIR(mode):
        return "is a directory"
    return "is not a regular file"


def read_regular(path: Path, limit: int = MAX_READ_BYTES) -> bytes:
    """The bytes of `path`, which must be a regular file and not a symlink (FIFOs are not waited on).
    Raises FileNotFoundError, or OSError with a readable `strerror` ("is a symlink", "is a FIFO…")."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    if not hasattr(os, "O_NOFOLLOW") and path.is_symlink():
        raise OSError(errno.ELOOP, "is a symlink (not followed)")
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if e.errno == errno.ELOOP or (e.errno == errno.EMLINK and path.is_symlink()):  # EMLINK: FreeBSD
            raise OSError(errno.ELOOP, "is a symlink (not followed)") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, _kind(st.st_mode) + ", not a regular file")
        if st.st_size > limit:
            raise OSError(errno.EFBIG, f"is too large ({st.st_size:,} bytes)")
        chunks = []
        while True:
            block = os.read(fd, 1 << 20)
            if not block:
                break
            chunks.append(block)
        return b"".join(chunks)
    finally:
        os.close(fd)


def is_plain_file(path: Path) -> bool:
    """A regular file that is not a symlink (what run folders may hand out)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


