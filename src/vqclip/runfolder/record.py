"""The run record: `details.json`, one typed model (`RunRecord`) for every writer and reader.

The pipeline builds a `RunRecord` and writes `record.model_dump(mode="json")` (the on-disk keys: `schema`,
`continue`, `from`) through `atomic_write_json`; `vqclip continue`, chains, `runs list/show`, the gallery and
the selftest read it back through the same model.

Reading is tolerant of versions and strict about types:
- unknown keys (a newer or older vqclip, a hand-made run) are kept (`extra="allow"`) and written back as found;
- a missing field takes its default (most are None: "not recorded");
- a result that is not finite (a loss of inf or nan, a per-step time) is null, never an exception;
- a field of the wrong type is, for a command that acts on the run (`parse_record`, `read_record`), one line
  naming the file and the field; display commands (`tolerant_record`) show what they can and set it aside.

`config` stays a plain mapping: `vqclip continue` validates it against today's RunConfig, dropping (with a
note) the keys an older version wrote. Imports nothing heavy (the gallery and `runs list` must not load torch).
"""

from __future__ import annotations

import errno
import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, ClassVar, Optional

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_serializer

from vqclip import files
from vqclip.errors import VqclipError, one_line

from vqclip.runfolder.names import DETAILS, IMAGE, STATE, VIDEO  # noqa: F401  (re-exported)
SCHEMA = 1


class BadRun(VqclipError):
    """A folder that looks like a run but whose details.json is missing, corrupt or of the wrong shape."""

    def __init__(self, message: str, path: Path | None = None, reason: str = "corrupt") -> None:
        # reason: "missing" | "corrupt" | "symlink" (a linked folder or details.json, never followed) | "not-file"
        super().__init__(message)
        self.path = path
        self.reason = reason


# --------------------------------------------------------------------------------------------- field types


def _whole(value: Any) -> Any:
    if isinstance(value, bool):  # JSON true/false is not a count (pydantic would read it as 1/0)
        raise ValueError("true/false is not a whole number")
    return value


def _finite(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("true/false is not a number")
    if isinstance(value, float) and not math.isfinite(value):
        return None  # an overflowed result is recorded as null; it never costs the run
    return value


Int = Annotated[int, BeforeValidator(_whole)]
Count = Annotated[int, BeforeValidator(_whole), Field(ge=0)]
Pixels = Annotated[int, BeforeValidator(_whole), Field(ge=1)]
Number = Annotated[Optional[float], BeforeValidator(_finite)]


class Section(BaseModel):
    """A part of the record: unknown keys kept, fields set by name or by their on-disk key."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)
    omit_when_none: ClassVar[frozenset[str]] = frozenset()  # on-disk keys written only when set

    @model_serializer(mode="wrap")
    def _on_disk(self, handler: Any) -> Any:
        data = handler(self)
        for name, info in type(self).model_fields.items():  # on-disk keys, with or without by_alias
            if info.alias and name in data:
                data = {(info.alias if k == name else k): v for k, v in data.items()}
        for key in self.omit_when_none:
            if key in data and data[key] is None:
                del data[key]
        return data


class Timings(Section):
    load_s: Number = None
    run_s: Number = None
    total_s: Number = None
    per_step_s: Number = None  # the median step (the first, which warms up, left out)


class Weights(Section):
    name: Optional[str] = None
    sha256: Optional[str] = None
    source: Optional[str] = None
    path: Optional[str] = None


class ClipMember(Section):
    """One CLIP model of an ensemble (`--clip MODEL/TAG:WEIGHT`) as it was named, with its weight in the loss."""

    model: Optional[str] = None
    pretrained: Optional[str] = None
    weight: Number = None


class Clip(Section):
    """The run's CLIP (its first, when there were several: the CLIP score's); `ensemble`, only when `--clip`
    named them: every model with its weight."""

    omit_when_none: ClassVar[frozenset[str]] = frozenset({"ensemble"})

    model: Optional[str] = None
    pretrained: Optional[str] = None
    ensemble: Optional[list[ClipMember]] = None


class Files(Section):
    """Names of the files in the run folder (None: not written)."""

    omit_when_none: ClassVar[frozenset[str]] = frozenset({"chain_video", "frames", "video_interpolated"})

    image: Optional[str] = None
    video: Optional[str] = None
    state: Optional[str] = None
    init_image: Optional[str] = None
    image_prompts: list[str] = Field(default_factory=list)
    chain_video: Optional[str] = None  # the last stage of a chain: the stages' videos as one
    frames: Optional[str] = None  # an animation: the folder of its frame PNGs
    video_interpolated: Optional[str] = None  # an animation made with --interpolate N


class Continued(Section):
    """How a continued run started: from its parent's `state`, its `output.png` re-encoded, or `stretch`."""

    from_: Optional[str] = Field(None, alias="from")
    from_step: Optional[Count] = None
    start: Optional[str] = None
    resize: Optional[str] = None


