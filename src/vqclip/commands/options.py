"""Typer options shared by `generate` and `continue`; help texts come from `vqclip.knobs` (as RunConfig's do)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from vqclip.knobs import field_help  # not vqclip.config: `--help` must not load pydantic


def _o(field: str, *names: str, **kw: Any) -> Any:
    return typer.Option(None, *names, help=field_help(field), show_default=False, **kw)


IMAGE_PROMPT = _o("image_prompts", "--image-prompt", "-i", metavar="PATH[:W[:STOP]]")
NOISE_PROMPT = _o("noise_prompts", "--noise-prompt", metavar="SEED[:W]")
INIT_IMAGE = _o("init_image", "--init-image", metavar="PATH")
SIZE = typer.Option(None, "--size", "-s", metavar="WxH", help="Image size, e.g. 480x480 (floored to the model's factor).")
STEPS = _o("steps", "--steps", "-n")
SEED = _o("seed", "--seed")
MODEL = _o("model", "--model", "-m")
CLIP_MODEL = _o("clip_model", "--clip-model")
CLIP_PRETRAINED = _o("clip_pretrained", "--clip-pretrained")
CUTN = _o("cutn", "--cutn")
CUT_POW = _o("cut_pow", "--cut-pow")
AUGMENT = _o("augment", "--augment/--no-augment")
NOISE_FAC = _o("noise_fac", "--noise-fac")
OPTIMIZER = _o("optimizer", "--optimizer", metavar="adam|adamw|sgd")
LR = _o("lr", "--lr")
INIT_WEIGHT = _o("init_weight", "--init-weight")
INIT_WEIGHT_DECAY = _o("init_weight_decay", "--init-weight-decay")
INIT_WEIGHT_DECAY_EVERY = _o("init_weight_decay_every", "--init-weight-decay-every")
TV_WEIGHT = _o("tv_weight", "--tv-weight")
SAVE_EVERY = _o("save_every", "--save-every")
FPS = _o("fps", "--fps")
DEVICE = _o("device", "--device")
PRECISION = _o("precision", "--precision", metavar="auto|fp32|bf16|fp16")
LOW_MEMORY = _o("low_memory", "--low-memory/--no-low-memory")
COMPILE = _o("compile", "--compile/--no-compile")
CONFIG = typer.Option(None, "--config", "-c", metavar="FILE.yaml", help="A YAML file of settings (flags win).")
OUTPUT_DIR = typer.Option(Path("output"), "--output-dir", "-o", help="Where run folders go.")
WEIGHTS_DIR = typer.Option(None, "--weights-dir", help="Weights folder (default $VQCLIP_HOME or the user cache).")
NO_DOWNLOAD = typer.Option(False, "--no-download", help="Never download weights; fail if they are missing.")
TRUST = typer.Option(None, "--trust-checkpoint", metavar="FILE",
                     help="Allow full unpickling of this checkpoint file (only for files you trust).")
QUIET = typer.Option(False, "--quiet", "-q", help="No progress bar.")


def overrides(size: Optional[str], **values: Any) -> dict[str, Any]:
    """Flags the user actually gave (None = not given), with --size expanded."""
    out = {k: v for k, v in values.items() if v is not None and v != []}
    if size is not None:
        from vqclip.prompts import parse_size
        from vqclip.errors import UsageError

        try:
            out["width"], out["height"] = parse_size(size)
        except ValueError as e:
            raise UsageError(f"--size: {e}") from None
    return out
