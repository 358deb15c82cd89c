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
from functools import lru_cache

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
        """`img` [1, 3, H, W] in [0, 1] → `[cutn, 3, cut_size, cut_size]` (not yet CLIP-normalised).

        The few random numbers per cutout are drawn on the host (so a saved CPU generator state resumes
        exactly), packed into one tensor and sent to the device in a single non-blocking copy; the sampling
        grids (cutn × cut_size² points) are then built on the device. Cutouts come out grouped by mip level."""
        _, _, h, w = img.shape
        cs, n = self.cut_size, self.cutn
        sizes, ox, oy = self._boxes(h, w, gen)
        geom = self._geometry(gen)
        colour, sharp = self._colour(gen)
        facs = torch.rand(n, generator=gen, dtype=torch.float64) * self.noise_fac

        levels = mip_levels(img, cs)
        level_of = (sizes.double() / cs).log2().floor().clamp(0, len(levels) - 1).long()
        order = torch.sort(level_of, stable=True).indices
        counts = torch.bincount(level_of, minlength=len(levels)).tolist()
        # from cutout coords to image coords: centre of the box plus half its extent
        centre = torch.stack([(2 * ox + sizes).double() / w - 1, (2 * oy + sizes).double() / h - 1], -1)
        half = torch.stack([sizes.double() / w, sizes.double() / h], -1)
        packed = torch.cat([geom.reshape(n, 9), half, centre, colour.reshape(n, 9), sharp[:, None],
                            facs[:, None]], 1)[order]
        geom_d, half_d, centre_d, colour_d, sharp_d, facs_d = _to_device(packed, img.device).split(
            [9, 2, 2, 9, 1, 1], 1)

        # output pixel centres in [-1, 1] (align_corners=False), mapped through each cutout's projective map
        pts = _pixel_centres(cs, packed.device if img.device.type == "cpu" else img.device, geom_d.dtype)
        mapped = pts @ geom_d.reshape(n, 3, 3).transpose(1, 2)  # [n, cs*cs, 3]
        uv = mapped[..., :2] / mapped[..., 2:].clamp_min(1e-6)
        grid = (uv * half_d[:, None, :] + centre_d[:, None, :]).view(n, cs, cs, 2).to(img.dtype)

        parts, start = [], 0
        for level, count in zip(levels, counts):
            if count:
                g = grid[start:start + count].reshape(1, count * cs, cs, 2)  # cutouts stacked vertically
                parts.append(sample_border(level, g).view(3, count, cs, cs).transpose(0, 1))
                start += count
        out = torch.cat(parts, 0) if len(parts) > 1 else parts[0].contiguous()

        if self.augment:
            out = torch.einsum("nij,njhw->nihw", colour_d.reshape(n, 3, 3).to(out.dtype), out)
            out = sharpen(out, sharp_d.reshape(n).to(out.dtype))
            out = out.clamp(0, 1)
        if self.noise_fac:
            g = noise_gen if noise_gen is not None else gen
            noise = torch.randn(out.shape, generator=g, device=g.device, dtype=out.dtype)
            if noise.device != out.device:
                noise = noise.to(out.device)
            out = out + facs_d.to(out.dtype).view(-1, 1, 1, 1) * noise
        return out


def _to_device(packed: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The float64 host parameters as they are on the CPU; elsewhere float32 (MPS has no float64) through
    pinned memory, so the copy is queued behind the GPU's work instead of waiting for it."""
    if device.type == "cpu":
        return packed
    host = packed.float()
    if device.type == "cuda":
        host = host.pin_memory()
    return host.to(device, non_blocking=True)


_CENTRES: dict[tuple[int, torch.device, torch.dtype], torch.Tensor] = {}


def _pixel_centres(cs: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Homogeneous pixel-centre coordinates `[1, cs*cs, 3]` of a cutout, made once per device and dtype."""
    key = (cs, device, dtype)
    if key not in _CENTRES:
        lin = (torch.arange(cs, dtype=torch.float64) * 2 + 1) / cs - 1
        gy, gx = torch.meshgrid(lin, lin, indexing="ij")
        _CENTRES[key] = torch.stack([gx, gy, torch.ones_like(gx)], -1).view(1, -1, 3).to(device, dtype)
    return _CENTRES[key]


def sample_border(img: torch.Tensor, grid: torch.Tensor, clamp: bool | None = None) -> torch.Tensor:
    """`grid_sample(bilinear, padding_mode="border", align_corners=False)`. Border padding and its backward
    are missing on MPS in several torch releases; there (or with `clamp=True`) the same result comes from
    clamping the grid to the outermost pixel centres and sampling with zero padding, which reads no pixel
    outside the image."""
    if clamp is None:
        clamp = img.device.type == "mps"
    if not clamp:
        return F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=False)
    h, w = img.shape[-2:]
    lo = torch.tensor([-1 + 1 / w, -1 + 1 / h], dtype=grid.dtype).to(grid.device)
    grid = torch.maximum(torch.minimum(grid, -lo), lo)
    return F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def mip_levels(img: torch.Tensor, cut_size: int) -> list[torch.Tensor]:
    """The image and its 2×-average-pooled copies while they stay at least `cut_size` on the short side."""
    levels = [img]
    while min(levels[-1].shape[-2:]) // 2 >= cut_size:
        levels.append(F.avg_pool2d(levels[-1], 2, ceil_mode=True))
    return levels


def sharpen(x: torch.Tensor, amount: torch.Tensor) -> torch.Tensor:
    """`x + amount·(x − blur(x))` with PIL's 3×3 smoothing kernel, per-cutout amount."""
    k = _sharpen_kernel(x.device, x.dtype)
    blur = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k, groups=3)
    return x + amount.view(-1, 1, 1, 1) * (x - blur)


@lru_cache(maxsize=8)
def _sharpen_kernel(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    k = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]], dtype=dtype) / 13
    return k.expand(3, 1, 3, 3).contiguous().to(device)


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
