"""One run, end to end: config → weights → models → engine session → run folder.

This is the glue between the pure engine and the CLI: it resolves files, loads images, drives the session and
records everything in a run folder (written under a temporary name, renamed at the end). It prints nothing
itself: notes and progress go to a `Reporter` supplied by the caller (the CLI's Rich one, or a silent one).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from vqclip.config import RunConfig
from vqclip.errors import VqclipError, one_line
from vqclip.record import DETAILS, IMAGE, STATE, VIDEO, Continued, Files, RunRecord, now_iso
from vqclip.pipeline import oom
from vqclip.runs import RunFolder

class Reporter:
    """Silent by default; the CLI subclasses it with Rich output."""

    def note(self, message: str) -> None:  # one-line notices (size floored, downloads, …)
        pass

    def transfer(self) -> Any:  # a vqclip.weights.download.Progress for downloads and hashing; None: silent
        return None

    def start(self, total: int, run_id: str) -> None:
        pass

    def step(self, info: Any) -> None:
        pass

    def end(self) -> None:
        pass


@dataclass
class RunRequest:
    config: RunConfig
    output_dir: Path = Path("output")
    weights_dir: Path | None = None
    download: bool = True
    trusted: list[Path] = field(default_factory=list)
    should_stop: Callable[[], bool] | None = None
    # chaining (vqclip continue / --then): set by the caller
    parent: str | None = None
    root: str | None = None
    stage: int = 1
    state: dict[str, Any] | None = None  # a saved engine state to continue from
    start_image: Any = None  # a PIL image to encode as the start (continuing from a PNG, or stretch)
    continued: Continued | None = None  # how a continued run starts (details.json "continue")
    # (device type, recorded precision) of the parent: a continued run on the same kind of device computes in
    # the dtypes its parent did, unless --precision says otherwise
    inherit_precision: tuple[str, str] | None = None
    run_id: str | None = None
    # (models, settings, state, start_image) -> the state to start from; lets `continue` adapt a saved state to
    # the loaded models (new grid size, re-encoded start) without loading the models twice
    prepare_state: Callable[[Any, Any, dict[str, Any] | None, Any], dict[str, Any] | None] | None = None
    batch: dict[str, Any] | None = None  # `vqclip batch`: {"id", "row"}, recorded in details.json
    models_cache: Any = None  # a vqclip.pipeline.cache.ModelCache: models loaded once, kept for the next run


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


def execute(req: RunRequest, reporter: Reporter | None = None) -> RunOutcome:
    """Do one run and leave a complete run folder (finished, interrupted or failed), or nothing at all. The
    device's cached memory goes back to the driver at the end, so runs in one process do not pile up."""
    import traceback

    from vqclip.pipeline import budget

    used: dict[str, Any] = {}
    try:
        return _execute(req, reporter or Reporter(), used)
    except BaseException as exc:
        if isinstance(exc, VqclipError) or oom.is_out_of_memory(exc):  # one line for the user: the frames can go
            traceback.clear_frames(exc.__traceback__)
        raise
    finally:
        budget.release_device_cache(used.get("device"))


