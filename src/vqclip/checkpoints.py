"""Safe checkpoint loading (habit from open_clip `load_state_dict`: cpu, weights_only, unwrap state_dict).

Taming `.ckpt` files were written by PyTorch Lightning 1.x and pickle the `ModelCheckpoint` *class* as a dict
key under `callbacks`. `torch.load(weights_only=True)` refuses that global. We register inert placeholder
classes under those names so the file loads without Lightning and without running any pickled code. Any
other global is refused unless the caller explicitly trusts the file.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from vqclip.errors import UnsafeCheckpoint

# Globals that only ever appear as inert data in Lightning/numpy checkpoints. They are *never* imported: each
# name maps to a placeholder class (or to a numpy data constructor that the torch docs list as safe).
_LIGHTNING_PREFIXES = ("pytorch_lightning.callbacks.", "lightning.pytorch.callbacks.", "lightning_fabric.")
_NUMPY_SAFE = {
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
    "numpy.dtype",
    "numpy.core.multiarray._reconstruct",
    "numpy._core.multiarray._reconstruct",
    "numpy.ndarray",
}


def _placeholder(qualified: str) -> type:
    """An empty class standing in for a Lightning class; unpickling it runs no code of that class."""
    module, _, name = qualified.rpartition(".")
    return type(name, (), {"__module__": module, "__doc__": f"inert placeholder for {qualified}"})


def _numpy_global(qualified: str) -> Any:
    import importlib

    module, _, name = qualified.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return _placeholder(qualified)


def unsafe_globals(path: str | Path) -> list[str]:
    """Names of the globals a checkpoint needs beyond torch's weights_only allow-list (nothing is executed)."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # legacy (non-zip) format: fall back to the error of a real load attempt
        return []


def load_checkpoint(path: str | Path, trust: bool = False) -> dict[str, Any]:
    """Load a checkpoint on the CPU without executing pickled code and return its state dict.

    `trust=True` (the CLI's `--trust-checkpoint FILE`) allows a full unpickle; only for files the user vouches for.
    """
    path = Path(path)
    if trust:
        obj = torch.load(path, map_location="cpu", weights_only=False)
        return _unwrap(obj, path)
    needed = unsafe_globals(path)
    extra: list[Any] = []
    refused: list[str] = []
    for name in needed:
        if name.startswith(_LIGHTNING_PREFIXES):
            extra.append((_placeholder(name), name))
        elif name in _NUMPY_SAFE:
            extra.append((_numpy_global(name), name))
        else:
            refused.append(name)
    if refused:
        raise UnsafeCheckpoint(
            f"{path} needs Python objects that could run code when loaded ({', '.join(sorted(refused)[:3])}); "
            f"refusing it. If you trust this file, pass --trust-checkpoint {path}"
        )
    try:
        with torch.serialization.safe_globals(extra):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnsafeCheckpoint(
            f"{path} cannot be loaded safely ({first}); if you trust this file, pass --trust-checkpoint {path}"
        ) from None
    except (RuntimeError, EOFError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnsafeCheckpoint(f"{path} is not a readable PyTorch checkpoint ({first}); re-download it") from None
    return _unwrap(obj, path)


def _unwrap(obj: Any, path: Path) -> dict[str, Any]:
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(obj, dict) else {}
    if not tensors:
        raise UnsafeCheckpoint(f"{path} holds no state_dict of tensors; is it a model checkpoint?")
    return tensors
