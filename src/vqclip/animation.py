"""What an animation is, apart from the run settings it shares with `generate`: how many frames, how many steps
each, and the camera move between frames as keyframed schedules (see `vqclip.schedules`).

Stored in the run's details.json under `animation`, with what was done (frames done, per-frame loss and time),
so `vqclip continue RUN --frames M` carries the schedules on from the frame the run stopped at.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from vqclip.schedules import Schedule, ScheduleError, parse_schedule

BORDERS = ("wrap", "reflect", "smear", "black")
SCHEDULES = {  # field → (flag, lower bound (exclusive) or None, what it means)
    "zoom": ("--zoom", 0.0, "scale per frame about the centre (1.0 = none, 1.02 = 2% closer each frame)"),
    "angle": ("--angle", None, "degrees per frame, counter-clockwise"),
    "translate_x": ("--translate-x", None, "pixels per frame to the right (negative: left)"),
    "translate_y": ("--translate-y", None, "pixels per frame down (negative: up)"),
}


class FrameStat(BaseModel):
    """One frame: the global step it ended at, its last loss (null if not finite) and its wall time."""

    model_config = ConfigDict(extra="allow")

    frame: int
    step: int
    loss: float | None = None
    seconds: float | None = None


class Animation(BaseModel):
    """The animation settings of a run, and (once it ran) how far it got."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_assignment=False)

    frames: int = Field(120, ge=1, le=100_000, description="Frames to make.")
    steps_per_frame: int = Field(10, ge=1, le=100_000, description="Optimiser steps per frame.")
    pre_steps: int | None = Field(None, ge=0, le=1_000_000,
                                  description="Steps before the first frame (empty = --steps-per-frame).")
    zoom: str = Field("1.0", description=SCHEDULES["zoom"][2])
    angle: str = Field("0", description=SCHEDULES["angle"][2])
    translate_x: str = Field("0", description=SCHEDULES["translate_x"][2])
    translate_y: str = Field("0", description=SCHEDULES["translate_y"][2])
    border: Literal["wrap", "reflect", "smear", "black"] = Field(
        "wrap", description="What the warp shows beyond the edges: wrap, reflect, smear (edge pixels) or black.")
    interpolate: int = Field(1, ge=1, le=8, description="Also write a video with N times the frame rate "
                                                        "(ffmpeg motion interpolation); 1 = none.")
    reset_optimizer: bool = Field(True, description="Start the optimiser afresh every frame.")
    story_frames: int | None = Field(None, ge=1, le=100_000,
                                     description="Frames a story prompt's stages are spread over (the first plan).")
    frames_done: int = Field(0, ge=0)
    per_frame: list[FrameStat] = Field(default_factory=list)

    @field_validator("zoom", "angle", "translate_x", "translate_y", mode="before")
    @classmethod
    def _check_schedule(cls, value: object, info: object) -> str:
        name = getattr(info, "field_name", "")
        flag, minimum, _ = SCHEDULES[name]
        text = str(value) if isinstance(value, (int, float, str)) and not isinstance(value, bool) else None
        if text is None:
            raise ValueError(f"{flag}: give a number or keyframes \"0:(1.0), 60:(1.04)\"")
        try:
            parse_schedule(text, minimum=minimum)
        except ScheduleError as e:
            raise ValueError(f"{flag} {text!r}: {e}") from None
        return text.strip()

    @property
    def first_steps(self) -> int:
        return self.steps_per_frame if self.pre_steps is None else self.pre_steps

    def schedules(self) -> dict[str, Schedule]:
        return {name: parse_schedule(getattr(self, name), minimum=SCHEDULES[name][1]) for name in SCHEDULES}

    def move(self, frame: int) -> tuple[float, float, float, float]:
        """(zoom, angle, translate_x, translate_y) of the step into `frame`."""
        s = self.schedules()
        return s["zoom"].at(frame), s["angle"].at(frame), s["translate_x"].at(frame), s["translate_y"].at(frame)

    def steps_planned(self) -> int:
        return self.first_steps + (self.frames - 1) * self.steps_per_frame


def story_stage(frame: int, frames: int, stages: int) -> int:
    """The story stage (0-based) a frame belongs to when `stages` prompts are spread evenly over `frames`; frames
    past the planned ones (an extension) stay in the last stage."""
    if stages <= 1:
        return 0
    return min(stages - 1, frame * stages // max(1, frames))
