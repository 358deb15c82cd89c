"""VQGAN weights: one registry table, the weights folder, verified resumable downloads, name resolution.

Habits and sources:
- one typed table that the CLI, `scripts/fetch_weights.py` and the docs all read (open_clip `pretrained.py`);
- a cached file is reused only when its sha256 matches (open_clip `download_pretrained_from_url`); the
  downloads themselves (`.part`, Range resume, size + sha256 check, mirrors) live in `downloads.py`;
- a user folder that tests redirect (llm `user_dir()` + `LLM_USER_PATH`).

Weights folder: `--weights-dir` when given, else `$VQCLIP_HOME/weights` when `VQCLIP_HOME` is set, else
`<platform user cache>/vqclip/weights` (platformdirs). It holds `NAME.ckpt` (registry downloads), any custom
`NAME.yaml` + `NAME.ckpt` pairs, `*.part` files of unfinished downloads, `NAME.safetensors` caches (see
`checkpoints.py`) and `manifest.json`, which records each checked file's sha256 keyed by size + mtime so that a
verified file is not hashed again on every run. Registry yamls ship inside the package (`model_yamls/`).

Nothing here imports torch.
"""

from __future__ import annotations

import json
import os
import re
import urllib.parse
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from vqclip import downloads
from vqclip.downloads import (DownloadError, download_file, fetch_to_part, human_size, looks_like_html,
                              part_path, sha256_file)
from vqclip.errors import VqclipError, WeightsMissing
from vqclip.files import path_problem

if TYPE_CHECKING:
    from rich.console import Console

# --------------------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class WeightSpec:
    """One downloadable VQGAN checkpoint. The yaml ships in the package when `model_yamls/NAME.yaml` exists."""

    name: str
    description: str  # dataset and the look it gives
    architecture: str
    size: int | None  # exact bytes of the .ckpt, checked after download; None when unknown
    sha256: str | None  # None: trusted on first use (the first download's hash is recorded and enforced)
    url: str  # tried first
    mirrors: tuple[str, ...] = ()  # tried in order after `url`
    yaml_urls: tuple[str, ...] = ()  # only used when no yaml ships in the package
    license: str = ""
    approx_size: int | None = None  # for display when the exact size is unknown

    @property
    def urls(self) -> tuple[str, ...]:
        return (self.url, *self.mirrors)

    @property
    def display_size(self) -> int | None:
        return self.size if self.size is not None else self.approx_size


# Revision-pinned preservation mirror of the pytti-era checkpoints (files `<key>/<key>.{ckpt,yaml}`); it serves
# Range requests. Its manifest gives the sha256 values below.
SOMNAI = "https://huggingface.co/Somnai/pytti-vqgan-checkpoints/resolve/debc22c8f285c7734980c464ff992d335dde6e9a"
HEIBOX = "https://heibox.uni-heidelberg.de"
_TAMING_LICENSE = "CompVis taming-transformers release (code MIT); research weights, see the taming README"


def _somnai(key: str, ext: str = "ckpt") -> str:
    return f"{SOMNAI}/{key}/{key}.{ext}"


def _heibox_dir(share: str, path: str) -> str:
    return f"{HEIBOX}/d/{share}/files/?p={path.replace('/', '%2F')}&dl=1"


