"""The one resolver from a model name or path to files: a registry name (downloaded and verified on first use),
a custom name (`NAME.yaml` + `NAME.ckpt` in the weights folder) or a path to a `.yaml` / `.ckpt`.

`generate`, `continue`, `weights path` and the dry run's estimate (`yaml_only=True`: the yaml alone, nothing
downloaded or hashed) all resolve through `resolve_model`. Nothing here prints or imports torch: notices go to a
`note` callback and bytes to a `download.Progress`.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from vqclip.errors import VqclipError, WeightsMissing
from vqclip.files import path_problem
from vqclip.weights.download import Note, Progress, default_timeout, download_file, human_size, sha256_file
from vqclip.weights.model_yaml import ensure_yaml, validate_yaml
from vqclip.weights.registry import WeightSpec, table
from vqclip.weights.store import (CUSTOM, MOVE_WEIGHTS, TOFU, VERIFIED, custom_models, ensure_writable, fresh_entry,
                                  known_names, manifest_entry, record_file)
from vqclip.weights.store import weights_dir as weights_folder


@dataclass(frozen=True)
class ModelFiles:
    """A VQGAN ready to load: its yaml and checkpoint on disk, and the checkpoint's sha256 when known
    (`yaml_only`: the checkpoint is where it would be, unchecked, and sha256 is None)."""

    name: str
    yaml_path: Path
    ckpt_path: Path
    sha256: str | None
    source: str  # "registry" | "custom" | "path"


def resolve_model(name_or_path: str, *, weights_dir: str | Path | None = None, download: bool = True,
                  yaml_only: bool = False, note: Note | None = None, progress: Progress | None = None,
                  registry: Mapping[str, WeightSpec] | None = None, timeout: float | None = None) -> ModelFiles:
    """Registry name, custom name (NAME.yaml + NAME.ckpt in the weights folder) or a .yaml/.ckpt path → files.

    A registry model that is missing is downloaded (`note` says what and how big; `progress` gets the bytes)
    unless `download=False`, which raises `WeightsMissing` naming the file, the command and the URL.
    `yaml_only=True` finds the yaml alone (for estimates): no checkpoint is looked for, hashed or downloaded.
    """
    folder = weights_folder(weights_dir)
    registry = table(registry)
    text = name_or_path.strip()
    if text in registry:
        spec = registry[text]
        if yaml_only:
            return ModelFiles(spec.name, ensure_yaml(spec, folder, download=False), folder / f"{spec.name}.ckpt",
                              None, "registry")
        return install_registry_model(spec, folder, download=download, note=note, progress=progress,
                                      timeout=timeout)
    customs = custom_models(folder, registry)
    if text in customs:
        return _custom_files(text, customs[text], folder, progress, yaml_only)
    if _is_path_like(text) or Path(text).expanduser().is_file():
        return _path_files(text, folder, progress, yaml_only)
    names = ", ".join(known_names(folder, registry))
    raise VqclipError(f"unknown model {text!r}; known: {names} (or a path to a taming .yaml with its .ckpt "
                      "beside it; see `vqclip weights list`)")


# -------------------------------------------------------------------------------------- registry models


def installed_path(spec: WeightSpec, folder: Path) -> Path:
    """Where a registry file lives in the weights folder: its published name (diffusion models) or NAME.ckpt."""
    return folder / (spec.filename or f"{spec.name}.ckpt")


def expected_sha256(spec: WeightSpec, folder: Path) -> str | None:
    """The registry's sha256, else the hash recorded when the file was first trusted (TOFU)."""
    if spec.sha256:
        return spec.sha256
    entry = manifest_entry(folder, installed_path(spec, folder))
    return entry.get("sha256") if entry and entry.get("status") == TOFU else None


def check_installed(spec: WeightSpec, ckpt: Path, folder: Path, progress: Progress | None = None,
                    force: bool = False) -> tuple[bool, str]:
    """(good, sha256) for an installed registry checkpoint; hashes only when the manifest cannot vouch for it."""
    expected = expected_sha256(spec, folder)
    entry = None if force else fresh_entry(folder, ckpt)
    if entry and entry.get("sha256") and (expected is None or entry["sha256"] == expected):
        return True, str(entry["sha256"])
    if spec.size is not None and ckpt.stat().st_size != spec.size:
        return False, ""
    got = sha256_file(ckpt, progress, spec.name)
    if expected is not None and got != expected:
        return False, got
    record_file(folder, ckpt, got, VERIFIED if spec.sha256 else TOFU)
    return True, got


def install_registry_model(spec: WeightSpec, folder: Path, *, download: bool = True, note: Note | None = None,
                           progress: Progress | None = None, timeout: float | None = None,
                           retries: int | None = None, retry_wait: float | None = None) -> ModelFiles:
    """Make sure `spec`'s yaml and checkpoint are in `folder` and good (see `ensure_registry_file`)."""
    yaml_path = ensure_yaml(spec, folder, download=download, timeout=timeout)
    ckpt, got = ensure_registry_file(spec, folder, download=download, note=note, progress=progress, timeout=timeout,
                                     retries=retries, retry_wait=retry_wait)
    return ModelFiles(spec.name, yaml_path, ckpt, got, "registry")


