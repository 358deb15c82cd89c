"""A VQGAN's taming yaml: is it one vqclip can build, and where a registry model's yaml comes from (the packaged
copy, else `NAME.yaml` in the weights folder, fetched from the registry's yaml URLs and checked first).

Nothing here imports torch.
"""

from __future__ import annotations

import os
from pathlib import Path

from vqclip.errors import VqclipError, WeightsMissing
from vqclip.files import path_problem
from vqclip.weights import download
from vqclip.weights.download import DownloadError, fetch_to_part, looks_like_html, part_path
from vqclip.weights.registry import WeightSpec, packaged_yaml


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
            fetch_to_part(url, part, size=None, timeout=_timeout() if timeout is None else timeout,
                          on_start=lambda o, t: None, on_bytes=lambda n: None)
            if looks_like_html(part.read_bytes()[:1024]):
                raise DownloadError(url, "served an HTML page instead of the yaml")
            validate_yaml(part, source=url)
        except (DownloadError, VqclipError) as e:
            part.unlink(missing_ok=True)
            failures.append(str(e) if isinstance(e, DownloadError) else e.message)
            continue
        os.replace(part, dest)  # checked: it takes its real name
        return dest
    raise WeightsMissing(f"could not get the yaml of {spec.name}: {'; '.join(failures)}; "
                         f"save a taming config as {dest}")


def _timeout() -> float:
    return download.TIMEOUT  # read at call time (tests shorten it)