_REGISTRY: tuple[WeightSpec, ...] = (
    WeightSpec(
        name="vqgan_imagenet_f16_16384",
        description="ImageNet: all-round default, detailed textures",
        architecture="VQModel f16, n_embed 16384, embed_dim 256",
        size=980092370,
        sha256="845a68805098cb666420d5db93df53f3a3b6dd443e6dd85c05759c5b998cd663",
        url=_somnai("imagenet"),
        mirrors=(f"{HEIBOX}/f/867b05fc8c4841768640/?dl=1",),
        yaml_urls=(f"{HEIBOX}/f/274fb24ed38341bfa753/?dl=1", _somnai("imagenet", "yaml")),
        license=_TAMING_LICENSE + "; ImageNet terms of access apply",
    ),
    WeightSpec(
        name="vqgan_imagenet_f16_1024",
        description="ImageNet, 1024 codes: coarser, bolder colour",
        architecture="VQModel f16, n_embed 1024, embed_dim 256",
        size=None,
        sha256=None,
        approx_size=958_000_000,
        url=f"{HEIBOX}/f/140747ba53464f49b476/?dl=1",
        mirrors=("https://github.com/Eleiber/VQGAN-Mirrors/releases/download/0.0.1/vqgan_imagenet_f16_1024.ckpt",),
        yaml_urls=(f"{HEIBOX}/f/6ecf2af6c658432c8298/?dl=1",
                   "https://github.com/Eleiber/VQGAN-Mirrors/releases/download/0.0.1/vqgan_imagenet_f16_1024.yaml"),
        license=_TAMING_LICENSE + "; ImageNet terms of access apply",
    ),
    WeightSpec(
        name="vqgan_gumbel_f8_8192",
        description="Open Images, f8: finer detail, 4x the tokens",
        architecture="GumbelVQ f8, n_embed 8192, embed_dim 256",
        size=376581823,
        sha256="5cd6c74810ab97e00e942c25403f73afc081e8b19987b31ec0d9ff5b68e7ab14",
        url=_somnai("openimages"),
        mirrors=(_heibox_dir("2e5662443a6b4307b470", "/ckpts/last.ckpt"),),
        yaml_urls=(_heibox_dir("2e5662443a6b4307b470", "/configs/model.yaml"), _somnai("openimages", "yaml")),
        license=_TAMING_LICENSE + "; Open Images (CC BY 4.0 annotations, images under their own licences)",
    ),
    WeightSpec(
        name="wikiart_16384",
        description="WikiArt: painterly brushwork, canvas texture",
        architecture="VQModel f16, n_embed 16384, embed_dim 256",
        size=1005327541,
        sha256="bd08bb46301f98be1712bb2be9f8868cea30b53137cd985d4d6e8da8b3e02c36",
        url=_somnai("wikiart"),
        mirrors=("https://github.com/pixray/pixray/releases/download/v1.7.1/vqgan_wikiart_16384.ckpt",),
        yaml_urls=("https://github.com/pixray/pixray/releases/download/v1.7.1/vqgan_wikiart_16384.yaml",
                   _somnai("wikiart", "yaml")),
        license="community fine-tune of the ImageNet VQGAN on WikiArt; artworks keep their own rights; research use",
    ),
    WeightSpec(
        name="sflckr",
        description="Flickr landscapes: skies, mountains, water",
        architecture="VQModel f16, n_embed 1024 (first stage of a Net2NetTransformer checkpoint)",
        size=4263525412,
        sha256="8a8adea3da8dab412675772831370dd948e0aa97bb11a9488a2f328b58dbc929",
        # The mirror spells the key "sflickr" (pytti's alias table); "sflckr" is kept as a fallback spelling.
        url=_somnai("sflickr"),
        mirrors=(_heibox_dir("73487ab6e5314cb5adba", "/checkpoints/last.ckpt"), _somnai("sflckr")),
        yaml_urls=(_heibox_dir("73487ab6e5314cb5adba", "/configs/2020-11-09T13-31-51-project.yaml"),),
        license=_TAMING_LICENSE + "; Flickr images under their own licences",
    ),
    WeightSpec(
        name="coco",
        description="COCO scenes: everyday objects and streets",
        architecture="VQModel f16, n_embed 8192, embed_dim 256 (first stage of the COCO scene transformer)",
        size=296030214,
        sha256="106cc20fde571df14afc4349d62218d8213cf47177c682ecaa78a8c28b12f9de",
        url=_somnai("coco"),
        yaml_urls=(_somnai("coco", "yaml"),),
        license=_TAMING_LICENSE + "; COCO images under their own (mostly CC) licences",
    ),
    WeightSpec(
        name="faceshq",
        description="FFHQ + CelebA-HQ faces: portraits, smooth skin",
        architecture="VQModel f16, n_embed 1024 (first stage of a Net2NetTransformer checkpoint)",
        size=None,
        sha256="3274bba51bd565c90990bbcf7bb5dad0b9b95a6a77011980afc4c3cfc4d1cad1",
        url=_somnai("faceshq"),
        yaml_urls=(_somnai("faceshq", "yaml"),),
        license=_TAMING_LICENSE + "; FFHQ (CC BY-NC-SA 4.0) and CelebA-HQ (non-commercial research)",
    ),
)

WEIGHTS: dict[str, WeightSpec] = {spec.name: spec for spec in _REGISTRY}

# ----------------------------------------------------------------------------------------------- folders

MANIFEST_NAME = "manifest.json"

# Manifest statuses, shown by `vqclip weights list`.
VERIFIED = "verified"  # sha256 matches the registry
TOFU = "trusted-on-first-use"  # no published sha256; the first download's hash is recorded and enforced
CUSTOM = "custom"  # a user's NAME.yaml + NAME.ckpt; hash recorded for run records


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


_weights_folder = weights_dir  # for functions whose `weights_dir` parameter shadows the function


def packaged_yaml(name: str) -> Path | None:
    """The yaml shipped in the package for registry model `name`, if any."""
    candidate = Path(str(resources.files("vqclip").joinpath("model_yamls", f"{name}.yaml")))
    return candidate if candidate.is_file() else None


# ---------------------------------------------------------------------------------------------- manifest


