"""Every row of a batch checked before the first run starts, beyond what RunConfig checks alone: its VQGAN (a
known name, or a .yaml with its .ckpt; with --no-download, already downloaded), its CLIP model and weights, the
workers' devices, and that its size and cutouts fit each device's memory. A row that would fail is one line
naming the row (`runs.csv:4: …`) now, not after the rows before it have run.

The VQGAN, CLIP and memory checks are the VQGAN engine's; rows of other engines get the device check. Each
distinct setting is checked once (a 100,000-row sweep over seeds checks one model). On a Ray cluster the
files and devices are the cluster's, so only the local workers' rows are checked here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from vqclip.errors import VqclipError

_KEYS = ("model", "clip_model", "clip_pretrained", "width", "height", "cutn", "precision", "low_memory", "init_image",
         "device", "engine")


def check_rows(rows: Iterable[tuple[str, Any]], devices: list[str], *, weights_dir: str | None,
               download: bool) -> None:
    """`rows`: (source, RunConfig or its JSON) of every row; `devices`: the workers' devices. Raises a VqclipError
    `source: …` for the first row that cannot run."""
    from vqclip.config import RunConfig

    seen: dict[tuple[Any, ...], tuple[str, dict[str, Any]]] = {}
    for source, config in rows:
        key = tuple(repr(config.get(k) if isinstance(config, dict) else getattr(config, k, None)) for k in _KEYS)
        if key not in seen:
            seen[key] = (source, config)
    if not seen:
        return
    from vqclip import engine

    picked = {}
    for name in dict.fromkeys(devices):
        picked[name] = engine.pick_device(name)  # a device that is not there: one line now
    models: dict[str, Any] = {}
    clips: set[tuple[str, str | None]] = set()
    for source, config in seen.values():
        cfg = RunConfig.model_validate(config) if isinstance(config, dict) else config
        try:
            _check_device(cfg.device, list(picked))
            if getattr(cfg, "engine", "vqgan") != "vqgan":  # other engines check their own files when they load
                continue
            spec = models.get(cfg.model)
            if cfg.model not in models:
                spec = models[cfg.model] = _model_spec(cfg.model, weights_dir, download)
            if (cfg.clip_model, cfg.clip_pretrained) not in clips:
                _check_clip(cfg.clip_model, cfg.clip_pretrained)
                clips.add((cfg.clip_model, cfg.clip_pretrained))
            if spec is not None:
                for device in picked.values():
                    _check_fits(cfg, spec, device)
        except VqclipError as e:
            raise VqclipError(f"{source}: {e.message}", e.exit_code) from None


def _check_device(asked: str, workers: list[str]) -> None:
    """A row runs on its worker's device: a row that names another device is refused, not silently moved."""
    asked = (asked or "auto").strip().lower()
    if asked == "auto" or asked in workers or any(w.split(":")[0] == asked for w in workers):
        return
    raise VqclipError(f"device {asked}: this batch's workers run on {', '.join(workers)}, and a row runs on its "
                      f"worker's device; choose the workers with --devices (e.g. --devices {asked})")


def _model_spec(name: str, weights_dir: str | None, download: bool) -> Any:
    """The model's spec from its yaml (None for a registry model that is still to be downloaded)."""
    from vqclip import engine
    from vqclip.files import path_problem
    from vqclip.weights.registry import table
    from vqclip.weights.resolve import resolve_model
    from vqclip.weights.store import weights_dir as weights_folder

    registry = table()
    if name.strip() in registry:
        folder = weights_folder(weights_dir)
        spec = registry[name.strip()]
        ckpt, yaml_path = folder / f"{spec.name}.ckpt", folder / f"{spec.name}.yaml"
        if not ckpt.is_file() or not yaml_path.is_file():
            if not download:
                raise VqclipError(f"model {spec.name} is not downloaded (expected {ckpt}) and --no-download is "
                                  f"set; run `vqclip weights download {spec.name}` first")
            return None  # downloaded by the first run that needs it
    files = resolve_model(name, weights_dir=weights_dir, yaml_only=True)
    problem = path_problem(files.ckpt_path)
    if problem is not None:
        raise VqclipError(f"model {name}: its checkpoint {files.ckpt_path} {problem}; put the .ckpt beside "
                          "the .yaml")
    return engine.read_spec(Path(files.yaml_path))


def _check_clip(model: str, pretrained: str | None) -> None:
    from vqclip.engine.clip import _pretrained_arg, resolve_clip_name

    _pretrained_arg(resolve_clip_name(model), pretrained)


def _check_fits(cfg: Any, spec: Any, device: Any) -> None:
    from vqclip.engine.precision import choose_precision
    from vqclip.pipeline import budget
    from vqclip.prompts import floor_size

    width, height = floor_size(cfg.width, cfg.height, spec.factor)
    budget.plan_run(cfg, spec, width, height, device, choose_precision(cfg.precision, device),
                    with_encoder=bool(cfg.init_image))


__all__ = ["check_rows"]
