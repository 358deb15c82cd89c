"""The progress of `vqclip batch`: one bar for the queue (runs done/total, failures, ETA) and a line per worker
with its current run; `--quiet`: one line per finished run."""

from __future__ import annotations

from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from vqclip.batch.runner import Events
from vqclip.commands.common import err_console, out_console, safe


class BatchProgress(Events):
    def __init__(self, total: int, done: int, failed: int, quiet: bool = False, stop: Any = None) -> None:
        self.quiet, self.stop = quiet, stop
        self.failed = failed
        self.rows: dict[str, int] = {}
        self.workers: dict[str, Any] = {}
        self.progress: Progress | None = None
        if not quiet:
            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[extra]}"), TimeElapsedColumn(), TextColumn("ETA"),
                                     TimeRemainingColumn(), console=err_console, transient=False)
            self.progress.start()
            self.queue = self.progress.add_task("[bold]batch[/]", total=total, completed=done,
                                                extra=self._failures())

    def _failures(self) -> str:
        return f"{self.failed} failed" if self.failed else ""

    def _worker_line(self, worker: str, text: str, completed: int = 0, total: int | None = None) -> None:
        if self.progress is None:
            return
        if worker not in self.workers:
            self.workers[worker] = self.progress.add_task("", total=total or 1, extra="")
        self.progress.update(self.workers[worker], description=f"  {safe(worker)}: {text}", completed=completed,
                             total=total or 1)

    def started(self, worker: str, row: int, task: dict[str, Any]) -> None:
        self.rows[worker] = row
        prompt = safe(task.get("prompt", ""))
        self._worker_line(worker, f"row {row} {prompt[:40]}".replace("[", "\\["))

    def step(self, worker: str, row: int, step: int, total: int) -> None:
        row = self.rows.get(worker, row)
        if self.progress is not None and worker in self.workers:
            self.progress.update(self.workers[worker], completed=step, total=total)

    def finished(self, worker: str, row: int, result: dict[str, Any], retry: bool) -> None:
        status = result["status"]
        if status == "failed" and not retry:
            self.failed += 1
        if self.progress is not None:
            if status == "finished" or (status == "failed" and not retry):
                self.progress.advance(self.queue)
            self.progress.update(self.queue, extra=self._failures())
            self._worker_line(worker, "idle")
        what = {"finished": f"run {result.get('run_id')} finished in {result.get('seconds', 0):.1f} s",
                "interrupted": f"interrupted (saved as run {result.get('run_id')})"}.get(
            status, f"failed{', retrying' if retry else ''}: {result.get('error')}")
        line = f"row {row} ({worker}): {what}"
        if self.quiet:
            out_console.print(safe(line), markup=False)
        elif status != "finished":
            err_console.print(safe(line), markup=False)

    def lost(self, worker: str, row: int, why: str) -> None:
        err_console.print(safe(f"row {row}: worker {worker} lost ({why}); the row goes back to the queue"),
                          markup=False)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
