"""Which dtype each model computes in: `precision=auto` picks per module what is faster on this device.

On CUDA, bf16 compute (fp16 where bf16 is missing) for the decoder and CLIP, weights stored in that dtype:
tensor cores make both faster and halve weight and activation memory (norms, softmax and swish stay fp32). On the CPU it depends on the chip: with native bf16 (AVX512-BF16, AMX)
bf16 convolutions and matmuls can beat fp32, without it they are emulated. Measured on the 2-core AVX2 build
machine (no native bf16): a 128-channel 3×3 conv at 128² took 51.7 s in bf16 vs 0.30 s in fp32, a
1600×768×3072 matmul 28 s vs 0.74 s. So on the CPU `auto` keeps fp32 unless the CPU reports native bf16, and
even then times a small probe per module (a decoder-like conv, a CLIP-like matmul) and keeps bf16 only for the
module where it is clearly faster.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache

import torch

_NAMED = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
PROBE_MARGIN = 1.25  # bf16 must be this much faster than fp32 in the probe to be chosen


@dataclass(frozen=True)
class Precision:
    """Compute dtypes (None = fp32) for the VQGAN decoder and CLIP's image tower, and the dtype the frozen
    weights of both are stored in during the steps (None = as loaded, fp32)."""

    decoder: torch.dtype | None
    clip: torch.dtype | None
    weights: torch.dtype | None = None

    def describe(self) -> str:
        name = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
        text = name.get(self.decoder, str(self.decoder)) if self.decoder == self.clip else \
            f"decoder {name.get(self.decoder)}, clip {name.get(self.clip)}"
        if self.weights is not None and self.weights not in (self.decoder, self.clip):
            text += f", weights stored {name.get(self.weights)}"
        return text


def choose_precision(precision: str, device: torch.device) -> Precision:
    """`precision` is auto|fp32|bf16|fp16 (RunConfig.precision). Explicit values are taken as they are (fp32
    is bit-for-bit fp32, weights included); reduced compute dtypes also store the weights in that dtype."""
    if precision != "auto":
        dt = _NAMED[precision]
        return Precision(dt, dt, dt)
    if device.type == "cuda":
        dt = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return Precision(dt, dt, dt)
    if device.type == "cpu":
        dec, clip = None, None
        if cpu_has_native_bf16():
            conv_fast, mm_fast = _cpu_bf16_probe()
            dec, clip = (torch.bfloat16 if conv_fast else None), (torch.bfloat16 if mm_fast else None)
        # Frozen weights stored as bf16, computed in fp32: widening bf16 is a bit shift (0.5 ns per weight
        # here, ~0.15 s a step for both models), it saves ~185 MiB of RSS at ViT-B/32 + f16 decoder, and the
        # rounding is invisible (decoder PSNR 50 dB, CLIP embedding cosine 0.99999 vs fp32 weights).
        return Precision(dec, clip, torch.bfloat16)
    return Precision(None, None)


def cpu_has_native_bf16() -> bool:
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@lru_cache(maxsize=1)
def _cpu_bf16_probe() -> tuple[bool, bool]:
    """Time a small conv (decoder-like) and matmul (CLIP-like) forward+input-gradient in fp32 and bf16."""
    def timed(fn: object, dtype: torch.dtype) -> float:
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            fn(dtype)  # type: ignore[operator]
            best = min(best, time.perf_counter() - t)
        return best

    def conv(dtype: torch.dtype) -> None:
        x = torch.randn(1, 64, 64, 64, dtype=dtype, requires_grad=True)
        w = torch.randn(64, 64, 3, 3, dtype=dtype)
        torch.nn.functional.conv2d(x, w, padding=1).sum().backward()

    def matmul(dtype: torch.dtype) -> None:
        x = torch.randn(256, 768, dtype=dtype, requires_grad=True)
        w = torch.randn(768, 768, dtype=dtype)
        (x @ w).sum().backward()

    return (timed(conv, torch.float32) > PROBE_MARGIN * timed(conv, torch.bfloat16),
            timed(matmul, torch.float32) > PROBE_MARGIN * timed(matmul, torch.bfloat16))
