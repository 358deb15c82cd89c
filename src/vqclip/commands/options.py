"""Typer options shared by every command that makes a run (generate, continue, animate, batch); help texts come from `vqclip.knobs` (as RunConfig's do)."""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional

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
CLIPS = _o("clips", "--clip", metavar="MODEL/TAG:W")
SAMPLER = _o("sampler", "--sampler", metavar="ddim|plms")
ETA = _o("eta", "--eta")
GUIDANCE_SCALE = _o("guidance_scale", "--guidance-scale")
TV_SCALE = _o("tv_scale", "--tv-scale")
RANGE_SCALE = _o("range_scale", "--range-scale")
SAT_SCALE = _o("sat_scale", "--sat-scale")
INIT_SCALE = _o("init_scale", "--init-scale")
CLAMP_MAX = _o("clamp_max", "--clamp-max")
CUTN_BATCHES = _o("cutn_batches", "--cutn-batches")
OVERVIEW_CUTS = _o("overview_cuts", "--overview-cuts")
SKIP_STEPS = _o("skip_steps", "--skip-steps")
SECONDARY = _o("secondary", "--secondary/--no-secondary")
CLASS_LABEL = _o("class_label", "--class-label")
CONFIG = typer.Option(None, "--config", "-c", metavar="FILE.yaml", help="A YAML file of settings (flags win).")
OUTPUT_DIR = typer.Option(Path("output"), "--output-dir", "-o", help="Where run folders go.")
WEIGHTS_DIR = typer.Option(None, "--weights-dir", help="Weights folder (default $VQCLIP_HOME or the user cache).")
NO_DOWNLOAD = typer.Option(False, "--no-download", help="Never download weights; fail if they are missing.")
TRUST = typer.Option(None, "--trust-checkpoint", metavar="FILE",
                     help="Allow full unpickling of this checkpoint file (only for files you trust).")
QUIET = typer.Option(False, "--quiet", "-q", help="No progress bar.")


# The options every kind of run shares, declared once: (parameter, type, option, RunConfig field or None).
SHARED: list[tuple[str, Any, Any, Optional[str]]] = [
    ("image_prompt", Optional[List[str]], IMAGE_PROMPT, "image_prompts"),
    ("noise_prompt", Optional[List[str]], NOISE_PROMPT, "noise_prompts"),
    ("init_image", Optional[str], INIT_IMAGE, "init_image"),
    ("size", Optional[str], SIZE, None),
    ("steps", Optional[int], STEPS, "steps"),
    ("seed", Optional[int], SEED, "seed"),
    ("model", Optional[str], MODEL, "model"),
    ("clip_model", Optional[str], CLIP_MODEL, "clip_model"),
    ("clip_pretrained", Optional[str], CLIP_PRETRAINED, "clip_pretrained"),
    ("cutn", Optional[int], CUTN, "cutn"),
    ("cut_pow", Optional[float], CUT_POW, "cut_pow"),
    ("augment", Optional[bool], AUGMENT, "augment"),
    ("noise_fac", Optional[float], NOISE_FAC, "noise_fac"),
    ("optimizer", Optional[str], OPTIMIZER, "optimizer"),
    ("lr", Optional[float], LR, "lr"),
    ("init_weight", Optional[float], INIT_WEIGHT, "init_weight"),
    ("init_weight_decay", Optional[float], INIT_WEIGHT_DECAY, "init_weight_decay"),
    ("init_weight_decay_every", Optional[int], INIT_WEIGHT_DECAY_EVERY, "init_weight_decay_every"),
    ("tv_weight", Optional[float], TV_WEIGHT, "tv_weight"),
    ("save_every", Optional[int], SAVE_EVERY, "save_every"),
    ("fps", Optional[int], FPS, "fps"),
    ("device", Optional[str], DEVICE, "device"),
    ("precision", Optional[str], PRECISION, "precision"),
    ("low_memory", Optional[bool], LOW_MEMORY, "low_memory"),
    ("compile", Optional[bool], COMPILE, "compile"),
    ("clip", Optional[List[str]], CLIPS, "clips"),
    ("config", Optional[Path], CONFIG, None),
    ("weights_dir", Optional[Path], WEIGHTS_DIR, None),
    ("no_download", bool, NO_DOWNLOAD, None),
    ("trust_checkpoint", Optional[List[Path]], TRUST, None),
    ("quiet", bool, QUIET, None),
]