def _manifest_key(folder: Path, path: Path) -> str:
    path = path.absolute()
    return path.name if path.parent == folder.absolute() else str(path)


def read_manifest(folder: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads((folder / MANIFEST_NAME).read_text())
        files = data.get("files", {})
        return files if isinstance(files, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_manifest(folder: Path, files: dict[str, dict[str, Any]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{MANIFEST_NAME}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"version": 1, "files": files}, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, folder / MANIFEST_NAME)


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
    _write_manifest(folder, files)
    return entry


def forget_file(folder: Path, path: Path) -> None:
    files = read_manifest(folder)
    if files.pop(_manifest_key(folder, path), None) is not None:
        _write_manifest(folder, files)


# -------------------------------------------------------------------------------------------- yaml files


def validate_yaml(path: Path, source: str | None = None) -> None:
    """A taming model yaml that vqclip can build: it parses and has `model.params.ddconfig`."""
    import yaml

    where = source or str(path)
    problem = path_problem(path, "file")
    if problem:
        raise VqclipError(f"{where} {problem}; a model config must be a taming .yaml file")
    try:
        text = path.read_text(errors="replace")
        if looks_like_html(text[:1024].encode()):
            raise VqclipError(f"{where} is an HTML page, not a yaml (a failed download saved under that name?); "
                              "replace it with the model's taming config")
        data = yaml.safe_load(text)
    except (OSError, yaml.YAMLError) as e:
        raise VqclipError(f"{where} is not a readable yaml ({type(e).__name__}); "
                          "is it an HTML page saved by mistake?") from None
    params = data.get("model", {}).get("params", {}) if isinstance(data, dict) else {}
    if not isinstance(params, dict) or not isinstance(params.get("ddconfig"), dict):
        nested = isinstance(params, dict) and isinstance(params.get("first_stage_config"), dict)
        hint = (" (it is a Net2NetTransformer config: copy its first_stage_config into model:)" if nested
                else "")
        raise VqclipError(f"{where} is not a taming VQGAN config: no model.params.ddconfig{hint}")


def ensure_yaml(spec: WeightSpec, folder: Path, *, download: bool, timeout: float | None = None) -> Path:
    """The yaml of a registry model: the packaged copy, else `folder/NAME.yaml`, fetched and validated."""
    shipped = packaged_yaml(spec.name)
    if shipped is not None:
        return shipped
    dest = folder / f"{spec.name}.yaml"
    if dest.is_file():
        return dest
    folder.mkdir(parents=True, exist_ok=True)
    if not download or not spec.yaml_urls:
        raise WeightsMissing(f"{dest} is missing; run `vqclip weights download {spec.name}`"
                             + (f" (from {spec.yaml_urls[0]})" if spec.yaml_urls else ""))
    failures: list[str] = []
    for url in spec.yaml_urls:
        part = part_path(dest)
        try:
            part.unlink(missing_ok=True)
            fetch_to_part(url, part, size=None, timeout=downloads.TIMEOUT if timeout is None else timeout,
                          on_start=lambda o, t: None,
                          on_bytes=lambda n: None)
            if looks_like_html(part.read_bytes()[:1024]):
                raise DownloadError(url, "served an HTML page instead of the yaml")
            validate_yaml(part, source=url)
        except (DownloadError, VqclipError) as e:
            part.unlink(missing_ok=True)
            failures.append(str(e) if isinstance(e, DownloadError) else e.message)
            continue
        os.replace(part, dest)
        return dest
    raise WeightsMissing(f"could not get the yaml of {spec.name}: {'; '.join(failures)}; "
                         f"save a taming config as {dest}")


# ------------------------------------------------------------------------------------------------ models


@dataclass(frozen=True)
class ModelFiles:
    """A VQGAN ready to load: its yaml and checkpoint on disk, and the checkpoint's sha256 when known."""

    name: str
    yaml_path: Path
    ckpt_path: Path
    sha256: str | None
    source: str  # "registry" | "custom" | "path"


def custom_models(folder: Path, registry: Mapping[str, WeightSpec] | None = None) -> dict[str, Path]:
    """Custom `NAME.yaml` files in the weights folder (registry names excluded), by name."""
    registry = WEIGHTS if registry is None else registry
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.glob("*.yaml")) if p.stem not in registry and p.is_file()}


def known_names(folder: Path, registry: Mapping[str, WeightSpec] | None = None) -> list[str]:
    registry = WEIGHTS if registry is None else registry
    return [*registry, *custom_models(folder, registry)]


def expected_sha256(spec: WeightSpec, folder: Path) -> str | None:
    """The registry's sha256, else the hash recorded when the file was first trusted (TOFU)."""
    if spec.sha256:
        return spec.sha256
    entry = manifest_entry(folder, folder / f"{spec.name}.ckpt")
    return entry.get("sha256") if entry and entry.get("status") == TOFU else None


