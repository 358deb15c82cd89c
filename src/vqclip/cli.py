"""The `vqclip` command line (Typer). Parses flags, owns Rich progress and files; the engine stays pure.

Heavy imports (torch, open_clip) happen inside the commands that need them, so `vqclip --help`,
`vqclip runs …` and `vqclip gallery build` start fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from vqclip import __version__, hugepages
from vqclip import cli_options as O
from vqclip.cli_common import CONTEXT, err_console, handle_errors, out_console
from vqclip.cli_continue import continue_run
from vqclip.cli_gallery import app as gallery_app
from vqclip.cli_runs import app as runs_app
from vqclip.cli_weights import app as weights_app

app = typer.Typer(
    help="VQGAN-CLIP art from the command line.",
    context_settings=CONTEXT,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
app.add_typer(weights_app, name="weights", help="List, download, verify and remove VQGAN weights.")
app.add_typer(runs_app, name="runs", help="List and inspect run folders.")
app.command("continue", context_settings=CONTEXT)(continue_run)
app.add_typer(gallery_app, name="gallery", help="Build a static, offline HTML gallery of runs.")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"vqclip {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    """VQGAN-CLIP art from the command line."""


def report_outcome(outcome: object) -> None:
    """The closing lines of a run: id, status, folder (stdout, so scripts can read them)."""
    o = outcome  # RunOutcome
    steps = f"{o.steps_done} step{'s' if o.steps_done != 1 else ''}"  # type: ignore[attr-defined]
    out_console.print(f"Run {o.id} {o.status}: {steps} (total {o.global_step}) in "  # type: ignore[attr-defined]
                      f"{o.details['timings']['total_s']:.1f} s")  # type: ignore[attr-defined]
    out_console.print(f"{o.path}{'/'}output.png")  # type: ignore[attr-defined]


@app.command(context_settings=CONTEXT)
@handle_errors
def generate(
    prompt: Optional[str] = typer.Argument(None, help='Text prompts: "text[:weight[:stop]] | …".'),
    image_prompt: Optional[List[str]] = O.IMAGE_PROMPT,
    noise_prompt: Optional[List[str]] = O.NOISE_PROMPT,
    init_image: Optional[str] = O.INIT_IMAGE,
    size: Optional[str] = O.SIZE,
    steps: Optional[int] = O.STEPS,
    seed: Optional[int] = O.SEED,
    model: Optional[str] = O.MODEL,
    clip_model: Optional[str] = O.CLIP_MODEL,
    clip_pretrained: Optional[str] = O.CLIP_PRETRAINED,
    cutn: Optional[int] = O.CUTN,
    cut_pow: Optional[float] = O.CUT_POW,
    augment: Optional[bool] = O.AUGMENT,
    noise_fac: Optional[float] = O.NOISE_FAC,
    optimizer: Optional[str] = O.OPTIMIZER,
    lr: Optional[float] = O.LR,
    init_weight: Optional[float] = O.INIT_WEIGHT,
    init_weight_decay: Optional[float] = O.INIT_WEIGHT_DECAY,
    init_weight_decay_every: Optional[int] = O.INIT_WEIGHT_DECAY_EVERY,
    tv_weight: Optional[float] = O.TV_WEIGHT,
    save_every: Optional[int] = O.SAVE_EVERY,
    fps: Optional[int] = O.FPS,
    device: Optional[str] = O.DEVICE,
    precision: Optional[str] = O.PRECISION,
    low_memory: Optional[bool] = O.LOW_MEMORY,
    compile: Optional[bool] = O.COMPILE,
    config: Optional[Path] = O.CONFIG,
    output_dir: Path = O.OUTPUT_DIR,
    weights_dir: Optional[Path] = O.WEIGHTS_DIR,
    no_download: bool = O.NO_DOWNLOAD,
    trust_checkpoint: Optional[List[Path]] = O.TRUST,
    quiet: bool = O.QUIET,
    then: Optional[List[str]] = typer.Option(
        None, "--then", metavar="PROMPT",
        help="Continue with this prompt as a further stage (repeatable); each stage is its own run folder. "
             'A story prompt "a ^ b ^ c" does the same.'),
    stage_steps: Optional[int] = typer.Option(
        None, "--stage-steps", help="Steps per stage (the first stage too, unless --steps is given)."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the estimated peak memory for this size/cutn/model and exit."),
) -> None:
    """Make an image from weighted prompts and save it as a new run folder.

    Example:

        vqclip generate "A sunny countryside with a Collie:100 | wild flowers:30 | roses:-30" --size 480x480 --steps 300

    Stages in one command (one chained run folder per stage, plus a combined video):

        vqclip generate "Backyard in spring" --then "Backyard in summer" --then "Backyard in autumn" --stage-steps 100
    """
    from vqclip.config import build_config
    from vqclip.cli_progress import RichReporter, StopOnInterrupt
    from vqclip.pipeline import RunRequest, execute

    cfg = build_config(config, O.overrides(
        size, prompt=prompt, image_prompts=image_prompt, noise_prompts=noise_prompt, init_image=init_image,
        steps=steps, seed=seed, model=model, clip_model=clip_model, clip_pretrained=clip_pretrained, cutn=cutn,
        cut_pow=cut_pow, augment=augment, noise_fac=noise_fac, optimizer=optimizer, lr=lr,
        init_weight=init_weight, init_weight_decay=init_weight_decay,
        init_weight_decay_every=init_weight_decay_every, tv_weight=tv_weight, save_every=save_every, fps=fps,
        device=device, precision=precision, low_memory=low_memory, compile=compile))
    if dry_run:
        from vqclip.memory import dry_run as print_estimate

        print_estimate(cfg, weights_dir=weights_dir, console=out_console)
        return
    if then or "^" in cfg.prompt:
        from vqclip.chain import run_stages

        if stage_steps is not None and steps is None:  # --stage-steps alone sets every stage, the first too
            cfg = cfg.model_copy(update={"steps": stage_steps})
        code = run_stages(cfg, list(then or []), stage_steps, output_dir=output_dir, weights_dir=weights_dir,
                          download=not no_download, trusted=list(trust_checkpoint or []), quiet=quiet)
        if code:
            raise typer.Exit(code)
        return
    with StopOnInterrupt() as stop:
        outcome = execute(RunRequest(config=cfg, output_dir=output_dir, weights_dir=weights_dir,
                                     download=not no_download, trusted=list(trust_checkpoint or []),
                                     should_stop=stop), RichReporter(quiet=quiet))
    report_outcome(outcome)
    if outcome.status == "interrupted":
        err_console.print("Interrupted: the partial run above was saved; `vqclip continue` picks it up.")
        raise typer.Exit(130)


@app.command(context_settings=CONTEXT)
@handle_errors
def selftest(
    keep: Optional[Path] = typer.Option(None, "--keep", help="Keep the test run folder here instead of a temp dir."),
    steps: int = typer.Option(6, "--steps", help="Steps to run."),
    device: str = typer.Option("auto", "--device", help="Device to test: auto, cpu, cuda, mps."),
) -> None:
    """Verify an install offline in seconds: tiny random models in the real file formats, the whole pipeline.

    Example:

        vqclip selftest
    """
    from vqclip.selftest import run_selftest

    ok = run_selftest(keep=keep, steps=steps, device=device, console=out_console)
    if not ok:
        raise typer.Exit(1)


def main() -> None:
    hugepages.enable()  # before anything imports torch
    app()


if __name__ == "__main__":
    main()