class PromptScore(Section):
    """One text prompt's CLIP score: `100 · max(cos(image, text), 0)` (vqclip.pipeline.score)."""

    text: Optional[str] = None
    weight: Number = None
    score: Number = None


class Score(Section):
    """The final image's CLIP score against the run's text prompts. `summary`: the weighted mean of the prompts
    with a positive weight (null when every prompt is negative); negative prompts are things to avoid, listed
    with their own score but not in the summary."""

    summary: Number = None
    prompts: list[PromptScore] = Field(default_factory=list)


class RunRecord(Section):
    """details.json. Field order is the file's key order; unknown keys follow."""

    omit_when_none: ClassVar[frozenset[str]] = frozenset({"continue", "chain", "animation", "score", "batch",
                                                          "missing"})

    schema_: Int = Field(SCHEMA, alias="schema")
    id: Optional[str] = None
    created: Optional[str] = None  # ISO 8601, local time with offset
    finished: Optional[str] = None
    status: str = "unknown"  # finished | interrupted | failed
    error: Optional[str] = None  # a failed run: one line
    engine: Optional[str] = None  # the engine that made it (vqclip.engines); older runs: see `engine_name`
    prompt: Optional[str] = None
    config: Optional[dict[str, Any]] = None  # RunConfig.model_dump(mode="json"); validated by `continue`
    seed: Optional[Int] = None  # the resolved seed
    size: Optional[tuple[Pixels, Pixels]] = None  # [width, height], floored to the VQGAN's factor
    steps_done: Optional[Count] = None  # by this run
    steps_planned: Optional[Count] = None
    global_step: Optional[Count] = None  # of the image: a continued run counts its parents' steps too
    losses: list[Number] = Field(default_factory=list)
    skipped_steps: list[Int] = Field(default_factory=list)  # steps not applied (loss or gradient not finite)
    score: Optional[Score] = None  # the final image's CLIP score; absent without a text prompt
    timings: Timings = Field(default_factory=Timings)
    device: Optional[str] = None
    precision: Optional[str] = None
    low_memory: Optional[bool] = None
    memory_estimate_mb: Optional[Int] = None
    versions: dict[str, Optional[str]] = Field(default_factory=dict)
    weights: Weights = Field(default_factory=Weights)
    clip: Clip = Field(default_factory=Clip)
    parent: Optional[str] = None  # the run this one continues
    root: Optional[str] = None  # the first run of its chain (itself when it has no parent)
    stage: Annotated[int, BeforeValidator(_whole), Field(ge=1)] = 1
    files: Files = Field(default_factory=Files)
    continue_: Optional[Continued] = Field(None, alias="continue")  # a continued run only
    chain: Optional[list[str]] = None  # the last stage of a chain: every stage's id, in order
    animation: Optional[dict[str, Any]] = None  # an animation run: vqclip.animation.Animation, as JSON
    batch: Optional[dict[str, Any]] = None  # a run of `vqclip batch`: {"id": batch id, "row": row number}
    missing: Optional[list[str]] = None  # files a stop during the final steps left unmade (anim_x2.mp4, chain.mp4)

    @property
    def engine_name(self) -> str:
        """The engine that made the run; runs from before engines were recorded were VQGAN-CLIP ones."""
        return self.engine or ("animation" if self.animation is not None else "vqgan")


SECTIONS: dict[str, type[Section]] = {"timings": Timings, "weights": Weights, "clip": Clip, "files": Files,
                                      "continue": Continued, "score": Score}

# What a field should be, in the words of the one-line error (by field; else by pydantic's error type).
_SHAPES = {"size": "is not [width, height]", "losses": "is not a list of numbers",
           "skipped_steps": "is not a list of step numbers", "chain": "is not a list of run ids",
           "stage": "is not a stage number (1 or more)", "files.image_prompts": "is not a list of file names",
           "versions": "is not an object of version strings",
           "score.prompts": "is not a list of prompt scores (text, weight, score)",
           "clip.ensemble": "is not a list of CLIP models (model, pretrained, weight)"}
_KINDS = {"int_type": "is not a whole number", "int_parsing": "is not a whole number",
          "int_from_float": "is not a whole number", "int_parsing_size": "is a number too long to read",
          "string_type": "is not text", "float_type": "is not a number", "float_parsing": "is not a number",
          "bool_type": "is not true or false", "bool_parsing": "is not true or false", "list_type": "is not a list",
          "dict_type": "is not an object", "model_type": "is not an object", "tuple_type": "is not a list",
          "too_short": "has too few items", "too_long": "has too many items",
          "greater_than_equal": "is below {ge}", "value_error": "is true or false, not a number"}


