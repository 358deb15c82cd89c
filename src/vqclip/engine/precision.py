"""Which dtype each model computes in. `precision=auto` decides from what the device *is*, never from a timing,
so the same command on the same machine always picks the same dtypes (and the same seed the same bytes).

CUDA: bf16 compute needs the bf16 tensor-core and cuDNN conv engines of compute capability 8.0 (Ampere) and
later; `torch.cuda.is_bf16_supported()` also says yes on a T4 or V100, where bf16 is emulated (slow, or a
cuDNN error). So auto takes bf16 on capability ≥ 8.0 of the device actually used, fp16 from 5.3 (the first
with fp16 arithmetic) and fp32 below. fp16's range is small: its gradients are computed under a constant loss
scale (Adam is invariant to the scale once unscaled) and the loop skips any step whose loss or gradient is not
finite. Weights are stored in the compute dtype, norms (weights and statistics) stay fp32. `fp32` is true fp32:
TF32 is turned off for cuDNN convolutions and cuBLAS matmuls.

CPU: without native bf16 (AVX512-BF16 or AMX) bf16 is emulated and ruinous (measured on an AVX2 machine: a
128-channel 3×3 conv at 128² took 51.7 s in bf16 vs 0.30 s in fp32). With native bf16 (AVX512-BF16 or AMX)
both CLIP and the decoder compute in bf16: on AVX512-BF16 alone oneDNN's bf16 matmuls are ~2.9× faster than
fp32 but its convolutions only ~1.3×, and keeping the decoder in fp32 there bought no measured speed (the same
seconds per step within noise, interleaved runs at 480², cutn 32, real architectures) for 30% more memory
(3.55 GB vs 2.72 GB peak RSS); `scripts/bench.py precision` measures both on the machine at hand. Frozen weights are stored as
bf16 on every CPU (the upcast costs ~0.15 s a step, the saving is ~185 MiB of RSS, the rounding is invisible:
decoder PSNR 50 dB, CLIP embedding cosine 0.99999).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch

_NAMED = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_NAMES = {None: "fp32", torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
FP16_LOSS_SCALE = 1024.0  # gradients of a ~1.0 loss through the fp16 decoder stay well above fp16's 6e-8 floor


@dataclass(frozen=True)
class Precision:
    """Compute dtypes (None = fp32) for the VQGAN decoder and CLIP's image tower, the dtype the frozen
    weights of both are stored in during the steps (None = as loaded, fp32), and whether CUDA may use TF32."""

    decoder: torch.dtype | None
    clip: torch.dtype | None
    weights: torch.dtype | None = None
    tf32: bool = True

    @property
    def loss_scale(self) -> float:
        """The constant the loss is multiplied by before backward (and the gradient divided by after)."""
        return FP16_LOSS_SCALE if torch.float16 in (self.decoder, self.clip) else 1.0

    def describe(self) -> str:
        name = _NAMES.get
        text = name(self.decoder, str(self.decoder)) if self.decoder == self.clip else \
            f"decoder {name(self.decoder)}, clip {name(self.clip)}"
        if self.weights is not None and self.weights not in (self.decoder, self.clip):
            text += f", weights stored {name(self.weights)}"
        return text

    @classmethod
    def parse(cls, text: str) -> Precision:
        """The inverse of `describe()` (what a run folder records), for a continued run to use its parent's."""
        parts = [p.strip() for p in str(text).split(",") if p.strip()]
        fields: dict[str, torch.dtype | None] = {}
        for part in parts:
            words = part.split()
            key, value = (words[0], words[-1]) if len(words) > 1 else ("both", words[0])
            if value not in _NAMED or key not in ("both", "decoder", "clip", "weights"):
                raise ValueError(f"not a precision description: {text!r}")
            if key == "both":
                fields["decoder"] = fields["clip"] = _NAMED[value]
            else:
                fields[key] = _NAMED[value]
        if "decoder" not in fields or "clip" not in fields:
            raise ValueError(f"not a precision description: {text!r}")
        weights = fields.get("weights", next((d for d in (fields["decoder"], fields["clip"]) if d), None))
        return cls(fields["decoder"], fields["clip"], weights, tf32=text.strip() != "fp32")

    def apply(self, device: torch.device) -> None:
        """Set the process-wide backend flags this precision needs (TF32 on CUDA)."""
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = self.tf32
            torch.backends.cudnn.allow_tf32 = self.tf32


def choose_precision(precision: str, device: torch.device) -> Precision:
    """`precision` is auto|fp32|bf16|fp16 (RunConfig.precision). Explicit values are taken as they are (fp32
    is bit-for-bit fp32, weights included, TF32 off); reduced compute dtypes also store the weights in that
    dtype. `auto` is a pure function of the device's kind and features."""
    if precision != "auto":
        dt = _NAMED[precision]
        return Precision(dt, dt, dt, tf32=precision != "fp32")
    if device.type == "cuda":
        dt = cuda_dtype(cuda_capability(device))
        return Precision(dt, dt, dt)
    if device.type == "cpu":
        native = torch.bfloat16 if cpu_has_native_bf16() else None  # AVX512-BF16 or AMX: bf16 everywhere
        return Precision(native, native, torch.bfloat16)
    return Precision(None, None)  # MPS and others: fp32 (reduced precision there is not verified)


def cuda_capability(device: torch.device) -> tuple[int, int]:
    """Compute capability of the CUDA device this run uses (`cuda` alone means the current device)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    return int(major), int(minor)


def cuda_dtype(capability: tuple[int, int]) -> torch.dtype | None:
    if capability >= (8, 0):
        return torch.bfloat16
    if capability >= (5, 3):
        return torch.float16
    return None


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@lru_cache(maxsize=1)
def cpu_has_amx() -> bool:
    """Intel AMX tiles with bf16 (Sapphire Rapids and later), from torch where it says, else the CPU flags."""
    probe: Any = getattr(getattr(torch._C, "_cpu", None), "_is_amx_tile_supported", None)
    if probe is not None:
        try:
            return bool(probe())
        except RuntimeError:
            return False
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return any(line.startswith("flags") and " amx_bf16" in line for line in f)
    except OSError:
        return False
