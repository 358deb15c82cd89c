"""Layers of OpenAI's ADM U-Net (guided-diffusion `nn.py` and `unet.py`, Dhariwal & Nichol 2021), re-implemented
with the same parameter names so the published state dicts load unchanged.

Differences that change no number beyond float rounding: attention runs through `scaled_dot_product_attention`
(no T×T weight matrix kept for the backward pass where a fused kernel exists), and gradient checkpointing is
`torch.utils.checkpoint` (non-reentrant) instead of the reference's hand-written autograd function.

Guidance needs the gradient with respect to the *input* only, through frozen weights. Then (outside autocast) a
convolution keeps nothing for its backward pass (the input gradient needs only the weight), and each
norm → scale-shift → SiLU keeps only its input and recomputes the rest, an elementwise pass, in the backward:
a residual block keeps 2 activations instead of 6, for the same numbers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


def _autocasting(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4
        return torch.is_autocast_enabled() if device_type == "cuda" else torch.is_autocast_cpu_enabled()


def lean_backward(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the frozen-weight, input-gradient-only path applies to this call."""
    return torch.is_grad_enabled() and x.requires_grad and not weight.requires_grad and \
        not _autocasting(x.device.type)


class _FrozenConv(torch.autograd.Function):
    """A convolution whose backward pass gives the input gradient only, from the (frozen) weight: no input kept."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding):  # type: ignore[override]
        ctx.shape, ctx.stride, ctx.padding, ctx.weight = x.shape, stride, padding, weight
        return (F.conv2d if x.dim() == 4 else F.conv1d)(x, weight, bias, stride, padding)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        fn = torch.nn.grad.conv2d_input if len(ctx.shape) == 4 else torch.nn.grad.conv1d_input
        return fn(ctx.shape, ctx.weight, grad, ctx.stride, ctx.padding), None, None, None, None


class Conv2d(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if lean_backward(x, self.weight):
            return _FrozenConv.apply(x, self.weight, self.bias, self.stride, self.padding)
        return super().forward(x)


class Conv1d(nn.Conv1d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if lean_backward(x, self.weight):
            return _FrozenConv.apply(x, self.weight, self.bias, self.stride, self.padding)
        return super().forward(x)


def norm_act(norm: nn.GroupNorm, x: torch.Tensor, scale: torch.Tensor | None = None,
             shift: torch.Tensor | None = None) -> torch.Tensor:
    """SiLU(norm(x)·(1 + scale) + shift); with frozen weights only `x` is kept for the backward pass."""
    if lean_backward(x, norm.weight):
        return _NormAct.apply(x, scale, shift, norm)
    return _norm_act(norm, x, scale, shift)


class _NormAct(torch.autograd.Function):
    """`_norm_act` keeping only its inputs; the backward pass recomputes the elementwise chain locally."""

    @staticmethod
    def forward(ctx, x, scale, shift, norm):  # type: ignore[override]
        ctx.norm = norm
        ctx.save_for_backward(x, scale, shift)
        return _norm_act(norm, x, scale, shift)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        saved = ctx.saved_tensors
        needs = ctx.needs_input_grad[:3]
        with torch.enable_grad():
            inputs = [t.detach().requires_grad_(n) if t is not None else None for t, n in zip(saved, needs)]
            out = _norm_act(ctx.norm, *inputs)
            wanted = [t for t, n in zip(inputs, needs) if n]
            got = iter(torch.autograd.grad(out, wanted, grad))
        return (*(next(got) if n else None for n in needs), None)


def _norm_act(norm: nn.GroupNorm, x: torch.Tensor, scale: torch.Tensor | None,
              shift: torch.Tensor | None) -> torch.Tensor:
    h = norm(x)
    if scale is not None:
        h = h * (1 + scale) + shift
    return F.silu(h)


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
            self.conv = Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if hasattr(self, "conv") else x


class Downsample(nn.Module):
    """Strided 3×3 conv (`op`) or 2×2 average pooling."""

    def __init__(self, channels: int, use_conv: bool) -> None:
        super().__init__()
        self.op: nn.Module = Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv \
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
        self.in_layers = nn.Sequential(normalization(channels), nn.SiLU(), Conv2d(channels, out, 3, padding=1))
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
                                        Conv2d(out, out, 3, padding=1))
        nn.init.zeros_(self.out_layers[-1].weight)
        nn.init.zeros_(self.out_layers[-1].bias)
        self.skip_connection: nn.Module = nn.Identity() if out == channels else Conv2d(channels, out, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = norm_act(self.in_layers[0], x)
        if self.updown:
            h, x = self.h_upd(h), self.x_upd(x)
        h = self.in_layers[2](h)
        emb_out = self.emb_layers(emb).to(h.dtype)[..., None, None]
        if self.scale_shift:
            scale, shift = emb_out.chunk(2, dim=1)
            h = norm_act(self.out_layers[0], h, scale, shift)
        else:
            h = norm_act(self.out_layers[0], h + emb_out)
        h = self.out_layers[3](self.out_layers[2](h))
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
        self.qkv = Conv1d(channels, channels * 3, 1)
        self.proj_out = Conv1d(channels, channels, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))
        length = qkv.shape[-1]
        ch = c // self.num_heads
        q, k, v = (t.contiguous() for t in qkv.reshape(b, self.num_heads, ch * 3, length).transpose(2, 3)
                   .split(ch, dim=-1))  # contiguous: the fused (flash) kernels take no other layout
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
