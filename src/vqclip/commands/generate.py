"""`vqclip generate`: one run, or a chain of stages, from weighted prompts."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from vqclip.commands import options as O
from vqclip.commands.common import handle_errors


@handle_errors
@O.run_options()
def generate(
    prompt: Optional[str] = typer.Argument(None, help='Text prompts: "text[:weight[:stop]] | …".'),
    output_dir: Path = O.OUTPUT_DIR,
    then: Optional[List[str]] = typer.Option(
        None, "--then", metavar="PROMPT",
        help="Continue with this prompt as a further stage (repeatable); each stage is its own run folder. "
             'A story prompt "a ^ b ^ c" does the same.'),
    stage_steps: Optional[int] = typer.Option(
        None, "--stage-steps", min=1, max=1_000_000, help="Steps per stage (the first stage too, unless --steps is given)."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the estimated peak memory for this size/cutn/model and exit."),
    *,
    flags: O.RunFlags,
) -> None:
    """Make an image from weighted prompts and save it as a new run folder.

    Example:

        vqclip generate "A sunny countryside with a Collie:100 | wild flowers:30 | roses:-30" --size 480x480 --steps 300

    Stages in one command (one chained run folder per stage, plus a combined video):

        vqclip generate "Backyard in spring" --then "Backyard in summer" --then "Backyard in autumn" --stage-steps 100
    """
    from vqclip.commands.progress import RichReporter, StopOnInterrupt, report_outcome, report_interrupted
    from vqclip.config import build_config
    from vqclip.pipeline.execute import RunRequest, execute

    cfg = build_config(flags.config, flags.overrides(prompt=prompt))
    if dry_run:
        from vqclip.commands.estimate import show_estimate

        show_estimate(cfg, weights_dir=flags.weights_dir)
        return
    O.check_inputs(cfg, output_dir)
    quiet, inputs = flags.quiet, flags.inputs
    if then or "^" in cfg.prompt:
        if stage_steps is not None and flags.given.get("steps") is None:  # --stage-steps alone sets every stage, the first too
            cfg = cfg.model_copy(update={"steps": stage_steps})
        _stages(cfg, list(then or []), stage_steps, output_dir=output_dir, inputs=inputs, quiet=quiet)
        return
    import vqclip.engine  # noqa: F401  torch loads here, where a Ctrl-C simply ends the command (see StopOnInterrupt)

    with StopOnInterrupt() as stop:
        outcome = execute(RunRequest(config=cfg, output_dir=output_dir, inputs=inputs, should_stop=stop),
                          RichReporter(quiet=quiet, stop=stop))
    report_outcome(outcome)
    if outcome.status == "interrupted":
        report_interrupted(stop, "the partial run above was saved; `vqclip continue` picks it up.")


def _stages(cfg: object, then: list[str], stage_steps: Optional[int], *, output_dir: Path, inputs: object,
            quiet: bool) -> None:
    """A chain of stages: a header line per stage, the outcome of each, the combined video at the end."""
    from rich.markup import escape

    from vqclip.commands.common import err_console, out_console, safe
    from vqclip.commands.progress import RichReporter, StopOnInterrupt, report_interrupted, report_outcome
    from vqclip.pipeline.stages import plan_stages, run_stages

    plan = plan_stages(cfg, then, stage_steps)  # type: ignore[arg-type]
    import vqclip.engine  # noqa: F401  torch loads here, where a Ctrl-C simply ends the command (see StopOnInterrupt)

    def reporter_for(index: int, total: int, prompt: str) -> RichReporter:
        label = f"stage {index + 1}/{total}"
        err_console.print(f"[bold]{label}:[/] {escape(safe(prompt))}", highlight=False)
        return RichReporter(quiet=quiet, label=label, stop=stop)  # until this stage steps, a Ctrl-C ends the chain

    with StopOnInterrupt() as stop:
        result = run_stages(plan, output_dir=output_dir, inputs=inputs,  # type: ignore[arg-type]
                            should_stop=stop, reporter_for=reporter_for,
                            on_outcome=report_outcome)
    if result.video is not None:
        out_console.print(f"Chain video ({len(result.outcomes)} stages): {escape(safe(result.video))}")
    if result.interrupted:
        skipped = result.total - len(result.outcomes)
        later = f", {skipped} later stage(s) skipped" if skipped else ""
        report_interrupted(stop, f"stage {len(result.outcomes)} was saved{later}; "
                                 f"`vqclip continue {result.outcomes[-1].id}` picks it up.")
