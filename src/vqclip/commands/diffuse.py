"""`vqclip diffuse`: CLIP-guided diffusion, a run folder like generate's."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from vqclip.commands import options as O
from vqclip.commands.common import handle_errors


@handle_errors
@O.run_options(skip=O.VQGAN_ONLY, diffusion=True)
def diffuse(
    prompt: Optional[str] = typer.Argument(None, help='Text prompts: "text[:weight[:stop]] | …".'),
    output_dir: Path = O.OUTPUT_DIR,
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the estimated peak memory and exit."),
    *,
    flags: O.RunFlags,
) -> None:
    """Make an image with CLIP-guided diffusion (OpenAI's ImageNet U-Net steered by CLIP) as a new run folder.

    Slower than `generate` and tied to the model's sizes (multiples of 64, best at the model's own 256 or 512),
    with more natural, detailed pictures. --init-image with --skip-steps starts from a picture.

    Example:

        vqclip diffuse "a lighthouse in a storm:1 | blurry:-0.3" --model 256x256_diffusion_uncond --steps 250 --seed 7
    """
    from vqclip.commands.progress import RichReporter, StopOnInterrupt, report_interrupted, report_outcome
    from vqclip.config import build_config
    from vqclip.pipeline.execute import execute
    from vqclip.pipeline.request import RunRequest

    cfg = build_config(flags.config, {**flags.overrides(prompt=prompt), "engine": "diffusion"})
    if dry_run:
        from vqclip.commands.estimate import show_diffusion_estimate

        show_diffusion_estimate(cfg, inputs=flags.inputs)
        return
    O.check_inputs(cfg, output_dir)
    import vqclip.engine  # noqa: F401  torch loads here, where a Ctrl-C simply ends the command (see StopOnInterrupt)

    with StopOnInterrupt() as stop:
        outcome = execute(RunRequest(config=cfg, output_dir=output_dir, inputs=flags.inputs, should_stop=stop),
                          RichReporter(quiet=flags.quiet, label="diffusing", stop=stop))
    report_outcome(outcome)
    if outcome.status == "interrupted":
        report_interrupted(stop, "the partial run above was saved; `vqclip continue` finishes it.")