def check_installed(spec: WeightSpec, ckpt: Path, folder: Path, console: Console | None = None,
                    force: bool = False) -> tuple[bool, str]:
    """(good, sha256) for an installed registry checkpoint; hashes only when the manifest cannot vouch for it."""
    expected = expected_sha256(spec, folder)
    entry = None if force else fresh_entry(folder, ckpt)
    if entry and entry.get("sha256") and (expected is None or entry["sha256"] == expected):
        return True, str(entry["sha256"])
    if spec.size is not None and ckpt.stat().st_size != spec.size:
        return False, ""
    got = sha256_file(ckpt, console, spec.name)
    if expected is not None and got != expected:
        return False, got
    record_file(folder, ckpt, got, VERIFIED if spec.sha256 else TOFU)
    return True, got


def install_registry_model(spec: WeightSpec, folder: Path, *, download: bool = True,
                           console: Console | None = None, timeout: float | None = None,
                           retries: int | None = None, retry_wait: float | None = None) -> ModelFiles:
    """Make sure `spec`'s checkpoint is in `folder` and good: reuse, re-download a corrupt one, or fetch it."""
    ckpt = folder / f"{spec.name}.ckpt"
    yaml_path = ensure_yaml(spec, folder, download=download, timeout=timeout)
    if ckpt.is_file():
        good, got = check_installed(spec, ckpt, folder, console)
        if good:
            return ModelFiles(spec.name, yaml_path, ckpt, got, "registry")
        if not download:
            raise WeightsMissing(f"{ckpt} is corrupt or not the expected file (sha256 mismatch); run "
                                 f"`vqclip weights download {spec.name}` to replace it")
        _say(console, f"{ckpt.name} is corrupt or not the expected file; downloading it again.")
        ckpt.unlink()
    elif not download:
        raise WeightsMissing(f"{spec.name} is not downloaded (expected {ckpt}); run `vqclip weights download "
                             f"{spec.name}` ({human_size(spec.display_size)} from {spec.url})")
    expected = expected_sha256(spec, folder)
    host = urllib.parse.urlsplit(spec.url).hostname or spec.url
    _say(console, f"Downloading {spec.name} ({human_size(spec.display_size)}) from {host} into {folder}; "
                  "first use only.")
    got, url = download_file(spec.urls, ckpt, size=spec.size, sha256=expected, console=console, label=spec.name,
                             timeout=timeout, retries=retries, retry_wait=retry_wait)
    status = VERIFIED if spec.sha256 else TOFU
    record_file(folder, ckpt, got, status, url)
    if status == TOFU and console is not None:
        _say(console, f"{spec.name} has no published sha256; recorded {got[:16]}… and will insist on it "
                      "from now on (trust on first use).")
    return ModelFiles(spec.name, yaml_path, ckpt, got, "registry")


def _say(console: Console | None, text: str) -> None:
    if console is not None:
        console.print(text, markup=False, highlight=False, soft_wrap=True)


def _custom_files(name: str, yaml_path: Path, folder: Path, console: Console | None) -> ModelFiles:
    ckpt = yaml_path.with_suffix(".ckpt")
    if not ckpt.is_file():
        raise WeightsMissing(f"custom model {name}: {yaml_path.name} has no checkpoint beside it; "
                             f"expected {ckpt}")
    return ModelFiles(name, yaml_path, ckpt, _custom_sha(ckpt, folder, console), "custom")


def _custom_sha(ckpt: Path, folder: Path, console: Console | None) -> str:
    """A user's checkpoint is hashed once (for run records) and remembered in the manifest by size + mtime."""
    entry = fresh_entry(folder, ckpt)
    if entry and entry.get("sha256"):
        return str(entry["sha256"])
    got = sha256_file(ckpt, console)
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


def _path_files(text: str, folder: Path, console: Console | None) -> ModelFiles:
    given = Path(text).expanduser()
    if given.suffix == ".ckpt":
        ckpt, yaml_path = given, given.with_suffix(".yaml")
        err = _not_a_file(ckpt, "checkpoint", "pass an existing .ckpt or .yaml, or a name from `vqclip weights list`")
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
        err = _not_a_file(ckpt, f"{yaml_path.name} needs a checkpoint beside it, but", "put the .ckpt there")
        if err:
            raise WeightsMissing(f"{yaml_path.name} has no checkpoint beside it; expected {ckpt}") \
                if not ckpt.exists() else err
    return ModelFiles(ckpt.stem, yaml_path, ckpt, _custom_sha(ckpt, folder, console), "path")


