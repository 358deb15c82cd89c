"""`vqclip continue RUN` (being written for issue 4)."""

from __future__ import annotations

import typer

from vqclip.cli_common import handle_errors


@handle_errors
def continue_run(run: str = typer.Argument(..., help="Run id, unique id prefix, or run-folder path.")) -> None:
    """Continue a run from its saved latent."""
    raise typer.Exit(1)
