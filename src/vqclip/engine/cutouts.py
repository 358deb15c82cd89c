"""Random cutouts with augmentations, made in one batched sampling pass.

The notebook (Crowson 2021) cuts `cutn` squares of side `int(rand()**cut_pow * (min(H,W) - s0) + s0)`,
`s0 = min(H, W, cut_size)`, resizes each in a Python loop, then runs Kornia augmentations (flip p0.5, affine
30°/0.1 p0.8, perspective 0.2 p0.4, colour jitter hue/sat 0.01 p0.7, sharpness 0.3 p0.4) and adds
`U(0, noise_fac)·randn` noise. Here crop, resize, flip, affine and perspective are one projective map per cutout,
so all cutouts come from a single `grid_sample` per mip level (the mip levels stop bilinear sampling from
aliasing when a large crop is shrunk to CLIP's input size). Colour and sharpness are per-cutout 3×3 operations.
Every random number comes from the generators passed in, so a run resumes exactly from saved RNG states.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LUMA = (0.299, 0.587, 0.114)


class Cutouts:
    def __init__(self, cut_size: int, cutn: int, cut_pow: float = 1.0, augment: bool = True,
                 noise_fac: float = 0.1) -> None:
        self.cut_size = cut_size
        self.cutn = cutn
        self.cut_pow = cut_pow
        self.augment = augment
        self.noise_fac = noise_fac

    # -- parameters (all drawn on the CPU generator, in a fixed order) ------------------------------------
    def _boxes(self, h: int, w: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        max_size = min(h, w)
        min_size = min(h, w, self.cut_size)
        r = torch.rand(self.cutn, generator=gen, dtype=torch.float64)
        sizes = (r.pow(self.cut_pow) * (max_size - min_size) + min_size).long()
        ox = (torch.rand(self.cutn, generator=gen, dtype=torch.float64) * (w - sizes + 1)).long()
        oy = (torch.rand(self.cutn, generator=gen, dtype=torch.float64) * (h - sizes + 1)).long()
        return sizes, ox, oy

    def _geometry(self, gen: torch.Generator) -> torch.Tensor:
        """Per-cutout 3×3 map from output coords to augmented coords (flip ∘ affine ∘ perspective)."""
        n = self.cutn
        eye = torch.eye(3, dtype=torch.float64).expand(n, 3, 3).clone()
        if not self.augment:
            return eye
        flip = eye.clone()
        flip[:, 0, 0] = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0).double()
        apply = torch.rand(n, generator=gen) < 0.8
        theta = (torch.rand(n, generator=gen, dtype=torch.float64) * 2 - 1) * math.radians(30)
        shift = (torch.rand(n, 2, generator=gen, dtype=torch.float64) * 2 - 1) * 0.1 * 2  # 0.1 of the side
        affine = eye.clone()
        affine[:, 0, 0] = theta.cos()
        affine[:, 0, 1] = -theta.sin()
        affine[:, 1, 0] = theta.sin()
        affine[:, 1, 1] = theta.cos()
        affine[:, :2, 2] = shift
        affine[~apply] = torch.eye(3, dtype=torch.float64)
        persp = self._perspective(gen)
        return persp @ affine @ flip

    def _perspective(self, gen: torch.Generator) -> torch.Tensor:
        n = self.cutn
        apply = torch.rand(n, generator=gen) < 0.4
        src = torch.tensor([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=torch.float64)
        inward = -src  # each corner moves towards the centre by up to 0.2 of the half side
        dst = src + inward * torch.rand(n, 4, 2, generator=gen, dtype=torch.float64) * 0.2
        dst[~apply] = src
        return homography(src.expand(n, 4, 2), dst)

    def _colour(self, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.cutn
        eye = torch.eye(3, dtype=torch.float64).expand(n, 3, 3).clone()
        if not self.augment:
            return eye, torch.zeros(n, dtype=torch.float64)
        apply = torch.rand(n, generator=gen) < 0.7
        sat = 1 + (torch.rand(n, generator=gen, dtype=torch.float64) * 2 - 1) * 0.01
        hue = (torch.rand(n, generator=gen, dtype=torch.float64) * 2 - 1) * 0.01 * 2 * math.pi
        luma = torch.tensor(LUMA, dtype=torch.float64)
        s_mat = sat.view(n, 1, 1) * eye + (1 - sat).view(n, 1, 1) * torch.ones(3, 1, dtype=torch.float64) @ luma[None]
        k = torch.ones(3, dtype=torch.float64) / math.sqrt(3)
        kx = torch.tensor([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]], dtype=torch.float64)
        c, s = hue.cos().view(n, 1, 1), hue.sin().view(n, 1, 1)
        rot = c * eye + s * kx + (1 - c) * torch.outer(k, k)
        colour = rot @ s_mat
        colour[~apply] = torch.eye(3, dtype=torch.float64)
        sharp_on = torch.rand(n, generator=gen) < 0.4
        sharp = torch.rand(n, generator=gen, dtype=torch.float64) * 0.3 * sharp_on
        return colour, sharp

    # -- the batched pass --------------------------------------------------------------------------------
    def __call__(self, img: torch.Tensor, gen: torch.Generator, noise_gen: torch.Generator | None = None
                 ) -> torch.Tensor:
        """`img` [1, 3, H, W] in [0, 1] → `[cutn, 3, cut_size, cut_size]` (not yet CLIP-normalised)."""
        _, _, h, w = img.shape
        cs = self.cut_size
        sizes, ox, oy = self._boxes(h, w, gen)
        geom = self._geometry(gen)
        colour, sharp = self._colour(gen)
        facs = torch.rand(self.cutn, generator=gen, dtype=torch.float64) * self.noise_fac

        # output pixel centres in [-1, 1] (align_corners=False), mapped through each cutout's projective map
        lin = (torch.arange(cs, dtype=torch.float64) * 2 + 1) / cs - 1
        gy, gx = torch.meshgrid(lin, lin, indexing="ij")
        pts = torch.stack([gx, gy, torch.ones_like(gx)], -1).view(1, -1, 3)  # [1, cs*cs, 3]
        mapped = pts @ geom.transpose(1, 2)  # [n, cs*cs, 3]
        uv = mapped[..., :2] / mapped[..., 2:].clamp_min(1e-6)
        # from cutout coords to image coords: centre of the box plus half its extent
        cx = (2 * ox + sizes).double() / w - 1
        cy = (2 * oy + sizes).double() / h - 1
        half = torch.stack([sizes.double() / w, sizes.double() / h], -1)  # [n, 2]
        grid = uv * half[:, None, :] + torch.stack([cx, cy], -1)[:, None, :]
        grid = grid.view(self.cutn, cs, cs, 2).to(device=img.device, dtype=img.dtype)

        out = torch.empty(self.cutn, 3, cs, cs, device=img.device, dtype=img.dtype)
        levels = mip_levels(img, cs)
        level_of = (sizes.double() / cs).log2().floor().clamp(0, len(levels) - 1).long()
        for k, level in enumerate(levels):
            idx = (level_of == k).nonzero().flatten()
            if idx.numel() == 0:
                continue
            g = grid[idx.to(img.device)].reshape(1, idx.numel() * cs, cs, 2)  # cutouts stacked vertically
            s = F.grid_sample(level, g, mode="bilinear", padding_mode="border", align_corners=False)
            out[idx.to(img.device)] = s.view(3, idx.numel(), cs, cs).transpose(0, 1)

        if self.augment:
            out = torch.einsum("nij,njhw->nihw", colour.to(out), out)
            out = sharpen(out, sharp.to(out))
            out = out.clamp(0, 1)
        if self.noise_fac:
            g = noise_gen if noise_gen is not None else gen
            noise = torch.randn(out.shape, generator=g, device=g.device, dtype=out.dtype).to(out.device)
            out = out + facs.to(out).view(-1, 1, 1, 1) * noise
        return out


def mip_levels(img: torch.Tensor, cut_size: int) -> list[torch.Tensor]:
    """The image and its 2×-average-pooled copies while they stay at least `cut_size` on the short side."""
    levels = [img]
    while min(levels[-1].shape[-2:]) // 2 >= cut_size:
        levels.append(F.avg_pool2d(levels[-1], 2, ceil_mode=True))
    return levels


def sharpen(x: torch.Tensor, amount: torch.Tensor) -> torch.Tensor:
    """`x + amount·(x − blur(x))` with PIL's 3×3 smoothing kernel, per-cutout amount."""
    k = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]], device=x.device, dtype=x.dtype) / 13
    blur = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k.expand(3, 1, 3, 3), groups=3)
    return x + amount.view(-1, 1, 1, 1) * (x - blur)


def homography(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Batched 3×3 homographies H with H·src_i ∝ dst_i for 4 point pairs (direct linear transform)."""
    n = src.shape[0]
    x, y = src[..., 0], src[..., 1]
    u, v = dst[..., 0], dst[..., 1]
    zeros, ones = torch.zeros_like(x), torch.ones_like(x)
    rows_u = torch.stack([x, y, ones, zeros, zeros, zeros, -u * x, -u * y], -1)
    rows_v = torch.stack([zeros, zeros, zeros, x, y, ones, -v * x, -v * y], -1)
    a = torch.cat([rows_u, rows_v], 1)  # [n, 8, 8]
    b = torch.cat([u, v], 1)  # [n, 8]
    h = torch.linalg.solve(a, b)
    return torch.cat([h, torch.ones(n, 1, dtype=h.dtype)], 1).view(n, 3, 3)
