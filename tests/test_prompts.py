"""Table-driven tests (one row per case) of the prompt, size and story grammar."""

from __future__ import annotations

import math

import pytest

from vqclip.prompts import (
    ImagePrompt,
    NoisePrompt,
    PromptError,
    TextPrompt,
    floor_size,
    parse_image_prompt,
    parse_noise_prompt,
    parse_size,
    parse_story,
    parse_text_prompts,
    split_weight,
)

NO_STOP = float("-inf")


@pytest.mark.parametrize(
    ("piece", "expected"),
    [
        ("a cat", ("a cat", [])),
        ("a cat:2", ("a cat", [2.0])),
        ("a cat:1:-0.5", ("a cat", [1.0, -0.5])),
        ("a cat : 2", ("a cat", [2.0])),
        ("poster, ratio 16:9", ("poster, ratio 16:9", [])),
        ("ratio 16:9:2", ("ratio 16:9", [2.0])),
        ("meet at 12:30", ("meet at 12:30", [])),
        ("meet at 12:30:-1", ("meet at 12:30", [-1.0])),
        ("room 101 :2", ("room 101", [2.0])),
        ("room 101:2", ("room 101:2", [])),
        ("16:9", ("16:9", [])),
        ("http://host/a.png:0.5", ("http://host/a.png", [0.5])),
        ("http://host:8080/x.png", ("http://host:8080/x.png", [])),
        ("http://host:8080", ("http://host:8080", [])),
        ("http://host:8080:0.5", ("http://host:8080", [0.5])),
        ("http://host:0.5", ("http://host", [0.5])),
        ("C:\\img\\a.png:2", ("C:\\img\\a.png", [2.0])),
        ("a:b:c", ("a:b:c", [])),
        ("a:1:2:3", ("a:1:2", [3.0])),  # "1:2" is a ratio junction; only one junction is given back
        ("a:.5", ("a", [0.5])),
        ("a:+2", ("a", [2.0])),
        ("a:1e-3", ("a", [0.001])),
        ("a:2.", ("a", [2.0])),
        ("a:1_0", ("a:1_0", [])),
        ("a:0x10", ("a:0x10", [])),
        ("a:", ("a:", [])),
        ("a::2", ("a:", [2.0])),
        ("a:٣", ("a:٣", [])),  # Arabic-Indic digit: float() would take it, the grammar does not
        (":2", ("", [2.0])),
        ("", ("", [])),
        ("  spaced  ", ("spaced", [])),
    ],
)
def test_split_weight(piece: str, expected: tuple[str, list[float]]) -> None:
    assert split_weight(piece) == expected


@pytest.mark.parametrize(
    ("piece", "max_numbers", "expected"),
    [
        ("a:x:2", 1, ("a:x", [2.0])),
        ("a:1:2", 1, ("a:1:2", [])),
        ("a:1:2", 0, ("a:1:2", [])),
        ("a:1:2", 3, ("a", [1.0, 2.0])),
    ],
)
def test_split_weight_max_numbers(piece: str, max_numbers: int, expected: tuple[str, list[float]]) -> None:
    assert split_weight(piece, max_numbers) == expected


