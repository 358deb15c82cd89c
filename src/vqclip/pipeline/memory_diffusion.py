"""How much memory a diffusion run needs, estimated from the architecture (nothing is allocated).

Weights: the U-Net's parameters (its torso in the compute dtype, the rest fp32), the secondary model's and each
CLIP's. Activations: guidance differentiates through the U-Net (unless the secondary model guides), so every
block's activations are kept for the backward pass: about ACTS_PER_BLOCK tensors of the block's channels × pixels
(convolutions, norms, SiLUs, the skip connection), and an attention block also keeps its (pixels × pixels)
weights per head. Low-memory mode (gradient checkpointing) keeps only each block's input. CLIP's part is its
activations for one batch of cutouts. A margin covers the allocator and workspaces.
"""

from __future__ import annotations

import dataclasses
from typing import Any

ACTS_PER_BLOCK = 12  # tensors kept per res block in the backward pass (measured against the reference layout)
CLIP_ACT_BYTES_PER_CUT = 12 << 20  # ViT-B/16 at 224 px, fp32, forward + backward, per cutout
CLIP_WEIGHT_BYTES = 600 << 20  # a ViT-B CLIP in fp32
MARGIN = 1.15


def _dtype_bytes(dtype: Any) -> int:
    return 2 if dtype is not None else 4


def unet_params(config: Any) -> int:
    from vqclip.weights.diffusion import unet_shapes

    total = 0
    for shape in unet_shapes(config).values():
        n = 1
        for d in shape:
            n *= d
        total += n
    return total


def activation_elements(config: Any, width: int, height: int, low_memory: bool) -> int:
    """Elements kept for the backward pass of one U-Net forward at width × height."""
    mult, ch = config.mult, config.model_channels
    total = 0
    for level, m in enumerate(mult):
        pixels = (width >> level) * (height >> level)
        channels = int(ch * m)
        blocks = 2 * config.num_res_blocks + 1  # the encoder's, the decoder's (one more), the resampling one
        per = channels * pixels * (1 if low_memory else ACTS_PER_BLOCK)
        total += blocks * per
        if (2 ** level) in config.attention_ds and not low_memory:
            heads = max(1, channels // config.num_head_channels) if config.num_head_channels > 0 else config.num_heads
            total += blocks * heads * pixels * pixels
    return total


def estimate_bytes(config: Any, size: tuple[int, int], run: Any, precision: Any, *, secondary: bool) -> int:
    """Peak bytes of one guided step: weights + kept activations + CLIP's."""
    width, height = size
    weights = unet_params(config) * 4 + CLIP_WEIGHT_BYTES * max(1, len(run.clip_specs()))
    acts = 0 if secondary else activation_elements(config, width, height, bool(run.low_memory)) \
        * _dtype_bytes(precision.decoder)
    if secondary:
        acts += 64 * 16 * width * height * 4  # the secondary model's own backward pass (64 channels, ~16 tensors)
    clip = CLIP_ACT_BYTES_PER_CUT * (run.cutn + run.overview_cuts)
    return int((weights + acts + clip) * MARGIN)


def dry_run(run: Any, inputs: Any, note: Any = None) -> dict[str, Any]:
    """The estimate of a diffusion run without running it: {device, precision, size, normal, low_memory,
    secondary, budget}. A registry model need not be downloaded (its preset is known)."""
    from vqclip.engine import resolve_device
    from vqclip.engine.diffusion.unet import PRESETS
    from vqclip.pipeline.budget import memory_budget
    from vqclip.weights.diffusion_files import resolve_diffusion, unet_config_of

    if run.model in PRESETS:
        config = PRESETS[run.model]
    else:
        config = unet_config_of(resolve_diffusion(run.model, "diffusion", weights_dir=inputs.weights_dir,
                                                  download=False))
    device, precision = resolve_device(run.device, run.precision, on_note=note)
    precision = dataclasses.replace(precision, weights=None)  # as the engine runs it: the U-Net casts its torso
    size = (run.width, run.height)
    lows = {lm: estimate_bytes(config, size, run.model_copy(update={"low_memory": lm}), precision, secondary=False)
            for lm in (False, True)}
    return {"device": str(device), "precision": precision.describe(), "size": size, "normal": lows[False],
            "low_memory": lows[True], "secondary": estimate_bytes(config, size, run, precision, secondary=True),
            "budget": memory_budget(device)}


__all__ = ["estimate_bytes", "unet_params", "activation_elements", "dry_run"]