def resolve_model(name_or_path: str, *, weights_dir: str | Path | None = None, download: bool = True,
                  console: Console | None = None, registry: Mapping[str, WeightSpec] | None = None,
                  timeout: float | None = None) -> ModelFiles:
    """Registry name, custom name (NAME.yaml + NAME.ckpt in the weights folder) or a .yaml/.ckpt path → files.

    A registry model that is missing is downloaded (with a line saying what and how big) unless
    `download=False`, which raises `WeightsMissing` naming the file, the command and the URL.
    """
    folder = _weights_folder(weights_dir)
    registry = WEIGHTS if registry is None else registry
    text = name_or_path.strip()
    if console is None and download:
        from rich.console import Console

        console = Console(stderr=True, highlight=False)
    if text in registry:
        return install_registry_model(registry[text], folder, download=download, console=console,
                                      timeout=timeout)
    customs = custom_models(folder, registry)
    if text in customs:
        return _custom_files(text, customs[text], folder, console)
    if _is_path_like(text) or Path(text).expanduser().is_file():
        return _path_files(text, folder, console)
    names = ", ".join(known_names(folder, registry))
    raise VqclipError(f"unknown model {text!r}; known: {names} (or a path to a taming .yaml with its .ckpt "
                      "beside it; see `vqclip weights list`)")


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


BROKEN = "broken"  # a custom pair that cannot load (ModelStatus.problem says why)


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


# -------------------------------------------------------------------- can a custom pair load? (no torch)

# Globals that only ever appear as inert data in Lightning/numpy checkpoints; `checkpoints.load_checkpoint` maps
# them to placeholders (Lightning) or to numpy's data constructors, never importing anything else.
LIGHTNING_PREFIXES = ("pytorch_lightning.callbacks.", "lightning.pytorch.callbacks.", "lightning_fabric.")
NUMPY_SAFE = frozenset({
    "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar", "numpy.dtype",
    "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct", "numpy.ndarray",
})
# torch's weights-only allow-list (torch._weights_only_unpickler), spelled as rules so no torch import is needed.
_TORCH_SAFE = frozenset({
    "_codecs.encode", "builtins.bytearray", "builtins.complex", "builtins.set", "collections.Counter",
    "collections.OrderedDict", "torch.Size", "torch.Tensor", "torch.device", "torch.nn.parameter.Parameter",
    "torch.serialization._get_layout", "torch.storage.TypedStorage", "torch.storage.UntypedStorage",
    "torch._tensor._rebuild_from_type_v2",
})
_TORCH_TYPES = re.compile(r"^torch\.(cuda\.)?(sparse\.)?[A-Z][A-Za-z0-9]*(Storage|Tensor)$")
_TORCH_DTYPES = re.compile(r"^torch\.(u?int\d+|float\d+\w*|bfloat16|b?complex\d+|bool|bits\w+|q?u?int\d+x?\d*|"
                           r"per_(tensor|channel)_\w+)$")
_PICKLE_STRINGS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING",
                   "STRING"}
_TORCH_MAGIC = 0x1950A86A20F9469CFC6C  # the first pickle of a legacy (non-zip) torch.save file


def safe_global(name: str) -> bool:
    """Whether vqclip's safe loader accepts this pickled global (torch's list, Lightning callbacks, numpy data)."""
    return (name in _TORCH_SAFE or name.startswith("torch._utils._rebuild_") or bool(_TORCH_TYPES.match(name))
            or bool(_TORCH_DTYPES.match(name)) or name.startswith(LIGHTNING_PREFIXES) or name in NUMPY_SAFE)


def torch_safe_global(name: str) -> bool:
    """Whether torch's own weights-only loader accepts this global (what open_clip's CLIP loading uses)."""
    return (name in _TORCH_SAFE or name.startswith("torch._utils._rebuild_") or bool(_TORCH_TYPES.match(name))
            or bool(_TORCH_DTYPES.match(name)))


def _scan_pickle(stream: Any, found: list[str]) -> list[Any]:
    """Read one pickle from `stream` opcode by opcode (nothing is executed) and add the globals it names."""
    import pickletools

    strings: list[str] = []
    memo: dict[Any, str] = {}
    memo_next = 0
    last: str | None = None
    args: list[Any] = []
    for op, arg, _pos in pickletools.genops(stream):
        name = op.name
        args.append(arg)
        if name in ("GLOBAL", "INST"):
            module, _, attr = str(arg).partition(" ")
            found.append(f"{module}.{attr}")
        elif name == "STACK_GLOBAL":
            found.append(f"{strings[-2]}.{strings[-1]}" if len(strings) >= 2 else "an unnamed global")
        if name in _PICKLE_STRINGS:
            text = arg.decode("latin-1") if isinstance(arg, bytes) else str(arg)
            strings.append(text)
            last = text
        elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
            if last is not None:
                memo[arg] = last
        elif name == "MEMOIZE":
            if last is not None:
                memo[memo_next] = last
            memo_next += 1
        elif name in ("BINGET", "LONG_BINGET", "GET"):
            if arg in memo:
                strings.append(memo[arg])
                last = memo[arg]
        else:
            last = None
        if name == "STOP":
            break
    return args