@pytest.mark.parametrize("word", ["nan", "NaN", "-nan", "inf", "-Inf", "+INFINITY", "Infinity"])
def test_split_weight_reads_nan_and_inf_as_numbers(word: str) -> None:
    text, numbers = split_weight(f"a cat:{word}")
    assert text == "a cat"
    assert not math.isfinite(numbers[0])


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a cat", [TextPrompt("a cat")]),
        ("a cat:2", [TextPrompt("a cat", 2.0)]),
        ("a cat:1:-0.5", [TextPrompt("a cat", 1.0, -0.5)]),
        ("a:1 | b:-1", [TextPrompt("a", 1.0), TextPrompt("b", -1.0)]),
        (
            "A sunny countryside with a Collie:100 | wild flowers:30 | roses:-30",
            [TextPrompt("A sunny countryside with a Collie", 100.0), TextPrompt("wild flowers", 30.0), TextPrompt("roses", -30.0)],
        ),
        ("poster, ratio 16:9", [TextPrompt("poster, ratio 16:9")]),
        ("ratio 16:9:2", [TextPrompt("ratio 16:9", 2.0)]),
        ("room 101 :2", [TextPrompt("room 101", 2.0)]),
        ("  padded  |  also:3  ", [TextPrompt("padded"), TextPrompt("also", 3.0)]),
        ("straße, 東京の夜:2 | 🐱", [TextPrompt("straße, 東京の夜", 2.0), TextPrompt("🐱")]),
        ("line one\nline two:2", [TextPrompt("line one\nline two", 2.0)]),
        ("a:-0.1", [TextPrompt("a", -0.1)]),
        ("a:1e3", [TextPrompt("a", 1000.0)]),
        ("a:1:0", [TextPrompt("a", 1.0, 0.0)]),
        ("https://x.org/cat.jpg:0.5", [TextPrompt("https://x.org/cat.jpg", 0.5)]),
    ],
)
def test_parse_text_prompts(prompt: str, expected: list[TextPrompt]) -> None:
    assert parse_text_prompts(prompt) == expected


@pytest.mark.parametrize(
    ("prompt", "fragments"),
    [
        ("", ["prompt is empty"]),
        ("   \t\n", ["prompt is empty"]),
        ("a || b", ['prompt piece 2 ("")', "empty", 'remove the extra "|"']),
        ("a |", ['prompt piece 2 ("")', "empty"]),
        ("| a", ['prompt piece 1 ("")', "empty"]),
        ("a |   | b", ["prompt piece 2", "empty"]),
        (":2", ['prompt piece 1 (":2")', "no text"]),
        ("a | :2:1", ['prompt piece 2 (":2:1")', "no text"]),
        ("a cat:0", ['prompt piece 1 ("a cat:0")', "weight 0 has no effect", "non-zero weight"]),
        ("a cat:-0", ["weight 0 has no effect"]),
        ("a cat:0.0:1", ["weight 0 has no effect"]),
        ("a | b:0", ["prompt piece 2", "weight 0"]),
        ("a cat:nan", ["weight nan", "finite"]),
        ("a cat:inf", ["weight inf", "finite"]),
        ("a cat:-Infinity", ["weight -inf", "finite"]),
        ("a cat:1:nan", ["stop nan", "finite"]),
        ("a cat:1:inf", ["stop inf", "finite"]),
        ("a cat:1e999", ["weight inf", "finite"]),
    ],
)
def test_parse_text_prompts_errors(prompt: str, fragments: list[str]) -> None:
    with pytest.raises(PromptError) as info:
        parse_text_prompts(prompt)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_prompt_error_is_value_error() -> None:
    assert issubclass(PromptError, ValueError)


