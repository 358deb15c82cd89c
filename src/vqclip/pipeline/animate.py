"""Animations as runs: the request for a new animation, and for the next frames of one (the work itself is
the animation engine's, `vqclip.engines.animation`, driven by the one run skeleton)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from vqclip.animation import Animation
from vqclip.config import RunConfig
from vqclip.pipeline.request import Inputs, Reporter, RunOutcome, RunRequest


def animation_request(config: RunConfig, animation: Animation, *, output_dir: Path = Path("output"),
                      inputs: Inputs | None = None, should_stop: Callable[[], bool] | None = None,
                      models_cache: Any = None) -> RunRequest:
    """A new animation (`config.prompt` may be a story "a ^ b ^ c", spread over the frames)."""
    return RunRequest(config=config.model_copy(update={"engine": "animation"}), output_dir=output_dir,
                      inputs=inputs or Inputs(), options={"animation": animation}, should_stop=should_stop,
                      models_cache=models_cache)


def animate(config: RunConfig, animation: Animation, *, output_dir: Path = Path("output"),
            inputs: Inputs | None = None, should_stop: Callable[[], bool] | None = None,
            reporter: Reporter | None = None) -> RunOutcome:
    """Make an animation and leave a complete run folder, or nothing at all."""
    from vqclip.pipeline.execute import execute

    return execute(animation_request(config, animation, output_dir=output_dir, inputs=inputs,
                                     should_stop=should_stop), reporter)


__all__ = ["animation_request", "animate"]
