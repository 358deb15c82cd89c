"""From a diffusion model's name or path to a checkpoint on disk and the architecture it holds.

- a registry name (`weights.registry.DIFFUSION_WEIGHTS`: the OpenAI U-Nets, the secondary model): downloaded into
  the weights folder on first use under its published file name (resumable, size- and sha256-checked; a row
  without a published hash is trusted on first use and insisted on afterwards), reused when its hash is good;
- a path to a `.pt`/`.pth`: a published checkpoint (its architecture recognised from its keys and shapes), or
  any ADM U-Net with a `NAME.json` beside it holding its `UNetConfig` fields (how tests ship tiny models).

Nothing here prints: notices go to `note`, bytes to a `download.Progress`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from vqclip.errors import VqclipError, WeightsMissing
from vqclip.files import path_problem, read_regular
from vqclip.weights.download import Note, Progress
from vqclip.weights.registry import DIFFUSION_WEIGHTS, WeightSpec
from vqclip.weights.resolve import ensure_registry_file
from vqclip.weights.store import weights_dir as weights_folder

MAX_CONFIG_BYTES = 64 << 10


@dataclass(frozen=True)
class DiffusionFiles:
    name: str  # registry name, or the file's stem
    path: Path
    sha256: str | None
    source: str  # "registry" | "path"
    config: Any = None  # engine.diffusion.unet.UNetConfig from NAME.json beside a path; None: from the keys


def resolve_diffusion(name_or_path: str, family: str, *, weights_dir: str | Path | None = None,
                      download: bool = True, note: Note | None = None, progress: Progress | None = None
                      ) -> DiffusionFiles:
    """`family`: "diffusion" (a U-Net) or "secondary"."""
    text = name_or_path.strip()
    spec = DIFFUSION_WEIGHTS.get(text)
    if spec is not None:
        if spec.family != family:
            wanted = "a U-Net (--model)" if family == "diffusion" else "the secondary model"
            raise VqclipError(f"{text} is {'the secondary model' if spec.family == 'secondary' else 'a U-Net'}, "
                              f"not {wanted}; choose one of: {', '.join(names(family))}")
        return _registry(spec, weights_folder(weights_dir), download, note, progress)
    path = Path(text).expanduser()
    if path.suffix.lower() in (".pt", ".pth", ".ckpt", ".bin") or "/" in text or path.exists():
        problem = path_problem(path)
        if problem:
            raise WeightsMissing(f"diffusion checkpoint {path} {problem}; give a .pt file or one of: "
                                 f"{', '.join(names(family))}")
        return DiffusionFiles(path.stem, path, None, "path", _sidecar_config(path) if family == "diffusion" else None)
    raise VqclipError(f"unknown diffusion model {text!r}; use one of: {', '.join(names(family))} (or a path to a "
                      ".pt checkpoint)")


def names(family: str) -> list[str]:
    return [n for n, s in DIFFUSION_WEIGHTS.items() if s.family == family]


def _sidecar_config(path: Path) -> Any:
    """`NAME.json` beside `NAME.pt`: the U-Net's architecture (UNetConfig fields), when given."""
    from vqclip.engine.diffusion.unet import UNetConfig

    side = path.with_suffix(".json")
    if not side.exists():
        return None
    try:
        data = json.loads(read_regular(side, MAX_CONFIG_BYTES).decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise VqclipError(f"{side} is not a readable U-Net config ({type(e).__name__}); fix or remove it") from None
    known = {f.name for f in fields(UNetConfig)}
    if not isinstance(data, dict) or set(data) - known:
        extra = sorted(set(data) - known) if isinstance(data, dict) else []
        raise VqclipError(f"{side} is not a U-Net config ({f'unknown keys: {extra}' if extra else 'not an object'});"
                          f" its keys are UNetConfig's: {', '.join(sorted(known))}")
    for key in ("attention_resolutions", "channel_mult"):
        if isinstance(data.get(key), list):
            data[key] = tuple(data[key])
    try:
        config = UNetConfig(**data)
        _ = config.mult, config.attention_ds, config.out_channels
        ok = all(isinstance(getattr(config, k), int) and not isinstance(getattr(config, k), bool)
                 and 0 < getattr(config, k) <= 4096
                 for k in ("image_size", "model_channels", "num_res_blocks", "num_head_channels"))
    except (TypeError, ValueError, ZeroDivisionError) as e:
        raise VqclipError(f"{side} does not describe a U-Net ({e}); fix it") from None
    if not ok:
        raise VqclipError(f"{side} does not describe a U-Net (sizes must be whole numbers from 1 to 4096); fix it")
    return config


def unet_config_of(files: DiffusionFiles) -> Any:
    """The U-Net's architecture: the JSON beside a path, the registry preset, or recognised from its keys."""
    from vqclip.engine.diffusion.unet import PRESETS

    if files.config is not None:
        return files.config
    if files.name in PRESETS:
        return PRESETS[files.name]
    from vqclip.weights.diffusion import load_state, looks_like, shapes_of

    seen = looks_like(shapes_of(load_state(files.path)))
    for name, config in PRESETS.items():
        if seen is not None and seen.startswith(name):
            return config
    raise VqclipError(f"{files.path} is {seen or 'not a U-Net vqclip recognises'}; give one of the published "
                      "U-Nets (`vqclip weights list`), or put its architecture in a .json beside it")


def write_unet_config(checkpoint: Path, config: Any) -> Path:
    """`NAME.json` beside `NAME.pt`: the U-Net's architecture, read back by `resolve_diffusion`."""
    from dataclasses import asdict

    data = {k: v for k, v in asdict(config).items() if k != "description"}
    side = checkpoint.with_suffix(".json")
    side.write_text(json.dumps(data, indent=1), encoding="utf-8")
    return side


def _registry(spec: WeightSpec, folder: Path, download: bool, note: Note | None,
              progress: Progress | None) -> DiffusionFiles:
    path, got = ensure_registry_file(spec, folder, download=download, note=note, progress=progress)
    return DiffusionFiles(spec.name, path, got, "registry")


__all__ = ["DiffusionFiles", "resolve_diffusion", "names", "unet_config_of", "write_unet_config"]
