"""Precision per device, decided the same way every time: CUDA capability (mocked), CPU features (forced)."""

from __future__ import annotations

import pytest
import torch

from vqclip.engine import precision as P
from vqclip.engine.ops import store_frozen_weights
from vqclip.engine.precision import Precision, choose_precision

BF16, FP16 = torch.bfloat16, torch.float16


@pytest.fixture
def cuda_caps(monkeypatch: pytest.MonkeyPatch):
    """Pretend to have CUDA devices with the given compute capabilities, by index."""
    caps: dict[int, tuple[int, int]] = {}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=None: caps[0 if i is None else i])
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # what emulating cards say
    return caps


@pytest.mark.parametrize("cap, dtype, scale", [
    ((3, 7), None, 1.0),        # K80: no fp16 arithmetic
    ((5, 2), None, 1.0),
    ((6, 0), FP16, 1024.0),     # P100
    ((7, 0), FP16, 1024.0),     # V100: bf16 "supported" but emulated
    ((7, 5), FP16, 1024.0),     # T4, RTX 20xx
    ((8, 0), BF16, 1.0),        # A100
    ((8, 6), BF16, 1.0),        # RTX 30xx
    ((8, 9), BF16, 1.0),        # RTX 40xx
    ((9, 0), BF16, 1.0),        # H100/H200
])
def test_cuda_auto_follows_the_capability(cuda_caps, cap, dtype, scale):
    cuda_caps[0] = cap
    p = choose_precision("auto", torch.device("cuda"))
    assert (p.decoder, p.clip, p.weights) == (dtype, dtype, dtype)
    assert p.loss_scale == scale


def test_cuda_auto_asks_the_device_actually_used(cuda_caps):
    cuda_caps.update({0: (7, 5), 1: (8, 6)})
    assert choose_precision("auto", torch.device("cuda:1")).decoder == BF16
    assert choose_precision("auto", torch.device("cuda:0")).decoder == FP16
    assert choose_precision("auto", torch.device("cuda")).decoder == FP16  # the current device (0)


@pytest.mark.parametrize("native, amx, want", [
    (False, False, (None, None)),
    (False, True, (None, None)),   # AMX flag without oneDNN bf16 support: still emulated
    (True, False, (BF16, BF16)),   # AVX512-BF16: bf16 everywhere (-23% RSS, same speed as an fp32 decoder)
    (True, True, (BF16, BF16)),    # AMX
])
def test_cpu_auto_is_a_function_of_the_features(monkeypatch, native, amx, want):
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: native)
    monkeypatch.setattr(P, "cpu_has_amx", lambda: amx)
    got = {choose_precision("auto", torch.device("cpu")) for _ in range(5)}  # the same every time
    assert len(got) == 1
    [p] = got
    assert (p.decoder, p.clip, p.weights) == (*want, BF16)


def test_auto_never_times_anything(monkeypatch):
    import time

    def boom() -> float:
        raise AssertionError("auto must not depend on a timing")

    monkeypatch.setattr(time, "perf_counter", boom)
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: True)
    choose_precision("auto", torch.device("cpu"))


@pytest.mark.parametrize("name, dtype, tf32", [("fp32", None, False), ("bf16", BF16, True), ("fp16", FP16, True)])
def test_explicit_precisions(name, dtype, tf32):
    p = choose_precision(name, torch.device("cpu"))
    assert (p.decoder, p.clip, p.weights, p.tf32) == (dtype, dtype, dtype, tf32)


def test_fp32_turns_tf32_off_on_cuda():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        choose_precision("fp32", torch.device("cpu")).apply(torch.device("cuda"))
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (False, False)
        choose_precision("bf16", torch.device("cpu")).apply(torch.device("cuda"))
        assert torch.backends.cudnn.allow_tf32 is True
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@pytest.mark.parametrize("p", [
    Precision(None, None, None, tf32=False), Precision(None, None, BF16), Precision(None, BF16, BF16),
    Precision(BF16, BF16, BF16), Precision(FP16, FP16, FP16), Precision(BF16, None, BF16),
])
def test_recorded_precision_parses_back(p):
    q = Precision.parse(p.describe())
    assert (q.decoder, q.clip, q.weights) == (p.decoder, p.clip, p.weights)


@pytest.mark.parametrize("text", ["", "fp8", "decoder bf16", "gpu bf16, clip fp32", "bf16, weights stored int8"])
def test_bad_precision_records_are_refused(text):
    with pytest.raises(ValueError):
        Precision.parse(text)


def test_norm_weights_stay_fp32():
    m = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3), torch.nn.GroupNorm(2, 8), torch.nn.Linear(8, 8),
                            torch.nn.LayerNorm(8))
    store_frozen_weights(m, FP16)
    assert m[0].weight.dtype == FP16 and m[2].bias.dtype == FP16
    assert m[1].weight.dtype == torch.float32 and m[3].bias.dtype == torch.float32


def test_decoder_attention_scores_do_not_overflow_in_fp16():
    from taming.modules.diffusionmodules.model import AttnBlock

    from vqclip.engine.decoder import attn_block

    torch.manual_seed(0)
    block = AttnBlock(64).eval()
    with torch.no_grad():
        for conv in (block.q, block.k):
            conv.weight.mul_(200)  # q·k reaches ~4e5, far beyond fp16's 65504
    x = torch.randn(1, 64, 4, 4)
    with torch.no_grad():
        ref = attn_block(block, x)
        store_frozen_weights(block, FP16)
        got = attn_block(block, x.half())
    assert torch.isfinite(got).all()
    assert (got.float() - ref).abs().max() < 0.05 * ref.abs().max()
