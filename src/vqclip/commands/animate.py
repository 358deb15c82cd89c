"""`vqclip animate`: a zooming, turning, panning video from weighted prompts, one run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from vqclip.commands import options as O
from vqclip.commands.common import handle_errors

SCHEDULE_HELP = 'a number, or keyframes "FRAME:(VALUE), …" (linear between keys, held after the last)'


@handle_errors
@O.run_options(skip=("steps", "save_every"))
def animate(
    prompt: Optional[str] = typer.Argument(None, help='Text prompts: "text[:weight[:stop]] | …"; a story '
                                                      '"a ^ b ^ c" spreads its stages evenly over the frames.'),
    frames: int = typer.Option(120, "--frames", "-f", min=1, max=100_000, help="Frames to make."),
    steps_per_frame: int = typer.Option(10, "--steps-per-frame", min=1, max=100_000,
                                        help="Optimiser steps per frame."),
    pre_steps: Optional[int] = typer.Option(None, "--pre-steps", min=0, max=1_000_000,
                                            help="Steps before the first frame [default: --steps-per-frame]."),
    zoom: str = typer.Option("1.0", "--zoom", help=f"Scale per frame about the centre (1.0 = none), {SCHEDULE_HELP}."),
    angle: str = typer.Option("0", "--angle", help=f"Degrees per frame, counter-clockwise; {SCHEDULE_HELP}."),
    translate_x: str = typer.Option("0", "--translate-x", help=f"Pixels per frame to the right; {SCHEDULE_HELP}."),
    translate_y: str = typer.Option("0", "--translate-y", help=f"Pixels per frame down; {SCHEDULE_HELP}."),
    border: str = typer.Option("wrap", "--border", metavar="wrap|reflect|smear|black",
                               help="What shows beyond the edges after a move."),
    interpolate: int = typer.Option(1, "--interpolate", min=1, max=8,
                                    help="Also write anim_xN.mp4 at N times the frame rate (motion interpolation)."),
    reset_optimizer: bool = typer.Option(True, "--reset-optimizer/--keep-optimizer",
                                         help="Start the optimiser afresh every frame, or keep its moments."),
    output_dir: Path = O.OUTPUT_DIR,
    *,
    flags: O.RunFlags,
) -> None:
    """Make a video: each frame is the last one moved (zoom, turn, pan), re-encoded and iterated further.

    Schedules take a constant (1.02) or keyframes "0:(1.0), 60:(1.04)", linearly interpolated and held after
    the last key. Ctrl-C finishes the current frame and saves; `vqclip continue RUN --frames M` adds M frames.

    Example:

        vqclip animate "a forest ^ a desert at dusk" --frames 120 --steps-per-frame 10 --zoom "0:(1.0), 60:(1.04)" --angle "0:(0), 120:(3)" --translate-y -2 --fps 12 --interpolate 2 --size 384x256 --seed 7
    """
    from vqclip.commands.progress import RichReporter, StopOnInterrupt, report_interrupted, report_outcome
    from vqclip.pipeline.animate import animate as run_animation

    cfg, animation = animation_settings(
        flags.config, flags.overrides(prompt=prompt, steps=steps_per_frame),
        dict(frames=frames, steps_per_frame=steps_per_frame, pre_steps=pre_steps, zoom=zoom, angle=angle,
             translate_x=translate_x, translate_y=translate_y, border=border.strip().lower(),
             interpolate=interpolate, reset_optimizer=reset_optimizer))
    O.check_inputs(cfg, output_dir)
    import vqclip.engine  # noqa: F401  torch loads here, where a Ctrl-C simply ends the command (see StopOnInterrupt)

    with StopOnInterrupt(unit="frame") as stop:
        outcome = run_animation(cfg, animation, output_dir=output_dir, inputs=flags.inputs, should_stop=stop,
                                reporter=RichReporter(quiet=flags.quiet, label="animating", stop=stop))
    report_outcome(outcome)
    if outcome.status == "interrupted":
        done = (outcome.record.animation or {}).get("frames_done")
        report_interrupted(stop, f"{done} frames were saved; `vqclip continue {outcome.id}` makes the rest.")


def animation_settings(config_file: Optional[Path], overrides: dict[str, Any], values: dict[str, Any]) -> tuple[Any, Any]:
    """The run settings and the animation settings, every story stage and schedule checked up front."""
    from pydantic import ValidationError

    from vqclip.animation import Animation
    from vqclip.config import build_config, validation_lines
    from vqclip.errors import UsageError

    cfg = build_config(config_file, overrides)  # RunConfig checks every stage of a story prompt on its own
    try:
        animation = Animation.model_validate(values)
    except ValidationError as e:
        lines = []
        for line in validation_lines(e):
            field, _, message = line.partition(": ")
            lines.append(message if message.startswith("--") else f"--{field.replace('_', '-')}: {message}")
        raise UsageError("; ".join(lines)) from None
    return cfg, animation
