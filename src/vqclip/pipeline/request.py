"""What a front end hands the run skeleton (`RunRequest`), what it gets back (`RunOutcome`), and the `Reporter`
through which a run's notes and progress leave it (the CLI's is Rich, the web UI's streams events, batch's
forwards steps; the base one is silent)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from vqclip.config import RunConfig
from vqclip.runfolder.record import Continued, RunRecord


class Reporter:
    """Silent by default; front ends subclass it."""

    def note(self, message: str) -> None:  # one-line notices (size floored, downloads, …)
        pass

    def transfer(self) -> Any:  # a vqclip.weights.download.Progress for downloads and hashing; None: silent
        return None

    def start(self, total: int, run_id: str) -> None:
        pass

    def step(self, info: Any) -> None:  # a vqclip.steps.StepInfo
        pass

    def end(self) -> None:
        pass


@dataclass
class Inputs:
    """Where a run's weights come from: the weights folder (None: $VQCLIP_HOME or the user cache), whether a
    missing file may be downloaded, and the checkpoint files the user trusts with full unpickling."""

    weights_dir: Path | None = None
    download: bool = True
    trusted: list[Path] = field(default_factory=list)


@dataclass
class Resume:
    """A run that continues another (`vqclip continue`, a later stage of a chain): planned by
    `vqclip.pipeline.resume` before any model loads, carried out by the engine when it starts."""

    parent: Any  # runs.RunInfo
    state: dict[str, Any] | None  # the parent's saved engine state, checked (None: none usable)
    start: str  # "state" | names.IMAGE (the parent's image re-encoded at its own size) | "stretch"
    start_image: Any = None  # a PIL image to start from (IMAGE, "stretch")
    resize: str | None = None  # crop | pad | stretch, as asked
    reseed: bool = False  # a new --seed: the random stream restarts from it
    extra: dict[str, Any] = field(default_factory=dict)  # engine-specific plan (an animation's frames)

    @property
    def step(self) -> int:
        """The parent's step the child starts from."""
        if self.state is not None and "step" in self.state:
            return int(self.state["step"])
        record = self.parent.record
        return record.global_step or record.steps_done or 0

    @property
    def recorded(self) -> tuple[str, str] | None:
        """(device type, precision) the parent recorded: on the same kind of device the child computes in the
        same dtypes unless a precision is asked for."""
        device, precision = self.parent.record.device, self.parent.record.precision
        if device and precision is not None:
            return device.split(":")[0], precision
        return None

    def continued(self) -> Continued:
        return Continued(from_=self.parent.id, from_step=self.step, start=self.start, resize=self.resize)


@dataclass
class RunRequest:
    """One run: its settings (`config.engine` names the engine), the engine's own options, where it writes, where
    its weights come from, how it is stopped, and what it continues."""

    config: RunConfig
    output_dir: Path = Path("output")
    inputs: Inputs = field(default_factory=Inputs)
    options: dict[str, Any] = field(default_factory=dict)  # engine-specific (an animation: {"animation": …})
    should_stop: Callable[[], bool] | None = None
    resume: Resume | None = None
    chain: list[Any] = field(default_factory=list)  # a chain's earlier stages (RunOutcomes), in order
    last_stage: bool = True  # with `chain`: the last planned stage, which writes the chain video
    batch: dict[str, Any] | None = None  # `vqclip batch`: {"id", "row"}, recorded in details.json
    models_cache: Any = None  # a vqclip.pipeline.cache.ModelCache: models loaded once, kept for the next run
    run_id: str | None = None


@dataclass
class RunOutcome:
    id: str
    path: Path
    status: str
    steps_done: int
    global_step: int
    record: RunRecord  # what details.json holds

    @property
    def details(self) -> dict[str, Any]:
        """details.json as written (the record's on-disk JSON)."""
        return self.record.model_dump(mode="json")


__all__ = ["Reporter", "Inputs", "Resume", "RunRequest", "RunOutcome"]
