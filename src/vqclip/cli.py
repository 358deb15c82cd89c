"""The `vqclip` entry point: assembles the commands (in `vqclip.commands`) into one Typer app, nothing else.

`main()` imports the app only when it is needed, so `vqclip --version` answers without loading Typer or Rich,
and a Ctrl-C or SIGTERM while Python is still importing ends quietly (130, 143) instead of with a traceback.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

from vqclip import __version__


def build_app() -> Any:
    import typer

    from vqclip.commands.common import CONTEXT
    from vqclip.commands.continue_ import continue_run
    from vqclip.commands.gallery import app as gallery_app
    from vqclip.commands.generate import generate
    from vqclip.commands.runs import app as runs_app
    from vqclip.commands.selftest import selftest
    from vqclip.commands.weights import app as weights_app

    app = typer.Typer(help="VQGAN-CLIP art from the command line.", context_settings=CONTEXT, no_args_is_help=True,
                      add_completion=False, pretty_exceptions_enable=False, rich_markup_mode="rich")

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
    app.add_typer(weights_app, name="weights", help="List, download, verify and remove VQGAN weights.")
    app.add_typer(runs_app, name="runs", help="List, inspect and clean up run folders.")
    app.add_typer(gallery_app, name="gallery", help="Build a static, offline HTML gallery of runs.")
    app.command(context_settings=CONTEXT)(selftest)
    return app


def __getattr__(name: str) -> Any:  # `from vqclip.cli import app` (tests, python -m) builds it on first use
    if name == "app":
        value = build_app()
        globals()["app"] = value
        return value
    raise AttributeError(name)


def _terminated(signum: int, frame: Any) -> None:
    from vqclip.errors import Terminated

    raise Terminated


def main() -> None:
    if sys.argv[1:] == ["--version"]:
        print(f"vqclip {__version__}")
        return
    previous = signal.signal(signal.SIGTERM, _terminated)  # SIGTERM unwinds like Ctrl-C: temp folders go
    try:
        from vqclip import hugepages

        hugepages.enable()  # before anything imports torch
        build_app()()
    except KeyboardInterrupt as e:  # before a command's own handler is in place (imports, argument parsing)
        from vqclip.errors import Terminated

        code = 143 if isinstance(e, Terminated) else 130
        print("Terminated." if code == 143 else "Interrupted.", file=sys.stderr)
        sys.exit(code)
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    main()
