"""Loading the diffusion checkpoints safely and checking they are the model asked for.

`256x256_diffusion_uncond.pt`, `512x512_diffusion*.pt` and `secondary_model_imagenet_2.pth` hold plain state dicts;
they load through `checkpoint.load_checkpoint` (CPU, `weights_only=True`, pickles that would run code refused).
Keys and shapes are then compared with the model built on the meta device (nothing allocated); on a mismatch
the one-line error names what the file looks like: the secondary model, another U-Net preset, a VQGAN or CLIP.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Mapping

import torch

from vqclip.engine.diffusion.secondary import SecondaryDiffusionImageNet2
from vqclip.engine.diffusion.unet import PRESETS, UNetConfig, UNetModel, build_unet
from vqclip.errors import VqclipError, WeightsMissing
from vqclip.weights.checkpoint import load_checkpoint

SECONDARY = "secondary_model_imagenet_2"
Shapes = Mapping[str, tuple[int, ...]]

# Layouts recognised in error messages: the presets, plus OpenAI's class-conditional 256 model (not offered).
_LABELS = {
    "256x256_diffusion_uncond": "256x256_diffusion_uncond",
    "512x512_diffusion_uncond_finetune_008100": "512x512_diffusion_uncond_finetune_008100",
    "512x512_diffusion": "512x512_diffusion (class-conditional)",
    "256x256_diffusion": "256x256_diffusion (OpenAI's class-conditional 256 model)",
}
_KNOWN: dict[str, UNetConfig] = {**PRESETS, "256x256_diffusion": UNetConfig(image_size=256, num_classes=1000)}


@lru_cache(maxsize=16)
def unet_shapes(config: UNetConfig) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in build_unet(config, "meta").state_dict().items()}


@lru_cache(maxsize=4)
def secondary_shapes(width: int = 64) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = SecondaryDiffusionImageNet2(width)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def shapes_of(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def looks_like(shapes: Shapes) -> str | None:
    """What a state dict is, in words, when it is a known layout or a recognisable family; else None."""
    for name, cfg in _KNOWN.items():
        if dict(shapes) == unet_shapes(cfg):
            return _LABELS[name]
    if dict(shapes) == secondary_shapes():
        return f"the secondary model ({SECONDARY})"
    keys = set(shapes)
    if "timestep_embed.weight" in keys and "net.0.0.weight" in keys:
        return f"a secondary model of width {shapes['net.0.0.weight'][0]}"
    if "input_blocks.0.0.weight" in keys and "time_embed.0.weight" in keys:
        cond = " class-conditional" if "label_emb.weight" in keys else ""
        return f"a{cond} guided-diffusion U-Net with {shapes['time_embed.0.weight'][1]} base channels"
    if any(k.startswith(("decoder.", "first_stage_model.decoder.")) for k in keys):
        return "a VQGAN checkpoint (use it with `vqclip generate`)"
    if any(k.startswith(("visual.", "transformer.resblocks.")) for k in keys):
        return "a CLIP checkpoint (give it with --clip)"
    return None


def _difference(found: Shapes, expected: Shapes) -> str:
    missing = [k for k in expected if k not in found]
    extra = [k for k in found if k not in expected]
    shaped = [k for k in expected if k in found and tuple(found[k]) != tuple(expected[k])]
    parts = []
    if missing:
        parts.append(f"{len(missing)} tensors missing (e.g. {missing[0]})")
    if extra:
        parts.append(f"{len(extra)} unexpected (e.g. {extra[0]})")
    if shaped:
        k = shaped[0]
        parts.append(f"{len(shaped)} of other shapes (e.g. {k}: {list(found[k])} instead of {list(expected[k])})")
    return ", ".join(parts)


def check_shapes(found: Shapes, expected: Shapes, path: str | Path, wanted: str, kind: str) -> None:
    """Raise one line when `found` is not `expected`: what the file looks like when known, else what differs.
    `wanted` names the model asked for; `kind` is "U-Net" or "secondary model"."""
    if dict(found) == dict(expected):
        return
    seen = looks_like(found)
    name = Path(path).name
    if seen and "secondary" in seen and kind == "U-Net":
        raise VqclipError(f"{name} is {seen}, not a U-Net; give it as the secondary model and pass a U-Net "
                          f"checkpoint such as {wanted}")
    if seen and kind == "secondary model" and (seen in _LABELS.values() or "U-Net" in seen):
        raise VqclipError(f"{name} is a U-Net ({seen}), not the secondary model; pass it as the diffusion model "
                          f"and {SECONDARY}.pth as the secondary model")
    if seen:
        raise VqclipError(f"{name} looks like {seen}, not {wanted}; choose the matching model or the right file")
    raise VqclipError(f"{name} does not match {wanted} ({_difference(found, expected)}); is it a checkpoint of "
                      "that model?")


def load_state(path: str | Path, trust: bool = False) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors, loaded safely (see `checkpoint.load_checkpoint`)."""
    p = Path(path)
    if not p.is_file():
        raise WeightsMissing(f"checkpoint {p} not found; see `vqclip weights list`")
    return load_checkpoint(p, trust=trust)


def load_unet(path: str | Path, config: UNetConfig | str, *, trust: bool = False,
              device: torch.device | str = "cpu") -> UNetModel:
    """A U-Net (eval mode, gradients off for its weights) with the checkpoint's weights; `config` is a preset
    name or a config. Raises one line when the file is another model."""
    if isinstance(config, str) and config not in PRESETS:
        raise VqclipError(f"unknown diffusion model {config!r}; known: {', '.join(PRESETS)}")
    wanted = config if isinstance(config, str) else "the chosen U-Net configuration"
    cfg = PRESETS[config] if isinstance(config, str) else config
    state = load_state(path, trust)
    check_shapes(shapes_of(state), unet_shapes(cfg), path, _LABELS.get(wanted, wanted), "U-Net")
    model = build_unet(cfg, "meta")
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device=device, dtype=torch.float32).eval().requires_grad_(False)


def load_secondary(path: str | Path, *, width: int = 64, trust: bool = False,
                   device: torch.device | str = "cpu") -> SecondaryDiffusionImageNet2:
    """The secondary model (eval mode, frozen) from its checkpoint; `width` 64 is the published one."""
    state = load_state(path, trust)
    wanted = f"the secondary model ({SECONDARY})" if width == 64 else f"a secondary model of width {width}"
    check_shapes(shapes_of(state), secondary_shapes(width), path, wanted, "secondary model")
    with torch.device("meta"):
        model = SecondaryDiffusionImageNet2(width)
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device=device, dtype=torch.float32).eval().requires_grad_(False)
