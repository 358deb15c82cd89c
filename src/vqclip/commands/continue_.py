"""`vqclip continue RUN`: a new run folder that picks up where RUN stopped (logic in `vqclip.pipeline.resume`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

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
@O.run_options(skip=("init_image",), diffusion=True)
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
    from vqclip.pipeline.resume import continue_request, plan_continue
    from vqclip.runs import check_output_dir, find_run

    given, inputs, quiet = flags.overrides(prompt=prompt), flags.inputs, flags.quiet
    if resize is not None:
        resize = resize.strip().lower()
    parent = find_run(run, output_dir or Path("output"))
    if output_dir is not None:
        check_output_dir(output_dir)  # the new run goes there: never into a run folder
    record = parent.checked()  # a details.json field of the wrong type: one line naming it, before anything else
    animation = record.animation is not None
    reporter = RichReporter(quiet=quiet, label="animating" if animation else "continuing", intro="" if animation
                            else (f"continuing {parent.id} (stage {parent.stage}, {parent.status}, "
                                  f"step {'?' if record.global_step is None else record.global_step})"))
    # every check that needs no model, before torch loads: a bad flag, --config or saved state is one line
    plan = plan_continue(parent, given, resize=resize, config_file=flags.config, inputs=inputs, reporter=reporter,
                         extra={"frames": frames})
    import vqclip.engine  # noqa: F401  torch loads here, where a Ctrl-C simply ends the command (see StopOnInterrupt)

    with StopOnInterrupt(unit="frame" if animation else "step") as stop:
        reporter.attach(stop)
        for note in plan.notes:
            reporter.note(note)
        from vqclip.pipeline.execute import execute

        outcome = execute(continue_request(plan, output_dir=output_dir or parent.path.parent, inputs=inputs,
                                           should_stop=stop), reporter)
    report_outcome(outcome)
    if outcome.status != "interrupted":
        return
    if animation:
        done = (outcome.record.animation or {}).get("frames_done")
        report_interrupted(stop, f"{done} frames were saved; `vqclip continue {outcome.id}` makes the rest.")
    else:
        report_interrupted(stop, "the partial run above was saved; `vqclip continue` picks it up.")
