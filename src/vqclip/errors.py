"""User-facing errors: the CLI prints `message` on one line and exits with `exit_code`."""

from __future__ import annotations


def one_line(exc: BaseException, limit: int = 160, *, typed: bool = True) -> str:
    """`Type: first line of the message` (cut at a word boundary near `limit`, with "…"), for notes and
    details.json; `typed=False`: the line alone, to quote a library's error inside a sentence."""
    text = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not text:
        return type(exc).__name__
    return f"{type(exc).__name__}: {shorten(text[0], limit)}" if typed else shorten(text[0], limit)


def shorten(text: str, limit: int = 160) -> str:
    """`text` if it fits in `limit` characters, else cut at the last word boundary before it, with "…"."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    if space >= limit // 2:  # a boundary not too far back; else cut the (very long) word itself
        cut = cut[:space]
    return cut.rstrip(" ,;:(") + "…"


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

    exit_code = 143


class HungUp(KeyboardInterrupt):
    """SIGHUP (the terminal or SSH session closed), raised where Ctrl-C would raise KeyboardInterrupt: the same
    clean stop, exit code 129."""

    exit_code = 129


def stop_exception(signum: int) -> type[KeyboardInterrupt]:
    """What a stop signal raises where Ctrl-C raises KeyboardInterrupt (exit 130)."""
    import signal

    if signum == signal.SIGTERM:
        return Terminated
    if signum == getattr(signal, "SIGHUP", None):
        return HungUp
    return KeyboardInterrupt


def stop_code(signum: int | None) -> int:
    """The exit code after a stop by `signum`: 143 SIGTERM, 129 SIGHUP, else 130 (Ctrl-C)."""
    return int(getattr(stop_exception(signum) if signum is not None else KeyboardInterrupt, "exit_code", 130))


def interruption(exc: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C (or SIGTERM) hidden in `exc`'s causes, when a library wrapped it in its own error type (as
    OmegaConf does while loading a config): it must still stop the command, not read as a bad file."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, KeyboardInterrupt):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None
