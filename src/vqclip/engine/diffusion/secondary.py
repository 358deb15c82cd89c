"""Katherine Crowson's secondary model `SecondaryDiffusionImageNet2` (v-diffusion, as shipped in Disco Diffusion
5.x: `secondary_model_imagenet_2.pth`): a small U-Net trained with the v objective on the cosine schedule that
predicts the clean image from (x_t, t) cheaply, so CLIP guidance can differentiate through it instead of the big
ADM U-Net ("use_secondary_model"). Same module tree and parameter names as the published file.

Its time is the cosine-schedule t in [0, 1]: a step of the ADM process with signal level alpha = √ᾱ and noise
level sigma = √(1−ᾱ) maps to t = atan2(sigma, alpha)·2/π.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def alpha_sigma_to_t(alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return torch.atan2(sigma, alpha) * 2 / math.pi


def t_to_alpha_sigma(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.cos(t * math.pi / 2), torch.sin(t * math.pi / 2)


@dataclass
class SecondaryOutput:
    v: torch.Tensor
    pred: torch.Tensor  # the predicted clean image
    eps: torch.Tensor


class ConvBlock(nn.Sequential):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(inplace=True))


class SkipBlock(nn.Module):
    def __init__(self, main: list[nn.Module]) -> None:
        super().__init__()
        self.main = nn.Sequential(*main)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.main(x), x], dim=1)


class FourierFeatures(nn.Module):
    def __init__(self, in_features: int, out_features: int, std: float = 1.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features // 2, in_features) * std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = 2 * math.pi * x @ self.weight.T
        return torch.cat([f.cos(), f.sin()], dim=-1)


class _Down(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 2)


class _Up(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class SecondaryDiffusionImageNet2(nn.Module):
    """`forward(x, t)`: x [N, 3, H, W] (sides multiples of 32), t [N] cosine-schedule times → SecondaryOutput.
    `c` is the base width (64 in the published model; tests build smaller ones in the same layout)."""

    def __init__(self, c: int = 64) -> None:
        super().__init__()
        cs = [c, c * 2, c * 2, c * 4, c * 4, c * 8]
        self.timestep_embed = FourierFeatures(1, 16)
        down, up = _Down(), _Up()

        def level(k: int, inner: list[nn.Module]) -> SkipBlock:
            """Level k+1 of the U: down, two convs, the inner level, two convs back, up."""
            return SkipBlock([down, ConvBlock(cs[k], cs[k + 1]), ConvBlock(cs[k + 1], cs[k + 1]), *inner,
                              ConvBlock(cs[k + 1] * 2, cs[k + 1]), ConvBlock(cs[k + 1], cs[k]), up])

        bottom = SkipBlock([down, ConvBlock(cs[4], cs[5]), ConvBlock(cs[5], cs[5]), ConvBlock(cs[5], cs[5]),
                            ConvBlock(cs[5], cs[4]), up])
        inner = level(3, [bottom])
        inner = level(2, [inner])
        inner = level(1, [inner])
        inner = level(0, [inner])
        self.net = nn.Sequential(ConvBlock(3 + 16, cs[0]), ConvBlock(cs[0], cs[0]), inner,
                                 ConvBlock(cs[0] * 2, cs[0]), nn.Conv2d(cs[0], 3, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> SecondaryOutput:
        if x.shape[-1] % 32 or x.shape[-2] % 32:
            raise ValueError(f"image sides must be multiples of 32, got {tuple(x.shape[-2:])}")
        emb = self.timestep_embed(t[:, None].to(x.dtype))
        emb = emb[..., None, None].expand(-1, -1, *x.shape[2:])
        v = self.net(torch.cat([x, emb], dim=1))
        alphas, sigmas = (a.view(-1, 1, 1, 1) for a in t_to_alpha_sigma(t.to(v.dtype)))
        return SecondaryOutput(v=v, pred=x * alphas - v * sigmas, eps=x * sigmas + v * alphas)
