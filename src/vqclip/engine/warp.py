"""The camera move between animation frames: zoom about the centre, rotate, translate — one affine warp with
`grid_sample` on the image's device.

Output pixel p (pixel units, origin at the image centre, y down) samples the input at q = R(-angle)(p - t) / zoom,
so the content grows by `zoom`, turns by `angle` degrees counter-clockwise on screen, and moves by (tx, ty) pixels
(right, down). Borders: `wrap` (the image tiles, exact at the seams), `reflect` (mirrored), `smear` (the edge
pixels stretch outwards) or `black`. With integer shifts and quarter turns every sample lands on a pixel centre,
so those warps are exact (a wrap shift is `torch.roll`, a 90° turn of a square image is `torch.rot90`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

BORDERS = ("wrap", "reflect", "smear", "black")
_PADDING = {"reflect": "reflection", "smear": "border", "black": "zeros"}


def sample_points(height: int, width: int, zoom: float, angle: float, tx: float, ty: float,
                  device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Where each output pixel samples the input, in input pixel coordinates (x, y), each [H, W]."""
    ys = torch.arange(height, device=device, dtype=torch.float64) + 0.5 - height / 2
    xs = torch.arange(width, device=device, dtype=torch.float64) + 0.5 - width / 2
    py, px = torch.meshgrid(ys - ty, xs - tx, indexing="ij")
    rad = math.radians(angle)
    c, s = math.cos(rad), math.sin(rad)
    if abs(c) < 1e-12:
        c = 0.0
    if abs(s) < 1e-12:
        s = 0.0
    # counter-clockwise on screen (y points down): undo it by turning the sample point the other way
    qx = (c * px - s * py) / zoom
    qy = (s * px + c * py) / zoom
    return qx + width / 2 - 0.5, qy + height / 2 - 0.5


def warp(image: torch.Tensor, zoom: float = 1.0, angle: float = 0.0, tx: float = 0.0, ty: float = 0.0,
         border: str = "wrap") -> torch.Tensor:
    """`image` [N, C, H, W] moved by one frame's affine (bilinear), on its own device and dtype."""
    if border not in BORDERS:
        raise ValueError(f"border {border!r}: use one of {', '.join(BORDERS)}")
    if zoom <= 0 or not math.isfinite(zoom):
        raise ValueError(f"zoom {zoom!r} must be a positive number")
    if zoom == 1.0 and angle % 360 == 0 and tx == 0 and ty == 0:
        return image.clone()
    n, _, h, w = image.shape
    qx, qy = sample_points(h, w, zoom, angle, tx, ty, image.device)
    src = image
    if border == "wrap":
        qx, qy = torch.remainder(qx, w), torch.remainder(qy, h)
        src = F.pad(image, (1, 1, 1, 1), mode="circular")  # so bilinear reads across the seam
        qx, qy, h, w = qx + 1, qy + 1, h + 2, w + 2
    grid = torch.stack(((2 * qx + 1) / w - 1, (2 * qy + 1) / h - 1), dim=-1)
    grid = grid.to(image.dtype if image.dtype.is_floating_point else torch.float32)[None].expand(n, -1, -1, -1)
    return F.grid_sample(src, grid, mode="bilinear", padding_mode=_PADDING.get(border, "border"),
                         align_corners=False)
