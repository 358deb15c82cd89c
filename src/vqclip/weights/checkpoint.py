"""Safe checkpoint loading (habit from open_clip `load_state_dict`: cpu, weights_only, unwrap state_dict).

Taming `.ckpt` files were written by PyTorch Lightning 1.x and pickle the `ModelCheckpoint` *class* as a dict
key under `callbacks`. `torch.load(weights_only=True)` refuses that global. We register inert placeholder
classes under those names so the file loads without Lightning and without running any pickled code. Any
other global is refused unless the caller explicitly trusts the file.

`load_vqgan_state` adds a pickle-free cache: after the first safe load, the VQGAN tensors (decoder, quantizer,
post_quant_conv, encoder, quant_conv) are written to a `.safetensors` file with metadata that binds the cache to
that exact checkpoint (size + mtime, plus its sha256 when the weights manifest knows it). Later loads read only
the tensors they need from it (safetensors: no pickle, no optimizer states, no loss network). The cache sits
beside the `.ckpt` in a vqclip weights folder, and under `$VQCLIP_HOME/cache/vqgan/` for a checkpoint loaded by
path: vqclip never writes into a user's own model folder.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, Iterable

import torch

from vqclip.errors import UnsafeCheckpoint, VqclipError, WeightsMissing, one_line, shorten
from vqclip.files import temp_path
from vqclip.weights.pickle_scan import LIGHTNING_PREFIXES, NUMPY_SAFE
from vqclip.weights.store import fresh_entry

VQGAN_KEYS = ("decoder.", "post_quant_conv.", "quantize.", "encoder.", "quant_conv.")
# Where the autoencoder lives in a checkpoint: a VQModel's own keys, or a Net2NetTransformer's first stage
# (sflckr, faceshq); never the cond_stage_model of a segmentation model.
_AUTOENCODER_PREFIXES = ("", "first_stage_model.")
CACHE_FORMAT = "vqclip-vqgan-cache/1"

# Globals that only ever appear as inert data in Lightning/numpy checkpoints (the lists live in pickle_scan.py,
# which `weights list` reads without torch). They are *never* imported: each name maps to a placeholder class (or
# to a numpy data constructor that the torch docs list as safe).


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
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001 - a trusted file can still be garbage, truncated or foreign
            raise UnsafeCheckpoint(f"{path} is not a readable PyTorch checkpoint ({one_line(e, 240)}); "
                                   "re-download it") from None
        return _unwrap(obj, path)
    extra, refused = _classify(unsafe_globals(path))
    if refused:
        raise UnsafeCheckpoint(
            f"{path} needs Python objects that could run code when loaded ({', '.join(sorted(refused)[:3])}); "
            f"refusing it. If you trust this file, pass --trust-checkpoint {path}"
        )
    try:
        with torch.serialization.safe_globals(extra):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpoint(
            f"{path} cannot be loaded safely ({unpickler_refusal(e)}); if you trust this file, pass "
            f"--trust-checkpoint {path}"
        ) from None
    except (RuntimeError, EOFError, OSError) as e:
        raise UnsafeCheckpoint(f"{path} is not a readable PyTorch checkpoint ({one_line(e, 240, typed=False)}); "
                               "re-download it") from None
    except Exception as e:  # noqa: BLE001 - what else a foreign file makes torch raise (safetensors, zip, …)
        raise UnsafeCheckpoint(f"{path} is not a readable PyTorch checkpoint ({one_line(e, 240)}); "
                               "re-download it") from None
    return _unwrap(obj, path)


def _classify(needed: Iterable[str]) -> tuple[list[Any], list[str]]:
    """(safe_globals entries for the inert Lightning/numpy names, the names refused)."""
    extra: list[Any] = []
    refused: list[str] = []
    for name in needed:
        if name.startswith(LIGHTNING_PREFIXES):
            extra.append((_placeholder(name), name))
        elif name in NUMPY_SAFE:
            extra.append((_numpy_global(name), name))
        else:
            refused.append(name)
    return extra, refused


def refused_globals(path: str | Path) -> list[str]:
    """The pickled globals of a checkpoint that `load_checkpoint` would refuse (torch's own scan; nothing runs).
    A legacy (non-zip) file is not scanned by torch: `pickle_scan.checkpoint_problem` reads those."""
    return sorted(_classify(unsafe_globals(path))[1])


def unpickler_refusal(e: Exception) -> str:
    """The useful line of torch's weights-only refusal (its first line is a long generic preamble)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    useful = next((ln for ln in lines if ln.startswith(("WeightsUnpickler error", "Unsupported"))), None)
    if useful:
        return shorten(useful.removeprefix("WeightsUnpickler error:").strip(), 160)
    return "the weights-only unpickler refused it"


def _unwrap(obj: Any, path: Path) -> dict[str, Any]:
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(obj, dict) else {}
    if not tensors:
        raise UnsafeCheckpoint(f"{path} holds no state_dict of tensors; is it a model checkpoint?")
    return tensors


# ------------------------------------------------------------------------------------------ VQGAN state


def load_vqgan_state(ckpt_path: str | Path, trust: bool = False, keys: Iterable[str] = VQGAN_KEYS,
                     cache: bool = True) -> dict[str, torch.Tensor]:
    """The VQGAN tensors of a taming checkpoint whose names start with one of `keys` (e.g. `decoder.`).

    Reads the safetensors cache when it belongs to this exact file; otherwise loads the checkpoint safely
    (see `load_checkpoint`), strips a Net2NetTransformer's `first_stage_model.` prefix and, after a safe load,
    writes the cache. A load that needed `trust=True` is not cached: the next load must be trusted again.
    """
    path = Path(ckpt_path)
    wanted = tuple(keys)
    if not path.is_file():
        raise WeightsMissing(f"checkpoint {path} not found; see `vqclip weights list`")
    if cache:
        hit = read_cache(path, wanted)
        if hit is not None:
            return hit
    stamp = path.stat()
    state = vqgan_tensors(load_checkpoint(path, trust=trust), path)
    if cache and not trust:
        write_cache(path, state, stamp)
    return {k: v for k, v in state.items() if k.startswith(wanted)}


def vqgan_tensors(state: dict[str, Any], path: Path) -> dict[str, torch.Tensor]:
    """The autoencoder's tensors under their VQModel names (prefix stripped), training-only ones dropped."""
    for prefix in _AUTOENCODER_PREFIXES:
        if f"{prefix}decoder.conv_in.weight" in state:
            n = len(prefix)
            return {k[n:]: v for k, v in state.items() if k.startswith(prefix) and k[n:].startswith(VQGAN_KEYS)}
    raise VqclipError(f"{path} has no VQGAN decoder (no decoder.* tensors); is it a taming VQGAN checkpoint?")


def cache_path(ckpt_path: str | Path) -> Path:
    """`NAME.safetensors` beside a checkpoint in a vqclip weights folder; otherwise
    `$VQCLIP_HOME/cache/vqgan/NAME-<hash of its absolute path>.safetensors`."""
    import hashlib

    from vqclip.weights.store import vqclip_home

    path = Path(ckpt_path)
    if _in_weights_folder(path):
        return path.with_suffix(".safetensors")
    where = str(path.expanduser().absolute()).encode("utf-8", "surrogateescape")
    return vqclip_home() / "cache" / "vqgan" / f"{path.stem}-{hashlib.sha256(where).hexdigest()[:16]}.safetensors"


def _in_weights_folder(path: Path) -> bool:
    """Whether `path` lies in a folder vqclip keeps: the default weights folder, or one with a weights manifest
    (a `--weights-dir` after its first download or check)."""
    from vqclip.weights.store import MANIFEST_NAME, weights_dir

    folder = path.expanduser().absolute().parent
    if (folder / MANIFEST_NAME).is_file():
        return True
    try:
        return folder.resolve() == weights_dir().resolve()
    except (VqclipError, OSError):
        return False


def _stamp(st: os.stat_result) -> dict[str, str]:
    return {"source_size": str(st.st_size), "source_mtime_ns": str(st.st_mtime_ns)}


def read_cache(ckpt_path: Path, keys: tuple[str, ...]) -> dict[str, torch.Tensor] | None:
    """The cached tensors starting with `keys`, or None when there is no cache for this exact checkpoint."""
    from safetensors import safe_open

    cache = cache_path(ckpt_path)
    if not cache.is_file():
        return None
    try:
        with safe_open(str(cache), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            current = _stamp(ckpt_path.stat())
            fresh = meta.get("format") == CACHE_FORMAT and all(meta.get(k) == v for k, v in current.items())
            if not fresh or not set(keys) <= set(meta.get("prefixes", "").split(",")):
                return None
            return {k: f.get_tensor(k) for k in f.keys() if k.startswith(keys)}
    except Exception:  # a truncated or foreign file: ignore it, the checkpoint is the source of truth
        return None


def write_cache(ckpt_path: Path, state: dict[str, torch.Tensor], stamp: os.stat_result) -> Path | None:
    """Write the VQGAN tensors to `cache_path` (atomically); None when its folder is not writable."""
    from safetensors.torch import save_file

    if _stamp(ckpt_path.stat()) != _stamp(stamp):  # the file changed while we read it
        return None
    meta = {"format": CACHE_FORMAT, "source_name": ckpt_path.name, "prefixes": ",".join(VQGAN_KEYS),
            "source_sha256": _manifest_sha(ckpt_path) or "", **_stamp(stamp)}
    cache = cache_path(ckpt_path)
    tmp = temp_path(cache)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        save_file(_unshared(state), str(tmp), metadata=meta)
        os.replace(tmp, cache)
    except OSError:
        tmp.unlink(missing_ok=True)
        return None
    return cache


def _unshared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses views and tensors sharing storage: copy those (rare in taming checkpoints)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for k, v in state.items():
        t = v.detach()
        ptr = t.untyped_storage().data_ptr()
        whole = t.is_contiguous() and t.storage_offset() == 0 and \
            t.untyped_storage().nbytes() == t.numel() * t.element_size()
        out[k] = t if whole and ptr not in seen else t.contiguous().clone()
        seen.add(ptr)
    return out


def _manifest_sha(ckpt_path: Path) -> str | None:
    entry = fresh_entry(ckpt_path.parent, ckpt_path)
    return str(entry["sha256"]) if entry and entry.get("sha256") else None


def is_trusted(ckpt_path: str | Path, trusted: Iterable[str | Path]) -> bool:
    """Whether `--trust-checkpoint FILE` names this checkpoint (same file after resolving links)."""
    target = Path(ckpt_path).expanduser()
    for item in trusted:
        candidate = Path(item).expanduser()
        try:
            if candidate.resolve() == target.resolve() or os.path.samefile(candidate, target):
                return True
        except OSError:
            continue
    return False
