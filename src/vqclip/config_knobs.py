"""CLIP models named in a run's settings: `--clip MODEL[/TAG][:WEIGHT]` (repeatable, an ensemble whose losses
are weighted), for both engines."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Annotated

from pydantic import AfterValidator

_WEIGHT = re.compile(r"^(?P<rest>.*?):(?P<weight>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)$")


@dataclass(frozen=True)
class ClipSpec:
    model: str  # an open_clip model name, or a path to a model-config JSON
    pretrained: str  # an open_clip tag, or a checkpoint path
    weight: float


def parse_clip_spec(text: str, default_pretrained: str = "openai") -> ClipSpec:
    """`MODEL[/TAG][:WEIGHT]` (`ViT-B-16/openai`, `RN50/openai:0.5`), or `CONFIG.json/CHECKPOINT[:WEIGHT]` for a
    model of your own. The weight scales that model's part of the loss (default 1)."""
    spec = text.strip()
    if not spec:
        raise ValueError("an empty --clip; write e.g. ViT-B-16/openai or RN50/openai:0.5")
    weight = 1.0
    m = _WEIGHT.match(spec)
    if m:
        spec, weight = m.group("rest"), float(m.group("weight"))
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"--clip {text.strip()!r}: the weight must be a finite number 0 or more")
    if ".json" in spec.lower():
        cut = spec.lower().index(".json") + len(".json")
        model, tag = spec[:cut], spec[cut:]
        tag = tag[1:] if tag[:1] in ("/", ",") else tag  # one separator: an absolute checkpoint path keeps its /
    else:
        model, _, tag = spec.rpartition("/") if "/" in spec else (spec, "", "")
    if not model:
        raise ValueError(f"--clip {text.strip()!r}: no model name; write e.g. ViT-B-16/openai")
    return ClipSpec(model, tag or default_pretrained, weight)


def _check_clip(value: str) -> str:
    parse_clip_spec(value)
    return value


ClipStr = Annotated[str, AfterValidator(_check_clip)]


__all__ = ["ClipSpec", "ClipStr", "parse_clip_spec"]
