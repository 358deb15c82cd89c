"""Rich progress and Ctrl-C handling for runs (the CLI side of the engine's callback)."""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from vqclip.cli_common import err_console
from vqclip.pipeline import Reporter


class RichReporter(Reporter):
    """step/total, loss, it/s and ETA on stderr; `quiet` keeps only the notes."""

    def __init__(self, console: Console | None = None, quiet: bool = False, label: str = "") -> None:
        self.console = console or err_console
        self.quiet = quiet
        self.label = label
        self._progress: Progress | None = None
        self._task: Any = None

    def note(self, message: str) -> None:
        self.console.print(f"[dim]•[/] {message}", highlight=False)

    def start(self, total: int, run_id: str) -> None:
        if self.quiet:
            return
        self._progress = Progress(
            TextColumn(f"[bold]{self.label or 'generating'}[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task("run", total=total, loss="—", rate="")

    def step(self, info: Any) -> None:
        if self._progress is None:
            return
        rate = 1.0 / info.seconds if info.seconds > 0 else 0.0
        shown = f"{rate:.2f} it/s" if rate >= 1 else f"{info.seconds:.2f} s/it"
        self._progress.update(self._task, completed=info.index, loss=f"{info.loss:.4f}", rate=shown)

    def end(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


class StopOnInterrupt:
    """First Ctrl-C: finish the current step, then save a partial run. Second Ctrl-C: abort at once.

    Installed only while a run is going (no import-time signal handlers, STYLE 8)."""

    def __init__(self, console: Console | None = None) -> None:
        self.requested = False
        self.console = console or err_console
        self._previous: Any = None

    def __call__(self) -> bool:
        return self.requested

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.console.print("\n[yellow]Stopping after this step and saving… (Ctrl-C again aborts without saving)[/]")

    def __enter__(self) -> StopOnInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
