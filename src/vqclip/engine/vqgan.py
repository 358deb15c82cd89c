"""VQGAN decoder + quantizer from a taming `.yaml` + `.ckpt` (VQModel and GumbelVQ layouts).

We build only what generation needs from `taming.modules` (the `taming.models` package imports a Lightning
module removed in Lightning 1.8, and the yaml's loss would download VGG16): decoder, post_quant_conv and the
codebook, plus encoder/quant_conv when an init image must be encoded. Modules are built on the meta device and
the checkpoint tensors assigned in place, so no time or memory goes into random initialisation.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vqclip.errors import VqclipError, interruption, shorten
from vqclip.engine import decoder as lean
from vqclip.engine.ops import replace_grad, store_frozen_weights

GUMBEL_TARGETS = ("GumbelVQ",)
_DD_KEYS = ("z_channels", "ch", "ch_mult", "num_res_blocks", "attn_resolutions", "resolution", "out_ch",
            "in_channels")


@dataclass(frozen=True)
class VQGANSpec:
    """What the yaml says about the architecture."""

    target: str
    embed_dim: int
    n_embed: int
    ddconfig: dict[str, Any] = field(default_factory=dict)

    @property
    def gumbel(self) -> bool:
        return self.target.rsplit(".", 1)[-1] in GUMBEL_TARGETS

    @property
    def factor(self) -> int:
        """Downsampling factor f: pixels per latent cell (16 for the f16 models, 8 for gumbel f8)."""
        return 2 ** (len(self.ddconfig["ch_mult"]) - 1)


def read_spec(yaml_path: str | Path) -> VQGANSpec:
    """Parse a taming model yaml; a broken or foreign file gives one line naming it."""
    from omegaconf import OmegaConf

    path = Path(yaml_path)
    try:
        cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except FileNotFoundError:
        raise VqclipError(f"model config {path} not found; pass a taming .yaml or a registry name "
                          "(see `vqclip weights list`)") from None
    except Exception as e:  # omegaconf/yaml raise many kinds
        stop = interruption(e)
        if stop is not None:
            raise stop from None
        raise VqclipError(f"model config {path} is not valid YAML ({type(e).__name__}); "
                          "re-download it with `vqclip weights download`") from None
    try:
        model = cfg["model"]  # type: ignore[index]
        params = model["params"]
        dd = dict(params["ddconfig"])
        spec = VQGANSpec(str(model.get("target", "taming.models.vqgan.VQModel")), int(params["embed_dim"]),
                         int(params["n_embed"]), dd)
        missing = [k for k in _DD_KEYS if k not in dd]
        if missing:
            raise KeyError(missing[0])
    except (KeyError, TypeError, ValueError) as e:
        raise VqclipError(f"{path} is not a taming VQGAN config (missing {e}); expected model.params.ddconfig, "
                          "embed_dim and n_embed") from None
    return spec


class VQGAN(nn.Module):
    """Decoder + codebook (+ encoder on demand). `decode(z)` maps a latent grid to pixels in [-1, 1]."""

    def __init__(self, spec: VQGANSpec, with_encoder: bool) -> None:
        super().__init__()
        from taming.modules.diffusionmodules.model import Decoder, Encoder

        self.spec = spec
        dd = dict(spec.ddconfig)
        with contextlib.redirect_stdout(io.StringIO()):  # taming prints the z shape when built
            self.decoder = Decoder(**dd)
            self.encoder = Encoder(**dd) if with_encoder else None
        self.post_quant_conv = nn.Conv2d(spec.embed_dim, dd["z_channels"], 1)
        self.quant_conv = nn.Conv2d(dd["z_channels"], spec.embed_dim, 1) if with_encoder else None
        # GumbelVQ's encoder side picks codes through a 1x1 projection to logits.
        self.proj = (nn.Conv2d(dd["z_channels"], spec.n_embed, 1) if with_encoder and spec.gumbel else None)
        self.register_buffer("codebook", torch.empty(spec.n_embed, spec.embed_dim))
        # low_memory: recompute each decoder block in backward instead of keeping its activations
        self.low_memory = False

    @property
    def factor(self) -> int:
        return self.spec.factor

    def decode(self, z_q: torch.Tensor, dtype: torch.dtype | None = None,
               low_memory: bool | None = None) -> torch.Tensor:
        """Quantised latent → pixels in [-1, 1], computed in `dtype` (default: `z_q`'s).

        Goes through the lean forward (`engine/decoder.py`: same maths, far fewer saved activations, NNPACK
        convolutions on the CPU); `low_memory` (default: `self.low_memory`) adds per-block checkpointing.
        """
        x = z_q.to(dtype) if dtype is not None else z_q
        if not lean.lean_supported(self.decoder):
            with torch.autocast(x.device.type, dtype=x.dtype, enabled=x.dtype != torch.float32):
                return self.decoder(self.post_quant_conv(z_q))
        ckpt = self.low_memory if low_memory is None else low_memory
        return lean.decode(self.decoder, lean.frozen_conv(self.post_quant_conv, x), checkpoint=ckpt)

    def set_weight_dtype(self, dtype: torch.dtype) -> VQGAN:
        """Store the decoder's frozen weights in `dtype` (the codebook stays fp32 for exact code lookups);
        the lean forward casts them to the compute dtype on the fly."""
        store_frozen_weights(self.decoder, dtype)
        store_frozen_weights(self.post_quant_conv, dtype)
        return self

    def drop_encoder(self) -> None:
        """Free the encoder once the init image is encoded (it is never needed again in a run)."""
        self.encoder = self.quant_conv = self.proj = None

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """Snap each latent vector to its nearest code (squared L2), straight-through gradient to `z`."""
        return replace_grad(nearest_codes(z, self.codebook), z)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels in [-1, 1] → quantised latent grid `[1, embed_dim, H/f, W/f]`."""
        if self.encoder is None or self.quant_conv is None:
            raise RuntimeError("this VQGAN was loaded without its encoder")
        h = self.quant_conv(self.encoder(x))
        if self.proj is not None:  # GumbelVQ: hard argmax over the logits (no sampling noise)
            idx = self.proj(h).argmax(1)
            return self.codebook[idx].permute(0, 3, 1, 2).contiguous()
        return nearest_codes(h, self.codebook)

    def random_latent(self, grid_w: int, grid_h: int, generator: torch.Generator) -> torch.Tensor:
        """Random codebook tokens, one-hot × codebook (the notebook's random start)."""
        idx = torch.randint(self.spec.n_embed, (grid_h * grid_w,), generator=generator)
        z = self.codebook.cpu()[idx].view(1, grid_h, grid_w, -1).permute(0, 3, 1, 2)
        return z.to(self.codebook.device).contiguous()

    def z_bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        lo = self.codebook.min(0).values.view(1, -1, 1, 1)
        hi = self.codebook.max(0).values.view(1, -1, 1, 1)
        return lo, hi


def nearest_codes(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """`z` [B, C, H, W] with every vector replaced by its nearest codebook row (no gradient path)."""
    b, c, h, w = z.shape
    flat = z.detach().permute(0, 2, 3, 1).reshape(-1, c).to(codebook.dtype)
    d = flat.pow(2).sum(1, keepdim=True) + codebook.pow(2).sum(1) - 2 * flat @ codebook.T
    idx = d.argmin(1)
    return codebook[idx].view(b, h, w, c).permute(0, 3, 1, 2).to(z.dtype)


def _needed_keys(with_encoder: bool) -> tuple[str, ...]:
    keys = ("decoder.", "post_quant_conv.", "quantize.")
    return keys + ("encoder.", "quant_conv.") if with_encoder else keys


def build_vqgan(spec: VQGANSpec, state: dict[str, torch.Tensor], with_encoder: bool, source: str) -> VQGAN:
    """Assemble the modules from a checkpoint state dict; a mismatch names the file and the first bad key."""
    with torch.device("meta"):
        model = VQGAN(spec, with_encoder)
    code_key = "quantize.embed.weight" if spec.gumbel else "quantize.embedding.weight"
    if code_key not in state:
        other = "quantize.embedding.weight" if spec.gumbel else "quantize.embed.weight"
        hint = " (the yaml's target says GumbelVQ but the checkpoint is a VQModel, or the reverse)" \
            if other in state else ""
        raise VqclipError(f"{source} has no codebook {code_key}{hint}; the .yaml and .ckpt do not belong together")
    sd: dict[str, torch.Tensor] = {"codebook": state[code_key]}
    for k, v in state.items():
        if k.startswith(("decoder.", "post_quant_conv.")) or (with_encoder and k.startswith(("encoder.", "quant_conv."))):
            sd[k] = v
    if model.proj is not None:
        sd["proj.weight"] = state.get("quantize.proj.weight")  # type: ignore[assignment]
        sd["proj.bias"] = state.get("quantize.proj.bias")  # type: ignore[assignment]
    try:
        missing, unexpected = model.load_state_dict(sd, strict=False, assign=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        detail = next((ln.strip() for ln in first if "size mismatch" in ln), first[0] if first else "")
        raise VqclipError(f"{source} does not match its .yaml ({shorten(detail, 160)}); "
                          "use the .yaml that came with this checkpoint") from None
    if missing:
        raise VqclipError(f"{source} lacks {len(missing)} tensors the .yaml needs (first: {missing[0]}); "
                          "use the .yaml that came with this checkpoint")
    model.eval().requires_grad_(False)
    return model


def load_vqgan(yaml_path: str | Path, ckpt_path: str | Path, *, with_encoder: bool = False, trust: bool = False,
               device: torch.device | str = "cpu") -> VQGAN:
    """Load a VQGAN safely (weights_only, Lightning placeholders) and move it to `device`."""
    from vqclip.weights import checkpoint as checkpoints

    spec = read_spec(yaml_path)
    loader = getattr(checkpoints, "load_vqgan_state", None)
    if loader is not None:
        state = loader(ckpt_path, trust=trust, keys=_needed_keys(with_encoder))
    else:
        state = checkpoints.load_checkpoint(ckpt_path, trust=trust)
    return build_vqgan(spec, state, with_encoder, str(ckpt_path)).to(device)
