"""A lean forward pass through taming's `Decoder` (same weights, same maths, less memory, less time).

Generation only ever needs the gradient with respect to the latent, never the decoder's weights, which lets
backward keep far fewer activations than autograd would:

- a convolution with a frozen weight needs only the weight to push a gradient back to its input, yet
  `F.conv2d` saves its input anyway; `frozen_conv` saves nothing;
- GroupNorm + swish saves its input and recomputes the normalisation in backward (an elementwise pass),
  instead of autograd's four tensors (norm input, norm output, sigmoid, product);
- swish is `F.silu` (one kernel) instead of taming's `x * torch.sigmoid(x)` (three).

Measured on the f16 ImageNet decoder at 256² (2 CPU cores, fp32; `scripts/bench.py`): the ResnetBlocks keep 2
tensors each instead of ~8. `checkpoint=True` (low-memory mode) additionally recomputes every block in backward
(`torch.utils.checkpoint`, use_reentrant=False), keeping only block inputs, at the cost of a second forward.
`dtype` runs the decoder in reduced precision with the norms, softmax and swish computed in fp32.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint as _checkpoint


NNPACK_MIN_PIXELS = 64 * 64
_NNPACK: list[bool] = []
# NNPACK keeps its workspace (sized by the largest convolution it ran: ~150 MiB at 256², ~300 MiB at 384²
# for the f16 decoder) for the life of the process; low-memory mode turns it off.
_USE_NNPACK = [True]


@contextlib.contextmanager
def nnpack(enabled: bool) -> Iterator[None]:
    """Allow (or forbid) NNPACK for the convolutions run inside the block, their backward included."""
    before = _USE_NNPACK[0]
    _USE_NNPACK[0] = enabled
    try:
        yield
    finally:
        _USE_NNPACK[0] = before


def _nnpack_available() -> bool:
    if not _NNPACK:
        try:
            _NNPACK.append(bool(torch.backends.nnpack.is_available()))
        except Exception:  # pragma: no cover - builds without NNPACK
            _NNPACK.append(False)
    return _NNPACK[0]


class _FrozenConv(torch.autograd.Function):
    """`F.conv2d` whose weight never needs a gradient: backward uses the weight and the input's shape only."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,  # type: ignore[override]
                padding: int) -> torch.Tensor:
        ctx.weight, ctx.padding, ctx.shape, ctx.nnpack = weight, padding, x.shape, _USE_NNPACK[0]
        return conv2d(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype), padding)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:  # type: ignore[override]
        w, p = ctx.weight.to(grad.dtype), ctx.padding
        k = w.shape[-1]
        if w.shape[-2] == k and 2 * p == k - 1:  # "same" convolution: the input gradient is a convolution too
            with nnpack(ctx.nnpack):
                gx = conv2d(grad, w.transpose(0, 1).flip(2, 3), None, p)
        else:
            gx = torch.nn.grad.conv2d_input(ctx.shape, w, grad, padding=p)
        return gx, None, None, None


def _nnpack_ok(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """NNPACK's Winograd 3×3 convolution is about 2× faster than oneDNN's direct one on AVX2 CPUs for the
    decoder's large feature maps (measured: 128 ch at 256², 0.115 s vs 0.245 s); oneDNN wins on small maps."""
    return (_USE_NNPACK[0] and x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and weight.shape[-1] == 3 and weight.shape[-2] == 3 and x.shape[-1] * x.shape[-2] >= NNPACK_MIN_PIXELS
            and _nnpack_available())


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int) -> torch.Tensor:
    """Stride-1 convolution through the fastest backend for this tensor."""
    if _nnpack_ok(x, weight):
        return torch._nnpack_spatial_convolution(x.contiguous(), weight.contiguous(), bias, [padding, padding])
    return F.conv2d(x, weight, bias, 1, padding)


class _NormSwish(torch.autograd.Function):
    """`silu(group_norm(x))` in fp32, saving only `x`; backward recomputes the (cheap) forward locally."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, groups: int, weight: torch.Tensor,  # type: ignore[override]
                bias: torch.Tensor, eps: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.groups, ctx.weight, ctx.bias, ctx.eps = groups, weight, bias, eps
        return _norm_swish(x, groups, weight, bias, eps).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None, None]:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        with torch.enable_grad():  # the norm again (silu's backward needs its input, not its output)
            xf = x.detach().float().requires_grad_(True)
            y = F.group_norm(xf, ctx.groups, ctx.weight.float(), ctx.bias.float(), ctx.eps)
        gy = torch.ops.aten.silu_backward(grad.float(), y.detach())
        (gx,) = torch.autograd.grad(y, xf, gy)
        return gx.to(x.dtype), None, None, None, None


def _norm_swish(x: torch.Tensor, groups: int, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    y = F.group_norm(x.float(), groups, weight.float(), bias.float(), eps)
    return F.silu(y, inplace=not y.requires_grad)  # in place: the norm's output is a fresh tensor


def frozen_conv(conv: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A stride-1 conv of a frozen module in `x.dtype` (weights stored in another dtype are cast on the fly)."""
    if not torch.is_grad_enabled() or not x.requires_grad:
        bias = None if conv.bias is None else conv.bias.to(x.dtype)
        return conv2d(x, conv.weight.to(x.dtype), bias, conv.padding[0])
    return _FrozenConv.apply(x, conv.weight, conv.bias, conv.padding[0])


