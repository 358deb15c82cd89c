"""Layers of OpenAI's ADM U-Net (guided-diffusion `nn.py` and `unet.py`, Dhariwal & Nichol 2021), re-implemented
with the same parameter names so the published state dicts load unchanged.

Differences that change no number beyond float rounding: attention runs through `scaled_dot_product_attention`
(no T×T weight matrix kept for the backward pass where a fused kernel exists), and gradient checkpointing is
`torch.utils.checkpoint` (non-reentrant) instead of the reference's hand-written autograd function.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in fp32 whatever the activations' dtype, cast back after (as the reference)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        with torch.autocast(x.device.type, enabled=False):
            return F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(),
                                self.eps).to(x.dtype)


def normalization(channels: int) -> GroupNorm32:
    return GroupNorm32(32, channels)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [N, dim] of (possibly fractional) timesteps `t` [N]: cos half, then sin half."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half).to(t.device)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class Upsample(nn.Module):
    """Nearest ×2, optionally followed by a 3×3 conv (`conv`)."""

    def __init__(self, channels: int, use_conv: bool) -> None:
        super().__init__()
        self.channels = channels
        if use_conv:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if hasattr(self, "conv") else x


class Downsample(nn.Module):
    """Strided 3×3 conv (`op`) or 2×2 average pooling."""

    def __init__(self, channels: int, use_conv: bool) -> None:
        super().__init__()
        self.op: nn.Module = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv \
            else nn.AvgPool2d(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class ResBlock(nn.Module):
    """Residual block conditioned on the timestep embedding; FiLM-like `scale, shift` after the second norm when
    `scale_shift`; up/down-sampling inside the block when `up`/`down` (the reference's `resblock_updown`)."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int | None = None, *,
                 scale_shift: bool = True, up: bool = False, down: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        out = out_channels or channels
        self.scale_shift = scale_shift
        self.in_layers = nn.Sequential(normalization(channels), nn.SiLU(), nn.Conv2d(channels, out, 3, padding=1))
        self.updown = up or down
        if up:
            self.h_upd: nn.Module = Upsample(channels, False)
            self.x_upd: nn.Module = Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out if scale_shift else out))
        self.out_layers = nn.Sequential(normalization(out), nn.SiLU(), nn.Dropout(p=dropout),
                                        nn.Conv2d(out, out, 3, padding=1))
        nn.init.zeros_(self.out_layers[-1].weight)
        nn.init.zeros_(self.out_layers[-1].bias)
        self.skip_connection: nn.Module = nn.Identity() if out == channels else nn.Conv2d(channels, out, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.updown:
            h = self.in_layers[:-1](x)
            h = self.in_layers[-1](self.h_upd(h))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).to(h.dtype)[..., None, None]
        if self.scale_shift:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over all positions with `channels // head_channels` heads, in the reference's "legacy"
    order (the qkv conv's output is split into heads first, then into q, k, v)."""

    def __init__(self, channels: int, head_channels: int = 64, num_heads: int = 1) -> None:
        super().__init__()
        if head_channels > 0:
            if channels % head_channels:
                raise ValueError(f"attention channels {channels} are not a multiple of {head_channels}")
            num_heads = channels // head_channels
        self.num_heads = num_heads
        self.norm = normalization(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))
        length = qkv.shape[-1]
        ch = c // self.num_heads
        q, k, v = qkv.reshape(b, self.num_heads, ch * 3, length).transpose(2, 3).split(ch, dim=-1)
        a = F.scaled_dot_product_attention(q, k, v)  # [b, heads, T, ch]; softmax(q·k/√ch)·v
        h = self.proj_out(a.transpose(2, 3).reshape(b, c, length))
        return (x + h).reshape(b, c, *spatial)


class TimestepEmbedSequential(nn.Sequential):
    """Runs its layers in order, giving the timestep embedding to the residual blocks; with `checkpointed`,
    each block's activations are recomputed in the backward pass instead of being kept."""

    checkpointed = False

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            if self.checkpointed and torch.is_grad_enabled() and isinstance(layer, (ResBlock, AttentionBlock)):
                x = checkpoint(_run, layer, x, emb, use_reentrant=False)
            else:
                x = _run(layer, x, emb)
        return x


def _run(layer: nn.Module, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    return layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
