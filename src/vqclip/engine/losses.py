"""Losses of the VQGAN-CLIP notebook (Crowson 2021): spherical-distance prompts with weight and stop, TV on
pixels, MSE to the initial latent (anchored to the *initial* z, not to zero, which greys images out)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vqclip.engine.ops import replace_grad


def spherical_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared great-circle distance `2·arcsin(‖n(a) − n(b)‖/2)²` between normalised embeddings."""
    a = F.normalize(a, dim=-1)
    b = F.normalize(b, dim=-1)
    return (a - b).norm(dim=-1).div(2).arcsin().pow(2).mul(2)


class Prompt:
    """A target set of embeddings with a weight (negative pushes away) and a stop distance. `text` is the whole
    text of a text prompt (None for image and noise prompts): the run's CLIP score reads it with `embeds`."""

    def __init__(self, embeds: torch.Tensor, weight: float = 1.0, stop: float = float("-inf"),
                 label: str = "", text: str | None = None) -> None:
        self.embeds = embeds.detach()
        self.weight = float(weight)
        self.stop = float(stop)
        self.label = label
        self.text = text

    @property
    def is_text(self) -> bool:
        return self.text is not None

    def __call__(self, image_embeds: torch.Tensor) -> torch.Tensor:
        d = spherical_dist(image_embeds[:, None, :], self.embeds[None, :, :])  # [cutn, targets]
        d = d * (1.0 if self.weight >= 0 else -1.0)
        floor = torch.full_like(d, self.stop)
        return abs(self.weight) * replace_grad(d, torch.maximum(d, floor)).mean()


def tv_loss(img: torch.Tensor) -> torch.Tensor:
    """Total variation of an image batch [B, C, H, W] (mean squared neighbour differences)."""
    dx = img[..., :, 1:] - img[..., :, :-1]
    dy = img[..., 1:, :] - img[..., :-1, :]
    return dx.pow(2).mean() + dy.pow(2).mean()


def init_weight_at(step: int, weight: float, decay: float, every: int) -> float:
    """MSE-to-init weight after `step` steps: minus `decay` every `every` steps, floored at 0 (seed app)."""
    if every <= 0 or decay <= 0:
        return weight
    return max(0.0, weight - decay * (step // every))
