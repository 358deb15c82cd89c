"""User-facing errors: the CLI prints `message` on one line and exits with `exit_code`."""

from __future__ import annotations


def one_line(exc: BaseException, limit: int = 160) -> str:
    """`Type: first line of the message` (cut at `limit`), for notes and details.json."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:limit]}" if text else type(exc).__name__


class VqclipError(Exception):
    """A mistake the user can fix. `message` is one line that names the fix."""

    exit_code = 1

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(VqclipError):
    """Malformed command line (exit code 2, like Click's own usage errors)."""

    exit_code = 2


class WeightsMissing(VqclipError):
    """A checkpoint/yaml is not on disk and may not (or cannot) be downloaded."""


class UnsafeCheckpoint(VqclipError):
    """A checkpoint would need arbitrary pickled globals to load."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would raise KeyboardInterrupt: the same clean stop, exit code 143."""