def checkpoint_globals(path: Path) -> list[str]:
    """The globals a PyTorch checkpoint's pickle needs, read without torch and without unpickling. Raises
    ValueError when the file is neither a torch zip archive nor a legacy torch pickle."""
    import zipfile

    found: list[str] = []
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            pkl = next((n for n in zf.namelist() if n.endswith("data.pkl") and n.count("/") <= 1), None)
            if pkl is None:
                raise ValueError("a zip archive without data.pkl")
            with zf.open(pkl) as fh:
                _scan_pickle(fh, found)
        return found
    with open(path, "rb") as fh:
        first = _scan_pickle(fh, found)
        if _TORCH_MAGIC not in first:
            if found:
                return found  # a plain pickle: what it would run is the news
            raise ValueError("no torch magic number")
        for _ in range(3):  # protocol version, system info, then the object itself
            _scan_pickle(fh, found)
    return found


def checkpoint_problem(ckpt: Path) -> str | None:
    """Why vqclip's safe loader would refuse `ckpt`, or None; cheap enough for `weights list` (reads the pickle
    inside the archive, not the tensors)."""
    problem = path_problem(ckpt, "file")
    if problem:
        return f"{ckpt.name} {problem}"
    try:
        with open(ckpt, "rb") as fh:
            head = fh.read(1024)
    except OSError as e:
        return f"{ckpt.name} cannot be read ({e.strerror or type(e).__name__})"
    if not head:
        return f"{ckpt.name} is empty; replace it with the model's checkpoint"
    if looks_like_html(head):
        return f"{ckpt.name} is an HTML page, not a checkpoint (a failed download?); replace it"
    try:
        names = checkpoint_globals(ckpt)
    except Exception:  # noqa: BLE001 - any parse failure (zip, pickle opcodes, EOF) means "not a checkpoint"
        return f"{ckpt.name} is not a PyTorch checkpoint (neither a torch zip archive nor a torch pickle)"
    refused = sorted({n for n in names if not safe_global(n)})
    if refused:
        return refusal(ckpt, refused)
    return None


def refusal(ckpt: Path, refused: list[str]) -> str:
    return (f"{ckpt.name} would run code when loaded (it pickles {', '.join(refused[:3])}); vqclip refuses it, "
            f"so use another checkpoint (or pass --trust-checkpoint {ckpt} to generate only if you trust the file)")


def custom_problem(yaml_path: Path, ckpt: Path) -> str | None:
    """Why a custom NAME.yaml + NAME.ckpt pair cannot load (yaml first: it is the cheaper check), or None."""
    try:
        validate_yaml(yaml_path, source=yaml_path.name)
    except VqclipError as e:
        return e.message
    return checkpoint_problem(ckpt)


def all_status(folder: Path, registry: Mapping[str, WeightSpec] | None = None) -> list[ModelStatus]:
    registry = WEIGHTS if registry is None else registry
    rows = [registry_status(spec, folder) for spec in registry.values()]
    rows += [custom_status(name, path, folder) for name, path in custom_models(folder, registry).items()]
    return rows


# ------------------------------------------------------------------------------------ verify and remove


@dataclass(frozen=True)
class VerifyResult:
    name: str
    ok: bool
    detail: str


def verify_model(name: str, folder: Path, console: Console | None = None,
                 registry: Mapping[str, WeightSpec] | None = None) -> VerifyResult:
    """Re-hash one installed model against the registry (or its recorded hash) and record the result."""
    registry = WEIGHTS if registry is None else registry
    if name in registry:
        spec = registry[name]
        ckpt = folder / f"{name}.ckpt"
        if not ckpt.is_file():
            return VerifyResult(name, False, f"not downloaded; run `vqclip weights download {name}`")
        good, got = check_installed(spec, ckpt, folder, console, force=True)
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
        got = sha256_file(ckpt, console)
        record_file(folder, ckpt, got, CUSTOM)
        return VerifyResult(name, True, f"custom; sha256 {got[:16]}… recorded")
    raise VqclipError(f"unknown model {name!r}; known: {', '.join(known_names(folder, registry))}")


def _torch_refusal(ckpt: Path) -> str | None:
    """torch's own scan of the pickle (exact where `checkpoint_problem` is a light reading), for `verify`."""
    try:
        from vqclip.checkpoints import refused_globals
    except ImportError:  # torch missing: the light scan has spoken
        return None
    refused = refused_globals(ckpt)
    return refusal(ckpt, refused) if refused else None


