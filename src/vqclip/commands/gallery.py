"""`vqclip gallery …` commands. Imports nothing heavy: building a gallery must not load torch."""

from __future__ import annotations

import webbrowser
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from vqclip.commands.common import CONTEXT, handle_errors, out_console

app = typer.Typer(help="gallery commands.", context_settings=CONTEXT, no_args_is_help=True, add_completion=False)


@app.command(context_settings=CONTEXT)
@handle_errors
def build(
    output_dir: Path = typer.Option(Path("output"), "--output-dir", "-o", help="Folder holding the run folders."),
    out: Optional[Path] = typer.Option(None, "--out", help="Where to write the page (default: OUTPUT_DIR/index.html)."),
    kiosk: bool = typer.Option(False, "--kiosk", help="Large images and prompts only, for a display screen."),
    open_page: bool = typer.Option(False, "--open", help="Open the page in the default web browser afterwards."),
) -> None:
    """Build a static HTML gallery of every run; it opens from disk, offline.

    Thumbnails are cached in OUTPUT_DIR/.gallery and remade only when an image changes.

    Runs whose details.json is missing or corrupt are skipped and counted.

    Example:

        vqclip gallery build --output-dir output --open
    """
    from vqclip.gallery import build_gallery

    report = build_gallery(output_dir, out, kiosk=kiosk)
    summary = f"Gallery: [bold]{report.runs:,}[/] run{'' if report.runs == 1 else 's'}"
    if report.skipped:
        summary += f" · [yellow]{sum(report.skipped.values()):,} skipped[/]"
    out_console.print(summary, markup=True)
    for label, counts in (("skipped", report.skipped), ("no thumbnail", report.warnings)):
        for why, n in counts.most_common():
            example = escape(report.examples.get(why, ""))
            out_console.print(f"  [yellow]{label}[/] {n:,} × {why} [dim](e.g. {example})[/]", markup=True,
                              highlight=False)
    thumbs = f"{report.thumbs_made:,} made, {report.thumbs_reused:,} reused"
    if report.thumbs_removed:
        thumbs += f", {report.thumbs_removed:,} removed"
    out_console.print(f"Thumbnails: {thumbs} · {report.seconds:.2f} s")
    uri = report.index.resolve().as_uri()
    out_console.print(f"Open: [bold]{uri}[/]", markup=True, highlight=False)
    if open_page:
        webbrowser.open(uri)
