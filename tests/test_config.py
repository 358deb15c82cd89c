"""Table-driven tests (one row per case) of RunConfig, the packaged defaults, the presets and the layering."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from vqclip.config import validation_lines as format_validation_error
from vqclip.config import RunConfig, build_config, default_values, describe, field_help, load_config_file
from vqclip.errors import VqclipError
from vqclip.prompts import ImagePrompt, NoisePrompt, TextPrompt

PRESETS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_lines(**kwargs: Any) -> list[str]:
    with pytest.raises(ValidationError) as info:
        RunConfig(**kwargs)
    return format_validation_error(info.value)


# --- defaults -------------------------------------------------------------------------------------------------


def test_defaults_validate_with_a_prompt() -> None:
    config = RunConfig(**{**default_values(), "prompt": "a cat"})
    assert config.prompt == "a cat"


def test_defaults_file_matches_field_defaults() -> None:
    """defaults.yaml (what users read) and RunConfig's field defaults agree key for key: neither may drift."""
    values = default_values()
    fields = RunConfig.model_fields
    assert set(values) == set(fields), (set(values) ^ set(fields))
    for name, value in values.items():
        assert value == fields[name].get_default(call_default_factory=True), name


def test_default_values_is_a_fresh_copy() -> None:
    default_values()["image_prompts"].append("x.png")
    default_values()["width"] = 1
    assert default_values()["image_prompts"] == []
    assert default_values()["width"] == 480


def test_every_field_has_a_description() -> None:
    """One help text per field, in vqclip.knobs: RunConfig's descriptions and the CLI's --help both read it."""
    from vqclip.knobs import HELP

    assert set(HELP) == set(RunConfig.model_fields), set(HELP) ^ set(RunConfig.model_fields)
    for name, field in RunConfig.model_fields.items():
        assert field.description, name
        assert field_help(name) == field.description == HELP[name]


def test_field_help_unknown() -> None:
    with pytest.raises(KeyError):
        field_help("nope")


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_presets_validate(preset: Path) -> None:
    config = build_config(preset, {"prompt": "a lighthouse"})
    assert config.width % 16 == 0 and config.height % 16 == 0


def test_presets_exist() -> None:
    assert {p.name for p in PRESETS} >= {"notebook.yaml", "fast-preview.yaml", "seed-app.yaml"}


@pytest.mark.parametrize(
    ("preset", "expected"),
    [
        ("notebook.yaml", {"width": 480, "height": 480, "lr": 0.05, "cutn": 64, "cut_pow": 1.0}),
        ("seed-app.yaml", {"width": 640, "height": 480, "steps": 500, "lr": 0.05, "cutn": 64, "init_weight": 0.5}),
    ],
)
def test_presets_mirror_peers(preset: str, expected: dict[str, Any]) -> None:
    path = next(p for p in PRESETS if p.name == preset)
    config = build_config(path, {"prompt": "x"})
    assert {key: getattr(config, key) for key in expected} == expected


# --- layering -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("file_text", "overrides", "expected"),
    [
        (None, {"prompt": "x"}, {"steps": 300, "width": 480, "lr": 0.1}),
        ("steps: 50\nlr: 0.2\n", {"prompt": "x"}, {"steps": 50, "lr": 0.2, "cutn": 32}),
        ("steps: 50\nlr: 0.2\n", {"prompt": "x", "steps": 7}, {"steps": 7, "lr": 0.2}),
        ("steps: 50\n", {"prompt": "x", "steps": None, "lr": None}, {"steps": 50, "lr": 0.1}),
        ("prompt: from file\n", {"prompt": None}, {"prompt": "from file"}),
        ("prompt: from file\n", {"prompt": "from flag"}, {"prompt": "from flag"}),
        ("size: 640x480\n", {"prompt": "x"}, {"width": 640, "height": 480}),
        ("size: [320, 200]\n", {"prompt": "x"}, {"width": 320, "height": 200}),
        ("size: 256\n", {"prompt": "x"}, {"width": 256, "height": 256}),
        ("size: 640x480\n", {"prompt": "x", "width": 800}, {"width": 800, "height": 480}),
        ("width: 640\n", {"prompt": "x", "size": "256x128"}, {"width": 256, "height": 128}),
        ("size: 640x480\n", {"prompt": "x", "size": None}, {"width": 640, "height": 480}),
        ("size: null\n", {"prompt": "x"}, {"width": 480, "height": 480}),
        ("seed: 5\n", {"prompt": "x"}, {"seed": 5}),
        ("seed: null\n", {"prompt": "x", "seed": 9}, {"seed": 9}),
        ("lr: 1e-3\n", {"prompt": "x"}, {"lr": 0.001}),  # YAML 1.1 reads 1e-3 as a string; pydantic converts
        ("", {"prompt": "x"}, {"steps": 300}),
        ("# only a comment\n", {"prompt": "x"}, {"steps": 300}),
        ("image_prompts: [a.png:2]\n", {}, {"image_prompts": ["a.png:2"]}),
        ("device: CUDA:1\n", {"prompt": "x"}, {"device": "cuda:1"}),
    ],
)
def test_layering(tmp_path: Path, file_text: str | None, overrides: dict[str, Any], expected: dict[str, Any]) -> None:
    path = write(tmp_path, file_text) if file_text is not None else None
    config = build_config(path, overrides)
    assert {key: getattr(config, key) for key in expected} == expected


