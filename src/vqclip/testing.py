"""Tiny random-weight models saved in the real file formats (habit from diffusers `get_dummy_components`).

Used by `vqclip selftest` and by the test suite: a 2-level, 32-channel VQGAN written as a taming `.yaml` +
Lightning-style `.ckpt` (VQModel or GumbelVQ layout), and a tiny open_clip model written as a model-config JSON
+ checkpoint. Nothing here touches the network.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import types
from pathlib import Path

import torch
from omegaconf import OmegaConf

TINY_DDCONFIG = {
    "double_z": False,
    "z_channels": 32,
    "resolution": 32,
    "in_channels": 3,
    "out_ch": 3,
    "ch": 32,
    "ch_mult": [1, 2],
    "num_res_blocks": 1,
    "attn_resolutions": [16],
    "dropout": 0.0,
}

TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def _lightning_callback_key() -> type:
    """A class pickled under Lightning's real name, as in taming checkpoints; built without importing Lightning."""
    return type("ModelCheckpoint", (), {"__module__": "pytorch_lightning.callbacks.model_checkpoint"})


def _save_with_fake_lightning(obj: dict, path: Path, cls: type) -> None:
    names = ["pytorch_lightning", "pytorch_lightning.callbacks", "pytorch_lightning.callbacks.model_checkpoint"]
    saved = {n: sys.modules.get(n) for n in names}
    try:
        for n in names:
            sys.modules[n] = types.ModuleType(n)
        sys.modules[names[-1]].ModelCheckpoint = cls  # type: ignore[attr-defined]
        torch.save(obj, path)
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m


def make_tiny_vqgan(folder: str | Path, name: str = "tiny", gumbel: bool = False, n_embed: int = 64,
                    seed: int = 0) -> tuple[Path, Path]:
    """Write `<name>.yaml` + `<name>.ckpt` for a tiny VQGAN with random weights; return both paths."""
    from taming.modules.diffusionmodules.model import Decoder, Encoder
    from taming.modules.vqvae.quantize import GumbelQuantize, VectorQuantizer2

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    dd = dict(TINY_DDCONFIG)
    # GumbelVQ feeds quant_conv's output (embed_dim channels) to a projection declared with z_channels
    # inputs, so real Gumbel checkpoints have embed_dim == z_channels; keep that invariant.
    embed_dim = dd["z_channels"] if gumbel else 16
    with contextlib.redirect_stdout(io.StringIO()):  # taming prints the z shape
        encoder, decoder = Encoder(**dd), Decoder(**dd)
    modules = {
        "encoder": encoder,
        "decoder": decoder,
        "quant_conv": torch.nn.Conv2d(dd["z_channels"], embed_dim, 1),
        "post_quant_conv": torch.nn.Conv2d(embed_dim, dd["z_channels"], 1),
    }
    if gumbel:
        modules["quantize"] = GumbelQuantize(dd["z_channels"], embed_dim, n_embed=n_embed)
        target = "taming.models.vqgan.GumbelVQ"
    else:
        modules["quantize"] = VectorQuantizer2(n_embed, embed_dim, beta=0.25)
        target = "taming.models.vqgan.VQModel"
    state = {}
    for prefix, mod in modules.items():
        for k, v in mod.state_dict().items():
            state[f"{prefix}.{k}"] = v
    # A real checkpoint also carries loss-network weights we must ignore.
    state["loss.discriminator.main.0.weight"] = torch.randn(4, 3, 4, 4)
    params = {
        "embed_dim": embed_dim,
        "n_embed": n_embed,
        "ddconfig": dd,
        "lossconfig": {"target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
                       "params": {"disc_start": 0, "codebook_weight": 1.0}},
    }
    if gumbel:
        params["kl_weight"] = 1.0e-08
        params["temperature_scheduler_config"] = {
            "target": "taming.lr_scheduler.LambdaWarmUpCosineScheduler",
            "params": {"warm_up_steps": 0, "max_decay_steps": 1000001, "lr_start": 0.9,
                       "lr_max": 0.9, "lr_min": 1.0e-06},
        }
    yaml_path, ckpt_path = folder / f"{name}.yaml", folder / f"{name}.ckpt"
    OmegaConf.save(OmegaConf.create({"model": {"base_learning_rate": 4.5e-06, "target": target, "params": params}}),
                   yaml_path)
    cb = _lightning_callback_key()
    _save_with_fake_lightning(
        {"epoch": 3, "global_step": 1000, "state_dict": state,
         "callbacks": {cb: {"best_model_score": None, "best_model_path": ""}}},
        ckpt_path, cb)
    return yaml_path, ckpt_path


def make_tiny_clip(folder: str | Path, name: str = "tiny-clip", seed: int = 0) -> tuple[Path, Path]:
    """Write `<name>.json` (an open_clip model config) + `<name>.pt` (its random weights); return both paths."""
    import open_clip

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg_path = folder / f"{name}.json"
    cfg_path.write_text(json.dumps(TINY_CLIP_CONFIG, indent=2))
    open_clip.add_model_config(cfg_path)
    torch.manual_seed(seed)
    from vqclip.engine.clip import quiet_logs

    with quiet_logs():
        model = open_clip.create_model(name, pretrained=None)
    ckpt_path = folder / f"{name}.pt"
    torch.save({"state_dict": model.state_dict()}, ckpt_path)
    return cfg_path, ckpt_path
