"""The CLIP score of a run's final image: how close the picture came to each text prompt, by the run's own CLIP.

How it is measured: the whole image (no cutouts, no augmentation, no noise) is resized to the CLIP image tower's
input size (`ClipModel.input_size`, square: a non-square image is stretched, never cropped, so nothing of it is
left out) with antialiased bicubic interpolation, normalised with CLIP's mean and std, and embedded once by the
image tower in the dtype the run's steps used (`LoopSettings.clip_autocast_dtype`). Each text prompt's embedding
is the one the run optimised towards, stored when the prompts were built (the text tower is released before the
steps, so text is never encoded again).

- per prompt: `score = 100 · max(cos(image, text), 0)`, from 0 (unrelated, or further apart than orthogonal) to
  100 (the same direction), whatever the prompt's weight;
- `summary`: the mean of the scores of the prompts with a **positive** weight, weighted by those weights,
  `Σ wᵢ·scoreᵢ / Σ wᵢ` over `wᵢ > 0`. Prompts with a negative weight are things the image should avoid: they
  are reported with their own score (lower is better there) but kept out of the summary. When every text prompt
  is negative the summary is null;
- no text prompt at all (image or noise prompts only): no score (None).

A score that is not finite (an fp16 overflow) is recorded as null. Scores are rounded to 6 decimals. Scores from
different CLIP models are not comparable; the record names the model (`clip`). Pure: no printing, no files;
torch is imported only when there is something to score.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from vqclip.runfolder.record import PromptScore, Score

SCALE = 100.0
DIGITS = 6


def text_prompts(prompts: Sequence[Any]) -> list[Any]:
    """The text prompts among `prompts` (engine.losses.Prompt objects whose `text` is set)."""
    return [p for p in prompts if getattr(p, "text", None) is not None]


def summary(weights: Sequence[float], scores: Sequence[float]) -> float | None:
    """`Σ wᵢ·sᵢ / Σ wᵢ` over the prompts with `wᵢ > 0`; None when there is none. NaN when a score in it is."""
    pairs = [(w, s) for w, s in zip(weights, scores) if w > 0]
    total = sum(w for w, _ in pairs)
    if not pairs or not total > 0:
        return None
    return sum(w * s for w, s in pairs) / total


def image_embedding(clip: Any, image: Any, device: Any, dtype: Any = None) -> Any:
    """The whole image ([3, H, W] or [1, 3, H, W] in [0, 1], any device) resized to CLIP's input size,
    normalised and embedded: [1, D] fp32 on `device`. No gradient."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        x = image.detach()
        x = (x[None] if x.dim() == 3 else x).to(device, torch.float32)
        size = int(clip.input_size)
        if tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False,
                              antialias=x.device.type != "mps").clamp_(0.0, 1.0)
        return clip.encode_image(clip.normalize(x), dtype).float()


def score_image(clip: Any, prompts: Sequence[Any], image: Any, dtype: Any = None) -> Score | None:
    """The CLIP score (see the module docstring) of `image` against the text prompts among `prompts`, by
    `clip` (a vqclip.engine.clip.ClipModel) computing in `dtype` (None: fp32). None without a text prompt.
    Runs where the prompts' embeddings live; the only wait for the device is the final `.tolist()`."""
    texts = text_prompts(prompts)
    if not texts:
        return None
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        device = texts[0].embeds.device
        embed = image_embedding(clip, image, device, dtype)  # [1, D]
        targets = torch.stack([p.embeds.reshape(-1, p.embeds.shape[-1])[0] for p in texts]).to(device,
                                                                                                torch.float32)
        cos = F.cosine_similarity(embed, targets, dim=-1)  # [P]
        values = cos.clamp(min=0.0).mul(SCALE).tolist()
    weights = [float(p.weight) for p in texts]
    overall = summary(weights, values)
    return Score(summary=_rounded(overall),
                 prompts=[PromptScore(text=p.text, weight=w, score=_rounded(v))
                          for p, w, v in zip(texts, weights, values)])


def _rounded(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(value, DIGITS)


def run_score(clip: Any, prompts: Sequence[Any], image: Any, dtype: Any = None,
              note: Callable[[str], None] | None = None) -> Score | None:
    """`score_image`, for the end of a run: a failure (out of memory, a broken tower) never costs the run; it
    is told to `note` in one line and the score is None."""
    try:
        return score_image(clip, prompts, image, dtype)
    except Exception as e:  # noqa: BLE001 - the run's image and record matter more than its score
        from vqclip.errors import one_line

        if note is not None:
            note(f"no CLIP score for this image ({one_line(e)})")
        return None


def score_text(score: Score | None) -> str | None:
    """The score as the JSON of the PNG text chunk `clip_score` (None: no chunk)."""
    if score is None:
        return None
    import json

    return json.dumps(score.model_dump(mode="json"), allow_nan=False)


__all__ = ["SCALE", "image_embedding", "run_score", "score_image", "score_text", "summary", "text_prompts"]