def norm_swish(norm: torch.nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    if not torch.is_grad_enabled() or not x.requires_grad:
        return _norm_swish(x, norm.num_groups, norm.weight, norm.bias, norm.eps).to(x.dtype)
    return _NormSwish.apply(x, norm.num_groups, norm.weight, norm.bias, norm.eps)


def resnet_block(block: Any, x: torch.Tensor) -> torch.Tensor:
    """taming `ResnetBlock.forward(x, temb=None)`; dropout is 0 in every published VQGAN and we run in eval."""
    h = frozen_conv(block.conv1, norm_swish(block.norm1, x))
    h = frozen_conv(block.conv2, norm_swish(block.norm2, h))
    if block.in_channels != block.out_channels:
        shortcut = block.conv_shortcut if block.use_conv_shortcut else block.nin_shortcut
        x = frozen_conv(shortcut, x)
    return x + h


def attn_block(block: Any, x: torch.Tensor) -> torch.Tensor:
    """taming `AttnBlock.forward` (single-head attention over the lowest-resolution grid; small)."""
    h = F.group_norm(x.float(), block.norm.num_groups, block.norm.weight.float(), block.norm.bias.float(),
                     block.norm.eps).to(x.dtype)
    q, k, v = frozen_conv(block.q, h), frozen_conv(block.k, h), frozen_conv(block.v, h)
    b, c, hh, ww = q.shape
    q = q.reshape(b, c, hh * ww).permute(0, 2, 1)
    k = k.reshape(b, c, hh * ww)
    if q.dtype == torch.float16:  # q·k over 512 channels can pass fp16's 65504: scores in fp32 (a small bmm)
        q, k = q.float(), k.float()
    w = torch.softmax(torch.bmm(q, k).float() * (int(c) ** -0.5), dim=2).to(x.dtype)
    h = torch.bmm(v.reshape(b, c, hh * ww), w.permute(0, 2, 1)).reshape(b, c, hh, ww)
    return x + frozen_conv(block.proj_out, h)


def upsample(block: Any, x: torch.Tensor) -> torch.Tensor:
    x = F.interpolate(x, scale_factor=2.0, mode="nearest")
    return frozen_conv(block.conv, x) if block.with_conv else x


def _maybe_checkpoint(fn: Callable[[Any, torch.Tensor], torch.Tensor], block: Any, x: torch.Tensor,
                      enabled: bool) -> torch.Tensor:
    if enabled and torch.is_grad_enabled() and x.requires_grad:
        allow = _USE_NNPACK[0]  # the recomputation in backward runs under the same NNPACK setting
        return _checkpoint(fn, block, x, use_reentrant=False, context_fn=lambda: (nnpack(allow), nnpack(allow)))
    return fn(block, x)


def stages(decoder: Any) -> list[tuple[Callable[[Any, torch.Tensor], torch.Tensor], Any]]:
    """The decoder's blocks between `conv_in` and `norm_out`, in forward order, as (function, module) pairs:
    the units that low-memory mode checkpoints (and that `vqclip.pipeline.memory` traces)."""
    out: list[tuple[Callable[[Any, torch.Tensor], torch.Tensor], Any]] = [
        (resnet_block, decoder.mid.block_1), (attn_block, decoder.mid.attn_1), (resnet_block, decoder.mid.block_2)]
    for i_level in reversed(range(decoder.num_resolutions)):
        up = decoder.up[i_level]
        for i_block in range(decoder.num_res_blocks + 1):
            out.append((resnet_block, up.block[i_block]))
            if len(up.attn) > 0:
                out.append((attn_block, up.attn[i_block]))
        if i_level != 0:
            out.append((upsample, up.upsample))
    return out


def lean_supported(decoder: Any) -> bool:
    """True for taming's plain Decoder (every published VQGAN); other variants run taming's own forward."""
    if getattr(decoder, "give_pre_end", False) or getattr(decoder, "tanh_out", False) \
            or getattr(decoder, "temb_ch", 0) or type(decoder).__name__ != "Decoder":
        return False
    try:
        parts = stages(decoder)
    except AttributeError:
        return False
    kinds = {resnet_block: "ResnetBlock", attn_block: "AttnBlock", upsample: "Upsample"}
    return all(type(m).__name__ == kinds[fn] for fn, m in parts) and all(
        getattr(m, "dropout", None) is None or m.dropout.p == 0 or not m.training for _, m in parts)


def decode(decoder: Any, h: torch.Tensor, *, checkpoint: bool = False) -> torch.Tensor:
    """taming `Decoder.forward(z)` with the lean blocks above (`h` is the post-quant-conv latent), in `h.dtype`.
    `checkpoint` (low-memory mode) recomputes each block in backward and keeps NNPACK's workspace away."""
    if not lean_supported(decoder):
        return decoder(h)
    with nnpack(not checkpoint):
        h = frozen_conv(decoder.conv_in, h)
        for fn, block in stages(decoder):
            h = _maybe_checkpoint(fn, block, h, checkpoint)
        h = norm_swish(decoder.norm_out, h)
        return frozen_conv(decoder.conv_out, h)
