"""Installed models: what `vqclip weights list` shows for each (without hashing), `verify` (re-hash against the
registry or the recorded hash) and `remove` (files and manifest record).

Nothing here prints; torch is imported only by `verify` on a custom checkpoint, for its own scan of the pickle.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from vqclip.errors import VqclipError
from vqclip.weights.download import Progress, part_path, sha256_file
from vqclip.weights.model_yaml import validate_yaml
from vqclip.weights.pickle_scan import checkpoint_problem, refusal
from vqclip.weights.registry import WeightSpec, packaged_yaml, table
from vqclip.weights.resolve import check_installed, expected_sha256
from vqclip.weights.store import (CUSTOM, custom_models, forget_file, fresh_entry, known_names, manifest_entry,
                                  record_file)

BROKEN = "broken"  # a custom pair that cannot load (ModelStatus.problem says why)


# ----------------------------------------------------------------------------------------- status (list)


@dataclass(frozen=True)
class ModelStatus:
    """What `vqclip weights list` shows for one model; computed without hashing anything."""

    name: str
    kind: str  # "registry" | "custom"
    description: str
    size: int | None
    installed: bool
    status: str  # verified | trusted-on-first-use | custom | unverified | partial | missing | no checkpoint
    ckpt_path: Path
    yaml_path: Path | None
    sha256: str | None
    partial_bytes: int = 0
    problem: str | None = None  # why a custom pair cannot load (status "broken")

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "description": self.description, "size": self.size,
                "installed": self.installed, "status": self.status, "path": str(self.ckpt_path),
                "yaml": str(self.yaml_path) if self.yaml_path else None, "sha256": self.sha256,
                "partial_bytes": self.partial_bytes, "problem": self.problem}


def registry_status(spec: WeightSpec, folder: Path) -> ModelStatus:
    ckpt = folder / f"{spec.name}.ckpt"
    part = part_path(ckpt)
    yaml_path = packaged_yaml(spec.name) or folder / f"{spec.name}.yaml"
    if ckpt.is_file():
        entry = fresh_entry(folder, ckpt)
        good = entry and (expected_sha256(spec, folder) in (None, entry.get("sha256")))
        status = str(entry["status"]) if good and entry else "unverified"
        sha = str(entry["sha256"]) if good and entry else spec.sha256
        return ModelStatus(spec.name, "registry", spec.description, ckpt.stat().st_size, True, status, ckpt,
                           yaml_path, sha)
    partial = part.stat().st_size if part.is_file() else 0
    return ModelStatus(spec.name, "registry", spec.description, spec.display_size, False,
                       "partial" if partial else "missing", ckpt, yaml_path, spec.sha256, partial)


def custom_status(name: str, yaml_path: Path, folder: Path) -> ModelStatus:
    """A custom pair's row; its yaml is parsed and its checkpoint's pickle scanned (no torch, no hashing)."""
    ckpt = yaml_path.with_suffix(".ckpt")
    if not ckpt.exists() and not ckpt.is_symlink():
        return ModelStatus(name, "custom", "custom (.yaml, no .ckpt yet)", None, False, "no checkpoint", ckpt,
                           yaml_path, None)
    problem = custom_problem(yaml_path, ckpt)
    size = ckpt.stat().st_size if ckpt.is_file() else None
    if problem:
        return ModelStatus(name, "custom", "custom model (your .yaml + .ckpt)", size, True, BROKEN, ckpt,
                           yaml_path, None, problem=problem)
    entry = fresh_entry(folder, ckpt)
    return ModelStatus(name, "custom", "custom model (your .yaml + .ckpt)", size, True,
                       CUSTOM, ckpt, yaml_path, str(entry["sha256"]) if entry else None)


def custom_problem(yaml_path: Path, ckpt: Path) -> str | None:
    """Why a custom NAME.yaml + NAME.ckpt pair cannot load (yaml first: it is the cheaper check), or None."""
    try:
        validate_yaml(yaml_path, source=yaml_path.name)
    except VqclipError as e:
        return e.message
    return checkpoint_problem(ckpt)


def all_status(folder: Path, registry: Mapping[str, WeightSpec] | None = None) -> list[ModelStatus]:
    registry = table(registry)
    rows = [registry_status(spec, folder) for spec in registry.values()]
    rows += [custom_status(name, path, folder) for name, path in custom_models(folder, registry).items()]
    return rows


# ------------------------------------------------------------------------------------ verify and remove


@dataclass(frozen=True)
class VerifyResult:
    name: str
    ok: bool
    detail: str


def verify_model(name: str, folder: Path, progress: Progress | None = None,
                 registry: Mapping[str, WeightSpec] | None = None) -> VerifyResult:
    """Re-hash one installed model against the registry (or its recorded hash) and record the result."""
    registry = table(registry)
    if name in registry:
        spec = registry[name]
        ckpt = folder / f"{name}.ckpt"
        if not ckpt.is_file():
            return VerifyResult(name, False, f"not downloaded; run `vqclip weights download {name}`")
        good, got = check_installed(spec, ckpt, folder, progress, force=True)
        if not good:
            why = f"size {ckpt.stat().st_size} ≠ {spec.size}" if not got else f"sha256 {got[:16]}… is wrong"
            return VerifyResult(name, False, f"{why}; run `vqclip weights download {name}` to replace it")
        how = "matches the registry sha256" if spec.sha256 else "matches the hash recorded on first use"
        return VerifyResult(name, True, f"{how} ({got[:16]}…)")
    customs = custom_models(folder, registry)
    if name in customs:
        ckpt = customs[name].with_suffix(".ckpt")
        if not ckpt.exists() and not ckpt.is_symlink():
            return VerifyResult(name, False, f"no checkpoint; expected {ckpt}")
        problem = custom_problem(customs[name], ckpt) or _torch_refusal(ckpt)
        if problem:
            return VerifyResult(name, False, problem)
        got = sha256_file(ckpt, progress)
        record_file(folder, ckpt, got, CUSTOM)
        return VerifyResult(name, True, f"custom; sha256 {got[:16]}… recorded")
    raise VqclipError(f"unknown model {name!r}; known: {', '.join(known_names(folder, registry))}")


def _torch_refusal(ckpt: Path) -> str | None:
    """torch's own scan of the pickle (exact where `checkpoint_problem` is a light reading), for `verify`."""
    try:
        from vqclip.weights.checkpoint import refused_globals
    except ImportError:  # torch missing: the light scan has spoken
        return None
    refused = refused_globals(ckpt)
    return refusal(ckpt, refused) if refused else None


def removal_targets(name: str, folder: Path, registry: Mapping[str, WeightSpec] | None = None) -> list[Path]:
    """The files `remove_model` would delete; raises when `name` is unknown or has nothing to remove."""
    registry = table(registry)
    customs = custom_models(folder, registry)
    if name not in registry and name not in customs:
        raise VqclipError(f"unknown model {name!r}; known: {', '.join(known_names(folder, registry))}")
    ckpt = folder / f"{name}.ckpt"
    targets = [ckpt, part_path(ckpt), ckpt.with_suffix(".safetensors")] + ([customs[name]] if name in customs else [])
    found = [p for p in targets if p.is_file()]
    if not found and manifest_entry(folder, ckpt) is None:
        raise VqclipError(f"{name} is not installed in {folder}; nothing to remove")
    return found


def remove_model(name: str, folder: Path, registry: Mapping[str, WeightSpec] | None = None) -> list[Path]:
    """Delete a model's checkpoint, partial download, safetensors cache and manifest record (and a custom yaml)."""
    removed = removal_targets(name, folder, registry)
    for path in removed:
        path.unlink()
    forget_file(folder, folder / f"{name}.ckpt")
    return removed
