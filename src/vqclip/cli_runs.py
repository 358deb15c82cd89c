"""`vqclip runs …` commands."""

from __future__ import annotations

import typer

from vqclip.cli_common import CONTEXT

app = typer.Typer(help="runs commands.", context_settings=CONTEXT, no_args_is_help=True, add_completion=False)
