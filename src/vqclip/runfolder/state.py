"""The engine state file (`state.pt`): saved and loaded here only, its version checked.

`save_state` writes `Session.state_dict()` (tensors and plain values, on the CPU) whole or not at all: it is
serialised in memory first, so a full disk is an OSError naming the cause, never half a file. `load_state`
reads it back with `weights_only=True` (no pickled code runs) and checks, before any model is loaded, what the
engine would otherwise trip over later: the latent and step counter, the random state's size, and that the
optimizer state fits the latent. A state of a newer version is refused in one line (upgrade); one without a
version, or an older one, loads as before. Any other problem is a one-line `BadRun` (whole words, never cut
mid-word), which `vqclip continue` turns into a restart from output.png with a note saying why.

torch is imported inside the functions: importing this module stays cheap.
"""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path
from typing import Any

from vqclip import files
from vqclip.errors import VqclipError, shorten
from vqclip.record import BadRun

MAX_STATE_BYTES = 8 << 30  # far above any real state (the latent and two optimizer moments)
# How Python names the functions of `os` in a pickle (posix.system is os.system on Linux).
_OS_MODULES = ("posix.", "nt.")


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Write an engine state to `path` (whole or not at all)."""
    import torch

    buf = io.BytesIO()
    torch.save(state, buf)
    files.atomic_write_bytes(path, buf.getvalue())


def load_state(path: Path) -> dict[str, Any]:
    """A saved engine state, loaded safely and checked; BadRun (one line) when it cannot be used, VqclipError
    when a newer vqclip wrote it."""
    import torch

    from vqclip.engine.loop import STATE_VERSION

    state = _read(path)
    if not isinstance(state, dict):
        raise BadRun(f"{path} is not a vqclip state (not a mapping)")
    version = state.get("version")
    if isinstance(version, int) and not isinstance(version, bool) and version > STATE_VERSION:
        raise VqclipError(f"{path} was made by a newer vqclip (state version {version}; this one reads up to "
                          f"{STATE_VERSION}); upgrade vqclip to continue this run")
    z, step = state.get("z"), state.get("step")
    if not isinstance(z, torch.Tensor) or z.dim() != 4 or not z.is_floating_point() or z.numel() == 0:
        raise BadRun(f"{path} is not a vqclip state (no latent z)")
    if isinstance(step, torch.Tensor) and step.numel() == 1:
        step = state["step"] = int(step.item())
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise BadRun(f"{path} is not a vqclip state (no step counter)")
    if not isinstance(state.get("z_anchor"), torch.Tensor) or state["z_anchor"].shape != z.shape:
        state["z_anchor"] = z.clone()
    _check_rng(path, state)
    _check_optimizer(path, state, z)
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
        raise BadRun(f"{path} is unreadable ({_why(e)})") from None
    except Exception as e:  # zip, EOF and pickle errors of many kinds
        raise BadRun(f"{path} is unreadable ({_why(e)})") from None


def _why(e: BaseException) -> str:
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


def _check_rng(path: Path, state: dict[str, Any]) -> None:
    import torch

    rng = state.get("rng_cpu")
    if rng is None:
        return
    try:
        torch.Generator().set_state(rng)
    except (RuntimeError, TypeError, ValueError) as e:
        raise BadRun(f"{path} holds a random state that is not a CPU generator's ({_why(e)})") from None


def _check_optimizer(path: Path, state: dict[str, Any], z: Any) -> None:
    """The saved optimizer state must load into an optimizer of its kind over this latent."""
    import torch

    from vqclip.engine.loop import make_optimizer

    saved = state.get("optimizer_state")
    if saved is None:
        return
    name = state.get("optimizer")
    problem = None
    if not isinstance(saved, dict) or not isinstance(name, str):
        problem = "no optimizer name, or its state is not a mapping"
    else:
        try:
            opt = make_optimizer(name, [torch.zeros_like(z, dtype=torch.float32, requires_grad=True)], 0.1)
            opt.load_state_dict(saved)
        except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as e:
            problem = _why(e)
        else:
            for per_param in opt.state.values():
                for key, value in per_param.items():
                    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != z.shape:
                        problem = f"its {key} is {tuple(value.shape)}, the latent {tuple(z.shape)}"
    if problem:
        raise BadRun(f"{path} holds an optimizer state that does not fit its latent ({problem})")


__all__ = ["save_state", "load_state"]