def ensure_registry_file(spec: WeightSpec, folder: Path, *, download: bool = True, note: Note | None = None,
                         progress: Progress | None = None, timeout: float | None = None,
                         retries: int | None = None, retry_wait: float | None = None) -> tuple[Path, str]:
    """(path, sha256) of `spec`'s file in `folder`, good: reused, re-downloaded when corrupt, or fetched (any
    registry family: a VQGAN checkpoint, a diffusion U-Net, the secondary model)."""
    say = note or (lambda text: None)
    ckpt = installed_path(spec, folder)
    if ckpt.is_file():
        good, got = check_installed(spec, ckpt, folder, progress)
        if good:
            return ckpt, got
        if not download:
            raise WeightsMissing(f"{ckpt} is corrupt or not the expected file (sha256 mismatch); run "
                                 f"`vqclip weights download {spec.name}` to replace it")
        ensure_writable(folder, "weights folder", MOVE_WEIGHTS)
        say(f"{ckpt.name} is corrupt or not the expected file; downloading it again.")
        ckpt.unlink()
    elif not download:
        raise WeightsMissing(f"{spec.name} is not downloaded (expected {ckpt}); run `vqclip weights download "
                             f"{spec.name}` ({human_size(spec.display_size)} from {spec.url})")
    ensure_writable(folder, "weights folder", MOVE_WEIGHTS)
    timeout = default_timeout() if timeout is None else timeout  # a bad VQCLIP_TIMEOUT says so before any note
    expected = expected_sha256(spec, folder)
    host = urllib.parse.urlsplit(spec.url).hostname or spec.url
    say(f"Downloading {spec.name} ({human_size(spec.display_size)}) from {host} into {folder}; first use only.")
    got, url = download_file(spec.urls, ckpt, size=spec.size, sha256=expected, note=note, progress=progress,
                             label=spec.name, timeout=timeout, retries=retries, retry_wait=retry_wait)
    status = VERIFIED if spec.sha256 else TOFU
    record_file(folder, ckpt, got, status, url)
    if status == TOFU:
        say(f"{spec.name} has no published sha256; recorded {got[:16]}… and will insist on it from now on "
            "(trust on first use).")
    return ckpt, got


# ------------------------------------------------------------------------------------ custom pairs, paths


def _custom_files(name: str, yaml_path: Path, folder: Path, progress: Progress | None,
                  yaml_only: bool) -> ModelFiles:
    ckpt = yaml_path.with_suffix(".ckpt")
    validate_yaml(yaml_path)  # a user's file: checked before any parser or constructor sees it
    if yaml_only:
        return ModelFiles(name, yaml_path, ckpt, None, "custom")
    if not ckpt.is_file():
        raise WeightsMissing(f"custom model {name}: {yaml_path.name} has no checkpoint beside it; "
                             f"expected {ckpt}")
    return ModelFiles(name, yaml_path, ckpt, _custom_sha(ckpt, folder, progress), "custom")


def _custom_sha(ckpt: Path, folder: Path, progress: Progress | None = None) -> str:
    """A user's checkpoint is hashed once (for run records) and remembered in the manifest by size + mtime."""
    entry = fresh_entry(folder, ckpt)
    if entry and entry.get("sha256"):
        return str(entry["sha256"])
    got = sha256_file(ckpt, progress)
    record_file(folder, ckpt, got, CUSTOM)
    return got


def _is_path_like(text: str) -> bool:
    return any(sep in text for sep in ("/", "\\")) or text.endswith((".yaml", ".yml", ".ckpt"))


def _not_a_file(path: Path, what: str, fix: str) -> VqclipError | None:
    """The error for `path` when it is not a regular file: "not found" only when nothing is there."""
    problem = path_problem(path, "file")
    if problem is None:
        return None
    if problem == "does not exist":
        return WeightsMissing(f"{what} {path} not found; {fix}")
    return VqclipError(f"{what} {path} {problem}; {fix}")


def _path_files(text: str, folder: Path, progress: Progress | None, yaml_only: bool) -> ModelFiles:
    given = Path(text).expanduser()
    if given.suffix == ".ckpt":
        ckpt, yaml_path = given, given.with_suffix(".yaml")
        err = None if yaml_only else _not_a_file(ckpt, "checkpoint", "pass an existing .ckpt or .yaml, or a name "
                                                 "from `vqclip weights list`")
        if err:
            raise err
        err = _not_a_file(yaml_path, f"{ckpt.name} needs a model config beside it, but", "save the taming config "
                          "there")
        if err:
            raise WeightsMissing(f"{ckpt.name} has no model config beside it; expected {yaml_path}") \
                if not yaml_path.exists() else err
    else:
        yaml_path, ckpt = given, given.with_suffix(".ckpt")
        err = _not_a_file(yaml_path, "model config", "pass an existing .yaml, or a name from `vqclip weights list`")
        if err:
            raise err
        err = None if yaml_only else _not_a_file(ckpt, f"{yaml_path.name} needs a checkpoint beside it, but",
                                                 "put the .ckpt there")
        if err:
            raise WeightsMissing(f"{yaml_path.name} has no checkpoint beside it; expected {ckpt}") \
                if not ckpt.exists() else err
    validate_yaml(yaml_path)  # a user's file: checked before any parser or constructor sees it
    sha = None if yaml_only else _custom_sha(ckpt, folder, progress)
    return ModelFiles(ckpt.stem, yaml_path, ckpt, sha, "path")
