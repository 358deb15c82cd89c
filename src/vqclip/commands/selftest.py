"""`vqclip selftest`: check an install offline and show the checks as a table."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from vqclip.commands.common import handle_errors, out_console


@handle_errors
def selftest(
    keep: Optional[Path] = typer.Option(None, "--keep", help="Keep the test run folder here instead of a temp dir."),
    steps: int = typer.Option(6, "--steps", min=1, max=10_000, help="Steps to run."),
    device: str = typer.Option("auto", "--device", help="Device to test: auto, cpu, cuda, mps."),
) -> None:
    """Verify an install offline: tiny random models in the real file formats, the whole pipeline (~30 s).

    Example:

        vqclip selftest
    """
    from rich.markup import escape
    from rich.table import Table

    from vqclip.pipeline.selftest import run_selftest

    if keep is not None:
        from vqclip.errors import VqclipError
        from vqclip.files import path_problem
        from vqclip.runfolder.guard import refuse_run_path

        problem = path_problem(keep, "folder")
        if problem:
            raise VqclipError(f"--keep {keep} {problem}; pass --keep a folder")
        refuse_run_path(keep, "--keep", "the test run")
    report = run_selftest(keep=keep, steps=steps, device=device)
    table = Table(title="vqclip selftest", show_header=True, header_style="bold")
    table.add_column("check")
    table.add_column("result")
    table.add_column("detail")
    for name, ok, detail in report.checks:
        table.add_row(name, "[green]ok[/]" if ok else "[red]FAILED[/]", escape(detail))
    out_console.print(table)
    v, record = report.versions, report.record
    timings = record.timings
    out_console.print(f"device {record.device} · torch {v.get('torch')} · open_clip {v.get('open_clip')} · "
                      f"python {v.get('python')} · vqclip {v.get('vqclip')}", markup=False)
    out_console.print(f"tiny models built in {report.build_s:.2f} s · load {timings.load_s or 0:.2f} s · "
                      f"{timings.per_step_s or 0:.3f} s/step (64x64, cutn 8) · run "
                      f"{timings.total_s or 0:.2f} s", markup=False)
    if report.folder is not None:
        out_console.print(f"run folder kept: {report.folder}", markup=False)
    out_console.print("[bold green]selftest passed[/]" if report.ok else "[bold red]selftest failed[/]")
    if not report.ok:
        raise typer.Exit(1)
