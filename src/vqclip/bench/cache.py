"""`cache`: a pickle load against the safetensors cache (`vqclip.weights.checkpoint`) on a random checkpoint
with vqgan_imagenet_f16_16384's shapes (~1 GB written: not part of `all`)."""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from vqclip.bench.common import Say, quiet


def benchmark_cache(folder: str | Path, *, optimizer_states: bool = True, repeats: int = 3) -> dict[str, float]:
    """Time a pickle load against the safetensors cache on a random checkpoint with vqgan_imagenet_f16_16384's
    shapes (VQModel f16, 16384 codes, a loss discriminator and, like the real 980 MB file, Adam states).

    Returns sizes (MB) and seconds: `pickle_s` (safe torch.load + filtering), `first_load_s` (pickle + writing
    the cache), `cached_s` (all five prefixes from the cache), `cached_decoder_s` (what generate needs without
    an init image). safetensors maps the file lazily, so the cached timings include copying every tensor into
    fresh memory (as moving them to a GPU would). Best of `repeats`; files are in the page cache (warm).
    """
    import torch

    from vqclip.testing import _lightning_callback_key, _save_with_fake_lightning
    from vqclip.weights.checkpoint import VQGAN_KEYS, cache_path, load_checkpoint, load_vqgan_state, vqgan_tensors

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ckpt = folder / "bench_f16_16384.ckpt"
    cache_path(ckpt).unlink(missing_ok=True)
    state = f16_16384_random_state()
    obj: dict[str, Any] = {"epoch": 1, "global_step": 1, "state_dict": state}
    if optimizer_states:
        gen = [v for k, v in state.items() if not k.startswith("loss.")]
        obj["optimizer_states"] = [{"state": {i: {"exp_avg": torch.randn_like(p), "exp_avg_sq": torch.rand_like(p)}
                                              for i, p in enumerate(gen)}}]
    cb = _lightning_callback_key()
    obj["callbacks"] = {cb: {"best_model_score": None}}
    _save_with_fake_lightning(obj, ckpt, cb)
    del obj, state
    os.sync()  # let writeback of the fresh file finish before timing reads
    out = {"ckpt_mb": ckpt.stat().st_size / 1e6}
    out["pickle_s"] = best(repeats, lambda: vqgan_tensors(load_checkpoint(ckpt), ckpt))
    out["first_load_s"] = best(repeats, lambda: load_vqgan_state(ckpt), before=cache_path(ckpt).unlink)
    os.sync()
    out["cache_mb"] = cache_path(ckpt).stat().st_size / 1e6
    out["cached_s"] = best(repeats, lambda: load_vqgan_state(ckpt))
    out["cached_decoder_s"] = best(repeats, lambda: load_vqgan_state(ckpt, keys=VQGAN_KEYS[:3]))
    return out


def best(repeats: int, fn: Any, before: Any = None) -> float:
    """Best of `repeats` timings; every tensor is touched, so lazily mapped tensors pay for their reads too."""
    times = []
    for _ in range(max(1, repeats)):
        if before is not None:
            before(missing_ok=True)
        t = time.perf_counter()
        for v in fn().values():
            v.clone()
        times.append(time.perf_counter() - t)
    return min(times)


def f16_16384_random_state() -> dict[str, Any]:
    """Random tensors with the real f16_16384 names and shapes (modules built on the meta device: no init cost)."""
    import contextlib
    import io

    import torch
    from taming.modules.diffusionmodules.model import Decoder, Encoder

    dd = {"double_z": False, "z_channels": 256, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
          "ch_mult": [1, 1, 2, 2, 4], "num_res_blocks": 2, "attn_resolutions": [16], "dropout": 0.0}
    with torch.device("meta"), contextlib.redirect_stdout(io.StringIO()):
        parts = {"encoder": Encoder(**dd), "decoder": Decoder(**dd), "quant_conv": torch.nn.Conv2d(256, 256, 1),
                 "post_quant_conv": torch.nn.Conv2d(256, 256, 1)}
        disc = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 4), torch.nn.Conv2d(64, 128, 4),
                                   torch.nn.Conv2d(128, 256, 4), torch.nn.Conv2d(256, 1, 4))
    shapes = {f"{p}.{k}": v.shape for p, m in parts.items() for k, v in m.state_dict().items()}
    shapes["quantize.embedding.weight"] = torch.Size([16384, 256])
    shapes |= {f"loss.discriminator.main.{k}": v.shape for k, v in disc.state_dict().items()}
    return {k: torch.randn(s) for k, s in shapes.items()}


def run(args: argparse.Namespace, say: Say = quiet) -> dict[str, float]:
    say("writing a ~1 GB random checkpoint, then timing its loads…")
    with tempfile.TemporaryDirectory() as tmp:
        return benchmark_cache(tmp)


def report(result: dict[str, Any]) -> str:
    return (f"safetensors cache: {result['ckpt_mb']:.0f} MB checkpoint, pickle {result['pickle_s']:.2f} s, "
            f"first load + cache {result['first_load_s']:.2f} s, cached {result['cached_s']:.2f} s, "
            f"cached decoder only {result['cached_decoder_s']:.2f} s")
