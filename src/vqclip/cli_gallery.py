"""`vqclip gallery …` commands."""

from __future__ import annotations

import typer

from vqclip.cli_common import CONTEXT

app = typer.Typer(help="gallery commands.", context_settings=CONTEXT, no_args_is_help=True, add_completion=False)
