"""The `vqclip` entry point: assembles the commands (in `vqclip.commands`) into one Typer app, nothing else.

`main()` imports the app only when it is needed, so `vqclip --version` answers without loading Typer or Rich,
and a Ctrl-C or SIGTERM while Python is still importing ends quietly (130, 143) instead of with a traceback.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

from vqclip import __version__
from vqclip.errors import stop_exception, shorten


# Command groups imported only when one of them runs: `vqclip --help` lists them from these lines, so it does not
# pay for what they import (the weights code, the run records and pydantic, the gallery's templates).
LAZY_GROUPS = {
    "weights": ("vqclip.commands.weights", "List, download, verify and remove model weights (VQGAN, diffusion, CLIP)."),
    "runs": ("vqclip.commands.runs_show", "List, inspect and clean up run folders."),
    "gallery": ("vqclip.commands.gallery", "Build a static, offline HTML gallery of runs."),
}


def _lazy_group_class() -> Any:
    import importlib

    import typer
    from typer.core import TyperGroup

    class LazyGroup(TyperGroup):
        """The root group: LAZY_GROUPS stand in as empty groups (name and help) until one is resolved to run."""

        def __init__(self, **kw: Any) -> None:
            super().__init__(**kw)
            for name, (_, help_text) in LAZY_GROUPS.items():
                stub = TyperGroup(name=name, help=help_text)
                stub.lazy = True  # type: ignore[attr-defined]
                self.add_command(stub, name)

        def resolve_command(self, ctx: Any, args: list[str]) -> Any:
            name = args[0] if args else None
            if name in LAZY_GROUPS and getattr(self.commands.get(name), "lazy", False):
                module, help_text = LAZY_GROUPS[name]
                group = typer.main.get_group(importlib.import_module(module).app)  # a group even of one command
                group.name, group.help = name, help_text
                self.add_command(group, name)
            return super().resolve_command(ctx, args)

    return LazyGroup


def build_app() -> Any:
    import typer

    from vqclip.commands.common import CONTEXT
    from vqclip.commands.continue_ import continue_run
    from vqclip.commands.animate import animate
    from vqclip.commands.batch import batch
    from vqclip.commands.diffuse import diffuse
    from vqclip.commands.generate import generate
    from vqclip.commands.selftest import selftest
    from vqclip.commands.serve import serve  # light: starlette and uvicorn load when it runs

    app = typer.Typer(help="VQGAN-CLIP and CLIP-guided diffusion art from the command line.", context_settings=CONTEXT, no_args_is_help=True,
                      add_completion=False, pretty_exceptions_enable=False, rich_markup_mode="rich",
                      cls=_lazy_group_class())

    def version(value: bool) -> None:
        if value:
            typer.echo(f"vqclip {__version__}")
            raise typer.Exit()

    @app.callback()
    def root(version: bool = typer.Option(False, "--version", callback=version, is_eager=True,
                                          help="Show the version.")) -> None:
        """VQGAN-CLIP art from the command line."""

    app.command(context_settings=CONTEXT)(generate)
    app.command("continue", context_settings=CONTEXT)(continue_run)
    app.command(context_settings=CONTEXT)(animate)
    app.command(context_settings=CONTEXT)(diffuse)
    app.command(context_settings=CONTEXT)(batch)
    app.command(context_settings=CONTEXT)(selftest)
    app.command(context_settings=CONTEXT)(serve)  # then weights, runs and gallery (LAZY_GROUPS)
    return app


def __getattr__(name: str) -> Any:  # `from vqclip.cli import app` (tests, python -m) builds it on first use
    if name == "app":
        value = build_app()
        globals()["app"] = value
        return value
    raise AttributeError(name)


_TERMINATED: list[int] = []  # SIGTERMs seen by `_interrupt` (Typer turns every KeyboardInterrupt into 130)
_PENDING: list[int] = []  # a signal that came during an import, retried by `_retry`
_RETRY_S = 0.05


def _in_import(frame: Any) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _interrupt(signum: int, frame: Any) -> None:
    """Ctrl-C and SIGTERM: unwind (KeyboardInterrupt, or Terminated: exit 143) so that temp folders go. Never
    inside an import, though: there Python may swallow the exception (in importlib's weakref callback) or turn
    it into a RuntimeError with a traceback (in `__set_name__`), and a half-imported torch cannot be imported
    again. A signal that comes during an import is retried every 50 ms until the import is done (seconds for
    torch at most). `StopOnInterrupt` hands a signal here while a run has nothing to save yet."""
    if _in_import(frame) and hasattr(signal, "setitimer"):
        _PENDING[:] = [signum]
        signal.setitimer(signal.ITIMER_REAL, _RETRY_S)
        return
    if signum != signal.SIGINT:
        _TERMINATED.append(signum)
    raise stop_exception(signum)


def _retry(alarm: int, frame: Any) -> None:
    """SIGALRM after a signal was held back during an import: deliver it to whatever handles it now."""
    if not _PENDING:
        return
    signum = _PENDING.pop()
    handler = signal.getsignal(signum)
    (handler if callable(handler) else _interrupt)(signum, frame)


def _usage_line(exc: Any) -> None:
    """A Click/Typer usage error (unknown option, bad value, missing argument) as one `Error:` line naming the
    option, the allowed range where there is one, and where the help is (instead of Typer's boxed panel)."""
    from vqclip.commands.common import fail

    text = " ".join(line.strip() for line in exc.format_message().splitlines() if line.strip())
    param = getattr(exc, "param", None)
    lo = getattr(param, "min", None) if param is not None else None
    hi = getattr(param, "max", None) if param is not None else None
    if param is not None and lo is None and hi is None:  # Click's IntRange / FloatRange
        lo, hi = getattr(getattr(param, "type", None), "min", None), getattr(getattr(param, "type", None), "max", None)
    if lo is not None and hi is not None:
        text = f"{text.rstrip('.')}; give a number from {lo} to {hi}"
    elif lo is not None:
        text = f"{text.rstrip('.')}; give a number {lo} or more"
    text = shorten(text, 300)
    path = getattr(getattr(exc, "ctx", None), "command_path", None)
    fail(f"{text} (see `{path} -h`)" if path else text, exc.exit_code)


def _run(app: Any) -> int:
    """Run the app without Click's standalone mode, so that usage errors come back here to be printed as one
    line; the exit code of the command (0, or a typer.Exit's)."""
    import typer

    click_error = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
    try:
        rv = app(standalone_mode=False)
    except click_error as e:
        if type(e).__name__ != "NoArgsIsHelpError":  # that one has already shown the help
            _usage_line(e)
        return int(e.exit_code)
    except typer.Abort:
        print("Aborted.", file=sys.stderr)
        return 1
    return rv if isinstance(rv, int) and not isinstance(rv, bool) else 0


def main() -> None:
    if sys.argv[1:] == ["--version"]:
        print(f"vqclip {__version__}")
        return
    handled = [signal.SIGINT, signal.SIGTERM] + [getattr(signal, name) for name in ("SIGHUP", "SIGALRM")
                                                 if hasattr(signal, name)]
    previous = {sig: signal.signal(sig, _retry if sig == getattr(signal, "SIGALRM", None) else _interrupt)
                for sig in handled}  # SIGTERM unwinds like Ctrl-C: temp folders go
    try:
        from vqclip import hugepages

        hugepages.enable()  # before anything imports torch
        code = _run(build_app())
        common = sys.modules.get("vqclip.commands.common")
        said = bool(getattr(common, "STOP_REPORTED", None))  # "Interrupted." printed by the command already
    except KeyboardInterrupt as e:  # before a command's own handler is in place (imports, argument parsing)
        code, said = getattr(e, "exit_code", 130), False
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if code == 130 and _TERMINATED:  # a SIGTERM/SIGHUP that Typer caught as a KeyboardInterrupt while parsing
        code = getattr(stop_exception(_TERMINATED[-1]), "exit_code", 143)
    if code in (129, 130, 143) and not said:
        print({143: "Terminated.", 129: "Hung up."}.get(code, "Interrupted."), file=sys.stderr)
    sys.exit(code)


if __name__ == "__main__":
    main()
