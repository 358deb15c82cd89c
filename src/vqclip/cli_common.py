"""Shared CLI plumbing: one error style, exit codes (STYLE 9), consoles. Imports nothing heavy."""

from __future__ import annotations

import functools
from typing import Any, Callable, TypeVar

import typer
from rich.console import Console

from vqclip.errors import VqclipError

F = TypeVar("F", bound=Callable[..., Any])

CONTEXT = {"help_option_names": ["-h", "--help"]}

err_console = Console(stderr=True, highlight=False, soft_wrap=True)
out_console = Console(highlight=False, soft_wrap=True)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print `Error: message` on one line to stderr and return the Exit to raise."""
    err_console.print(f"[bold red]Error:[/] {message}", markup=True, highlight=False)
    return typer.Exit(code)


def format_validation_error(exc: Any) -> list[str]:
    """One readable line per bad field of a pydantic ValidationError."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "__root__") or "config"
        msg = str(err.get("msg", "invalid value"))
        msg = msg.removeprefix("Value error, ")
        lines.append(f"{loc}: {msg}")
    return lines


def handle_errors(func: F) -> F:
    """Turn user errors into a one-line message + exit code; Ctrl-C into exit 130. Never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from pydantic import ValidationError

        try:
            return func(*args, **kwargs)
        except VqclipError as e:
            raise fail(e.message, e.exit_code) from None
        except ValidationError as e:
            for line in format_validation_error(e):
                err_console.print(f"[bold red]Error:[/] {line}", markup=True, highlight=False)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err_console.print("Interrupted.")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]
