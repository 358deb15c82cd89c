"""RunConfig: every knob of a run in one pydantic model that rejects unknown keys (STYLE 5; llm's options).

Values are layered: the packaged `configs/defaults.yaml` (which says why each default was chosen), then an
optional user YAML file (`--config`), then CLI flags. No torch here: `vqclip --help` must stay light.
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from vqclip.errors import VqclipError
from vqclip.prompts import (
    ImagePrompt,
    NoisePrompt,
    TextPrompt,
    parse_image_prompt,
    parse_noise_prompt,
    parse_size,
    parse_text_prompts,
)

__all__ = ["RunConfig", "default_values", "layered_values", "load_config_file", "build_config", "validation_lines",
           "field_help", "describe"]

_DEVICE = re.compile(r"auto|cpu|cuda(?::[0-9]+)?|mps", re.ASCII)
_SIZE_KEYS = ("width", "height")


def _check_image_prompt(value: str) -> str:
    parse_image_prompt(value)
    return value


def _check_noise_prompt(value: str) -> str:
    parse_noise_prompt(value)
    return value


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
    """Everything that decides what a run makes. Stored in every run's details.json (STYLE 6)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_default=True)

    prompt: str = Field("", description='Text prompts, "text[:weight[:stop]] | …"; negative weights push away.')
    image_prompts: list[ImagePromptStr] = Field(
        default_factory=list, description='Image prompts, each "PATH[:weight[:stop]]" (a file or URL).'
    )
    noise_prompts: list[NoisePromptStr] = Field(
        default_factory=list, description='Noise prompts, each "SEED[:weight]": a seeded random CLIP target.'
    )
    init_image: str | None = Field(None, min_length=1, description="Start from this image instead of random tokens.")
    width: int = Field(480, ge=1, le=8192, description="Width in pixels (floored to a multiple of the VQGAN factor).")
    height: int = Field(480, ge=1, le=8192, description="Height in pixels (floored like the width).")
    steps: int = Field(300, ge=1, le=1_000_000, description="Optimisation steps.")
    seed: int | None = Field(None, ge=0, lt=2**63, description="Random seed; empty = pick one and record it.")
    model: str = Field(
        "vqgan_imagenet_f16_16384", min_length=1, description="VQGAN: a registry name or a path to a taming .yaml."
    )
    clip_model: str = Field(
        "ViT-B-32-quickgelu", min_length=1, description="CLIP: an open_clip model name or a path to a model-config JSON."
    )
    clip_pretrained: str = Field(
        "openai", min_length=1, description='CLIP weights: an open_clip tag or a checkpoint path; "none" = random weights.'
    )
    cutn: int = Field(32, ge=1, le=1024, description="Cutouts scored by CLIP per step (more = steadier, slower).")
    cut_pow: float = Field(1.0, gt=0, description="Cutout size power; higher = smaller cutouts, more detail.")
    augment: bool = Field(True, description="Random flips/affine/perspective/colour jitter on the cutouts.")
    noise_fac: float = Field(0.1, ge=0, description="Per-cutout noise amplitude (0 = none).")
    optimizer: Literal["adam", "adamw", "sgd"] = Field("adam", description="Optimiser for the latent z.")
    lr: float = Field(0.1, gt=0, description="Learning rate (step size) of the optimiser.")
    init_weight: float = Field(0.0, ge=0, description="Weight of the MSE of z to the initial z (keeps the init image).")
    init_weight_decay: float = Field(
        0.0, ge=0, description="Subtracted from init_weight every init_weight_decay_every steps (floored at 0)."
    )
    init_weight_decay_every: int = Field(0, ge=0, description="Steps between init_weight decays (0 = no decay).")
    tv_weight: float = Field(0.0, ge=0, description="Total-variation weight on the pixels (smooths noise).")
    save_every: int = Field(10, ge=0, description="Save a progress frame every N steps (0 = final frame only).")
    fps: int = Field(15, ge=1, le=120, description="Frames per second of the progress video.")
    device: str = Field("auto", description="Device: auto, cpu, cuda, cuda:N or mps.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="Numeric precision of the models.")
    low_memory: bool | None = Field(None, description="Trade speed for memory; empty = decide from the estimate.")
    compile: bool = Field(False, description="torch.compile the models (slow first step, faster after).")

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
        if value:
            parse_text_prompts(value)
        return value

    @field_validator("device", mode="before")
    @classmethod
    def _check_device(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        normal = value.strip().lower()
        if not _DEVICE.fullmatch(normal):
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
    path = Path(path)
    if not path.exists():
        raise VqclipError(f"config file {path}: not found; check the path")
    if path.is_dir():
        raise VqclipError(f"config file {path}: is a directory; give a .yaml file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problem = f"cannot be read ({type(exc).__name__}); check it is a UTF-8 text file"
        raise VqclipError(f"config file {path}: {problem}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        hint = "quote values that contain ': '" if "mapping values" in str(exc) else "fix the YAML"
        raise VqclipError(f"config file {path}: {_yaml_problem(exc)}; {hint}") from None
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


def layered_values(*layers: dict[str, Any] | None) -> dict[str, Any]:
    """defaults.yaml, then each layer in turn (keys whose value is None are ignored: CLI flags not given)."""
    merged: dict[str, Any] = {}
    _layer(merged, default_values())
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
        lines.append(f"{loc}: {msg}")
    return lines


def field_help(name: str) -> str:
    """The description of RunConfig field `name` (the Typer help text comes from here)."""
    field = RunConfig.model_fields.get(name)
    if field is None:
        raise KeyError(f"RunConfig has no field {name!r}")
    return field.description or ""


def describe(config: RunConfig) -> dict[str, Any]:
    """The config as plain JSON-ready values (for details.json and PNG text chunks)."""
    return config.model_dump(mode="json")