def _execute(req: RunRequest, rep: Reporter, used: dict[str, Any]) -> RunOutcome:
    from vqclip import engine
    from vqclip.engine.loop import BadState
    from vqclip.pipeline import budget
    from vqclip.pipeline.load import load_run
    from vqclip.pipeline.media import VideoWriter, image_parameters, png_bytes
    from vqclip.pipeline.score import run_score, score_text
    from vqclip.state import save_state

    cfg = req.config
    t_start = time.perf_counter()
    run = load_run(cfg, weights_dir=req.weights_dir, download=req.download, trusted=req.trusted, reporter=rep,
                   used=used, start_image=req.start_image, has_state=req.state is not None,
                   inherit_precision=req.inherit_precision, models_cache=req.models_cache)
    seed, spec, width, height, device = run.seed, run.spec, run.width, run.height, run.device
    precision, plan, settings, models, prompts = run.precision, run.plan, run.settings, run.models, run.prompts
    init, image_prompts, start_image = run.init, run.image_prompts, run.start_image

    def oom_text() -> str:
        return oom.oom_message(device, width, height, cfg.cutn, plan.low_memory, spec.factor)

    folder = RunFolder(req.output_dir, req.run_id).create()
    created = now_iso()
    run_files = Files(image=IMAGE, state=STATE)
    try:  # copies of the input images; a write that fails (a full disk) leaves no folder
        if init is not None:
            run_files.init_image = f"init{init[2]}"
            folder.write(run_files.init_image, init[1])
        for i, ((_, data, suffix), _) in enumerate(image_prompts):
            run_files.image_prompts.append(f"image_prompt_{i}{suffix}")
            folder.write(run_files.image_prompts[-1], data)
    except BaseException as exc:
        folder.discard()
        if isinstance(exc, OSError):
            raise folder.write_failed(exc) from None
        raise
    session = None
    video = VideoWriter(folder.file(VIDEO), cfg.fps)
    result = None
    error: str | None = None
    failure: BaseException | None = None
    t_run = time.perf_counter()
    try:
        state = req.state
        if req.prepare_state is not None:
            state = req.prepare_state(models, settings, state, start_image)
        try:
            session = engine.start_session(models, settings, prompts, init_image=start_image, state=state)
        except BadState as e:  # load_state checks a state file up front; this is what it cannot foresee
            raise VqclipError(f"the saved state of {req.parent or 'the run'} cannot be used here: {e}; continue "
                              f"with --resize stretch to start from its {IMAGE} instead") from None
        for note in session.notes:
            rep.note(note)
        if req.models_cache is None:
            budget.prepare_for_steps(models, plan)  # text tower and encoder freed, weights stored as planned
        else:  # cached models serve the next run too: keep the text tower and encoder
            req.models_cache.prepare_for_steps(models, plan)
        last_frame_step = [-1]

        def on_step(info: Any) -> None:
            if info.frame is not None:
                video.append(info.frame)
                last_frame_step[0] = info.frame_step
            rep.step(info)

        rep.start(cfg.steps, folder.id)
        t_run = time.perf_counter()
        try:
            result = session.run(cfg.steps, on_step, req.should_stop)
        finally:
            rep.end()
        run_s = time.perf_counter() - t_run
        if cfg.compile and session.compile_error:
            rep.note(f"--compile fell back to eager mode ({session.compile_error})")
        if result.skipped_steps:
            rep.note(f"{len(result.skipped_steps)} step(s) not applied because the loss or gradient was not finite "
                     f"({precision.describe()}); if many are, try --precision fp32")
        if last_frame_step[0] != result.global_step:
            video.append(result.image)
        status = "interrupted" if result.stopped else "finished"
    except BaseException as exc:
        out_of_memory = oom.is_out_of_memory(exc)
        if out_of_memory:  # free the failed step's tensors first: decoding the last good latent needs the room
            oom.free_after_oom(exc, session, device)
        result = oom.salvage(session, exc)
        if result is None:  # nothing worth keeping: leave no folder at all
            video.close()
            folder.discard()
            if out_of_memory:
                raise VqclipError(oom_text()) from None
            raise
        failure = exc
        status = "failed"
        error = one_line(exc)
        run_s = time.perf_counter() - t_run

    try:  # finishing touches; any failure here still leaves no half-written run folder
        video_path = video.close()
        if video.error:
            rep.note(f"no progress video ({video.error})")
        score = run_score(models.clip, prompts, result.image, settings.clip_autocast_dtype, rep.note)
        folder.write(IMAGE, png_bytes(result.image, image_parameters(cfg, seed, result.global_step, (width, height),
                                                                     score_text(score))))
        save_state(folder.file(STATE), session.state_dict())
        run_files.video = VIDEO if video_path else None
        record = run.record(
            folder.id, created, status=status, error=error, prompt=cfg.prompt, config=cfg.model_dump(mode="json"),
            steps_done=result.steps_done, steps_planned=cfg.steps, global_step=result.global_step,
            losses=result.losses, skipped_steps=result.skipped_steps, score=score, step_seconds=result.step_seconds,
            run_s=run_s, t_start=t_start, parent=req.parent, root=req.root or folder.id, stage=req.stage,
            files=run_files, continue_=req.continued, batch=req.batch)
        folder.write_record(record)
        path = folder.commit()
    except BaseException as exc:
        folder.discard()
        if isinstance(exc, OSError):  # a full disk, a folder gone read-only: one line naming the run
            raise folder.write_failed(exc) from None
        raise
    if failure is not None:
        what = oom_text() if oom.is_out_of_memory(failure) \
            else f"the run failed at step {result.global_step + 1} ({error})"
        raise VqclipError(f"{what}; the {result.steps_done} steps done were saved as run {folder.id} "
                          f"(status failed), and `vqclip continue {folder.id}` picks them up") from None
    return RunOutcome(folder.id, path, status, result.steps_done, result.global_step, record)


__all__ = ["Reporter", "RunRequest", "RunOutcome", "execute", "DETAILS"]
