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
from vqclip.weights.store import MOVE_WEIGHTS, ensure_writable


MAX_YAML_BYTES = 1 << 20  # a taming config is about 2 kB
MAX_DECODER_PARAMETERS = 4_000_000_000  # 60x the f16 decoder; no VQGAN that fits in memory is bigger
# Inclusive bounds of the numbers that size a VQGAN (the largest released models are far inside them).
_DD_INTS = {"z_channels": (1, 4096), "resolution": (1, 16384), "in_channels": (3, 3), "out_ch": (3, 3),
            "ch": (1, 4096), "num_res_blocks": (1, 64)}  # channels in and out: RGB, what CLIP sees
_PARAM_INTS = {"embed_dim": (1, 4096), "n_embed": (1, 1 << 20)}


def validate_yaml(path: Path, source: str | None = None) -> None:
    """A taming model yaml that vqclip can build: at most 1 MiB, parses without aliases (a few nested aliases
    expand to billions of nodes), has `model.params.ddconfig`, and numbers a model can have (`check_vqgan`)."""
    import yaml

    where = source or str(path)
    problem = path_problem(path, "file")
    if problem:
        raise VqclipError(f"{where} {problem}; a model config must be a taming .yaml file")
    try:
        if path.stat().st_size > MAX_YAML_BYTES:
            raise VqclipError(f"{where} is larger than 1 MiB, far beyond a taming config; is it the checkpoint?")
        text = path.read_text(errors="replace")
        if looks_like_html(text[:1024].encode()):
            raise VqclipError(f"{where} is an HTML page, not a yaml (a failed download saved under that name?); "
                              "replace it with the model's taming config")
        if any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, Loader=yaml.SafeLoader)):
            raise VqclipError(f"{where} uses yaml aliases (*name), which a taming config never needs; "
                              "write the values out")
        data = yaml.safe_load(text)
    except (OSError, yaml.YAMLError, RecursionError) as e:
        raise VqclipError(f"{where} is not a readable yaml ({type(e).__name__}); "
                          "is it an HTML page saved by mistake?") from None
    params = data.get("model", {}).get("params", {}) if isinstance(data, dict) and \
        isinstance(data.get("model", {}), dict) else {}
    if not isinstance(params, dict) or not isinstance(params.get("ddconfig"), dict):
        nested = isinstance(params, dict) and isinstance(params.get("first_stage_config"), dict)
        hint = (" (it is a Net2NetTransformer config: copy its first_stage_config into model:)" if nested
                else "")
        raise VqclipError(f"{where} is not a taming VQGAN config: no model.params.ddconfig{hint}")
    check_vqgan(params, where)


def check_vqgan(params: dict, where: str) -> None:
    """`model.params` of a taming config: embed_dim, n_embed and the ddconfig numbers within bounds and of the
    right types, and a decoder small enough to exist (what taming would otherwise fail on deep inside torch)."""
    dd = params["ddconfig"]
    for key, (lo, hi) in [*_PARAM_INTS.items(), *_DD_INTS.items()]:
        value = params.get(key) if key in _PARAM_INTS else dd.get(key)
        name = key if key in _PARAM_INTS else f"ddconfig.{key}"
        if value is None:
            raise VqclipError(f"{where} is not a taming VQGAN config: no model.params.{name}")
        if isinstance(value, bool) or not isinstance(value, int):
            raise VqclipError(f"{where}: model.params.{name} must be a whole number, not {str(value)[:40]!r}")
        if not lo <= value <= hi:
            need = f"vqclip needs {lo} (RGB)" if lo == hi else f"a model needs {lo}..{hi}"
            raise VqclipError(f"{where}: model.params.{name} {value} is out of range ({need})")
    mult = dd.get("ch_mult")
    if not isinstance(mult, list) or not 1 <= len(mult) <= 8 or \
            any(isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= 64 for m in mult):
        raise VqclipError(f"{where}: model.params.ddconfig.ch_mult must be a list of 1 to 8 whole numbers "
                          f"from 1 to 64, not {str(mult)[:40]!r}")
    attn = dd.get("attn_resolutions", [])
    if not isinstance(attn, list) or len(attn) > 64 or \
            any(isinstance(a, bool) or not isinstance(a, int) or a < 0 for a in attn):
        raise VqclipError(f"{where}: model.params.ddconfig.attn_resolutions must be a list of whole numbers")
    if not isinstance(dd.get("double_z", False), bool):
        raise VqclipError(f"{where}: model.params.ddconfig.double_z must be true or false")
    dropout = dd.get("dropout", 0.0)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise VqclipError(f"{where}: model.params.ddconfig.dropout must be a number from 0 to 1")
    # Each level of the decoder: (num_res_blocks + 1) resnet blocks of two 3x3 convolutions at ch * mult.
    params_est = sum((dd["num_res_blocks"] + 1) * 18 * (dd["ch"] * m) ** 2 for m in mult)
    if params_est > MAX_DECODER_PARAMETERS:
        raise VqclipError(f"{where} describes a decoder of about {params_est / 1e9:,.0f} billion parameters, "
                          "more than any machine here holds; check ch and ch_mult")


def ensure_yaml(spec: WeightSpec, folder: Path, *, download: bool, timeout: float | None = None) -> Path:
    """The yaml of a registry model: the packaged copy, else `folder/NAME.yaml`, fetched and validated."""
    shipped = packaged_yaml(spec.name)
    if shipped is not None:
        return shipped
    dest = folder / f"{spec.name}.yaml"
    if dest.is_file():
        return dest
    if not download or not spec.yaml_urls:
        raise WeightsMissing(f"{dest} is missing; run `vqclip weights download {spec.name}`"
                             + (f" (from {spec.yaml_urls[0]})" if spec.yaml_urls else ""))
    ensure_writable(folder, "weights folder", MOVE_WEIGHTS)
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
    return download.default_timeout()  # read at call time (tests shorten it; VQCLIP_TIMEOUT sets it)