def test_build_config_without_overrides_needs_a_prompt() -> None:
    with pytest.raises(ValidationError) as info:
        build_config()
    assert format_validation_error(info.value) == ["config: give a text prompt, --image-prompt or --noise-prompt"]


@pytest.mark.parametrize(
    ("file_text", "overrides", "fragment"),
    [
        ("stpes: 5\n", {"prompt": "x"}, "stpes: Extra inputs are not permitted"),
        ("steps: 5\n", {"prompt": "x", "colour": "red"}, "colour: Extra inputs are not permitted"),
        ("size: axb\n", {"prompt": "x"}, "size"),
        ("size: '0x5'\n", {"prompt": "x"}, "positive"),  # unquoted, YAML would read 0x5 as hex 5
        ("size: [1, 2, 3]\n", {"prompt": "x"}, "size"),
        ("size: 64x64\nwidth: 32\n", {"prompt": "x"}, "not both"),
        ("lr: .nan\n", {"prompt": "x"}, "lr: "),
        ("steps: 1.5\n", {"prompt": "x"}, "steps: "),
    ],
)
def test_layering_errors(tmp_path: Path, file_text: str, overrides: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValidationError) as info:
        build_config(write(tmp_path, file_text), overrides)
    assert any(fragment in line for line in format_validation_error(info.value))


# --- config files ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("steps: [1\n", "YAML syntax error at line"),
        ("prompt: a cat: 2\n", "YAML syntax error at line 1, column 14: mapping values are not allowed here; quote"),
        ("\tsteps: 3\n", "YAML syntax error"),
        ("- steps\n- 3\n", "top level is a list, not a mapping"),
        ("just a string\n", "top level is a str"),
        ("42\n", "top level is a int"),
        ("1: 2\n", "key 1 is not a field name"),
    ],
)
def test_load_config_file_errors(tmp_path: Path, text: str, fragment: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(VqclipError) as info:
        load_config_file(path)
    message = info.value.message
    assert str(path) in message
    assert fragment in message
    assert "\n" not in message


def test_load_config_file_missing(tmp_path: Path) -> None:
    with pytest.raises(VqclipError, match="nope.yaml: not found"):
        load_config_file(tmp_path / "nope.yaml")


def test_load_config_file_directory(tmp_path: Path) -> None:
    with pytest.raises(VqclipError, match="is a directory"):
        load_config_file(tmp_path)


def test_load_config_file_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(VqclipError, match="cannot be read"):
        load_config_file(path)


def test_bad_yaml_through_build_config(tmp_path: Path) -> None:
    path = write(tmp_path, "steps: [1\n")
    with pytest.raises(VqclipError, match="run.yaml"):
        build_config(path, {"prompt": "x"})


def test_load_config_file_reads_mapping(tmp_path: Path) -> None:
    assert load_config_file(write(tmp_path, "steps: 5\nsize: 64x32\n")) == {"steps": 5, "size": "64x32"}


# --- RunConfig fields -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"lr": math.nan}, "lr"),
        ({"lr": math.inf}, "lr"),
        ({"lr": 0}, "lr"),
        ({"lr": -0.1}, "lr"),
        ({"cut_pow": math.nan}, "cut_pow"),
        ({"cut_pow": 0}, "cut_pow"),
        ({"noise_fac": -1}, "noise_fac"),
        ({"noise_fac": math.inf}, "noise_fac"),
        ({"init_weight": -0.5}, "init_weight"),
        ({"init_weight_decay": math.nan}, "init_weight_decay"),
        ({"init_weight_decay_every": -1}, "init_weight_decay_every"),
        ({"tv_weight": -1}, "tv_weight"),
        ({"width": 0}, "width"),
        ({"height": 9000}, "height"),
        ({"steps": 0}, "steps"),
        ({"steps": 1_000_001}, "steps"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**63}, "seed"),
        ({"cutn": 0}, "cutn"),
        ({"cutn": 1025}, "cutn"),
        ({"save_every": -1}, "save_every"),
        ({"fps": 0}, "fps"),
        ({"fps": 121}, "fps"),
        ({"optimizer": "lbfgs"}, "optimizer"),
        ({"precision": "fp8"}, "precision"),
        ({"device": "gpu"}, "device"),
        ({"device": "cuda:"}, "device"),
        ({"device": "cuda:x"}, "device"),
        ({"model": ""}, "model"),
        ({"clip_pretrained": ""}, "clip_pretrained"),
        ({"init_image": ""}, "init_image"),
        ({"prompt": "a || b"}, "prompt"),
        ({"prompt": "a:0"}, "prompt"),
        ({"prompt": "a:nan"}, "prompt"),
        ({"prompt": "   "}, "prompt"),
        ({"image_prompts": ["x.png:0"]}, "image_prompts.0"),
        ({"image_prompts": ["ok.png", ":2"]}, "image_prompts.1"),
        ({"noise_prompts": ["-4"]}, "noise_prompts.0"),
        ({"noise_prompts": ["4:inf"]}, "noise_prompts.0"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_fields(kwargs: dict[str, Any], field: str) -> None:
    base = {"prompt": "x"} if "prompt" not in kwargs else {}
    lines = error_lines(**base, **kwargs)
    assert len(lines) == 1
    assert lines[0].startswith(f"{field}: ")
    assert "Value error" not in lines[0]


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"prompt": "a || b"}, 'prompt: prompt piece 2 ("") is empty; remove the extra "|"'),
        ({"prompt": "a:0"}, "weight 0 has no effect; drop the piece or give a non-zero weight"),
        ({"device": "gpu"}, "device: 'gpu' is not a device; use auto, cpu, cuda, cuda:N or mps"),
        ({"lr": math.nan}, "lr: Input should be a finite number"),
        ({"size": "axb"}, 'config: size "axb" is not WIDTHxHEIGHT'),
    ],
)
def test_messages_read_well(kwargs: dict[str, Any], fragment: str) -> None:
    base = {"prompt": "x"} if "prompt" not in kwargs else {}
    lines = error_lines(**base, **kwargs)
    assert any(fragment in line for line in lines), lines


