"""Pure parsing of prompts, sizes and stories (no torch).

The grammar follows `parse_prompt` in the original VQGAN-CLIP notebook (Katherine Crowson, 2021):
`text[:weight[:stop]]`, pieces joined with `|`. The notebook split on every `:`, so a colon inside the text
("ratio 16:9") or a URL ("http://host:8080/x.png") broke it (copies of the notebook still do). Here a `:X`
suffix counts only when X is a number, and at most two are peeled from the right:

1. peel up to two numeric suffixes (`text:weight:stop`);
2. if something was peeled and the remaining text ends with a digit, the first colon is a `\\d:\\d` junction
   (a ratio `16:9`, a clock time `12:30`), so the leftmost peeled number goes back into the text; only that one
   junction is considered, so `"ratio 16:9:2"` is text `ratio 16:9` with weight 2;
3. if the remaining text ends inside a URL's host (`http://host`), a peeled integer is a port and goes back too.

A space before the colon makes a digit-ending text weightable: `"room 101 :2"` is text `room 101`, weight 2,
while `"room 101:2"` is the text `room 101:2`. Words like `nan` and `inf` count as numbers so that they are
rejected with a clear message rather than read as text.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

__all__ = [
    "PromptError",
    "TextPrompt",
    "ImagePrompt",
    "NoisePrompt",
    "split_weight",
    "parse_text_prompts",
    "parse_image_prompt",
    "parse_noise_prompt",
    "parse_size",
    "floor_size",
    "parse_story",
]

_NUMBER = re.compile(
    r"[+-]?(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|nan|inf(?:inity)?)",
    re.IGNORECASE | re.ASCII,
)
_ENDS_WITH_DIGIT = re.compile(r"[0-9]$", re.ASCII)
_URL_HOST_END = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/?#\s]*$", re.ASCII)
_PORT = re.compile(r"[0-9]+", re.ASCII)
_SIZE = re.compile(r"\s*([0-9]+)\s*(?:[xX*×]\s*([0-9]+)\s*)?", re.ASCII)
_NOISE_SEED = re.compile(r"\+?[0-9]+", re.ASCII)
_SHOW_MAX = 60
MAX_SIDE = 8192  # the largest width or height, in pixels (RunConfig's bound too)
_MAX_DIGITS = 400  # longer integers are refused before int() (which refuses over 4300 digits with a traceback)


class PromptError(ValueError):
    """A malformed prompt, size or story. The message is one line, names the piece and says how to fix it."""


@dataclass(frozen=True)
class TextPrompt:
    """A text target: CLIP embedding of `text`, pulled towards (weight > 0) or pushed away (weight < 0)."""

    text: str
    weight: float = 1.0
    stop: float = float("-inf")


@dataclass(frozen=True)
class ImagePrompt:
    """An image target: a file path or URL whose cutouts become targets."""

    path: str
    weight: float = 1.0
    stop: float = float("-inf")


@dataclass(frozen=True)
class NoisePrompt:
    """A seeded random target of CLIP's embedding size."""

    seed: int
    weight: float = 1.0


def _show(text: str) -> str:
    """Quote `text` for a one-line message (newlines escaped, long text shortened)."""
    if len(text) > _SHOW_MAX:
        text = text[: _SHOW_MAX - 1] + "…"
    return json.dumps(text, ensure_ascii=False)


def _peel(piece: str, max_numbers: int) -> tuple[str, list[str]]:
    """Peel up to `max_numbers` numeric `:X` suffixes from the right; return the rest and the raw suffixes."""
    rest, raw = piece, []
    while len(raw) < max_numbers:
        head, sep, tail = rest.rpartition(":")
        if not sep or not _NUMBER.fullmatch(tail.strip()):
            break
        raw.insert(0, tail)
        rest = head
    return rest, raw


def _give_back(rest: str, raw: list[str]) -> tuple[str, list[str]]:
    """Move the leftmost peeled number back into the text when the colon belongs to it (ratio, clock, port)."""
    if not raw:
        return rest, raw
    first = raw[0]
    is_junction = _ENDS_WITH_DIGIT.search(rest) is not None
    is_port = _URL_HOST_END.search(rest) is not None and _PORT.fullmatch(first) is not None
    if is_junction or is_port:
        return f"{rest}:{first}", raw[1:]
    return rest, raw


def split_weight(piece: str, max_numbers: int = 2) -> tuple[str, list[float]]:
    """Split `text[:n1[:n2]]` into the stripped text and its trailing numbers (NaN/inf are returned, not checked).

    >>> split_weight("a cat:1:-0.5")
    ('a cat', [1.0, -0.5])
    >>> split_weight("poster, ratio 16:9")
    ('poster, ratio 16:9', [])
    """
    if max_numbers < 0:
        raise ValueError(f"max_numbers must be >= 0, got {max_numbers}")
    rest, raw = _give_back(*_peel(piece, max_numbers))
    return rest.strip(), [float(x.strip()) for x in raw]


