"""CLIP through open_clip: a model name or a model-config JSON, a pretrained tag or a checkpoint path."""

from __future__ import annotations

import contextlib
import difflib
import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator

import torch

from vqclip.engine import vit
from vqclip.engine.ops import store_frozen_weights
from vqclip.errors import VqclipError, WeightsMissing

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class ClipModel:
    """A frozen CLIP model with what the loop needs: input size, normalisation, text/image encoders."""

    model: Any
    tokenizer: Any
    name: str
    pretrained: str | None
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    embed_dim: int

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        key = (x.device, x.dtype)
        cache = self.__dict__.setdefault("_norm_consts", {})
        if key not in cache:  # made once per device: a fresh host tensor copied every step would stall the GPU
            cache[key] = (torch.tensor(self.mean, dtype=x.dtype).view(1, 3, 1, 1).to(x.device),
                          torch.tensor(self.std, dtype=x.dtype).view(1, 3, 1, 1).to(x.device))
        mean, std = cache[key]
        return (x - mean) / std

    @torch.no_grad()
    def encode_text(self, texts: list[str], device: torch.device) -> torch.Tensor:
        if getattr(self, "text_released", False):
            raise RuntimeError("this CLIP model's text tower was released after the prompts were embedded")
        return self.model.encode_text(self.tokenizer(texts).to(device)).float()

    @cached_property
    def lean(self) -> bool:
        """Whether the image tower has the plain ViT layout that `engine/vit.py` runs leaner than open_clip."""
        return vit.lean_supported(self.model.visual)

    def encode_image(self, x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """`x`: [N, 3, S, S] already normalised, computed in `dtype` (default: `x`'s). Gradient flows back to
        the pixels. Returns fp32 embeddings."""
        if dtype is not None:
            x = x.to(dtype)
        if self.lean:
            return vit.encode_image(self.model.visual, x).float()
        with torch.autocast(x.device.type, dtype=x.dtype, enabled=x.dtype != torch.float32):
            return self.model.encode_image(x).float()

    def set_weight_dtype(self, dtype: torch.dtype) -> bool:
        """Store the image tower's frozen weights in `dtype` (cast to the compute dtype per layer as needed).
        Only for the lean ViT path; returns whether it was done."""
        if not self.lean:
            return False
        store_frozen_weights(self.model.visual, dtype)
        return True

    def release_text_tower(self) -> None:
        """Free the text tower (a third of ViT-B/32's weights) once every text prompt is embedded."""
        m = self.model
        if isinstance(getattr(m, "text", None), torch.nn.Module):
            m.text = None
        for name in ("transformer", "token_embedding", "ln_final"):
            if isinstance(getattr(m, name, None), torch.nn.Module):
                setattr(m, name, None)
        for name in ("positional_embedding", "text_projection"):
            if m._parameters.get(name) is not None:
                m._parameters[name] = None
        if m._buffers.get("attn_mask") is not None:
            m._buffers["attn_mask"] = None
        self.text_released = True


@contextlib.contextmanager
def quiet_logs() -> Iterator[None]:
    """open_clip logs a root-logger WARNING for random weights; that is expected here, not news."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def resolve_clip_name(name_or_path: str) -> str:
    """Model name for open_clip; a path to a model-config JSON is registered under its file stem."""
    import open_clip

    p = Path(name_or_path)
    if name_or_path.endswith(".json") or p.is_file():
        if not p.is_file():
            raise VqclipError(f"CLIP model config {p} not found; pass an open_clip model name "
                              "(e.g. ViT-B-32-quickgelu) or an existing .json")
        try:
            open_clip.add_model_config(p)
        except Exception as e:
            raise VqclipError(f"CLIP model config {p} is not a valid open_clip config ({type(e).__name__})") from None
        return p.stem
    known = open_clip.list_models()
    if name_or_path not in known:
        close = difflib.get_close_matches(name_or_path, known, n=5, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else "see open_clip.list_models()"
        raise VqclipError(f"unknown CLIP model {name_or_path!r}; {hint} A path to a model-config .json also works")
    return name_or_path


def _pretrained_arg(name: str, pretrained: str | None) -> str | None:
    import open_clip

    if pretrained is None or pretrained.strip().lower() in ("", "none", "random"):
        return None
    if Path(pretrained).is_file():
        return pretrained
    if any(c in pretrained for c in "/\\") or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")):
        raise VqclipError(f"CLIP checkpoint {pretrained} not found; pass an existing file or a pretrained tag")
    tags = open_clip.list_pretrained_tags_by_model(name)
    if pretrained not in tags:
        shown = ", ".join(tags) if tags else "none (pass a checkpoint path or 'none')"
        raise VqclipError(f"CLIP model {name} has no pretrained tag {pretrained!r}; known tags: {shown}")
    return pretrained


def load_clip(name_or_path: str, pretrained: str | None, device: torch.device | str = "cpu") -> ClipModel:
    """Build the CLIP model frozen in eval mode; downloads go through open_clip's Hugging Face cache."""
    import open_clip

    name = resolve_clip_name(name_or_path)
    arg = _pretrained_arg(name, pretrained)
    try:
        with quiet_logs():
            model = open_clip.create_model(name, pretrained=arg, device=device)
    except (OSError, ConnectionError, RuntimeError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        if arg is not None and not Path(arg).is_file():
            raise WeightsMissing(
                f"CLIP weights {name}/{arg} are not cached and could not be downloaded ({first}); "
                f"connect to the internet and run `vqclip weights download clip:{name}/{arg}`") from None
        raise VqclipError(f"cannot load CLIP {name} from {arg} ({first})") from None
    model.eval().requires_grad_(False)
    size = model.visual.image_size
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    pp = getattr(model.visual, "preprocess_cfg", None) or {}
    mean = tuple(pp.get("mean", OPENAI_MEAN))
    std = tuple(pp.get("std", OPENAI_STD))
    embed_dim = int(model.text_projection.shape[-1]) if getattr(model, "text_projection", None) is not None \
        else int(model.encode_text(open_clip.get_tokenizer(name)(["x"]).to(device)).shape[-1])
    return ClipModel(model=model, tokenizer=open_clip.get_tokenizer(name), name=name, pretrained=arg,
                     input_size=size, mean=mean, std=std, embed_dim=embed_dim)  # type: ignore[arg-type]
