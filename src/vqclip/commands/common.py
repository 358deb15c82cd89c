"""Shared CLI plumbing: one error style, exit codes, consoles. Imports nothing heavy."""

from __future__ import annotations

import functools
import os
import re
import sys
from typing import Any, Callable, TypeVar

import typer
from rich.console import Console, ConsoleDimensions

from vqclip.errors import HungUp, Terminated, VqclipError

F = TypeVar("F", bound=Callable[..., Any])

CONTEXT = {"help_option_names": ["-h", "--help"]}

PIPED_WIDTH = 100_000  # columns when the output is a file or a pipe: a line is never wrapped for a terminal


class _Console(Console):
    """Rich's console, except that output going to a file or a program (`vqclip batch --dry-run > rows.txt`) is
    not wrapped at 80 columns, or at the width of a terminal that another stream is on: a table keeps one line per
    row. COLUMNS, when set, still decides."""

    def _size(self) -> ConsoleDimensions:
        size = Console.size.fget(self)  # type: ignore[attr-defined]
        if self._width is None and "COLUMNS" not in getattr(self, "_environ", os.environ) and not self.is_terminal:
            return ConsoleDimensions(PIPED_WIDTH, size.height)
        return size

    size = property(_size, Console.size.fset)  # type: ignore[assignment]


err_console = _Console(stderr=True, highlight=False, soft_wrap=True)
out_console = _Console(highlight=False, soft_wrap=True)


# C0/C1 controls (ESC starts terminal sequences; a newline would break the one line), DEL, lone surrogates,
# line/paragraph separators, bidi overrides and the BOM: shown as escapes, never sent raw to the terminal.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ufeff\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def safe(text: object) -> str:
    """`text` with every character a terminal would act on shown as an escape (`\\x1b`, `\\n`, `\\u202e`)."""
    def one(m: re.Match[str]) -> str:
        ch = m.group()
        return _NAMED.get(ch) or (f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")

    return _UNSAFE.sub(one, text if isinstance(text, str) else str(text))


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print `Error: message` on one line to stderr (never read as Rich markup, control characters shown as
    escapes); return the Exit."""
    from rich.text import Text

    err_console.print(Text.assemble(("Error:", "bold red"), " ", safe(message)), highlight=False)
    return typer.Exit(code)


def _is_validation_error(exc: BaseException) -> bool:
    pydantic = sys.modules.get("pydantic")
    return pydantic is not None and isinstance(exc, pydantic.ValidationError)


STOP_REPORTED: list[int] = []  # exit codes of stops already announced ("Interrupted.", "Terminated.")


def handle_errors(func: F) -> F:
    """Turn user errors into a one-line message + exit code; Ctrl-C into exit 130, SIGTERM into 143; an OSError
    (a full disk, a folder that cannot be written) into one line naming the file. Never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except VqclipError as e:
            raise fail(e.message, e.exit_code) from None
        except (Terminated, HungUp) as e:
            STOP_REPORTED.append(e.exit_code)
            err_console.print("Terminated." if isinstance(e, Terminated) else "Hung up.", markup=False)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            STOP_REPORTED.append(130)
            err_console.print("Interrupted.", markup=False)
            raise typer.Exit(130) from None
        except OSError as e:
            raise fail(os_error_line(e)) from None
        except Exception as e:
            if not _is_validation_error(e):
                raise
            from vqclip.config import validation_lines

            lines = validation_lines(e)
            more = [line.split(":")[0] for line in lines[1:]]
            also = f" (also wrong: {', '.join(more)})" if more else ""
            raise fail(f"{lines[0] if lines else e}{also}") from None

    return wrapper  # type: ignore[return-value]


def os_error_line(exc: OSError) -> str:
    """One line for an OSError the product did not expect: what failed, on which file, and the fix."""
    import errno

    where = f" ({exc.filename})" if exc.filename else ""
    reason = exc.strerror or str(exc) or type(exc).__name__
    fix = {errno.ENOSPC: "free some disk space and run it again",
           errno.EDQUOT: "free some disk space and run it again",
           errno.EACCES: "check the folder's permissions", errno.EPERM: "check the folder's permissions",
           errno.EROFS: "choose a writable --output-dir"}.get(exc.errno or 0, "check the path and run it again")
    return f"{reason}{where}; {fix}"
