"""CLIP guidance on the predicted clean image (Katherine Crowson's CLIP-guided diffusion notebook, the original
app, and Disco Diffusion 5.x's `cond_fn`).

Each step: x0 from the U-Net's own prediction (the graph runs back through the U-Net) or from the secondary model
(the U-Net runs without gradient); `x_in = x0·√(1−ᾱ) + x_t·(1−√(1−ᾱ))` as in the peers; cutouts of `x_in` (overview
cuts of the whole padded image + random inner crops with `cut_pow`) in `cutn_batches` batches → each CLIP model of
the ensemble → spherical distance to its prompts (weights normalised by their sum, as the peers), times the model's
weight and `clip_guidance_scale`; plus TV, saturation and init-image MSE on `x_in` and the range loss on x0. The
CLIP gradient is taken per batch with respect to `x_in` only (so each batch's CLIP graph is freed at once), and one
backward pass carries the total to `x_t`. The result is −∇, rescaled so its RMS is at most `clamp_max` (DD's
`clamp_grad`); a non-finite gradient becomes zero for that step.

Unlike Disco Diffusion, whose range loss was differentiated with respect to `x_in` (where it does not appear, so
`range_scale` did nothing there), the range loss here reaches `x_t`, as in the original notebook.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from vqclip.engine.clip import ClipModel
from vqclip.engine.cutouts import LUMA, Cutouts
from vqclip.engine.diffusion.gaussian import SpacedDiffusion
from vqclip.engine.diffusion.secondary import SecondaryDiffusionImageNet2, alpha_sigma_to_t
from vqclip.engine.losses import Prompt
from vqclip.errors import VqclipError


@dataclass
class GuidedClip:
    """One CLIP model of the ensemble, its prompts (embedded with this model) and its weight in the loss."""

    clip: ClipModel
    prompts: list[Prompt]
    weight: float = 1.0
    dtype: torch.dtype | None = None  # the image tower's compute dtype (None: the cutouts' dtype)


@dataclass
class GuidanceSettings:
    """The knobs; defaults are the original app's (Crowson's notebook), DD 5.x values in the comments."""

    clip_guidance_scale: float = 1000.0  # DD 5000
    tv_scale: float = 150.0  # DD 0
    range_scale: float = 50.0  # DD 150
    sat_scale: float = 0.0
    init_scale: float = 0.0  # MSE of x_in to the init image ([-1, 1] space)
    clamp_max: float = 0.05  # RMS cap of the gradient (DD clamp_max); 0 turns clamping off
    cutn: int = 32  # inner cuts per batch
    overview: int = 0  # overview cuts per batch (whole image padded square; DD schedules 12 → 4)
    cutn_batches: int = 2
    cut_pow: float = 0.5
    augment: bool = False  # the cutouts' flips/affine/perspective/colour jitter (the notebook had none)
    noise_fac: float = 0.0


def tv_loss(x: torch.Tensor) -> torch.Tensor:
    """Per-image total variation as in the notebook: replicate-pad, mean of dx² + dy² → [N]."""
    x = F.pad(x, (0, 1, 0, 1), "replicate")
    dx = x[..., :-1, 1:] - x[..., :-1, :-1]
    dy = x[..., 1:, :-1] - x[..., :-1, :-1]
    return (dx ** 2 + dy ** 2).mean([1, 2, 3])


def range_loss(x: torch.Tensor) -> torch.Tensor:
    """Per-image mean squared distance of pixels outside [-1, 1] → [N]."""
    return (x - x.clamp(-1, 1)).pow(2).mean([1, 2, 3])


def overview_cuts(img: torch.Tensor, cut_size: int, n: int) -> torch.Tensor:
    """DD's overview cuts of `img` [1, 3, H, W] in [0, 1]: the image padded to a square with black and resized
    to `cut_size`; up to 4 cuts are plain, grey, flipped, flipped grey; more are that many plain copies."""
    if n <= 0:
        return img.new_zeros(0, 3, cut_size, cut_size)
    h, w = img.shape[-2:]
    side = max(h, w)
    padded = F.pad(img, ((side - w) // 2, (side - w + 1) // 2, (side - h) // 2, (side - h + 1) // 2))
    if side >= cut_size:
        cut = F.adaptive_avg_pool2d(padded, cut_size)
    else:
        cut = F.interpolate(padded, size=(cut_size, cut_size), mode="bilinear", align_corners=False)
    if n > 4:
        return cut.expand(n, -1, -1, -1)
    luma = torch.tensor(LUMA, dtype=cut.dtype, device=cut.device).view(1, 3, 1, 1)

    def grey(t: torch.Tensor) -> torch.Tensor:
        return (t * luma).sum(1, keepdim=True).expand(-1, 3, -1, -1)

    flipped = cut.flip(-1)
    return torch.cat([cut, grey(cut), flipped, grey(flipped)][:n])


class ClipGuidance:
    """`cond_fn(x_t, i, out)` for `Sampler`: the gradient of the (negative) guidance loss with respect to x_t.
    With a `secondary` model x0 comes from it and the sampler need not keep the U-Net's graph
    (`needs_model_grad` is False). Random cutouts draw from `generator` (save its state to resume exactly).
    After each call `last` holds that step's losses (0-d tensors, detached) and whether the gradient was
    non-finite."""

    def __init__(self, diffusion: SpacedDiffusion, clips: list[GuidedClip], settings: GuidanceSettings, *,
                 secondary: SecondaryDiffusionImageNet2 | None = None, init: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> None:
        if not clips or not any(c.weight for c in clips):
            raise VqclipError("every CLIP model has weight 0, so nothing guides the image; give one a weight "
                              "(e.g. --clip ViT-B-16/openai:1)")
        for c in clips:
            if c.weight and not c.prompts:
                raise VqclipError(f"CLIP model {c.clip.name} has no prompts to guide towards; give a text or image "
                                  "prompt")
            if c.weight and not sum(p.weight for p in c.prompts):
                raise VqclipError("the prompt weights add up to 0, so the guidance has no direction; change a "
                                  "weight (e.g. 'a lighthouse:1 | blurry:-0.3')")
        self.diffusion = diffusion
        self.clips = [c for c in clips if c.weight]
        self.settings = settings
        self.secondary = secondary
        self.init = init
        self.generator = generator if generator is not None else torch.Generator()
        self.last: dict[str, torch.Tensor | bool] = {}

    @property
    def needs_model_grad(self) -> bool:
        return self.secondary is None

    # -- x0 and the losses -------------------------------------------------------------------------------
    def predict_x0(self, x: torch.Tensor, i: torch.Tensor, out: dict[str, torch.Tensor]) -> torch.Tensor:
        """The clean-image estimate guidance differentiates through (graph back to x)."""
        if self.secondary is None:
            return out["pred_xstart"]
        d = self.diffusion
        alpha = d.extract(d.sqrt_alphas_cumprod, i, x)[:, 0, 0, 0]
        sigma = d.extract(d.sqrt_one_minus_alphas_cumprod, i, x)[:, 0, 0, 0]
        return self.secondary(x, alpha_sigma_to_t(alpha, sigma)).pred.to(x.dtype)

    def clip_loss(self, entry: GuidedClip, x_in: torch.Tensor) -> torch.Tensor:
        """One batch of cutouts of every image → this model's prompt loss, summed over the images."""
        s, clip = self.settings, entry.clip
        inner = Cutouts(clip.input_size, s.cutn, s.cut_pow, s.augment, s.noise_fac)
        norm = abs(sum(p.weight for p in entry.prompts))
        total = x_in.new_zeros(())
        for img in x_in.add(1).div(2).split(1):
            parts = [overview_cuts(img, clip.input_size, s.overview)]
            if s.cutn:
                parts.append(inner(img, self.generator))
            cuts = torch.cat(parts)
            embeds = clip.encode_image(clip.normalize(cuts), entry.dtype)
            total = total + sum(p(embeds) for p in entry.prompts) / norm
        return total

    def __call__(self, x: torch.Tensor, i: torch.Tensor, out: dict[str, torch.Tensor]) -> torch.Tensor:
        s, d = self.settings, self.diffusion
        with torch.enable_grad():
            if self.secondary is not None:
                x = x.detach().requires_grad_()
            x0 = self.predict_x0(x, i, out)
            fac = d.extract(d.sqrt_one_minus_alphas_cumprod, i, x)
            x_in = x0 * fac + x * (1 - fac)
            leaf = x_in.detach().requires_grad_()
            g = torch.zeros_like(leaf)
            last: dict[str, torch.Tensor | bool] = {}
            for k, entry in enumerate(self.clips):
                value = leaf.new_zeros(())
                for _ in range(s.cutn_batches):
                    loss = self.clip_loss(entry, leaf)
                    g = g + torch.autograd.grad(loss * (entry.weight * s.clip_guidance_scale / s.cutn_batches),
                                                leaf)[0]
                    value = value + loss.detach() / s.cutn_batches
                last[f"clip{k}"] = value
            other = leaf.new_zeros(())
            if s.tv_scale:
                last["tv"] = tv_loss(leaf).sum()
                other = other + last["tv"] * s.tv_scale
            if s.sat_scale:
                last["sat"] = (leaf - leaf.clamp(-1, 1)).abs().mean()
                other = other + last["sat"] * s.sat_scale
            if s.init_scale and self.init is not None:
                last["init"] = (leaf - self.init.to(leaf)).pow(2).mean([1, 2, 3]).sum()
                other = other + last["init"] * s.init_scale
            if other.requires_grad:
                g = g + torch.autograd.grad(other, leaf)[0]
            total = (x_in * g).sum()
            if s.range_scale:
                r = range_loss(x0).sum()
                last["range"] = r.detach()
                total = total + r * s.range_scale
            finite = bool(torch.isfinite(g).all())
            grad = -torch.autograd.grad(total, x)[0] if finite else torch.zeros_like(x)
        last = {k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in last.items()}
        last["nonfinite"] = not finite or not bool(torch.isfinite(grad).all())
        if last["nonfinite"]:
            grad = torch.zeros_like(x)
        self.last = last
        return clamp_grad(grad, s.clamp_max)


def clamp_grad(grad: torch.Tensor, clamp_max: float) -> torch.Tensor:
    """Scale `grad` so its root-mean-square is at most `clamp_max` (0: unchanged)."""
    if not clamp_max:
        return grad
    magnitude = grad.square().mean().sqrt()
    return grad * (magnitude.clamp(max=clamp_max) / magnitude.clamp_min(1e-30))  # a zero gradient stays zero


@dataclass
class GuidanceReport:
    """Losses of one step as plain floats (for progress and details.json)."""

    losses: dict[str, float] = field(default_factory=dict)
    nonfinite: bool = False

    @classmethod
    def of(cls, guidance: ClipGuidance) -> "GuidanceReport":
        last = dict(guidance.last)
        bad = bool(last.pop("nonfinite", False))
        return cls({k: float(v) for k, v in last.items()}, bad)
