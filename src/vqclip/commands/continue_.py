"""`vqclip continue RUN`: a new run folder that picks up where RUN stopped (logic in `vqclip.pipeline.resume`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from vqclip.commands import options as O
from vqclip.commands.common import handle_errors

RESIZE = typer.Option(
    None, "--resize", metavar="crop|pad|stretch",
    help="With a new --size: crop/pad the token grid around its centre (the default does whichever each side "
         "needs; new border tokens are random from the run's seed), or stretch = resize output.png and re-encode "
         "it (also the way to switch --model).")
OUTPUT_DIR = typer.Option(
    None, "--output-dir", "-o",
    help="Where to look RUN up by id (default ./output) and where the new run goes (default: beside RUN).")


@handle_errors
@O.run_options(skip=("init_image",))
def continue_run(
    run: str = typer.Argument(..., help="Run id, unique id prefix, or run-folder path (see `vqclip runs list`)."),
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p",
                                         help='New text prompts, "text[:weight[:stop]] | …".'),
    resize: Optional[str] = RESIZE,
    frames: Optional[int] = typer.Option(None, "--frames", "-f", min=1, max=100_000,
                                         help="An animation: add this many frames (default: finish an "
                                              "interrupted one)."),
    output_dir: Optional[Path] = OUTPUT_DIR,
    *,
    flags: O.RunFlags,
) -> None:
    """Continue a run from its saved latent, optimizer and random state, as a new run folder linked to it.

    Whatever is not given is inherited from RUN's details.json (prompt, size, seed, model, lr, …).

    Exact: `generate --steps 100` then `continue --steps 50` gives the same output.png as `generate --steps 150`.

    A new --size crops or pads the token grid (see --resize). An interrupted RUN finishes its planned steps unless --steps is given. A RUN without state.pt is re-encoded from its output.png, with a notice.

    Example (the four seasons, one stage at a time):

        vqclip generate "Backyard in spring" --steps 100 --seed 7

        vqclip continue 20261125T101500-k3J9aQ2x --prompt "Backyard in summer" --steps 100

        vqclip continue 20261125T1016 --prompt "Backyard in autumn" --size 640x480
    """
    from vqclip.commands.progress import RichReporter, StopOnInterrupt, report_interrupted, report_outcome
    from vqclip.pipeline.resume import continue_run as run_continue
    from vqclip.errors import UsageError
    from vqclip.pipeline.resume import RESIZE_MODES, inherit_config
    from vqclip.runs import find_run

    given, config, weights_dir, quiet = flags.overrides(prompt=prompt), flags.config, flags.weights_dir, flags.quiet
    download, trusted = flags.download, flags.trusted
    if resize is not None:
        resize = resize.strip().lower()
    parent = find_run(run, output_dir or Path("output"))
    record = parent.checked()  # a details.json field of the wrong type: one line naming it, before anything else
    if record.animation is not None:
        _extend_animation(parent, frames, given, output_dir=output_dir, weights_dir=weights_dir,
                          download=download, trusted=trusted, quiet=quiet)
        return
    if frames is not None:
        raise UsageError(f"--frames adds frames to an animation, and {parent.id} is not one; use --steps, or make "
                         "one with `vqclip animate`")
    if resize is not None and resize not in RESIZE_MODES:
        raise UsageError(f"--resize {resize!r}: use crop, pad or stretch")
    inherit_config(parent, given, config)  # a bad flag or --config: one line, before torch loads
    reporter = RichReporter(quiet=quiet, label="continuing", intro=(
        f"continuing {parent.id} (stage {parent.stage}, {parent.status}, "
        f"step {'?' if record.global_step is None else record.global_step})"))
    import vqclip.engine  # noqa: F401  torch loads here, where a Ctrl-C simply ends the command (see StopOnInterrupt)

    with StopOnInterrupt() as stop:
        reporter.attach(stop)
        outcome = run_continue(parent, given, resize=resize, config_file=config, output_dir=output_dir,
                               weights_dir=weights_dir, download=download, trusted=trusted, should_stop=stop,
                               reporter=reporter)
    report_outcome(outcome)
    if outcome.status == "interrupted":
        report_interrupted(stop, "the partial run above was saved; `vqclip continue` picks it up.")


ANIMATION_FLAGS = {"device", "precision"}  # what may change when an animation goes on; the rest carries over


def _extend_animation(parent: Any, frames: Optional[int], flags: dict[str, Any], *, output_dir: Optional[Path],
                      weights_dir: Optional[Path], download: bool, trusted: list[Path], quiet: bool) -> None:
    """`continue ANIMATION [--frames M]`: the next frames, the schedules carried on, a new run folder."""
    from vqclip.commands.progress import RichReporter, StopOnInterrupt, report_interrupted, report_outcome
    from vqclip.errors import UsageError
    from vqclip.pipeline.animate import animate, extension_request

    other = sorted(set(flags) - ANIMATION_FLAGS)
    if other:
        names = ", ".join("--" + ("size" if k in ("width", "height") else k.replace("_", "-")) for k in other)
        raise UsageError(f"{parent.id} is an animation: it goes on with its own settings, so {names} cannot "
                         "change; pass --frames M (and --device or --precision), or start anew with `vqclip animate`")
    reporter = RichReporter(quiet=quiet, label="animating")
    with StopOnInterrupt(unit="frame") as stop:
        req, notes = extension_request(parent, frames, output_dir=output_dir, weights_dir=weights_dir,
                                       download=download, trusted=trusted, should_stop=stop,
                                       device=flags.get("device"), precision=flags.get("precision"))
        reporter.attach(stop)
        for note in notes:
            reporter.note(note)
        outcome = animate(req, reporter)
    report_outcome(outcome)
    if outcome.status == "interrupted":
        done = (outcome.record.animation or {}).get("frames_done")
        report_interrupted(stop, f"{done} frames were saved; `vqclip continue {outcome.id}` makes the rest.")
