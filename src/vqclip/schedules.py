"""Keyframed schedules for `vqclip animate`: `1.02` (a constant) or `"0:(1.0), 60:(1.04), 120:(1.0)"`.

A schedule gives one value per frame: keyframes are linearly interpolated between, the first value holds
before the first key and the last value after the last key (the Disco/Deforum string form, so schedules
written for those tools work here). Pure: no torch, no I/O.

Every value is finite and, unless it is 0, between 1e-9 and 1e9 in size (`LIMIT`): the warp divides by the zoom
and samples in float32, where a zoom of 1e-300 (or 1e300, or a shift of 1e308 pixels) overflows or underflows
to a frame of nothing. Values between keys stay between the keys' values (no rounding past either end), so a
schedule whose keys are in range is in range at every frame.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

MAX_FRAME = 10_000_000
LIMIT = 1e9  # largest size of a value; 1 / LIMIT is the smallest other than 0
_KEY = re.compile(r"^\s*([^:]*?)\s*:\s*(?:\((.*)\)|([^()]*))\s*$", re.S)  # F:(V), or F:V


class ScheduleError(ValueError):
    """A schedule that cannot be read; the message names the piece."""


@dataclass(frozen=True)
class Schedule:
    """(frame, value) keys, frames strictly increasing; `text` is what the user wrote."""

    keys: tuple[tuple[int, float], ...]
    text: str

    def at(self, frame: float) -> float:
        keys = self.keys
        if frame <= keys[0][0]:
            return keys[0][1]
        for (f0, v0), (f1, v1) in zip(keys, keys[1:]):
            if frame <= f1:
                value = v0 + (v1 - v0) * (frame - f0) / (f1 - f0)
                return min(max(value, min(v0, v1)), max(v0, v1))  # 1 + (1e-9 - 1) is not 1e-9 in floats
        return keys[-1][1]

    def values(self, start: int, count: int) -> list[float]:
        return [self.at(f) for f in range(start, start + count)]

    @property
    def constant(self) -> bool:
        return len({v for _, v in self.keys}) == 1


def _number(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ScheduleError(f"{where}: {text.strip()!r} is not a number") from None
    if not math.isfinite(value):
        raise ScheduleError(f"{where}: {text.strip()!r} is not a finite number")
    if abs(value) > LIMIT:
        raise ScheduleError(f"{where}: {text.strip()} is too large; values lie between {-LIMIT:g} and {LIMIT:g}")
    if value != 0 and abs(value) < 1 / LIMIT:
        raise ScheduleError(f"{where}: {text.strip()} is too close to 0 (it underflows); the smallest size other "
                            f"than 0 is {1 / LIMIT:g}")
    return value


def _split_keys(text: str) -> list[str]:
    """Split on the commas between keyframes (not inside their parentheses)."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def parse_schedule(text: str | float | int, *, minimum: float | None = None, exclusive: bool = True) -> Schedule:
    """Read a constant or keyframes. `minimum`: values must be above it (`exclusive`) or at least it."""
    raw = str(text)
    if not raw.strip():
        raise ScheduleError("empty schedule; write a number (1.02) or keyframes \"0:(1.0), 60:(1.04)\"")
    if ":" not in raw and "(" not in raw:
        keys = [(0, _number(raw, "value"))]
    else:
        keys = []
        for i, piece in enumerate(_split_keys(raw), start=1):
            where = f"keyframe {i}"
            if not piece.strip():
                raise ScheduleError(f"{where} is empty; separate keyframes with single commas")
            m = _KEY.match(piece)
            if m is None:
                raise ScheduleError(f"{where}: {piece.strip()!r} is not FRAME:(VALUE)")
            frame_text, value_text = m.group(1), m.group(2) if m.group(2) is not None else m.group(3)
            try:
                frame = int(frame_text)
            except ValueError:
                raise ScheduleError(f"{where}: frame {frame_text!r} is not a whole number") from None
            if not 0 <= frame <= MAX_FRAME:
                raise ScheduleError(f"{where}: frame {frame} is out of range (0 to {MAX_FRAME:,})")
            if keys and frame <= keys[-1][0]:
                raise ScheduleError(f"{where}: frame {frame} does not come after frame {keys[-1][0]}; "
                                    "list keyframes in increasing order")
            keys.append((frame, _number(value_text, where)))
    if minimum is not None:
        for i, (frame, value) in enumerate(keys, start=1):
            bad = value <= minimum if exclusive else value < minimum
            if bad:
                what = f"keyframe {i}" if len(keys) > 1 or ":" in raw else "value"
                rel = "above" if exclusive else "at least"
                raise ScheduleError(f"{what}: {value:g} must be {rel} {minimum:g}")
    return Schedule(tuple(keys), raw.strip())
