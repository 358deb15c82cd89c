"""An open_clip model-config JSON given by the user (`--clip-model FILE.json`), checked before open_clip builds a
model from it: JSON that is not a config, fields of the wrong type, numbers no model can have (0 heads, a
negative width, a width its heads do not divide) and sizes no machine can hold are each one line naming the
file and the field, instead of a traceback from deep inside torch (or minutes of swapping).

The field names and types come from open_clip's own `CLIPVisionCfg` / `CLIPTextCfg` dataclasses (their defaults
say the type); the ranges are generous bounds around every model open_clip ships (the largest, ViT-bigG-14, has
≈2.5 billion parameters). Imports open_clip (not torch) only to read those dataclasses.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from vqclip.errors import VqclipError, one_line

MAX_CONFIG_BYTES = 1 << 20  # the biggest shipped config is about 1 kB
MAX_PARAMETERS = 10_000_000_000  # 4x ViT-bigG-14; beyond this no machine vqclip runs on holds the model
REQUIRED = ("embed_dim", "vision_cfg", "text_cfg")
FIX = "pass an open_clip model name (e.g. ViT-B-32-quickgelu) or an open_clip model-config .json"

# Inclusive bounds for the integer fields that size a model (fields not listed only need the right type).
_INT_BOUNDS = {
    "embed_dim": (1, 16384),
    "width": (1, 16384), "head_width": (1, 16384), "heads": (1, 1024), "layers": (1, 256),
    "patch_size": (1, 1024), "image_size": (1, 4096), "context_length": (1, 4096), "vocab_size": (1, 1 << 20),
    "attn_pooler_queries": (1, 4096), "attn_pooler_heads": (1, 1024), "pad_id": (0, 1 << 20),
    "eos_id": (0, 1 << 20),
}
_FLOAT_BOUNDS = {"mlp_ratio": (1e-3, 64.0), "patch_dropout": (0.0, 0.999), "timm_drop": (0.0, 0.999),
                 "timm_drop_path": (0.0, 0.999), "ls_init_value": (0.0, 1e3)}


def check_clip_config(path: Path) -> dict[str, Any]:
    """The parsed config of `path`, or `VqclipError` naming the file and what is wrong with it."""
    data = _read(path)
    where = f"CLIP model config {path}"
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise VqclipError(f"{where} has no {' / '.join(missing)}; an open_clip model config needs "
                          f"{', '.join(REQUIRED)} (see open_clip's model_configs/*.json)")
    bad = [k for k in ("vision_cfg", "text_cfg") if not isinstance(data[k], dict)]
    if bad:
        raise VqclipError(f"{where}: {' and '.join(bad)} must be JSON objects; {FIX}")
    if isinstance(data["embed_dim"], bool) or not isinstance(data["embed_dim"], int):
        raise VqclipError(f"{where}: embed_dim must be an integer; {FIX}")
    _bounded(where, "embed_dim", data["embed_dim"])
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    vision, text = data["vision_cfg"], data["text_cfg"]
    _fields(where, "vision_cfg", vision, CLIPVisionCfg)
    _fields(where, "text_cfg", text, CLIPTextCfg)
    _consistent(where, vision, text)
    params = _parameters(data["embed_dim"], vision, text)
    if params > MAX_PARAMETERS:
        raise VqclipError(f"{where} describes a model of about {params / 1e9:,.0f} billion parameters (at least "
                          f"{4 * params / 2**30:,.0f} GiB), more than any machine here holds; check its widths "
                          "and layer counts")
    return data


def _read(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:  # a regular file (checked by the caller); links given on purpose are fine
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise VqclipError(f"CLIP model config {path} {e.strerror or 'cannot be read'}; {FIX}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise VqclipError(f"CLIP model config {path} is larger than 1 MiB, far beyond any model config; {FIX}")
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise VqclipError(f"CLIP model config {path} is not JSON ({one_line(e, 100)}); {FIX}") from None
    if not isinstance(data, dict):
        raise VqclipError(f"CLIP model config {path} is JSON but not an object; {FIX}")
    return data


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _describe(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _bounded(where: str, key: str, value: Any, name: str | None = None) -> None:
    """An integer field within its bounds (a list of them for the ResNet `layers` and a (h, w) `image_size`)."""
    lo, hi = _INT_BOUNDS[key]
    name = name or key
    items = value if isinstance(value, list) and key in ("layers", "image_size") and value else [value]
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int):
            raise VqclipError(f"{where}: {name} must be a whole number, not {_describe(value)}; fix the file")
        if not lo <= item <= hi:
            raise VqclipError(f"{where}: {name} {item} is out of range (a model needs {lo}..{hi}); fix the file")


def _fields(where: str, tower: str, cfg: dict[str, Any], cls: type) -> None:
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(k for k in cfg if k not in known)
    if unknown:
        raise VqclipError(f"{where}: {tower} has no field {unknown[0]!r} in this open_clip (known: "
                          f"{', '.join(sorted(known)[:12])}, …); fix the file")
    for key, value in cfg.items():
        name = f"{tower}.{key}"
        if key in _INT_BOUNDS:
            if value is None and key == "patch_size":  # a ResNet tower has none (checked for a ViT below)
                continue
            _bounded(where, key, value, name)
            if key == "layers" and isinstance(value, list) and (tower != "vision_cfg" or len(value) != 4):
                raise VqclipError(f"{where}: {name} must be a whole number (or 4 of them for a ResNet tower)")
            if key == "image_size" and isinstance(value, list) and len(value) != 2:
                raise VqclipError(f"{where}: {name} must be a whole number or [height, width]")
            continue
        if key in _FLOAT_BOUNDS:
            if value is None and key in ("ls_init_value", "timm_drop_path"):
                continue
            lo, hi = _FLOAT_BOUNDS[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise VqclipError(f"{where}: {name} must be a number, not {_describe(value)}; fix the file")
            if not lo <= value <= hi:
                raise VqclipError(f"{where}: {name} {value} is out of range ({lo:g}..{hi:g}); fix the file")
            continue
        _typed(where, name, value, known[key].default)


def _typed(where: str, name: str, value: Any, default: Any) -> None:
    """A field whose default says its type: a bool stays a bool, a string a string (or null: open_clip's own
    configs write that), a dict a dict."""
    if default is None or default is dataclasses.MISSING:
        ok = value is None or isinstance(value, (str, dict, bool, int, float))
    elif isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, str):
        ok = value is None or isinstance(value, str)
    elif isinstance(default, dict):
        ok = value is None or isinstance(value, dict)
    else:
        ok = True
    if not ok:
        raise VqclipError(f"{where}: {name} has the wrong type ({_describe(value)}); fix the file")


def _consistent(where: str, vision: dict[str, Any], text: dict[str, Any]) -> None:
    """Numbers that are each fine but cannot go together (what open_clip would fail on, or divide by zero on),
    and towers whose weights another library would download on its own (unverified, past --no-download)."""
    if vision.get("timm_model_name") is not None and vision.get("timm_model_pretrained", False):
        raise VqclipError(f"{where}: vision_cfg.timm_model_pretrained would have timm download weights that "
                          "vqclip cannot verify; set it to false and pass the weights with --clip-pretrained FILE")
    if text.get("hf_model_name") is not None and text.get("hf_model_pretrained", True):
        raise VqclipError(f"{where}: text_cfg.hf_model_pretrained (true unless set) would have transformers "
                          "download weights that vqclip cannot verify; set it to false and pass the weights with "
                          "--clip-pretrained FILE")
    if vision.get("timm_model_name") is None and not isinstance(vision.get("layers", 12), list):
        width, head_width = vision.get("width", 768), vision.get("head_width", 64)
        if width % head_width:
            raise VqclipError(f"{where}: vision_cfg.width {width} is not a multiple of head_width {head_width} "
                              "(the attention heads must split the width evenly); fix the file")
        image, patch = vision.get("image_size", 224), vision.get("patch_size", 16)
        if patch is None:
            raise VqclipError(f"{where}: vision_cfg.patch_size is null, but a ViT tower needs one; fix the file")
        if min(image if isinstance(image, list) else [image]) < patch:
            raise VqclipError(f"{where}: vision_cfg.patch_size {patch} is larger than image_size {image}; "
                              "fix the file")
    if text.get("hf_model_name") is None:
        width, heads = text.get("width", 512), text.get("heads", 8)
        if width % heads:
            raise VqclipError(f"{where}: text_cfg.width {width} is not a multiple of heads {heads} (the attention "
                              "heads must split the width evenly); fix the file")


def _parameters(embed_dim: int, vision: dict[str, Any], text: dict[str, Any]) -> float:
    """A rough parameter count (a transformer block ≈ (4 + 2·mlp_ratio)·width², a ResNet bottleneck ≈ 17·planes²,
    plus embeddings), enough to tell a model that fits in memory from one that never could."""
    def blocks(cfg: dict[str, Any], width: int, layers: int) -> float:
        return layers * (4 + 2 * float(cfg.get("mlp_ratio", 4.0))) * width * width + width * embed_dim

    image = vision.get("image_size", 224)
    pixels = math.prod(image) if isinstance(image, list) else image * image
    v_width, v_layers = vision.get("width", 768), vision.get("layers", 12)
    if isinstance(v_layers, list):  # ModifiedResNet: stage i has planes = width·2^i, then an attention pool
        vis = sum(n * 17.0 * (v_width * 2**i) ** 2 for i, n in enumerate(v_layers)) + 4.0 * (v_width * 32) ** 2
    else:
        vis = blocks(vision, v_width, v_layers) + pixels / (vision.get("patch_size") or 16) ** 2 * v_width
    t_width = text.get("width", 512)
    txt = blocks(text, t_width, text.get("layers", 12)) + \
        (text.get("vocab_size", 49408) + text.get("context_length", 77)) * t_width
    return vis + txt
