"""Helpers the CLI tests share: run a command in-process, find the run folder it made, read its details."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

runner = CliRunner()


def invoke(*args: str) -> Any:
    """`vqclip ARGS` in-process; never a traceback."""
    from vqclip.cli import app

    result = runner.invoke(app, list(args))
    assert "Traceback" not in result.output, result.output
    return result


def made(result: Any) -> Path:
    """The run folder a command just wrote (its last stdout line is `<folder>/output.png`)."""
    return Path(result.stdout.strip().splitlines()[-1]).parent


def details(run: Path) -> dict[str, Any]:
    return json.loads((run / "details.json").read_text())


def check_output(output: str, stderr: str, rc: int, says: tuple[str, ...], never: tuple[str, ...]) -> None:
    """A hostile case's output: one `Error:` line when it failed as a usage or user error, the phrases it must
    and must not hold."""
    if rc in (1, 2):
        lines = [ln for ln in stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("Error: "), output
    for text in says:
        assert text in output, f"{text!r} not in:\n{output}"
    for text in never:
        assert text not in output, f"{text!r} in:\n{output}"
