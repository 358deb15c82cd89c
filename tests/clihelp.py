"""Helpers the tests share (one copy each): run a command in-process, the tiny models' command-line arguments, find
the run folder a command made, read its details, a reporter that collects frames and notes, and the check of a
hostile case's output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from vqclip.pipeline.execute import Reporter

runner = CliRunner()


def invoke(*args: str, **kw: Any) -> Any:
    """`vqclip ARGS` in-process (`kw` to CliRunner.invoke: input=, env=, …); never a traceback."""
    from vqclip.cli import app

    result = runner.invoke(app, list(args), **kw)
    assert "Traceback" not in result.output, result.output
    return result


def tiny_args(t: dict[str, Any], out: Path, *extra: str, size: str | None = "32x32", cutn: int = 4, steps: int = 4,
              save_every: int = 2, seed: int | None = None, quiet: bool = False) -> list[str]:
    """The arguments of a run on the `tiny_models` fixture's models into `out`; `extra` come last (and win).
    `size=None` leaves the size to the defaults; a test file binds its own values with functools.partial."""
    args = ["--model", str(t["vqgan_yaml"]), "--clip-model", str(t["clip_json"]),
            "--clip-pretrained", str(t["clip_ckpt"])]
    args += ["--size", size] if size is not None else []
    args += ["--cutn", str(cutn), "--steps", str(steps), "--save-every", str(save_every)]
    args += ["--seed", str(seed)] if seed is not None else []
    return [*args, "--output-dir", str(out), *(["-q"] if quiet else []), *extra]


def made(result: Any) -> Path:
    """The run folder a command just wrote (its last stdout line is `<folder>/output.png`)."""
    return Path(result.stdout.strip().splitlines()[-1]).parent


def details(run: Path) -> dict[str, Any]:
    return json.loads((run / "details.json").read_text())


class Frames(Reporter):
    """A pipeline reporter that collects the frames a run reports (the first is the latent it starts from) and
    its notes."""

    def __init__(self) -> None:
        self.frames: list[Any] = []
        self.notes: list[str] = []

    def note(self, message: str) -> None:
        self.notes.append(message)

    def step(self, info: Any) -> None:
        if info.frame is not None:
            self.frames.append(info.frame)


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
