"""RunConfig: every knob of a run in one pydantic model that rejects unknown keys, so that a misspelt key in a
config file is an error rather than a setting silently ignored (as llm validates its model options).

Values are layered: the packaged `configs/defaults.yaml` (which says why each default was chosen), then an
optional user YAML file (`--config`), then CLI flags. The field defaults here and defaults.yaml must agree key
for key (tests/test_config.py holds them to it); the engine's LoopSettings takes each knob from here by name
(`vqclip.pipeline.settings`), so a new knob is one field here, one line in defaults.yaml and, for its help text,
one line in `vqclip.knobs` (which `vqclip --help` reads without importing pydantic). No torch here.
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from vqclip.config_knobs import ClipSpec, ClipStr, parse_clip_spec
from vqclip.errors import VqclipError
from vqclip.knobs import HELP, field_help
from vqclip.prompts import (
    ImagePrompt,
    NoisePrompt,
    PromptError,
    TextPrompt,
    parse_image_prompt,
    parse_noise_prompt,
    parse_size,
    parse_story,
    parse_text_prompts,
)

__all__ = ["RunConfig", "default_values", "layered_values", "load_config_file", "build_config", "validation_lines",
           "field_help", "describe"]

DEVICE = re.compile(r"cpu|cuda(?::[0-9]+)?|mps", re.ASCII)  # a device by name (`auto` aside): the one pattern
_SIZE_KEYS = ("width", "height")


def _check_image_prompt(value: str) -> str:
    parse_image_prompt(value)
    return value


def _check_noise_prompt(value: str) -> str:
    seed = parse_noise_prompt(value).seed
    if seed >= 2**63:  # what torch.Generator.manual_seed takes, with room for the seeds derived from it
        raise ValueError(f"noise prompt {value.strip()!r}: seed {_short_int(seed)} is too large; "
                         f"use a seed from 0 to {2**63 - 1}")
    return value


def _short_int(value: int) -> str:
    text = str(value)
    return text if len(text) <= 30 else f"{text[:12]}…({len(text)} digits)"


ImagePromptStr = Annotated[str, AfterValidator(_check_image_prompt)]
NoisePromptStr = Annotated[str, AfterValidator(_check_noise_prompt)]


def _size_to_width_height(size: Any) -> tuple[int, int]:
    """Turn a `size` value ("WxH", "N", N or [w, h]) into (width, height)."""
    if isinstance(size, str):
        return parse_size(size)
    if isinstance(size, int) and not isinstance(size, bool):
        return parse_size(str(size))
    if isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, int) for v in size):
        return int(size[0]), int(size[1])
    raise ValueError(f"size {size!r} is not WIDTHxHEIGHT; write e.g. 480x360, 512 or [480, 360]")


class RunConfig(BaseModel):
    """Everything that decides what a run makes. Stored in every run's details.json, so that a run can be
    repeated or continued from its folder alone."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_default=True)

    engine: str = Field("vqgan", min_length=1, description=HELP["engine"])
    prompt: str = Field("", description=HELP["prompt"])
    image_prompts: list[ImagePromptStr] = Field(
        default_factory=list, description=HELP["image_prompts"]
    )
    noise_prompts: list[NoisePromptStr] = Field(
        default_factory=list, description=HELP["noise_prompts"]
    )
    init_image: str | None = Field(None, min_length=1, description=HELP["init_image"])
    width: int = Field(480, ge=1, le=8192, description=HELP["width"])
    height: int = Field(480, ge=1, le=8192, description=HELP["height"])
    steps: int = Field(300, ge=1, le=1_000_000, description=HELP["steps"])
    seed: int | None = Field(None, ge=0, lt=2**63, description=HELP["seed"])
    model: str = Field(
        "vqgan_imagenet_f16_16384", min_length=1, description=HELP["model"]
    )
    clip_model: str = Field(
        "ViT-B-32-quickgelu", min_length=1, description=HELP["clip_model"]
    )
    clip_pretrained: str = Field(
        "openai", min_length=1, description=HELP["clip_pretrained"]
    )
    cutn: int = Field(32, ge=1, le=1024, description=HELP["cutn"])
    cut_pow: float = Field(1.0, gt=0, description=HELP["cut_pow"])
    augment: bool = Field(True, description=HELP["augment"])
    noise_fac: float = Field(0.1, ge=0, description=HELP["noise_fac"])
    optimizer: Literal["adam", "adamw", "sgd"] = Field("adam", description=HELP["optimizer"])
    lr: float = Field(0.1, gt=0, description=HELP["lr"])
    init_weight: float = Field(0.0, ge=0, description=HELP["init_weight"])
    init_weight_decay: float = Field(
        0.0, ge=0, description=HELP["init_weight_decay"]
    )
    init_weight_decay_every: int = Field(0, ge=0, le=1_000_000, description=HELP["init_weight_decay_every"])
    tv_weight: float = Field(0.0, ge=0, description=HELP["tv_weight"])
    save_every: int = Field(10, ge=0, le=1_000_000, description=HELP["save_every"])
    fps: int = Field(15, ge=1, le=120, description=HELP["fps"])
    device: str = Field("auto", description=HELP["device"])
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description=HELP["precision"])
    low_memory: bool | None = Field(None, description=HELP["low_memory"])
    compile: bool = Field(False, description=HELP["compile"])
    # CLIP ensembles (both engines) and CLIP-guided diffusion (`vqclip diffuse`)
    clips: list[ClipStr] = Field(default_factory=list, max_length=8, description=HELP["clips"])
    sampler: Literal["ddim", "plms"] = Field("ddim", description=HELP["sampler"])
    eta: float = Field(0.8, ge=0, le=1, description=HELP["eta"])
    guidance_scale: float = Field(1000.0, ge=0, le=1e7, description=HELP["guidance_scale"])
    tv_scale: float = Field(150.0, ge=0, le=1e7, description=HELP["tv_scale"])
    range_scale: float = Field(50.0, ge=0, le=1e7, description=HELP["range_scale"])
    sat_scale: float = Field(0.0, ge=0, le=1e7, description=HELP["sat_scale"])
    init_scale: float = Field(0.0, ge=0, le=1e7, description=HELP["init_scale"])
    clamp_max: float = Field(0.05, ge=0, le=10, description=HELP["clamp_max"])
    cutn_batches: int = Field(2, ge=1, le=64, description=HELP["cutn_batches"])
    overview_cuts: int = Field(0, ge=0, le=64, description=HELP["overview_cuts"])
    skip_steps: int = Field(0, ge=0, le=1_000_000, description=HELP["skip_steps"])
    secondary: bool = Field(False, description=HELP["secondary"])
    class_label: int | None = Field(None, ge=0, le=999, description=HELP["class_label"])

    @model_validator(mode="before")
    @classmethod
    def _expand_size(cls, data: Any) -> Any:
        """Accept `size: 640x480` (or [640, 480]) and turn it into width/height."""
        if not isinstance(data, dict) or "size" not in data:
            return data
        data = dict(data)
        size = data.pop("size")
        if size is None:
            return data
        if any(data.get(key) is not None for key in _SIZE_KEYS):
            raise ValueError("size: give either size or width/height, not both")
        data["width"], data["height"] = _size_to_width_height(size)
        return data

    @field_validator("prompt")
    @classmethod
    def _check_prompt(cls, value: str) -> str:
        if value and "^" in value:  # a story "a ^ b ^ c": every stage on its own, named by its number
            for index, stage in enumerate(parse_story(value), start=1):
                try:
                    parse_text_prompts(stage)
                except PromptError as e:
                    raise PromptError(f"story stage {index}: {e}") from None
        elif value:
            parse_text_prompts(value)
        return value

    @field_validator("engine")
    @classmethod
    def _check_engine(cls, value: str) -> str:
        from vqclip.engines import ENGINES  # the registry alone: no engine module is imported

        if value not in ENGINES:
            raise ValueError(f"unknown engine {value!r}; use one of: {', '.join(sorted(ENGINES))}")
        return value

    @field_validator("device", mode="before")
    @classmethod
    def _check_device(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        normal = value.strip().lower()
        if normal != "auto" and not DEVICE.fullmatch(normal):
            raise ValueError(f"{value!r} is not a device; use auto, cpu, cuda, cuda:N or mps")
        return normal

    @model_validator(mode="after")
    def _require_prompt(self) -> RunConfig:
        if not self.prompt and not self.image_prompts and not self.noise_prompts:
            raise ValueError("give a text prompt, --image-prompt or --noise-prompt")
        return self

    @property
    def text_prompts(self) -> list[TextPrompt]:
        return parse_text_prompts(self.prompt) if self.prompt else []

    @property
    def image_prompt_specs(self) -> list[ImagePrompt]:
        return [parse_image_prompt(s) for s in self.image_prompts]

    @property
    def noise_prompt_specs(self) -> list[NoisePrompt]:
        return [parse_noise_prompt(s) for s in self.noise_prompts]

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height

    def clip_specs(self) -> list[ClipSpec]:
        """The run's CLIP models, each with its weight: `clips` when given, else clip_model/clip_pretrained."""
        if not self.clips:
            return [ClipSpec(self.clip_model, self.clip_pretrained, 1.0)]
        return [parse_clip_spec(c, self.clip_pretrained) for c in self.clips]

    @model_validator(mode="after")
    def _check_engine_knobs(self) -> RunConfig:
        if self.clips and not any(spec.weight for spec in self.clip_specs()):
            raise ValueError("clips: every CLIP model has weight 0; give one a weight above 0")
        if self.engine == "diffusion" and self.skip_steps >= self.steps:
            raise ValueError(f"skip_steps: {self.skip_steps} skips every one of the {self.steps} steps; give "
                             f"--skip-steps below --steps")
        return self


@lru_cache(maxsize=1)
def _packaged_defaults() -> dict[str, Any]:
    text = (resources.files("vqclip") / "configs" / "defaults.yaml").read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise VqclipError("packaged configs/defaults.yaml is not a mapping; reinstall vqclip")
    return data


def default_values() -> dict[str, Any]:
    """The packaged defaults (`vqclip/configs/defaults.yaml`) as a fresh dict."""
    return {key: (list(v) if isinstance(v, list) else v) for key, v in _packaged_defaults().items()}


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line from a PyYAML error: the problem and where it is."""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"YAML syntax error{where}: {problem}"


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a user YAML config (a mapping of RunConfig fields); raise VqclipError with one line on any problem."""
    from vqclip.files import path_problem

    path = Path(path)
    if not path.exists():
        raise VqclipError(f"config file {path}: not found; check the path")
    problem = path_problem(path)  # a directory, a FIFO (reading it would wait forever), a device…
    if problem is not None:
        raise VqclipError(f"config file {path}: {problem}; give a .yaml file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problem = f"cannot be read ({type(exc).__name__}); check it is a UTF-8 text file"
        raise VqclipError(f"config file {path}: {problem}") from None
    from vqclip import strict_yaml

    try:
        data = strict_yaml.load(text)  # a key given twice is an error, never the last one silently
    except strict_yaml.DuplicateKeyError as exc:
        raise VqclipError(f"config file {path}: {exc.problem}; keep one of them") from None
    except yaml.YAMLError as exc:
        hint = "quote values that contain ': '" if "mapping values" in str(exc) else "fix the YAML"
        raise VqclipError(f"config file {path}: {_yaml_problem(exc)}; {hint}") from None
    except (ValueError, RecursionError) as exc:  # an integer of thousands of digits; nesting too deep
        what = "nested too deeply" if isinstance(exc, RecursionError) else "holds a value YAML cannot read"
        raise VqclipError(f"config file {path}: {what}; fix the YAML") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise VqclipError(f"config file {path}: top level is a {kind}, not a mapping; write `key: value` lines")
    bad = [key for key in data if not isinstance(key, str)]
    if bad:
        raise VqclipError(f"config file {path}: key {bad[0]!r} is not a field name; write `key: value` lines")
    return data


def _layer(merged: dict[str, Any], layer: dict[str, Any]) -> None:
    """Apply `layer` on top of `merged`, expanding a `size` key so that a later --width still layers per key."""
    layer = {key: value for key, value in layer.items() if not (key == "size" and value is None)}
    if "size" in layer and not any(key in layer for key in _SIZE_KEYS):
        try:
            layer["width"], layer["height"] = _size_to_width_height(layer["size"])
            del layer["size"]
        except ValueError:
            pass  # size stays in the layer: RunConfig's validator reports it as a ValidationError
    if "size" in layer:
        for key in _SIZE_KEYS:
            merged.pop(key, None)
    merged.update(layer)


@lru_cache(maxsize=8)
def _engine_defaults(engine: str) -> dict[str, Any]:
    """`configs/engine-NAME.yaml`: what a run of that engine starts from instead of defaults.yaml ({} if none)."""
    if not re.fullmatch(r"[a-z0-9_-]+", engine):
        return {}
    source = resources.files("vqclip") / "configs" / f"engine-{engine}.yaml"
    if not source.is_file():
        return {}
    data = yaml.safe_load(source.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def layered_values(*layers: dict[str, Any] | None) -> dict[str, Any]:
    """defaults.yaml, the engine's own defaults (`configs/engine-NAME.yaml`, for the engine the layers name),
    then each layer in turn (keys whose value is None are ignored: CLI flags not given)."""
    merged: dict[str, Any] = {}
    _layer(merged, default_values())
    engine = next((layer["engine"] for layer in reversed(layers) if layer and isinstance(layer.get("engine"), str)),
                  None)
    if engine:
        _layer(merged, dict(_engine_defaults(engine)))
    for layer in layers:
        if layer:
            _layer(merged, {key: value for key, value in layer.items() if value is not None})
    return merged


def build_config(config_file: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """defaults.yaml < user file < overrides (keys whose value is None are ignored: CLI flags not given)."""
    user = load_config_file(config_file) if config_file is not None else None
    return RunConfig.model_validate(layered_values(user, overrides))


def validation_lines(exc: Any) -> list[str]:
    """One readable line per bad field of a pydantic ValidationError."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "__root__") or "config"
        msg = str(err.get("msg", "invalid value"))
        msg = msg.removeprefix("Value error, ")
        lines.append(f"{loc}: {_range_message(err) or msg}")
    return lines


_BOUND_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "finite_number"}


def _range_message(err: Any) -> str | None:
    """For a number out of its field's bounds (or not finite): pydantic's message, what was given and the
    allowed range ("steps: Input should be greater than or equal to 1, not 0; give a number from 1 to 1000000")."""
    loc = err.get("loc", ())
    field = RunConfig.model_fields.get(str(loc[0])) if len(loc) == 1 else None
    if err.get("type") not in _BOUND_ERRORS or field is None:
        return None
    lo = hi = None
    lo_open = hi_open = False
    for m in field.metadata:
        for attr, is_lo, is_open in (("ge", True, False), ("gt", True, True), ("le", False, False),
                                     ("lt", False, True)):
            value = getattr(m, attr, None)
            if value is None:
                continue
            if is_lo:
                lo, lo_open = value, is_open
            else:
                hi, hi_open = value, is_open
    is_int = field.annotation in (int, int | None)
    if is_int and hi is not None and hi_open:
        hi, hi_open = hi - 1, False
    if is_int and lo is not None and lo_open:
        lo, lo_open = lo + 1, False
    parts = []
    if lo is not None:
        parts.append(f"greater than {lo}" if lo_open else f"{lo} or more")
    if hi is not None:
        parts.append(f"less than {hi}" if hi_open else f"{hi} or less")
    if lo is not None and hi is not None and not lo_open and not hi_open:
        parts = [f"from {lo} to {hi}"]
    allowed = " and ".join(parts)
    given = err.get("input")
    shown = _short_int(given) if isinstance(given, int) and not isinstance(given, bool) else repr(given)
    msg = str(err.get("msg", "Input is out of range"))
    return f"{msg}, not {shown}; give a number {allowed}" if allowed else f"{msg}, not {shown}"


def describe(config: RunConfig) -> dict[str, Any]:
    """The config as plain JSON-ready values (for details.json and PNG text chunks)."""
    return config.model_dump(mode="json")