def test_error_message_escapes_newlines_and_shortens() -> None:
    with pytest.raises(PromptError) as info:
        parse_text_prompts("x" * 200 + "\nmore:0")
    message = str(info.value)
    assert "\n" not in message
    assert len(message) < 200


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("cat.png", ImagePrompt("cat.png")),
        ("cat.png:0.5", ImagePrompt("cat.png", 0.5)),
        ("cat.png:2:0.1", ImagePrompt("cat.png", 2.0, 0.1)),
        ("cat.png:-1", ImagePrompt("cat.png", -1.0)),
        ("  dir with space/cat 1.png  ", ImagePrompt("dir with space/cat 1.png")),
        ("http://host/a.png:0.5", ImagePrompt("http://host/a.png", 0.5)),
        ("http://host:8080/x.png", ImagePrompt("http://host:8080/x.png")),
        ("https://host:8443/x.png:3", ImagePrompt("https://host:8443/x.png", 3.0)),
        ("C:\\pics\\cat.png", ImagePrompt("C:\\pics\\cat.png")),
        ("C:\\pics\\cat.png:2", ImagePrompt("C:\\pics\\cat.png", 2.0)),
        ("frames/0001.png:2", ImagePrompt("frames/0001.png", 2.0)),
        ("img/2023:1", ImagePrompt("img/2023:1")),
        ("img/2023 :1.5", ImagePrompt("img/2023", 1.5)),
    ],
)
def test_parse_image_prompt(spec: str, expected: ImagePrompt) -> None:
    assert parse_image_prompt(spec) == expected


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("", "no path"),
        ("   ", "no path"),
        (":0.5", "no path"),
        ("cat.png:0", "weight 0"),
        ("cat.png:nan", "finite"),
        ("cat.png:1:-inf", "finite"),
    ],
)
def test_parse_image_prompt_errors(spec: str, fragment: str) -> None:
    with pytest.raises(PromptError, match="image prompt") as info:
        parse_image_prompt(spec)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("42", NoisePrompt(42)),
        ("0", NoisePrompt(0)),
        ("42:0.5", NoisePrompt(42, 0.5)),
        (" 7 : -2 ", NoisePrompt(7, -2.0)),
        ("+3", NoisePrompt(3)),
        (str(2**70), NoisePrompt(2**70)),
    ],
)
def test_parse_noise_prompt(spec: str, expected: NoisePrompt) -> None:
    assert parse_noise_prompt(spec) == expected


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("", "non-negative integer"),
        ("-1", "non-negative integer"),
        ("1.5", "non-negative integer"),
        ("abc", "non-negative integer"),
        (":0.5", "non-negative integer"),
        ("42:", "weight must be a number"),
        ("42:x", "weight must be a number"),
        ("42:1:2", "weight must be a number"),
        ("42:0", "weight 0"),
        ("42:nan", "finite"),
        ("42:inf", "finite"),
    ],
)
def test_parse_noise_prompt_errors(spec: str, fragment: str) -> None:
    with pytest.raises(PromptError, match="noise prompt") as info:
        parse_noise_prompt(spec)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("480x360", (480, 360)),
        ("480X360", (480, 360)),
        ("480*360", (480, 360)),
        ("480×360", (480, 360)),
        (" 640 x 480 ", (640, 480)),
        ("512", (512, 512)),
        ("0512x064", (512, 64)),
        ("1x1", (1, 1)),
    ],
)
def test_parse_size(text: str, expected: tuple[int, int]) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", " ", "0x5", "5x0", "0", "axb", "-3x4", "10x", "x10", "10x10x10", "10.5x10", "+5x5", "10 10", "١٠x١٠", "ten"],
)
def test_parse_size_errors(text: str) -> None:
    with pytest.raises(PromptError, match="size") as info:
        parse_size(text)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("width", "height", "factor", "expected"),
    [
        (480, 480, 16, (480, 480)),
        (500, 333, 16, (496, 320)),
        (640, 480, 8, (640, 480)),
        (15, 7, 16, (16, 16)),
        (1, 1, 8, (8, 8)),
        (17, 31, 16, (16, 16)),
        (33, 32, 16, (32, 32)),
        (100, 100, 1, (100, 100)),
    ],
)
def test_floor_size(width: int, height: int, factor: int, expected: tuple[int, int]) -> None:
    assert floor_size(width, height, factor) == expected


def test_floor_size_rejects_bad_factor() -> None:
    with pytest.raises(ValueError):
        floor_size(64, 64, 0)


@pytest.mark.parametrize(
    ("story", "expected"),
    [
        ("a cat", ["a cat"]),
        ("a ^ b ^ c", ["a", "b", "c"]),
        ("a:1 | b:-1 ^ c:2", ["a:1 | b:-1", "c:2"]),
        ("  a^b  ", ["a", "b"]),
    ],
)
def test_parse_story(story: str, expected: list[str]) -> None:
    assert parse_story(story) == expected


@pytest.mark.parametrize(("story", "stage"), [("a ^ ^ b", 2), ("^ a", 1), ("a ^", 2), ("a ^  ", 2)])
def test_parse_story_errors(story: str, stage: int) -> None:
    with pytest.raises(PromptError, match=f"story stage {stage} .*empty"):
        parse_story(story)

