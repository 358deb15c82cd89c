"""CLIP ensembles for the VQGAN loop (`--clip` given more than once, or with a weight): several CLIP models judge
the same cutouts, each through its own prompt embeddings, and a prompt's loss is the weighted sum of its loss
under each model (as Disco Diffusion sums ViT-B/32, ViT-B/16 and RN50; here for VQGAN-CLIP too).

- The cutouts are cut once, at the input size of the first model with a weight above 0, and resized (bilinear,
  antialiased when shrinking) for a model whose input size differs; each model normalises them with its own
  mean and std.
- A model of weight 0 costs nothing in the loop (it still serves the CLIP score when it is the first), so a run
  with `A:0` and `B:1` takes exactly the steps of a run with B alone.
- A single CLIP of weight 1 is no ensemble: the loop takes the plain path, number for number as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from vqclip.engine.losses import Prompt


@dataclass
class Member:
    """One CLIP model of an ensemble and the weight of its part of the prompt loss."""

    clip: Any  # vqclip.engine.clip.ClipModel
    weight: float


class EnsemblePrompt(Prompt):
    """One prompt embedded by every CLIP of an ensemble: `per_model[i]` is the prompt as model i embedded it
    (same weight, stop and label). As a plain Prompt it is the first model's, which is what the CLIP score reads;
    the loop scores it per model, never through `__call__`."""

    def __init__(self, per_model: Sequence[Prompt]) -> None:
        first = per_model[0]
        super().__init__(first.embeds, first.weight, first.stop, first.label, first.text)
        self.per_model = list(per_model)

    def __call__(self, image_embeds: torch.Tensor) -> torch.Tensor:
        raise TypeError("an ensemble prompt is scored per model: call .per_model[i] with model i's embeddings")


def is_ensemble(members: Sequence[Member]) -> bool:
    """Whether these members need the ensemble path (more than one model, or one whose weight is not 1)."""
    return len(members) != 1 or members[0].weight != 1.0


def zip_prompts(per_model: Sequence[Sequence[Prompt]]) -> list[EnsemblePrompt]:
    """Each model's prompts (built from the same texts, images and noises, so in the same order) as one list of
    ensemble prompts."""
    lengths = {len(p) for p in per_model}
    if len(lengths) != 1:
        raise ValueError(f"the models of an ensemble embedded different numbers of prompts ({sorted(lengths)})")
    return [EnsemblePrompt(list(group)) for group in zip(*per_model)]


def cut_size(members: Sequence[Member]) -> int:
    """The side the cutouts are cut at: the input size of the first model that takes part (weight above 0)."""
    active = [m for m in members if m.weight > 0] or list(members)
    return int(active[0].clip.input_size)


def model_input(cuts: torch.Tensor, clip: Any) -> torch.Tensor:
    """Cutouts in [0, 1] (not yet normalised) as `clip` takes them: resized to its input size when it differs,
    normalised with its mean and std. The gradient flows back to `cuts`."""
    size = int(clip.input_size)
    if tuple(cuts.shape[-2:]) != (size, size):
        shrink = size < cuts.shape[-1]
        cuts = F.interpolate(cuts, size=(size, size), mode="bilinear", align_corners=False,
                             antialias=shrink and cuts.device.type != "mps")
    return clip.normalize(cuts)


__all__ = ["Member", "EnsemblePrompt", "is_ensemble", "zip_prompts", "cut_size", "model_input"]
