"""The engine state file (`state.pt`): saved and loaded here only, its version checked.

`save_state` writes an engine's `state()` (tensors and plain values, on the CPU) whole or not at all: it is
serialised in memory first, so a full disk is an OSError naming the cause, never half a file. `load_state`
reads it back with `weights_only=True` (no pickled code runs), never through a symlink or from a FIFO, and hands
it to the engine's own `check_state`, which refuses before any model is loaded what the engine would otherwise
trip over later. Any problem is a one-line `BadRun` (whole words, never cut mid-word), which `vqclip continue`
turns into a restart from output.png with a note saying why (a newer version's state: a VqclipError, upgrade).

torch is imported inside the functions: importing this module stays cheap.
"""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path
from typing import Any, Callable

from vqclip import files
from vqclip.errors import shorten
from vqclip.runfolder.record import BadRun

MAX_STATE_BYTES = 8 << 30  # far above any real state (the latent and two optimizer moments)
# How Python names the functions of `os` in a pickle (posix.system is os.system on Linux).
_OS_MODULES = ("posix.", "nt.")


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Write an engine state to `path` (whole or not at all)."""
    import torch

    buf = io.BytesIO()
    torch.save(state, buf)
    files.atomic_write_bytes(path, buf.getvalue())


def load_state(path: Path, check: Callable[[Path, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """A saved engine state, loaded safely; `check(path, state)` (the engine's `check_state`) then refuses, in
    one line, a state that engine cannot resume. BadRun when it cannot be used."""
    state = _read(path)
    if not isinstance(state, dict):
        raise BadRun(f"{path} is not a vqclip state (not a mapping)")
    if check is not None:
        check(path, state)
    return state


def _read(path: Path) -> Any:
    import pickle

    import torch

    try:  # a regular file, never followed through a symlink, never waited on as a FIFO
        data = files.read_regular(path, MAX_STATE_BYTES)
    except OSError as e:
        raise BadRun(f"{path} is unreadable ({e.strerror or type(e).__name__})") from None
    if data[:4] == b"PK\x03\x04" and not zipfile.is_zipfile(io.BytesIO(data)):  # torch's words for it vary
        raise BadRun(f"{path} is damaged (an incomplete zip archive, cut short while it was written or copied)")
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        code = _code_globals(data, e)
        if code:
            raise BadRun(f"{path} would run code when loaded (it names `{code}`); refusing it") from None
        raise BadRun(f"{path} is unreadable ({why(e)})") from None
    except Exception as e:  # zip, EOF and pickle errors of many kinds
        raise BadRun(f"{path} is unreadable ({why(e)})") from None


def why(e: BaseException) -> str:
    """The useful words of a load error, cut at a word boundary."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    line = next((ln for ln in lines if not ln.startswith("Weights only load failed")), lines[0] if lines else "")
    line = re.sub(r"\s*This is an internal miniz error.*", "", line)
    return f"{type(e).__name__}: {shorten(line, 100)}" if line else type(e).__name__


def _code_globals(data: bytes, e: BaseException) -> str | None:
    """The first global a refused pickle names (`os.system`), from torch's own scan or from its refusal."""
    import torch

    names: list[str] = []
    try:
        names = list(torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(data)))
    except Exception:  # a legacy (non-zip) file is not scanned: read the name from the refusal
        pass
    if not names:
        names = re.findall(r"GLOBAL ([\w.]+)", str(e))
    if not names:
        return None
    name = names[0]
    for prefix in _OS_MODULES:
        if name.startswith(prefix):
            name = "os." + name[len(prefix):]
    return name


__all__ = ["save_state", "load_state", "why"]
