"""The classic VQGAN-CLIP step, as the original notebook (Katherine Crowson, 2021) and its common descendants
(nerdyrodent/VQGAN-CLIP `generate.py`) run it: the baseline that `scripts/bench.py engine` measures vqclip
against (its `classic` mode, `vqclip.bench.worker`).

Mirrored on purpose:
- fp32 everywhere (on the CPU `clip.load` returns an fp32 model; the notebook never uses autocast);
- the whole taming `VQModel` is built: encoder, decoder, quant_conv, post_quant_conv, quantizer and the loss
  (`VQLPIPSWithDiscriminator`: LPIPS on a VGG16 + a PatchGAN discriminator). The loss cannot be built offline
  (LPIPS downloads VGG16), so a randomly initialised torchvision `vgg16` (LPIPS keeps its `.features`) and
  taming's `NLayerDiscriminator` of the same sizes stand in. As the notebook's `load_vqgan_model`, the loss is
  deleted after loading (`del model.loss`); the encoder and quant convs stay;
- the full CLIP model (text and image towers) stays in memory; text prompts are embedded once;
- cutouts are cut in a Python loop, one crop + `F.adaptive_avg_pool2d` each, then Kornia-style augmentations
  on the stacked batch (flip, sharpness, affine, perspective, colour jitter, each on the samples drawn for it,
  as Kornia does), written here with torch ops since Kornia is not a dependency;
- `vector_quantize` with a one-hot matmul, `clamp_with_grad`, the spherical-distance `Prompt`, Adam, and the
  per-channel clamp of z after each step. Nothing is saved (no `checkin` PNGs).
Random weights everywhere: this measures time and memory, not pictures.
"""

from __future__ import annotations

import contextlib
import io
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vqclip.engine.ops import clamp_with_grad, replace_grad

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# -- notebook helpers (replace_grad and clamp_with_grad are the notebook's, shared with the engine) --------
def vector_quantize(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    d = x.pow(2).sum(dim=-1, keepdim=True) + codebook.pow(2).sum(dim=1) - 2 * x @ codebook.T
    indices = d.argmin(-1)
    x_q = F.one_hot(indices, codebook.shape[0]).to(d.dtype) @ codebook
    return replace_grad(x_q, x)


class Prompt(nn.Module):
    def __init__(self, embed: torch.Tensor, weight: float = 1.0, stop: float = float("-inf")) -> None:
        super().__init__()
        self.register_buffer("embed", embed)
        self.register_buffer("weight", torch.as_tensor(weight))
        self.register_buffer("stop", torch.as_tensor(stop))

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        input_normed = F.normalize(input.unsqueeze(1), dim=2)
        embed_normed = F.normalize(self.embed.unsqueeze(0), dim=2)
        dists = input_normed.sub(embed_normed).norm(dim=2).div(2).arcsin().pow(2).mul(2)
        dists = dists * self.weight.sign()
        return self.weight.abs() * replace_grad(dists, torch.maximum(dists, self.stop)).mean()


# -- Kornia-style augmentations (kornia.augmentation 0.6 semantics, torch ops only) ---------------------------
def _on_subset(x: torch.Tensor, p: float, fn: Any) -> torch.Tensor:
    """Kornia applies a random augmentation to the samples drawn for it and passes the rest through."""
    idx = (torch.rand(x.shape[0]) < p).nonzero().flatten()
    if idx.numel() == 0:
        return x
    out = x.clone()
    out[idx] = fn(x[idx])
    return out


def _sharpness(x: torch.Tensor) -> torch.Tensor:
    factor = torch.rand(x.shape[0], 1, 1, 1) * 0.3
    k = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13
    degenerate = F.conv2d(x, k.expand(3, 1, 3, 3), groups=3)
    mask = torch.ones_like(degenerate)
    padded = F.pad(degenerate, (1, 1, 1, 1))
    padded_mask = F.pad(mask, (1, 1, 1, 1))
    degenerate = torch.where(padded_mask == 1, padded, x)  # borders keep the original pixels
    return (x + factor * (x - degenerate)).clamp(0, 1)


def _affine(x: torch.Tensor) -> torch.Tensor:
    n = x.shape[0]
    angle = (torch.rand(n) * 2 - 1) * math.radians(30)
    shift = (torch.rand(n, 2) * 2 - 1) * 0.1 * 2
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = angle.cos(), -angle.sin()
    theta[:, 1, 0], theta[:, 1, 1] = angle.sin(), angle.cos()
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)


