"""Small autograd tricks from the VQGAN-CLIP notebook (Katherine Crowson, 2021), and frozen-weight storage."""

from __future__ import annotations

from typing import Any

import torch


class _ReplaceGrad(torch.autograd.Function):
    """Forward `x_forward`, backward into `x_backward` (straight-through estimator)."""

    @staticmethod
    def forward(ctx: Any, x_forward: torch.Tensor, x_backward: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.shape = x_backward.shape
        return x_forward

    @staticmethod
    def backward(ctx: Any, grad_in: torch.Tensor) -> tuple[None, torch.Tensor]:  # type: ignore[override]
        return None, grad_in.sum_to_size(ctx.shape)


class _ClampWithGrad(torch.autograd.Function):
    """Clamp, but let the gradient through where it pushes values back inside [min, max]."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:  # type: ignore[override]
        ctx.lo, ctx.hi = lo, hi
        ctx.save_for_backward(x)
        return x.clamp(lo, hi)

    @staticmethod
    def backward(ctx: Any, grad_in: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad_in * (grad_in * (x - x.clamp(ctx.lo, ctx.hi)) >= 0), None, None


def replace_grad(x_forward: torch.Tensor, x_backward: torch.Tensor) -> torch.Tensor:
    return _ReplaceGrad.apply(x_forward, x_backward)


def clamp_with_grad(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    return _ClampWithGrad.apply(x, lo, hi)


_NORMS = (torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.BatchNorm2d, torch.nn.InstanceNorm2d)


def store_frozen_weights(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """Store every parameter of `module` in `dtype` except those of normalisation layers: their weights and
    statistics stay fp32 (they are tiny, and rounding a norm's scale to fp16 shifts every activation after it)."""
    for m in module.modules():
        if isinstance(m, _NORMS) or "Norm" in type(m).__name__:
            continue
        for name, p in m.named_parameters(recurse=False):
            p.data = p.data.to(dtype)