def removal_targets(name: str, folder: Path, registry: Mapping[str, WeightSpec] | None = None) -> list[Path]:
    """The files `remove_model` would delete; raises when `name` is unknown or has nothing to remove."""
    registry = WEIGHTS if registry is None else registry
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


# --------------------------------------------------------------------------------------------------- CLIP


@dataclass(frozen=True)
class ClipWeights:
    """open_clip weights found in the Hugging Face hub cache."""

    name: str  # clip:MODEL/TAG (several names can share one repo)
    repo: str
    path: Path
    size: int


def parse_clip_name(text: str) -> tuple[str, str]:
    """`clip:ViT-B-32/openai` → ("ViT-B-32", "openai"); the tag defaults to openai."""
    body = text.split(":", 1)[1] if text.startswith("clip:") else text
    model, _, tag = body.partition("/")
    if not model:
        raise VqclipError(f"{text!r}: write CLIP weights as clip:MODEL/TAG, e.g. clip:ViT-B-32/openai")
    return model, tag or "openai"


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache folder, read from the environment at call time (tests redirect it)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def _cached_repos(cache: Path) -> dict[str, tuple[Path, int]]:
    found: dict[str, tuple[Path, int]] = {}
    for repo_dir in sorted(cache.glob("models--*")):
        weights = [p for p in repo_dir.glob("snapshots/*/*")
                   if p.suffix in (".bin", ".safetensors", ".pt", ".pth") and p.exists()]
        if weights:
            repo = repo_dir.name.removeprefix("models--").replace("--", "/")
            found[repo] = (weights[0], sum(p.stat().st_size for p in weights))
    return found


def cached_clip_weights() -> list[ClipWeights]:
    """open_clip pretrained weights present in the HF cache (imports open_clip only when the cache has models)."""
    repos = _cached_repos(hf_hub_cache())
    if not repos:
        return []
    import open_clip

    out = []
    for model, tag in open_clip.list_pretrained():
        hub = open_clip.get_pretrained_cfg(model, tag).get("hf_hub", "")
        repo = "/".join(hub.strip("/").split("/")[:2])
        if repo in repos:
            path, size = repos[repo]
            out.append(ClipWeights(f"clip:{model}/{tag}", repo, path, size))
    return out


def download_clip(text: str) -> Path:
    """Fetch open_clip weights into the HF hub cache (what `vqclip generate` will load); return the file.
    Without a connection it fails within seconds (not after the hub client's minute of retries)."""
    import open_clip

    model, tag = parse_clip_name(text)
    if model not in open_clip.list_models():
        raise VqclipError(f"unknown CLIP model {model!r}; see open_clip.list_models() (e.g. clip:ViT-B-32/openai)")
    cfg = open_clip.get_pretrained_cfg(model, tag)
    if not cfg:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(model)) or "none"
        raise VqclipError(f"CLIP model {model} has no pretrained tag {tag!r}; known tags: {tags}")
    mode = clip_fetch_mode(model, tag, cfg)
    try:
        with quiet_root_logger(), hub_offline(mode == "offline"):
            path = open_clip.pretrained.download_pretrained(cfg)
    except Exception as e:  # hub/urllib raise many kinds; all mean "not available now"
        if hub_is_offline():
            raise WeightsMissing(clip_missing(model, tag, cfg)) from None
        raise WeightsMissing(f"cannot fetch CLIP weights {model}/{tag} ({reason(e)}); run `vqclip weights download "
                             f"clip:{model}/{tag}` when online") from None
    if not path:
        raise WeightsMissing(f"CLIP weights {model}/{tag} have no download source in open_clip")
    return Path(path)


# ------------------------------------------------------------------------ CLIP weights: cached or reachable?

HF_DEFAULT_ENDPOINT = "https://huggingface.co"
HF_WEIGHTS = "open_clip_pytorch_model.bin"
PROBE_TIMEOUT = 3.0  # seconds for the TCP connection that decides "no connection"