def _check_number(label: str, name: str, value: float) -> None:
    if not math.isfinite(value):
        raise PromptError(f"{label}: {name} {value} is not a finite number; use e.g. :1 or :-0.5")


def _weight_stop(label: str, numbers: list[float]) -> tuple[float, float]:
    """Validate `[weight[, stop]]` and return (weight, stop) with the defaults filled in."""
    weight = numbers[0] if numbers else 1.0
    stop = numbers[1] if len(numbers) > 1 else float("-inf")
    _check_number(label, "weight", weight)
    if len(numbers) > 1:
        _check_number(label, "stop", stop)
    if weight == 0:
        raise PromptError(f"{label}: weight 0 has no effect; drop the piece or give a non-zero weight")
    return weight, stop


def _text_piece(index: int, piece: str) -> TextPrompt:
    label = f"prompt piece {index} ({_show(piece.strip())})"
    text, numbers = split_weight(piece)
    if not text:
        if not piece.strip():
            raise PromptError(f'{label} is empty; remove the extra "|"')
        raise PromptError(f'{label} has a weight but no text; write it as "text:weight"')
    weight, stop = _weight_stop(label, numbers)
    return TextPrompt(text, weight, stop)


def parse_text_prompts(s: str) -> list[TextPrompt]:
    """Parse `"text[:weight[:stop]] | …"` into TextPrompts; see the module docstring for the colon rules."""
    if not s.strip():
        raise PromptError('the prompt is empty; give some text, e.g. "a red apple:1 | blurry:-0.5"')
    return [_text_piece(i, piece) for i, piece in enumerate(s.split("|"), start=1)]


def parse_image_prompt(s: str) -> ImagePrompt:
    """Parse `"PATH[:weight[:stop]]"` (a file path or URL; existence is not checked here)."""
    label = f"image prompt {_show(s.strip())}"
    path, numbers = split_weight(s)
    if not path:
        raise PromptError(f'{label} has no path; write it as "PATH[:weight[:stop]]"')
    weight, stop = _weight_stop(label, numbers)
    return ImagePrompt(path, weight, stop)


def parse_noise_prompt(s: str) -> NoisePrompt:
    """Parse `"SEED[:weight]"`: a non-negative integer seed and an optional non-zero weight."""
    label = f"noise prompt {_show(s.strip())}"
    seed_text, sep, weight_text = s.partition(":")
    seed_text = seed_text.strip()
    if not _NOISE_SEED.fullmatch(seed_text):
        raise PromptError(f'{label}: seed must be a non-negative integer; write it as "SEED[:weight]", e.g. "42:0.5"')
    if len(seed_text.lstrip("+0")) > _MAX_DIGITS:
        raise PromptError(f"{label}: seed is too large; use a seed from 0 to {2**63 - 1}")
    numbers: list[float] = []
    if sep:
        if not _NUMBER.fullmatch(weight_text.strip()):
            raise PromptError(f'{label}: weight must be a number; write it as "SEED[:weight]", e.g. "42:0.5"')
        numbers.append(float(weight_text))
    weight, _ = _weight_stop(label, numbers)
    return NoisePrompt(int(seed_text), weight)


def parse_size(s: str) -> tuple[int, int]:
    """Parse `"480x360"` / `"480X360"` / `"480*360"` / `"480×360"` into (width, height); `"512"` is (512, 512)."""
    match = _SIZE.fullmatch(s)
    if match is None:
        raise PromptError(f"size {_show(s)} is not WIDTHxHEIGHT; write e.g. 480x360 or 512")
    sides = [g.lstrip("0") or "0" for g in match.groups() if g is not None]
    if any(len(side) > len(str(MAX_SIDE)) or int(side) > MAX_SIDE for side in sides):
        raise PromptError(f"size {_show(s)} is too large: each side can be 1 to {MAX_SIDE} pixels; "
                          "write e.g. 480x360 or 512")
    width = int(sides[0])
    height = int(sides[1]) if len(sides) > 1 else width
    if width < 1 or height < 1:
        raise PromptError(f"size {_show(s)} must be positive; write e.g. 480x360 or 512")
    return width, height


def floor_size(width: int, height: int, factor: int) -> tuple[int, int]:
    """Floor width and height to multiples of `factor` (the VQGAN's downsampling), never below `factor`."""
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    return max(factor, width // factor * factor), max(factor, height // factor * factor)


def parse_story(s: str) -> list[str]:
    """Split a story `"a ^ b ^ c"` into stages `["a", "b", "c"]` (each a `|`-prompt); no `^` gives `[s]`."""
    if "^" not in s:
        return [s]
    stages = [part.strip() for part in s.split("^")]
    for index, stage in enumerate(stages, start=1):
        if not stage:
            raise PromptError(f'story stage {index} ({_show(stage)}) is empty; remove the extra "^"')
    return stages
