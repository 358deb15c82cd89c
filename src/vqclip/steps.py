"""What every engine reports: one `StepInfo` per step (progress, and a progress-video frame when due) and one
`Result` per run. Plain dataclasses, no torch: the run skeleton, the front ends and every engine share them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class StepInfo:
    """Sent to the progress callback after each step."""

    step: int  # global steps done after this update
    index: int  # 1-based step within this run
    total: int  # steps planned for this run
    loss: float
    losses: dict[str, float]
    seconds: float
    frame: Any = None  # [3, H, W] in [0, 1]: the image *before* this update, when a video frame is due
    frame_step: int | None = None
    skipped: bool = False  # the loss or gradient was not finite: the update was not applied


@dataclass
class Result:
    """What a run (or the part of it done before a failure) made."""

    image: Any  # [3, H, W] in [0, 1], CPU: the final picture
    steps_done: int
    global_step: int
    losses: list[float] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    stopped: bool = False  # a stop request ended it early
    skipped_steps: list[int] = field(default_factory=list)  # global step numbers whose update was skipped


__all__ = ["StepInfo", "Result"]
