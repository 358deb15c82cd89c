"""`vqclip generate`: one run, or a chain of stages, from weighted prompts."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from vqclip.commands import options as O
from vqclip.commands.common import handle_errors


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
        None, "--stage-steps", min=1, max=1_000_000, help="Steps per stage (the first stage too, unless --steps is given)."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the estimated peak memory for this size/cutn/model and exit."),
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

    cfg = build_config(config, O.overrides(
        size, prompt=prompt, image_prompts=image_prompt, noise_prompts=noise_prompt, init_image=init_image,
        steps=steps, seed=seed, model=model, clip_model=clip_model, clip_pretrained=clip_pretrained, cutn=cutn,
        cut_pow=cut_pow, augment=augment, noise_fac=noise_fac, optimizer=optimizer, lr=lr,
        init_weight=init_weight, init_weight_decay=init_weight_decay,
        init_weight_decay_every=init_weight_decay_every, tv_weight=tv_weight, save_every=save_every, fps=fps,
        device=device, precision=precision, low_memory=low_memory, compile=compile))
    if dry_run:
        from vqclip.commands.estimate import show_estimate

        show_estimate(cfg, weights_dir=weights_dir)
        return
    _check_paths(cfg, output_dir)
    trusted = list(trust_checkpoint or [])
    if then or "^" in cfg.prompt:
        if stage_steps is not None and steps is None:  # --stage-steps alone sets every stage, the first too
            cfg = cfg.model_copy(update={"steps": stage_steps})
        _stages(cfg, list(then or []), stage_steps, output_dir=output_dir, weights_dir=weights_dir,
                download=not no_download, trusted=trusted, quiet=quiet)
        return
    import vqclip.engine  # noqa: F401  torch loads here, where a Ctrl-C simply ends the command (see StopOnInterrupt)

    with StopOnInterrupt() as stop:
        outcome = execute(RunRequest(config=cfg, output_dir=output_dir, weights_dir=weights_dir,
                                     download=not no_download, trusted=trusted, should_stop=stop),
                          RichReporter(quiet=quiet, stop=stop))
    report_outcome(outcome)
    if outcome.status == "interrupted":
        report_interrupted(stop, "the partial run above was saved; `vqclip continue` picks it up.")


def _check_paths(cfg: object, output_dir: Path) -> None:
    """Input images and the output folder that cannot be what they should (a folder, a FIFO, missing): one line
    now, before torch and the models load (the pipeline checks them again, and reads the images)."""
    from vqclip.errors import VqclipError
    from vqclip.files import path_problem
    from vqclip.runs import check_output_dir

    refs = [("init image", cfg.init_image)] if cfg.init_image else []  # type: ignore[attr-defined]
    refs += [("image prompt", spec.path) for spec in cfg.image_prompt_specs]  # type: ignore[attr-defined]
    for what, ref in refs:
        if ref.startswith(("http://", "https://")):
            continue
        problem = path_problem(Path(ref).expanduser())
        if problem is not None:
            problem = "not found" if problem == "does not exist" else problem
            raise VqclipError(f"{what} {ref} {problem}; check the path")
    check_output_dir(output_dir)


def _stages(cfg: object, then: list[str], stage_steps: Optional[int], *, output_dir: Path,
            weights_dir: Optional[Path], download: bool, trusted: list[Path], quiet: bool) -> None:
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
        stop.armed = False  # the stages before are saved: until this one steps, a Ctrl-C ends the chain at once
        return RichReporter(quiet=quiet, label=label, stop=stop)

    with StopOnInterrupt() as stop:
        result = run_stages(plan, output_dir=output_dir, weights_dir=weights_dir, download=download,
                            trusted=trusted, should_stop=stop, reporter_for=reporter_for,
                            on_outcome=report_outcome)
    if result.video is not None:
        out_console.print(f"Chain video ({len(result.outcomes)} stages): {escape(safe(result.video))}")
    if result.interrupted:
        skipped = result.total - len(result.outcomes)
        later = f", {skipped} later stage(s) skipped" if skipped else ""
        report_interrupted(stop, f"stage {len(result.outcomes)} was saved{later}; "
                                 f"`vqclip continue {result.outcomes[-1].id}` picks it up.")
