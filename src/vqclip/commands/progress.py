"""Rich progress, Ctrl-C/SIGTERM handling and the closing lines of runs (the CLI side of the engine's callback)."""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

import typer

from vqclip.commands.common import err_console, out_console, safe
from vqclip.errors import stop_code, stop_exception
from vqclip.pipeline.execute import Reporter


class RichReporter(Reporter):
    """step/total, loss, it/s and ETA on stderr; `quiet` keeps only the notes."""

    def __init__(self, console: Console | None = None, quiet: bool = False, label: str = "",
                 stop: StopOnInterrupt | None = None, intro: str = "") -> None:
        self.console = console or err_console
        self.quiet = quiet
        self.label = label
        self.stop: StopOnInterrupt | None = None
        if stop is not None:
            self.attach(stop)
        self.intro = intro  # a first note, held back until the run says something (an error comes alone)
        self._progress: Progress | None = None
        self._task: Any = None

    def attach(self, stop: StopOnInterrupt) -> None:
        """Until this reporter hears of the run's first step there is nothing to save: `stop` is disarmed now
        and armed by `step`, from then on a Ctrl-C finishes the step and saves."""
        self.stop = stop
        stop.armed = False

    def _say_intro(self) -> None:
        if self.intro:
            intro, self.intro = self.intro, ""
            self.note(intro)

    def note(self, message: str) -> None:
        from rich.text import Text

        self._say_intro()
        self.console.print(Text.assemble(("•", "dim"), " ", safe(message)), highlight=False)  # never read as markup

    def transfer(self) -> Any:
        """A Rich bar for downloads and hashing of weights (bytes, rate, ETA), shown even when quiet."""
        from vqclip.commands.weights import RichTransfer

        return RichTransfer(self.console)

    def start(self, total: int, run_id: str) -> None:
        self._say_intro()
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
        if self.stop is not None:
            self.stop.armed = True
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
    """First Ctrl-C, SIGTERM or SIGHUP: finish the current step, then save a partial run. A second one: abort at
    once (KeyboardInterrupt; Terminated for SIGTERM, HungUp for SIGHUP), saving nothing. `exit_code` is 130 after
    Ctrl-C, 143 after SIGTERM, 129 after SIGHUP (a closed terminal or SSH session).

    While disarmed (from `RichReporter.attach` until the reporter hears of the run's first step) there is nothing
    to save, so the first signal goes to the handler before this one (the CLI's: it unwinds at once, or as soon
    as an import in progress is done): a Ctrl-C while the models load ends the command then (the pipeline
    removes a run folder it had begun), instead of after the loading, with a 0-step run folder.

    Installed only while a run is going (no import-time signal handlers)."""

    SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))

    def __init__(self, console: Console | None = None, unit: str = "step") -> None:
        self.unit = unit  # what a first signal lets finish: a "step", or an animation's "frame"
        self.requested = False
        self.armed = True  # see RichReporter.attach
        self.signum: int | None = None
        self.console = console or err_console
        self._previous: dict[int, Any] = {}

    def __call__(self) -> bool:
        return self.requested

    @property
    def exit_code(self) -> int:
        return stop_code(self.signum)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if not self.armed and not self.requested:  # nothing to save yet: the handler before ours unwinds
            previous = self._previous.get(signum)
            if callable(previous):
                return previous(signum, frame)  # (the CLI's waits for an import in progress to finish)
        if self.requested or not self.armed:
            raise stop_exception(signum)
        self.requested = True
        self.signum = signum
        what = {signal.SIGTERM: "Terminated", getattr(signal, "SIGHUP", -1): "Hung up"}.get(signum, "Stopping")
        self.console.print(f"\n[yellow]{what}: finishing this {self.unit} and saving… (Ctrl-C again aborts without "
                           "saving)[/]")

    def __enter__(self) -> StopOnInterrupt:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()


def report_outcome(outcome: Any) -> None:
    """The closing lines of a run: id, status, folder (stdout, so scripts can read them)."""
    o = outcome
    steps = f"{o.steps_done} step{'s' if o.steps_done != 1 else ''}"
    out_console.print(f"Run {o.id} {o.status}: {steps} (total {o.global_step}) in "
                      f"{o.record.timings.total_s or 0:.1f} s", markup=False)
    out_console.print(safe(f"{o.path}{'/'}output.png"), markup=False)


def report_interrupted(stop: StopOnInterrupt, message: str) -> None:
    """After a run saved as interrupted: say so, and exit 130 (Ctrl-C) or 143 (SIGTERM)."""
    from vqclip.commands.common import STOP_REPORTED

    err_console.print(f"Interrupted: {safe(message)}", markup=False)
    STOP_REPORTED.append(stop.exit_code)
    raise typer.Exit(stop.exit_code)
