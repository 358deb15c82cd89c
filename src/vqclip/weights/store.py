"""The weights folder, what is in it, and its manifest (habit from llm: a user folder that tests redirect).

Weights folder: `--weights-dir` when given, else `$VQCLIP_HOME/weights` when `VQCLIP_HOME` is set, else
`<platform user cache>/vqclip/weights` (platformdirs). It holds `NAME.ckpt` (registry downloads), any custom
`NAME.yaml` + `NAME.ckpt` pairs, `*.part` files of unfinished downloads, `NAME.safetensors` caches (see
`checkpoint.py`) and `manifest.json`, which records each checked file's sha256 keyed by size + mtime so that a
verified file is not hashed again on every run (a cached file is reused only when its sha256 matches: open_clip
`download_pretrained_from_url`).

Nothing here imports torch or touches the network.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from vqclip.errors import VqclipError
from vqclip.files import atomic_write_json, path_problem
from vqclip.weights.registry import WeightSpec, table

MANIFEST_NAME = "manifest.json"
MOVE_WEIGHTS = "set VQCLIP_HOME to a writable folder or pass --weights-dir"  # for a weights folder that cannot be written

# Manifest statuses, shown by `vqclip weights list`.
VERIFIED = "verified"  # sha256 matches the registry
TOFU = "trusted-on-first-use"  # no published sha256; the first download's hash is recorded and enforced
CUSTOM = "custom"  # a user's NAME.yaml + NAME.ckpt; hash recorded for run records


# ----------------------------------------------------------------------------------------------- folders


def vqclip_home() -> Path:
    """`$VQCLIP_HOME` when set, else the platform's user cache folder for vqclip."""
    env = os.environ.get("VQCLIP_HOME")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("vqclip", appauthor=False))


def weights_dir(override: str | Path | None = None) -> Path:
    """The weights folder: `override` (`--weights-dir`) > `$VQCLIP_HOME/weights` > user cache `vqclip/weights`.
    Something other than a folder in its place is a one-line error naming where the path came from."""
    if override:
        folder = Path(override).expanduser()
        how = "pass --weights-dir a folder (it is made if missing)"
    else:
        folder = vqclip_home() / "weights"
        how = ("set VQCLIP_HOME to a folder" if os.environ.get("VQCLIP_HOME") else "remove it") + \
            " or pass --weights-dir a folder"
    problem = path_problem(folder, "folder")
    if problem:
        raise VqclipError(f"weights folder {folder} {problem}; {how}")
    return folder


def ensure_writable(folder: Path, what: str, how: str) -> None:
    """Make `folder` if missing and check that a file can be created in it; otherwise one line naming the folder
    and `how` to move it (the variable or flag). Only what must write (a download) calls this: a read-only
    folder of installed weights still loads."""
    import errno
    import secrets

    probe = folder / f".vqclip-write-test-{secrets.token_hex(4)}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.open("xb").close()
        probe.unlink()
    except OSError as e:
        if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST, errno.ENOSPC,
                           errno.EDQUOT):
            raise
        reason = e.strerror or type(e).__name__
        raise VqclipError(f"{what} {folder} is not writable ({reason}); {how}") from None


def custom_models(folder: Path, registry: Mapping[str, WeightSpec] | None = None) -> dict[str, Path]:
    """Custom `NAME.yaml` files in the weights folder (registry names excluded), by name."""
    registry = table(registry)
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.glob("*.yaml")) if p.stem not in registry and p.is_file()}


def known_names(folder: Path, registry: Mapping[str, WeightSpec] | None = None) -> list[str]:
    registry = table(registry)
    return [*registry, *custom_models(folder, registry)]


# ---------------------------------------------------------------------------------------------- manifest


def _manifest_key(folder: Path, path: Path) -> str:
    path = path.absolute()
    return path.name if path.parent == folder.absolute() else str(path)


def read_manifest(folder: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads((folder / MANIFEST_NAME).read_text())
    except (OSError, ValueError, RecursionError):  # missing, unreadable or garbage: nothing is vouched for
        return {}
    files = data.get("files", {}) if isinstance(data, dict) else {}
    if not isinstance(files, dict):
        return {}
    return {k: v for k, v in files.items() if isinstance(v, dict) and isinstance(v.get("sha256", ""), str)}


def _write_manifest(folder: Path, files: dict[str, dict[str, Any]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / MANIFEST_NAME, {"version": 1, "files": dict(sorted(files.items()))})


def manifest_entry(folder: Path, path: Path) -> dict[str, Any] | None:
    """The manifest's record of `path`, whatever the file's current size and mtime."""
    return read_manifest(folder).get(_manifest_key(folder, path))


def fresh_entry(folder: Path, path: Path) -> dict[str, Any] | None:
    """The record of `path` only while its size and mtime are those recorded (so its hash still holds)."""
    entry = manifest_entry(folder, path)
    try:
        st = path.stat()
    except OSError:
        return None
    if entry and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns:
        return entry
    return None


def record_file(folder: Path, path: Path, sha256: str, status: str, url: str | None = None) -> dict[str, Any]:
    st = path.stat()
    entry = {"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "status": status,
             "checked": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if url:
        entry["url"] = url
    files = read_manifest(folder)
    files[_manifest_key(folder, path)] = entry
    try:
        _write_manifest(folder, files)
    except OSError:  # a read-only weights folder still loads; its files are hashed again next time
        pass
    return entry


def forget_file(folder: Path, path: Path) -> None:
    files = read_manifest(folder)
    if files.pop(_manifest_key(folder, path), None) is not None:
        _write_manifest(folder, files)
