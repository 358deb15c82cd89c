"""The engine interface: what the run skeleton (`vqclip.pipeline.execute`) asks of every engine.

An engine is built from a `Setup` (the run's config, options, inputs, the continue plan if any, the model cache
and where notes go), then driven by the skeleton:

    engine = kind.build(setup)          # weights, models and input images loaded
    engine.start()                      # fresh, or from the continue plan's saved state; returns notes
    result = engine.run(out, should_stop)   # steps; progress, video frames and extra files go through `out`
    engine.image() / engine.state() / engine.record()   # the picture, what `continue` needs, details.json fields

Everything else has a default in `Engine` below: an engine with no CLIP, no input files and no device cache to
free implements only the five calls above. Engines print nothing and never touch the run folder themselves;
files they make go through `out.write`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from vqclip.steps import Result


class Output(Protocol):
    """How a running engine hands things to the skeleton."""

    def step(self, info: Any) -> None: ...  # a vqclip.steps.StepInfo: progress (its frame, if any, is filmed)

    def frame(self, image: Any) -> None: ...  # a frame of the progress video ([3, H, W] in [0, 1])

    def write(self, name: str, data: bytes) -> None: ...  # a file of the run folder (a runfolder.names name)

    def note(self, message: str) -> None: ...


@dataclass
class Setup:
    """What an engine is built from."""

    config: Any  # vqclip.config.RunConfig
    inputs: Any  # vqclip.pipeline.request.Inputs
    options: dict[str, Any] = field(default_factory=dict)
    resume: Any = None  # vqclip.pipeline.request.Resume, when continuing a run
    models_cache: Any = None  # vqclip.pipeline.cache.ModelCache, or None: load for this run alone
    note: Callable[[str], None] = lambda message: None
    transfer: Any = None  # a download/hash progress for the weights, or None


@dataclass
class InputFile:
    """A copy of an input the run folder keeps (init image, image prompts): the details.json `files` field it
    is listed under, its file name, its bytes."""

    field: str  # "init_image" | "image_prompts"
    name: str
    data: bytes


def input_copies(init: Any, image_prompts: list[Any]) -> list[InputFile]:
    """The copies a run keeps of its init image and image prompts: `init` is (image, bytes, suffix) or None,
    `image_prompts` ((image, bytes, suffix), spec) pairs, as `pipeline.media.open_image` read them."""
    from vqclip.runfolder import names

    kept = []
    if init is not None:
        kept.append(InputFile("init_image", names.init_image(init[2]), init[1]))
    for i, ((_, data, suffix), _) in enumerate(image_prompts):
        kept.append(InputFile("image_prompts", names.image_prompt(i, suffix), data))
    return kept


class Engine(ABC):
    """Defaults for everything but the five core calls (`start`, `run`, `image`, `state`, `record`)."""

    name: str = ""
    planned: int = 0  # steps this run plans (the progress total)
    load_s: float = 0.0  # seconds spent loading models
    device: Any = None

    # -- core ---------------------------------------------------------------------------------------------
    @abstractmethod
    def start(self) -> list[str]:
        """Set up the first step: fresh, or from `setup.resume`. Returns notes for the user."""

    @abstractmethod
    def run(self, out: Output, should_stop: Callable[[], bool] | None) -> Result:
        """Take the planned steps (fewer when `should_stop()` turns true) and return what they made."""

    @abstractmethod
    def image(self) -> Any:
        """The current picture: [3, H, W] in [0, 1] on the CPU."""

    @abstractmethod
    def state(self) -> dict[str, Any]:
        """Everything exact resume needs: tensors and plain values only, on the CPU (state.pt)."""

    @abstractmethod
    def record(self) -> dict[str, Any]:
        """details.json fields this engine knows (seed, size, device, precision, weights, …)."""

    # -- optional -----------------------------------------------------------------------------------------
    def input_files(self) -> list[InputFile]:
        return []

    def salvage(self, exc: BaseException) -> Result | None:
        """After `run` raised: what is worth keeping as a failed run, or None (no run folder at all)."""
        return None

    def after_oom(self, exc: BaseException) -> str:
        """Free the failed step's memory; return the one line that says what to lower."""
        return f"out of memory ({exc})"

    def extras(self, video: Any) -> list[str]:
        """File names `finish` would make after the progress video (`video`: its path or None)."""
        return []

    def finish(self, video: Any, out: Output) -> dict[str, Any]:
        """Extra products made after the progress video is closed (`video`: its path or None); returns
        details.json `files` fields for them."""
        return {}

    def score(self, image: Any, note: Callable[[str], None]) -> Any:
        """The CLIP score of the final picture (a runfolder.record.Score), or None."""
        return None

    def failed(self, error: str, run_id: str, result: Result) -> str | None:
        """The one line after a failure that kept a run; None: the skeleton's own."""
        return None

    def release(self) -> None:
        """Hand cached device memory back at the end of the run."""


__all__ = ["Engine", "InputFile", "Output", "Setup", "input_copies"]
