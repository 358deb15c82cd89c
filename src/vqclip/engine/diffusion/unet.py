"""OpenAI's ADM U-Net (guided-diffusion `unet.UNetModel`, Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on
Image Synthesis"), lean: the same module tree and parameter names, so `256x256_diffusion_uncond.pt`,
`512x512_diffusion_uncond_finetune_008100.pt` and `512x512_diffusion.pt` load with `strict=True`.

Presets use the settings of guided-diffusion's README and Disco Diffusion 5.x: 256 channels, 2 res blocks per
level, attention at 32/16/8 px with 64-channel heads, scale-shift norm, residual up/down-sampling, learned sigmas
(6 output channels), linear betas over 1000 steps; the channel multipliers follow the image size as in
`script_util.create_model`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import nn

from vqclip.engine.diffusion.nn import (AttentionBlock, Conv2d, Downsample, ResBlock, TimestepEmbedSequential,
                                        Upsample, norm_act, normalization, timestep_embedding)

CHANNEL_MULT = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4)}


@dataclass(frozen=True)
class UNetConfig:
    """The architecture (what the state dict's keys and shapes depend on) plus how to run it."""

    image_size: int = 256  # the training size: sets the channel multipliers and where attention is
    model_channels: int = 256
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (32, 16, 8)  # feature-map sizes (px at image_size) with attention
    channel_mult: tuple[float, ...] = ()  # () → from image_size (CHANNEL_MULT)
    num_head_channels: int = 64
    num_heads: int = 4  # used only when num_head_channels is -1
    learn_sigma: bool = True  # 6 output channels: eps and the variance interpolation
    num_classes: int | None = None  # 1000 for the class-conditional 512 model
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    in_channels: int = 3
    dropout: float = 0.0
    schedule: str = "linear"  # beta schedule the model was trained with
    diffusion_steps: int = 1000
    description: str = field(default="", compare=False)

    @property
    def mult(self) -> tuple[float, ...]:
        if self.channel_mult:
            return self.channel_mult
        if self.image_size not in CHANNEL_MULT:
            raise ValueError(f"no default channel multipliers for image size {self.image_size}; give channel_mult")
        return CHANNEL_MULT[self.image_size]

    @property
    def attention_ds(self) -> frozenset[int]:
        """Downsampling rates (1, 2, 4, …) at which the blocks have attention."""
        return frozenset(self.image_size // r for r in self.attention_resolutions)

    @property
    def out_channels(self) -> int:
        return self.in_channels * (2 if self.learn_sigma else 1)

    @property
    def class_conditional(self) -> bool:
        return self.num_classes is not None

    def with_(self, **changes: object) -> "UNetConfig":
        return replace(self, **changes)  # type: ignore[arg-type]


PRESETS: dict[str, UNetConfig] = {
    "256x256_diffusion_uncond": UNetConfig(
        image_size=256, description="OpenAI ImageNet 256x256, unconditional (jul-2021 release)"),
    "512x512_diffusion_uncond_finetune_008100": UNetConfig(
        image_size=512, description="OpenAI ImageNet 512x512 class-conditional, fine-tuned unconditional "
                                    "(Katherine Crowson, step 8100)"),
    "512x512_diffusion": UNetConfig(
        image_size=512, num_classes=1000, description="OpenAI ImageNet 512x512, class-conditional"),
}


class UNetModel(nn.Module):
    """`forward(x, t, y=None)`: x [N, 3, H, W] in the model's [-1, 1] space, t [N] timesteps of the 1000-step
    process (floats allowed), y [N] class labels for a class-conditional model → [N, 6, H, W] (eps, variance
    interpolation). H and W must be multiples of 2**(levels-1) (64 for the presets)."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        mc, mult = config.model_channels, config.mult
        emb_dim = mc * 4
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if config.num_classes is not None:
            self.label_emb = nn.Embedding(config.num_classes, emb_dim)

        def res(ch: int, out: int | None = None, **kw: bool) -> ResBlock:
            return ResBlock(ch, emb_dim, out, scale_shift=config.use_scale_shift_norm, dropout=config.dropout,
                            **kw)

        def attn(ch: int) -> AttentionBlock:
            return AttentionBlock(ch, config.num_head_channels, config.num_heads)

        ch = input_ch = int(mult[0] * mc)
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(Conv2d(config.in_channels, ch, 3, padding=1))])
        chans, ds = [ch], 1
        for level, m in enumerate(mult):
            for _ in range(config.num_res_blocks):
                layers: list[nn.Module] = [res(ch, int(m * mc))]
                ch = int(m * mc)
                if ds in config.attention_ds:
                    layers.append(attn(ch))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                chans.append(ch)
            if level != len(mult) - 1:
                down = res(ch, ch, down=True) if config.resblock_updown else Downsample(ch, True)
                self.input_blocks.append(TimestepEmbedSequential(down))
                chans.append(ch)
                ds *= 2
        self.middle_block = TimestepEmbedSequential(res(ch), attn(ch), res(ch))
        self.output_blocks = nn.ModuleList([])
        for level, m in list(enumerate(mult))[::-1]:
            for i in range(config.num_res_blocks + 1):
                layers = [res(ch + chans.pop(), int(mc * m))]
                ch = int(mc * m)
                if ds in config.attention_ds:
                    layers.append(attn(ch))
                if level and i == config.num_res_blocks:
                    layers.append(res(ch, ch, up=True) if config.resblock_updown else Upsample(ch, True))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = nn.Sequential(normalization(ch), nn.SiLU(), Conv2d(input_ch, config.out_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)
        self.compute_dtype = torch.float32

    @property
    def downsampling(self) -> int:
        """The factor every input side must be a multiple of."""
        return 2 ** (len(self.config.mult) - 1)

    def set_gradient_checkpointing(self, on: bool = True) -> None:
        """Recompute each block's activations in the backward pass (less memory, about a third more time)."""
        for block in self.blocks():
            block.checkpointed = on

    def set_compute_dtype(self, dtype: torch.dtype) -> None:
        """Store and run the torso (input, middle and output blocks) in `dtype` (fp16/bf16), as the reference's
        `convert_to_fp16`: convolutions in `dtype`; norms, the embedding projections, the time embedding and the
        output head stay fp32 (GroupNorm32 computes in fp32 anyway)."""
        self.compute_dtype = dtype
        for block in self.blocks():
            for m in block.modules():
                if isinstance(m, (nn.Conv1d, nn.Conv2d)):
                    m.to(dtype)

    def blocks(self) -> list[TimestepEmbedSequential]:
        return [*self.input_blocks, self.middle_block, *self.output_blocks]  # type: ignore[list-item]

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if (y is not None) != (self.config.num_classes is not None):
            raise ValueError("class labels y are needed exactly when the model is class-conditional")
        side = self.downsampling
        if x.shape[-1] % side or x.shape[-2] % side:
            raise ValueError(f"image sides must be multiples of {side}, got {tuple(x.shape[-2:])}")
        emb = self.time_embed(timestep_embedding(t, self.config.model_channels).to(self.time_embed[0].weight.dtype))
        if y is not None:
            emb = emb + self.label_emb(y)
        hs = []
        h = x.to(self.compute_dtype)
        for module in self.input_blocks:
            h = module(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for module in self.output_blocks:
            h = module(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out[2](norm_act(self.out[0], h.to(x.dtype)))


def build_unet(config: UNetConfig | str, device: torch.device | str | None = None) -> UNetModel:
    """A U-Net for a preset name or a config, random weights (`device="meta"` allocates nothing)."""
    cfg = PRESETS[config] if isinstance(config, str) else config
    with torch.device(device or "cpu"):
        return UNetModel(cfg)
