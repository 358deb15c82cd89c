"""The keyframe schedule parser of `vqclip animate`: a table of good and bad schedules."""

from __future__ import annotations

import pytest

from vqclip.schedules import ScheduleError, parse_schedule

GOOD = [
    # text, minimum, {frame: value}
    ("1.02", None, {0: 1.02, 7: 1.02, 10_000: 1.02}),
    ("-2", None, {0: -2.0, 3: -2.0}),
    ("0:(1.0), 60:(1.04)", 0, {0: 1.0, 30: 1.02, 60: 1.04, 61: 1.04, 500: 1.04}),
    ("0:(0), 120:(3)", None, {0: 0.0, 40: 1.0, 120: 3.0, 240: 3.0}),
    ("10:(5), 20:(15)", None, {0: 5.0, 10: 5.0, 15: 10.0, 20: 15.0, 25: 15.0}),  # held before the first key
    ("0:(-2)", None, {0: -2.0, 99: -2.0}),
    ("  0 : ( 1 ) ,  4 : ( 3 ) ", None, {2: 2.0}),  # spaces anywhere
    ("0:1, 4:3", None, {2: 2.0}),  # parentheses optional
    ("0:(1e-1), 2:(2.5E0)", None, {0: 0.1, 2: 2.5}),
    ("0:(1), 1:(2), 2:(0.5)", None, {0: 1.0, 1: 2.0, 2: 0.5}),
]

BAD = [
    # text, minimum, message fragment
    ("0:(1.0), 50:(x)", 0, "keyframe 2: 'x' is not a number"),
    ("10:(1), 5:(2)", None, "keyframe 2: frame 5 does not come after frame 10"),
    ("0:(1), 0:(2)", None, "keyframe 2: frame 0 does not come after frame 0"),
    ("0:(0)", 0, "keyframe 1: 0 must be above 0"),
    ("0:(1), 30:(-0.5)", 0, "keyframe 2: -0.5 must be above 0"),
    ("0", 0, "value: 0 must be above 0"),
    ("abc", None, "value: 'abc' is not a number"),
    ("", None, "empty schedule"),
    ("   ", None, "empty schedule"),
    ("0:(1),,5:(2)", None, "keyframe 2 is empty"),
    ("0:(1), ", None, "keyframe 2 is empty"),
    ("a:(1)", None, "keyframe 1: frame 'a' is not a whole number"),
    ("1.5:(1)", None, "keyframe 1: frame '1.5' is not a whole number"),
    ("-1:(1)", None, "keyframe 1: frame -1 is out of range"),
    ("99999999999:(1)", None, "out of range"),
    ("0:(inf)", None, "keyframe 1: 'inf' is not a finite number"),
    ("nan", None, "value: 'nan' is not a finite number"),
    ("0:(1", None, "is not FRAME:(VALUE)"),
    ("0:(1)(2)", None, "keyframe 1"),
]


@pytest.mark.parametrize("text,minimum,expected", GOOD, ids=[g[0] for g in GOOD])
def test_good_schedules(text, minimum, expected):
    schedule = parse_schedule(text, minimum=minimum)
    for frame, value in expected.items():
        assert schedule.at(frame) == pytest.approx(value)


@pytest.mark.parametrize("text,minimum,fragment", BAD, ids=[b[0] or "empty" for b in BAD])
def test_bad_schedules_name_the_piece(text, minimum, fragment):
    with pytest.raises(ScheduleError) as info:
        parse_schedule(text, minimum=minimum)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_values_continue_from_any_frame():
    schedule = parse_schedule("0:(0), 10:(10)")
    assert schedule.values(0, 4) + schedule.values(4, 3) == schedule.values(0, 7)
    assert schedule.values(8, 4) == [8.0, 9.0, 10.0, 10.0]


def test_constant_flag():
    assert parse_schedule("1.0").constant
    assert parse_schedule("0:(2), 9:(2)").constant
    assert not parse_schedule("0:(1), 9:(2)").constant