def reason(e: BaseException, limit: int = 240) -> str:
    """The first line of an exception, shortened at a word boundary (never mid-word) when very long."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    text = lines[0] if lines else type(e).__name__
    if len(text) > limit:
        text = text[:limit].rsplit(" ", 1)[0].rstrip(",;:") + " …"
    return text


def _clip_source(cfg: Mapping[str, Any]) -> tuple[str | None, list[str], str | None]:
    """(Hugging Face repo, file names the hub may hold, in open_clip's order of preference, plain URL)."""
    hub = str(cfg.get("hf_hub") or "")
    if hub:
        repo, filename = os.path.split(hub)
        filename = filename or HF_WEIGHTS
        safe = ["open_clip_model.safetensors"] if filename == HF_WEIGHTS else \
            [filename[:-4] + ".safetensors"] if filename.endswith((".bin", ".pth")) else []
        return repo, [*safe, filename], None
    return None, [], str(cfg.get("url") or "") or None


def clip_cached(cfg: Mapping[str, Any]) -> Path | None:
    """The cached weights file of an open_clip pretrained config, if any (no network)."""
    if cfg.get("file"):
        return Path(str(cfg["file"]))
    repo, names, url = _clip_source(cfg)
    if repo:
        from huggingface_hub import try_to_load_from_cache

        for name in names:
            hit = try_to_load_from_cache(repo, name, cache_dir=str(hf_hub_cache()))
            if isinstance(hit, str) and os.path.isfile(hit):
                return Path(hit)
        return None
    if url:
        local = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(urllib.parse.urlsplit(url).path)
        return local if local.is_file() else None
    return None


def hub_is_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def unreachable(url: str, timeout: float = PROBE_TIMEOUT) -> str | None:
    """None when a TCP connection to the server of `url` (or to the proxy for it) opens within `timeout`
    seconds; otherwise why not, in a few words. Name resolution runs in a thread so it cannot hang either."""
    import socket
    import threading
    import urllib.request

    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if proxy and host and not urllib.request.proxy_bypass(host):
        pp = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = pp.hostname or host, pp.port or 8080
    result: list[str | None] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(None)
        except socket.gaierror:
            result.append(f"{host} cannot be resolved")
        except OSError as e:
            result.append(f"{host}:{port} refused or unreachable ({e.strerror or type(e).__name__})")

    worker = threading.Thread(target=probe, name="vqclip-probe", daemon=True)
    worker.start()
    worker.join(timeout + 1.0)
    return result[0] if result else f"{host}:{port} did not answer within {timeout:.0f} s"


def clip_fetch_mode(model: str, tag: str, cfg: Mapping[str, Any]) -> str:
    """How to load open_clip weights `model/tag`: "online" (let the hub client check and fetch), "offline"
    (HF_HUB_OFFLINE is set, or the weights are cached and there is no connection to check them: answer from the
    cache without asking the network, which fails at once when they are not there). Raises `WeightsMissing`,
    quickly and in one line, when the weights are not cached and there is no connection (instead of the hub
    client's minute of retries)."""
    if hub_is_offline():
        return "offline"
    repo, _names, url = _clip_source(cfg)
    server = (os.environ.get("HF_ENDPOINT", "").rstrip("/") or HF_DEFAULT_ENDPOINT) if repo else (url or "")
    why = unreachable(server) if server else None
    if why is None:
        return "online"
    if clip_cached(cfg) is not None:
        return "offline"
    raise WeightsMissing(clip_missing(model, tag, cfg, f"there is no connection ({why})"))


def clip_missing(model: str, tag: str, cfg: Mapping[str, Any], why: str | None = None) -> str:
    """The one line for CLIP weights that are not cached and cannot be fetched now: the command, or the copy."""
    why = why or ("HF_HUB_OFFLINE is set" if hub_is_offline() else "they could not be downloaded")
    repo, _names, url = _clip_source(cfg)
    if repo:
        where = f"copy the folder {hf_hub_cache() / ('models--' + repo.replace('/', '--'))} from a machine that has it"
    else:
        where = f"copy {os.path.basename(url or '?')} into ~/.cache/clip"
    return (f"CLIP weights {model}/{tag} are not downloaded and {why}; run `vqclip weights download "
            f"clip:{model}/{tag}` when online, or {where} (or pass --clip-pretrained FILE)")


class hub_offline:
    """While active (when `on`), the Hugging Face hub client answers from its cache and never touches the
    network (its offline mode, flipped for this call only)."""

    def __init__(self, on: bool = True) -> None:
        self.on = on
        self.saved: bool | None = None

    def __enter__(self) -> hub_offline:
        if self.on:
            from huggingface_hub import constants

            self.saved = constants.HF_HUB_OFFLINE
            constants.HF_HUB_OFFLINE = True
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.on and self.saved is not None:
            from huggingface_hub import constants

            constants.HF_HUB_OFFLINE = self.saved


class quiet_root_logger:
    """Libraries that call `logging.error(...)` on the root logger (open_clip does, before raising) print a
    stray `ERROR:root:` line, and install a stderr handler for good; vqclip reports the error itself."""

    def __enter__(self) -> quiet_root_logger:
        import logging

        root = logging.getLogger()
        self.level = root.level
        self.null = logging.NullHandler()
        root.addHandler(self.null)  # so logging.error() does not call basicConfig()
        root.setLevel(logging.CRITICAL + 1)
        return self

    def __exit__(self, *exc: Any) -> None:
        import logging

        root = logging.getLogger()
        root.removeHandler(self.null)
        root.setLevel(self.level)
