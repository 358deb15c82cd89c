"""Engines, the things that make pictures, behind one small interface (`vqclip.engines.base.Engine`) and one
registry row each. The run skeleton (`vqclip.pipeline.execute`), `continue` and `batch` find an engine here by
the name in `RunConfig.engine`; adding one touches no command, run-folder or batch code.

A row names its module lazily (importing this package loads no torch, so config validation and `--help` stay
fast). The module (or any object) it leads to provides:
- `build(setup: base.Setup) -> base.Engine` — load what the run needs (weights, models, inputs) and return the
  engine, ready to `start`;
- optionally `check_state(path, state) -> None` — refuse (BadRun, one line) a saved state.pt it cannot resume;
- optionally `plan_continue(plan, setup) -> None` — engine-specific checks and choices when continuing a run
  (`vqclip.pipeline.resume.Plan`), before any model loads.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from vqclip.errors import UsageError


@dataclass(frozen=True)
class EngineRow:
    name: str
    summary: str
    load: Callable[[], Any]  # the engine's kind: a module or object with build (and maybe check_state, …)


def _module(path: str) -> Callable[[], Any]:
    return lambda: importlib.import_module(path)


ENGINES: dict[str, EngineRow] = {}


def register(row: EngineRow) -> EngineRow:
    """Add (or replace) an engine row; returns it."""
    ENGINES[row.name] = row
    return row


def engine_kind(name: str) -> Any:
    """The module/object behind the engine `name`; a one-line usage error naming the known ones otherwise."""
    row = ENGINES.get(name)
    if row is None:
        raise UsageError(f"unknown engine {name!r}; use one of: {', '.join(sorted(ENGINES))}")
    return row.load()


register(EngineRow("vqgan", "VQGAN-CLIP: a VQGAN latent optimised so CLIP likes the picture",
                   _module("vqclip.engines.vqgan")))
register(EngineRow("animation", "VQGAN-CLIP frames, the camera moved between them (zoom, turn, pan)",
                   _module("vqclip.engines.animation")))
register(EngineRow("diffusion", "CLIP-guided diffusion: OpenAI's ImageNet U-Net denoising towards the prompts",
                   _module("vqclip.engines.diffusion")))

__all__ = ["ENGINES", "EngineRow", "engine_kind", "register"]