# The options of CLIP-guided diffusion (`vqclip diffuse`); with SHARED, less the VQGAN's optimiser knobs.
DIFFUSION: list[tuple[str, Any, Any, Optional[str]]] = [
    ("sampler", Optional[str], SAMPLER, "sampler"),
    ("eta", Optional[float], ETA, "eta"),
    ("guidance_scale", Optional[float], GUIDANCE_SCALE, "guidance_scale"),
    ("tv_scale", Optional[float], TV_SCALE, "tv_scale"),
    ("range_scale", Optional[float], RANGE_SCALE, "range_scale"),
    ("sat_scale", Optional[float], SAT_SCALE, "sat_scale"),
    ("init_scale", Optional[float], INIT_SCALE, "init_scale"),
    ("clamp_max", Optional[float], CLAMP_MAX, "clamp_max"),
    ("cutn_batches", Optional[int], CUTN_BATCHES, "cutn_batches"),
    ("overview_cuts", Optional[int], OVERVIEW_CUTS, "overview_cuts"),
    ("skip_steps", Optional[int], SKIP_STEPS, "skip_steps"),
    ("secondary", Optional[bool], SECONDARY, "secondary"),
    ("class_label", Optional[int], CLASS_LABEL, "class_label"),
]
VQGAN_ONLY = ("optimizer", "lr", "init_weight", "init_weight_decay", "init_weight_decay_every", "tv_weight",
              "compile")


@dataclass
class RunFlags:
    """The shared options as one command got them (None: not given)."""

    given: dict[str, Any]

    def overrides(self, **more: Any) -> dict[str, Any]:
        """RunConfig overrides for what was given (plus `more`, e.g. a prompt argument), --size expanded."""
        values = {field: self.given.get(name) for name, _, _, field in SHARED + DIFFUSION
                  if field and name in self.given}
        return overrides(self.given.get("size"), **values, **more)

    @property
    def config(self) -> Optional[Path]:
        return self.given.get("config")

    @property
    def weights_dir(self) -> Optional[Path]:
        return self.given.get("weights_dir")

    @property
    def inputs(self) -> Any:
        """Where the weights come from (--weights-dir, --no-download, --trust-checkpoint), as one value."""
        from vqclip.pipeline.request import Inputs

        return Inputs(weights_dir=self.weights_dir, download=not self.given.get("no_download", False),
                      trusted=list(self.given.get("trust_checkpoint") or []))

    @property
    def quiet(self) -> bool:
        return bool(self.given.get("quiet", False))


def run_options(*, skip: tuple[str, ...] = (), diffusion: bool = False
                ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add the SHARED options (less `skip`; with `diffusion`, the DIFFUSION ones too) to a command, after its own;
    it receives them as `flags: RunFlags`. Typer reads the combined signature, so each option is declared here
    once for every command that runs."""
    table = SHARED + (DIFFUSION if diffusion else [])

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        own = [p for p in inspect.signature(func).parameters.values() if p.name != "flags"]
        names = [name for name, _, _, _ in table if name not in skip]
        extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind)
                 for name, kind, option, _ in table if name in names]

        @functools.wraps(func)
        def command(*args: Any, **kwargs: Any) -> Any:
            given = {name: kwargs.pop(name) for name in names if name in kwargs}
            return func(*args, flags=RunFlags(given), **kwargs)

        command.__signature__ = inspect.Signature(own + extra)  # type: ignore[attr-defined]
        return command

    return decorate


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


def check_inputs(cfg: object, output_dir: Path) -> None:
    """Input images that cannot be read (a folder, a FIFO, missing, not an image) and an output folder that
    cannot be one: one line now, before torch and the models load (the pipeline reads the images again)."""
    from vqclip.pipeline.media import open_image
    from vqclip.runs import check_output_dir

    refs = [("init image", cfg.init_image)] if cfg.init_image else []  # type: ignore[attr-defined]
    refs += [("image prompt", spec.path) for spec in cfg.image_prompt_specs]  # type: ignore[attr-defined]
    for what, ref in refs:
        if not ref.startswith(("http://", "https://")):  # a URL is fetched once, by the pipeline
            open_image(ref, what)
    check_output_dir(output_dir)