def _field_path(loc: tuple[Any, ...]) -> tuple[str, ...]:
    """The field an error belongs to: a top-level key, or `section.key` for a field of a nested section."""
    head = str(loc[0]) if loc else ""
    section = SECTIONS.get(head)
    if section is not None and len(loc) > 1 and isinstance(loc[1], str):
        keys = {info.alias or name for name, info in section.model_fields.items()}
        if loc[1] in keys:
            return head, loc[1]
    return (head,)


def _phrase(name: str, error: dict[str, Any]) -> str:
    if name in _SHAPES:
        return _SHAPES[name]
    kind = _KINDS.get(error.get("type", ""))
    if kind:
        try:
            return kind.format(**(error.get("ctx") or {}))
        except (KeyError, IndexError, ValueError):
            pass
    return "has the wrong type"


def _errors(e: ValidationError) -> list[dict[str, Any]]:
    return e.errors(include_url=False, include_context=True, include_input=False)  # never echo the value


def parse_record(data: Any, where: Path) -> RunRecord:
    """The record in `data` (parsed details.json), or a one-line BadRun naming the file `where` and the first
    field of the wrong type (its value is never echoed: it may hold anything)."""
    if not isinstance(data, dict):
        raise BadRun(f"{where} is corrupt (not a JSON object); fix or remove that run folder", where.parent)
    try:
        return RunRecord.model_validate(data)
    except ValidationError as e:
        errors = _errors(e)
        names = list(dict.fromkeys(".".join(_field_path(err["loc"])) for err in errors))
        name = names[0]
        more = f" (and {len(names) - 1} more field{'s' if len(names) > 2 else ''})" if len(names) > 1 else ""
        raise BadRun(f"{where}: field '{name}' {_phrase(name, errors[0])}{more}; fix or remove that run folder",
                     where.parent) from None


def tolerant_record(data: dict[str, Any]) -> tuple[RunRecord, dict[str, Any]]:
    """For display: the record with every field of the wrong type left at its default, and those fields as
    found (`{"size": ["a", 2], "weights.name": 5}`). Never raises; `data` is not modified."""
    data = dict(data) if isinstance(data, dict) else {}
    odd: dict[str, Any] = {}
    for _ in range(len(data) * 2 + 8):  # each round sets at least one field aside
        try:
            return RunRecord.model_validate(data), odd
        except ValidationError as e:
            paths = {_field_path(err["loc"]) for err in _errors(e)}
        for path in paths:
            if len(path) == 2 and isinstance(data.get(path[0]), dict):
                section = data[path[0]] = dict(data[path[0]])
                if path[1] in section:
                    odd[".".join(path)] = section.pop(path[1])
            elif path[0] in data:
                odd[path[0]] = data.pop(path[0])
            else:  # an error this walk cannot place: give up on the record, keep the folder listed
                return RunRecord(), dict(data, **odd)
    return RunRecord(), dict(data, **odd)


# --------------------------------------------------------------------------------------------- the file


def read_details(folder: Path) -> dict[str, Any]:
    """details.json parsed (not yet validated); it must be a regular file inside the folder (a symlink is never
    followed, a FIFO never waited on)."""
    path = folder / DETAILS
    try:
        raw = files.read_regular(path)
    except FileNotFoundError:
        raise BadRun(f"{path} is missing; {folder} is not a vqclip run folder", folder, "missing") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise BadRun(f"{path} is a symlink, which vqclip does not follow; replace it with the file itself or "
                         "remove that run folder", folder, "symlink") from None
        why = e.strerror or type(e).__name__
        reason = "not-file" if e.errno in (errno.EINVAL, errno.EISDIR) else "corrupt"
        raise BadRun(f"{path} {why if reason == 'not-file' else f'is unreadable ({why})'}; fix or remove that "
                     "run folder", folder, reason) from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # ValueError: also a 5,000-digit number
        raise BadRun(f"{path} is corrupt ({one_line(e, 120)}); fix or remove that run folder",
                     folder) from None
    if not isinstance(data, dict):
        raise BadRun(f"{path} is corrupt (not a JSON object); fix or remove that run folder", folder)
    return data


def read_record(folder: Path) -> RunRecord:
    """The run's record, strictly: a missing, corrupt or mistyped details.json is one line naming it."""
    return parse_record(read_details(folder), folder / DETAILS)


def write_record(path: Path, record: RunRecord) -> None:
    """Write the record whole or not at all (non-finite numbers become null)."""
    files.atomic_write_json(path, record.model_dump(mode="json"))


def now_iso() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


__all__ = ["DETAILS", "IMAGE", "VIDEO", "STATE", "SCHEMA", "BadRun", "RunRecord", "Timings", "Weights", "Clip",
           "ClipMember", "Files", "Continued", "Score", "PromptScore", "parse_record", "tolerant_record", "read_details",
           "read_record", "write_record", "now_iso"]
