"""The `vqclip` command line (Typer). Parses flags, owns Rich progress and files; the engine stays pure."""

from __future__ import annotations

import typer

from vqclip import __version__
from vqclip.cli_common import CONTEXT
from vqclip.cli_gallery import app as gallery_app
from vqclip.cli_runs import app as runs_app
from vqclip.cli_weights import app as weights_app

app = typer.Typer(
    help="VQGAN-CLIP art from the command line.",
    context_settings=CONTEXT,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(weights_app, name="weights", help="List, download, verify and remove VQGAN weights.")
app.add_typer(runs_app, name="runs", help="List and inspect run folders.")
app.add_typer(gallery_app, name="gallery", help="Build a static, offline HTML gallery of runs.")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"vqclip {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    """VQGAN-CLIP art from the command line."""


def main() -> None:
    app()


if __name__ == "__main__":
    main()