def test_one_line_per_bad_field() -> None:
    lines = error_lines(prompt="x", lr=math.nan, steps=0, cutn=-1, typo=1)
    assert sorted(line.split(":")[0] for line in lines) == ["cutn", "lr", "steps", "typo"]
    assert all("\n" not in line for line in lines)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"prompt": ""},
        {},
        {"image_prompts": [], "noise_prompts": []},
    ],
)
def test_requires_a_prompt(kwargs: dict[str, Any]) -> None:
    assert error_lines(**kwargs) == ["config: give a text prompt, --image-prompt or --noise-prompt"]


@pytest.mark.parametrize(
    "kwargs",
    [{"prompt": "a"}, {"image_prompts": ["a.png"]}, {"noise_prompts": ["1"]}],
)
def test_any_prompt_kind_is_enough(kwargs: dict[str, Any]) -> None:
    RunConfig(**kwargs)


@pytest.mark.parametrize(
    ("size", "expected"),
    [("640x480", (640, 480)), ("64", (64, 64)), ([320, 200], (320, 200)), ((8, 16), (8, 16)), (96, (96, 96))],
)
def test_size_key(size: Any, expected: tuple[int, int]) -> None:
    config = RunConfig(prompt="x", size=size)
    assert config.size == expected
    assert (config.width, config.height) == expected


@pytest.mark.parametrize("size", ["axb", "0x5", "-3x4", "10x", [1], [1, "a"], 1.5, True, {"w": 1}])
def test_size_key_errors(size: Any) -> None:
    lines = error_lines(prompt="x", size=size)
    assert len(lines) == 1 and "size" in lines[0]


def test_size_and_width_conflict() -> None:
    assert error_lines(prompt="x", size="64x64", width=32) == ["config: size: give either size or width/height, not both"]


@pytest.mark.parametrize(("device", "normal"), [("auto", "auto"), (" CPU ", "cpu"), ("cuda", "cuda"), ("cuda:3", "cuda:3"), ("mps", "mps")])
def test_device_normalised(device: str, normal: str) -> None:
    assert RunConfig(prompt="x", device=device).device == normal


def test_parsed_prompt_properties() -> None:
    config = RunConfig(prompt="a:2 | ratio 16:9", image_prompts=["http://h/a.png:0.5"], noise_prompts=["3:-1"])
    assert config.text_prompts == [TextPrompt("a", 2.0), TextPrompt("ratio 16:9")]
    assert config.image_prompt_specs == [ImagePrompt("http://h/a.png", 0.5)]
    assert config.noise_prompt_specs == [NoisePrompt(3, -1.0)]
    assert RunConfig(noise_prompts=["1"]).text_prompts == []


def test_describe_round_trips() -> None:
    config = build_config(overrides={"prompt": "a cat", "seed": 3, "size": "64x32"})
    data = describe(config)
    assert data["width"] == 64 and data["height"] == 32 and data["seed"] == 3
    assert "size" not in data
    assert RunConfig(**data) == config


def test_config_modules_do_not_import_torch() -> None:
    code = "import sys, vqclip.config, vqclip.prompts; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