def _perspective(x: torch.Tensor) -> torch.Tensor:
    n, _, h, w = x.shape
    src = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]]).expand(n, 4, 2)
    dst = src - src * torch.rand(n, 4, 2) * 0.2
    xs, ys, us, vs = src[..., 0], src[..., 1], dst[..., 0], dst[..., 1]
    zeros, ones = torch.zeros_like(xs), torch.ones_like(xs)
    a = torch.cat([torch.stack([xs, ys, ones, zeros, zeros, zeros, -us * xs, -us * ys], -1),
                   torch.stack([zeros, zeros, zeros, xs, ys, ones, -vs * xs, -vs * ys], -1)], 1)
    hm = torch.cat([torch.linalg.solve(a, torch.cat([us, vs], 1)), torch.ones(n, 1)], 1).view(n, 3, 3)
    gy, gx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    pts = torch.stack([gx, gy, torch.ones_like(gx)], -1).view(1, -1, 3) @ torch.linalg.inv(hm).transpose(1, 2)
    grid = (pts[..., :2] / pts[..., 2:]).view(n, h, w, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def rgb_to_hsv(img: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """kornia.color.rgb_to_hsv: hue in radians [0, 2π), saturation and value in [0, 1]."""
    max_rgb, argmax_rgb = img.max(-3)
    min_rgb = img.min(-3)[0]
    deltac = max_rgb - min_rgb
    v = max_rgb
    s = deltac / (max_rgb + eps)
    deltac = torch.where(deltac == 0, torch.ones_like(deltac), deltac)
    rc, gc, bc = torch.unbind(max_rgb.unsqueeze(-3) - img, dim=-3)
    h1 = bc - gc
    h2 = (rc - bc) + 2.0 * deltac
    h3 = (gc - rc) + 4.0 * deltac
    h = torch.stack((h1, h2, h3), dim=-3) / deltac.unsqueeze(-3)
    h = torch.gather(h, dim=-3, index=argmax_rgb.unsqueeze(-3)).squeeze(-3)
    h = (h / 6.0) % 1.0
    return torch.stack((2 * math.pi * h, s, v), dim=-3)


def hsv_to_rgb(image: torch.Tensor) -> torch.Tensor:
    """kornia.color.hsv_to_rgb."""
    h = image[..., 0, :, :] / (2 * math.pi)
    s = image[..., 1, :, :]
    v = image[..., 2, :, :]
    hi = torch.floor(h * 6) % 6
    f = ((h * 6) % 6) - hi
    one = torch.tensor(1.0, device=image.device, dtype=image.dtype)
    p = v * (one - s)
    q = v * (one - f * s)
    t = v * (one - (one - f) * s)
    hi = hi.long()
    indices = torch.stack([hi, hi + 6, hi + 12], dim=-3)
    out = torch.stack((v, q, p, p, t, v, t, v, v, q, p, p, p, p, t, v, v, q), dim=-3)
    return torch.gather(out, -3, indices)


def _colour_jitter(x: torch.Tensor) -> torch.Tensor:
    n = x.shape[0]
    sat = 1 + (torch.rand(n, 1, 1) * 2 - 1) * 0.01
    hue = (torch.rand(n, 1, 1) * 2 - 1) * 0.01 * 2 * math.pi
    for op in torch.randperm(2).tolist():  # Kornia shuffles the order of its colour ops
        hsv = rgb_to_hsv(x)
        hh, ss, vv = hsv.unbind(-3)
        if op == 0:
            ss = (ss * sat).clamp(0, 1)
        else:
            hh = torch.fmod(hh + hue, 2 * math.pi)
        x = hsv_to_rgb(torch.stack((hh, ss, vv), -3)).clamp(0, 1)
    return x


class MakeCutouts(nn.Module):
    def __init__(self, cut_size: int, cutn: int, cut_pow: float = 1.0) -> None:
        super().__init__()
        self.cut_size, self.cutn, self.cut_pow = cut_size, cutn, cut_pow
        self.noise_fac = 0.1

    def augs(self, x: torch.Tensor) -> torch.Tensor:
        x = _on_subset(x, 0.5, lambda t: t.flip(-1))  # RandomHorizontalFlip(p=0.5)
        x = _on_subset(x, 0.4, _sharpness)  # RandomSharpness(0.3, p=0.4)
        x = _on_subset(x, 0.8, _affine)  # RandomAffine(degrees=30, translate=0.1, p=0.8, padding_mode='border')
        x = _on_subset(x, 0.4, _perspective)  # RandomPerspective(0.2, p=0.4)
        return _on_subset(x, 0.7, _colour_jitter)  # ColorJitter(hue=0.01, saturation=0.01, p=0.7)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        side_y, side_x = input.shape[2:4]
        max_size = min(side_x, side_y)
        min_size = min(side_x, side_y, self.cut_size)
        cutouts = []
        for _ in range(self.cutn):
            size = int(torch.rand([]) ** self.cut_pow * (max_size - min_size) + min_size)
            offsetx = torch.randint(0, side_x - size + 1, ())
            offsety = torch.randint(0, side_y - size + 1, ())
            cutout = input[:, :, offsety:offsety + size, offsetx:offsetx + size]
            cutouts.append(F.adaptive_avg_pool2d(cutout, self.cut_size))
        batch = self.augs(torch.cat(cutouts, dim=0))
        if self.noise_fac:
            facs = batch.new_empty([self.cutn, 1, 1, 1]).uniform_(0, self.noise_fac)
            batch = batch + facs * torch.randn_like(batch)
        return batch


# -- the whole VQModel ----------------------------------------------------------------------------------------
class VQModel(nn.Module):
    """taming.models.vqgan.VQModel's modules (taming.models itself needs a Lightning that no longer exists)."""

    def __init__(self, ddconfig: dict[str, Any], n_embed: int, embed_dim: int) -> None:
        super().__init__()
        import torchvision
        from taming.modules.diffusionmodules.model import Decoder, Encoder
        from taming.modules.discriminator.model import NLayerDiscriminator
        from taming.modules.vqvae.quantize import VectorQuantizer2

        with contextlib.redirect_stdout(io.StringIO()):
            self.encoder = Encoder(**ddconfig)
            self.decoder = Decoder(**ddconfig)
        loss = nn.Module()  # VQLPIPSWithDiscriminator stand-in: LPIPS's VGG16 and the discriminator
        loss.perceptual_loss = torchvision.models.vgg16(weights=None).features
        loss.discriminator = NLayerDiscriminator(input_nc=3, n_layers=2, use_actnorm=False, ndf=64)
        self.loss = loss
        self.quantize = VectorQuantizer2(n_embed, embed_dim, beta=0.25)
        self.quant_conv = nn.Conv2d(ddconfig["z_channels"], embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, ddconfig["z_channels"], 1)

    def decode(self, quant: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(quant))


def load_vqgan_model(spec: Any) -> VQModel:
    """The notebook's `load_vqgan_model`, with random weights instead of `init_from_ckpt`."""
    model = VQModel(dict(spec.ddconfig), spec.n_embed, spec.embed_dim)
    model.eval().requires_grad_(False)
    del model.loss
    return model


class ClassicRun:
    """Set up as the notebook does, then `step()` is its `train(i)` without `checkin`."""

    def __init__(self, spec: Any, clip_name: str, width: int, height: int, cutn: int, prompt: str,
                 seed: int = 0, lr: float = 0.1, cut_pow: float = 1.0, device: str = "cpu") -> None:
        import open_clip

        torch.manual_seed(seed)
        self.device = torch.device(device)
        self.model = load_vqgan_model(spec).to(self.device)
        self.perceptor = open_clip.create_model(clip_name, pretrained=None).eval().requires_grad_(False)
        self.perceptor.to(self.device)
        cut_size = self.perceptor.visual.image_size
        cut_size = cut_size[0] if isinstance(cut_size, (tuple, list)) else cut_size
        self.make_cutouts = MakeCutouts(int(cut_size), cutn, cut_pow=cut_pow)
        f = 2 ** (self.model.decoder.num_resolutions - 1)
        toks_x, toks_y = width // f, height // f
        e_dim = self.model.quantize.e_dim
        n_toks = self.model.quantize.n_e
        codebook = self.model.quantize.embedding.weight
        self.z_min = codebook.min(dim=0).values[None, :, None, None]
        self.z_max = codebook.max(dim=0).values[None, :, None, None]
        one_hot = F.one_hot(torch.randint(n_toks, [toks_y * toks_x], device=self.device), n_toks).float()
        z = one_hot @ codebook
        self.z = z.view([-1, toks_y, toks_x, e_dim]).permute(0, 3, 1, 2).contiguous().requires_grad_(True)
        self.opt = torch.optim.Adam([self.z], lr=lr)
        self.mean = torch.tensor(CLIP_MEAN, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(CLIP_STD, device=self.device).view(1, 3, 1, 1)
        tokenizer = open_clip.get_tokenizer(clip_name)
        embed = self.perceptor.encode_text(tokenizer([prompt]).to(self.device)).float()
        self.prompts = [Prompt(embed, 1.0).to(self.device)]

    def synth(self, z: torch.Tensor) -> torch.Tensor:
        z_q = vector_quantize(z.movedim(1, 3), self.model.quantize.embedding.weight).movedim(3, 1)
        return clamp_with_grad(self.model.decode(z_q).add(1).div(2), 0, 1)

    def ascend_txt(self) -> list[torch.Tensor]:
        out = self.synth(self.z)
        iii = self.perceptor.encode_image((self.make_cutouts(out) - self.mean) / self.std).float()
        return [prompt(iii) for prompt in self.prompts]

    def step(self) -> float:
        self.opt.zero_grad()
        loss_all = self.ascend_txt()
        loss = sum(loss_all)
        loss.backward()  # type: ignore[union-attr]
        self.opt.step()
        with torch.no_grad():
            self.z.copy_(self.z.maximum(self.z_min).minimum(self.z_max))
        return float(loss)
