"""The engine's LoopSettings, built from a RunConfig by field name: the one place a run's knobs cross over.

LoopSettings (vqclip.engine.loop) declares the knobs the loop reads under RunConfig's own field names and without
defaults, so a knob's default lives only with RunConfig (and configs/defaults.yaml, which a test holds equal to
it). Its fields with defaults are the ones the pipeline works out itself (compute dtypes, loss scale, low-memory
mode, CLIP chunk); they are never read from the config: RunConfig.low_memory, for one, may be None ("decide").
"""

from __future__ import annotations

from dataclasses import MISSING, fields
from typing import TYPE_CHECKING, Any

from vqclip.engine.loop import LoopSettings

if TYPE_CHECKING:
    from vqclip.config import RunConfig

__all__ = ["settings_from_config", "KNOBS", "DERIVED"]

_RESOLVED = ("width", "height", "seed")  # RunConfig fields the pipeline settles first (floored size, chosen seed)
KNOBS = tuple(f.name for f in fields(LoopSettings) if f.default is MISSING and f.name not in _RESOLVED)
DERIVED = frozenset(f.name for f in fields(LoopSettings) if f.default is not MISSING)


def settings_from_config(cfg: RunConfig, *, width: int | None = None, height: int | None = None,
                         seed: int | None = None, **derived: Any) -> LoopSettings:
    """LoopSettings for `cfg`: every knob by name from the config; `width`, `height` and `seed` as resolved by
    the caller (default: the config's own); `derived` sets the pipeline's own fields (see DERIVED), the rest
    keep the plain fp32, all-in-memory values."""
    unknown = sorted(set(derived) - DERIVED)
    if unknown:
        raise TypeError(f"settings_from_config: {', '.join(unknown)} come from the RunConfig, not from keywords"
                        if set(unknown) <= set(KNOBS) else f"settings_from_config: no setting {unknown[0]!r}")
    seed = cfg.seed if seed is None else seed
    if seed is None:
        raise ValueError("settings_from_config: the config has no seed; pass the one chosen for the run")
    return LoopSettings(width=cfg.width if width is None else width, height=cfg.height if height is None else height,
                        seed=seed, **{name: getattr(cfg, name) for name in KNOBS}, **derived)
