"""The README and the tool stay in step: every `vqclip …` command line in README.md's ```bash blocks parses with
the current commands and flags (Click's own parser, `resilient_parsing=False`, nothing run), and the facts the
README states about the tool (exit codes, defaults, environment variables, commands) hold."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands() -> list[tuple[int, list[str]]]:
    """(line number, argv after `vqclip`) of every vqclip command in a ```bash block: continuation lines joined,
    comments dropped, each `&&`/`;`/`|` piece that starts with `vqclip` taken."""
    found: list[tuple[int, list[str]]] = []
    lines = README.read_text(encoding="utf-8").splitlines()
    in_bash, pending, start = False, "", 0
    for number, line in enumerate(lines, start=1):
        if line.startswith("```"):
            in_bash = line.strip() == "```bash" and not in_bash
            continue
        if not in_bash:
            continue
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        text, pending = pending + line, ""
        words = shlex.split(text, comments=True)
        piece: list[str] = []
        for word in [*words, "&&"]:
            if word in ("&&", "||", ";", "|"):
                if piece[:1] == ["vqclip"]:
                    found.append((start, piece[1:]))
                piece = []
            else:
                piece.append(word)
    return found


COMMANDS = readme_commands()


def parse(argv: list[str]) -> Any:
    """Parse `vqclip ARGV` down to the last subcommand as Click would, without invoking anything; the context."""
    import typer

    from vqclip.cli import build_app

    command = typer.main.get_command(build_app())
    ctx = command.make_context("vqclip", list(argv), resilient_parsing=False)
    while hasattr(command, "resolve_command"):  # a group: find the subcommand and parse the rest for it
        protected = getattr(ctx, "_protected_args", None)  # Click ≥ 8.2 keeps the subcommand's name here
        rest = [*(protected if protected is not None else getattr(ctx, "protected_args", [])), *ctx.args]
        if not rest:
            break
        name, command, rest = command.resolve_command(ctx, rest)
        ctx = command.make_context(name, rest, parent=ctx, resilient_parsing=False)
    return ctx


def test_readme_has_commands() -> None:
    assert len(COMMANDS) >= 20
    assert {argv[0] for _, argv in COMMANDS} >= {"generate", "continue", "animate", "batch", "weights", "gallery",
                                                   "runs", "selftest", "serve"}


@pytest.mark.parametrize("line,argv", COMMANDS, ids=[f"README:{n}" for n, _ in COMMANDS])
def test_readme_command_parses(line: int, argv: list[str]) -> None:
    ctx = parse(argv)
    assert not ctx.args, f"README.md:{line}: vqclip {' '.join(argv)}: left over: {ctx.args}"


@pytest.mark.parametrize("argv", [["generate", "x", "--no-such-flag"], ["generate", "x", "--steps", "many"],
                                  ["gallery", "build", "--kiosk", "extra"], ["weights", "no-such-command"]])
def test_a_stale_command_would_be_caught(argv: list[str]) -> None:
    """The check can fail: a flag the tool lacks, a bad value, an extra argument or an unknown command."""
    with pytest.raises(Exception) as info:
        parse(argv)
    assert any(c.__name__ == "ClickException" for c in type(info.value).__mro__), repr(info.value)


def test_readme_facts_hold() -> None:
    """Defaults, exit codes, environment variables and commands the README names exist in the tool."""
    from vqclip.config import default_values

    text = README.read_text(encoding="utf-8")
    d = default_values()
    assert (d["width"], d["height"], d["steps"], d["cutn"]) == (480, 480, 300, 32)
    assert "480x480" in text and "300 steps" in text and "cutn 32" in text
    for code in ("130", "143", "129"):
        assert f"`{code}`" in text
    src = Path(__file__).resolve().parents[1] / "src" / "vqclip"
    code_text = "\n".join(p.read_text(encoding="utf-8") for p in src.rglob("*.py"))
    for name in re.findall(r"`(VQCLIP_[A-Z_]+)", text):
        assert f'"{name}"' in code_text, f"README names {name}, which the code does not read"
    assert "python -m vqclip" in text and (src / "__main__.py").is_file()
