"""The life of a run, written once for every engine and every front end.

`execute(request, reporter)` leaves a complete run folder (finished, interrupted or failed) or nothing at all:

1. build the engine named by `config.engine` (weights, models and input images loaded; a bad input fails here,
   before any folder exists);
2. open the run folder under a temporary name and copy the inputs into it;
3. start the engine (fresh, or from the continue plan), start the progress video;
4. run the steps: progress and video frames leave through the reporter and the writer; a stop request ends
   the run after the current step (or frame);
5. if a step raised: out of memory frees the step's tensors; the engine salvages what is worth keeping (a
   failed run) or the folder is dropped and the error goes up;
6. close the video, let the engine finish extra products (an interpolated video), the chain video for the last
   stage of a chain; a stop request during these final steps skips what is left of them, keeps what was made,
   and records the run as interrupted with the names of what is missing;
7. score the picture, write output.png with its parameters, state.pt and details.json;
8. commit: rename the folder into place. A failure after step 2 that keeps nothing discards the folder.

Prints nothing: notes and progress go to the `Reporter` the caller supplies.
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Any

from vqclip.errors import VqclipError, one_line
from vqclip.pipeline import oom
from vqclip.pipeline.request import Inputs, Reporter, Resume, RunOutcome, RunRequest
from vqclip.runfolder.folder import RunFolder
from vqclip.runfolder.names import CHAIN_VIDEO, DETAILS, IMAGE, STATE, VIDEO
from vqclip.runfolder.record import Files, RunRecord, now_iso


class _Writer:
    """The `engines.base.Output` the engine writes through: progress to the reporter, frames to the video,
    files into the run folder."""

    def __init__(self, folder: RunFolder, video: Any, reporter: Reporter) -> None:
        self.folder, self.video, self.reporter = folder, video, reporter
        self.last_frame_step: int | None = None

    def step(self, info: Any) -> None:
        if getattr(info, "frame", None) is not None:
            self.frame(info.frame)
            self.last_frame_step = info.frame_step
        self.reporter.step(info)

    def frame(self, image: Any) -> None:
        self.video.append(image)

    def write(self, name: str, data: bytes) -> None:
        path = self.folder.file(name)
        if not path.parent.is_dir():
            path.parent.mkdir(parents=True)
        self.folder.write(name, data)

    def note(self, message: str) -> None:
        self.reporter.note(message)


def execute(req: RunRequest, reporter: Reporter | None = None) -> RunOutcome:
    """Do one run and leave a complete run folder, or nothing at all. The device's cached memory goes back to
    the driver at the end, so runs in one process do not pile up."""
    held: list[Any] = []
    try:
        return _run(req, reporter or Reporter(), held)
    except BaseException as exc:
        if isinstance(exc, VqclipError) or oom.is_out_of_memory(exc):  # one line for the user: the frames can go
            traceback.clear_frames(exc.__traceback__)
        raise
    finally:
        for engine in held:
            engine.release()


def _run(req: RunRequest, rep: Reporter, held: list[Any]) -> RunOutcome:
    from vqclip.engines import engine_kind
    from vqclip.engines.base import Setup
    from vqclip.pipeline.media import VideoWriter, image_parameters, png_bytes
    from vqclip.pipeline.score import score_text
    from vqclip.runfolder.state import save_state

    cfg = req.config
    t_start = time.perf_counter()
    # 1. the engine, loaded
    engine = engine_kind(cfg.engine).build(Setup(
        config=cfg, inputs=req.inputs, options=req.options, resume=req.resume, models_cache=req.models_cache,
        note=rep.note, transfer=rep.transfer()))
    held.append(engine)

    # 2. the folder, with copies of the inputs; a write that fails (a full disk) leaves no folder
    folder = RunFolder(req.output_dir, req.run_id).create()
    created = now_iso()
    files = Files(image=IMAGE, state=STATE)
    try:
        for item in engine.input_files():
            folder.write(item.name, item.data)
            if item.field == "image_prompts":
                files.image_prompts.append(item.name)
            else:
                setattr(files, item.field, item.name)
    except BaseException as exc:
        folder.discard()
        if isinstance(exc, OSError):
            raise folder.write_failed(exc) from None
        raise

    # 3. start; 4. the steps
    video = VideoWriter(folder.file(VIDEO), cfg.fps)
    out = _Writer(folder, video, rep)
    result = failure = error = None
    t_run = time.perf_counter()
    try:
        for note in engine.start():
            rep.note(note)
        rep.start(engine.planned, folder.id)
        t_run = time.perf_counter()
        try:
            result = engine.run(out, req.should_stop)
        finally:
            rep.end()
        status = "interrupted" if result.stopped else "finished"
    except BaseException as exc:  # 5. a step raised: keep what is worth keeping, or nothing
        oom_line = engine.after_oom(exc) if oom.is_out_of_memory(exc) else None
        result = engine.salvage(exc)
        if result is None:
            video.close()
            folder.discard()
            if isinstance(exc, OSError):
                raise folder.write_failed(exc) from None
            if oom_line is not None:
                raise VqclipError(oom_line) from None
            raise
        failure, status, error = (oom_line or one_line(exc)), "failed", one_line(exc)
    run_s = time.perf_counter() - t_run

    try:  # 6.-8. finishing touches; any failure here still leaves no half-written run folder
        stopping = req.should_stop or (lambda: False)
        missing: list[str] = []  # products a stop request during these final steps left unmade
        video_path = video.close()
        if video.error:
            rep.note(f"no progress video ({video.error})")
            if stopping():
                missing.append(VIDEO)
        files.video = VIDEO if video_path else None
        wanted = engine.extras(video_path)
        if stopping():
            missing += wanted
        else:
            made = engine.finish(video_path, out)
            for key, value in made.items():
                setattr(files, key, value)
            missing += [name for name in wanted if name not in made.values() and stopping()]
        chain = _chain_video(req, folder, video_path, status, rep, missing)
        if chain:
            files.chain_video = CHAIN_VIDEO
        if status == "finished" and (missing or stopping()):  # a stop during the final steps is a stop too
            status = "interrupted"
        score = engine.score(result.image, rep.note)
        fields = engine.record()
        folder.write(IMAGE, png_bytes(result.image, image_parameters(
            cfg, fields["seed"], result.global_step, tuple(fields["size"]), score_text(score))))
        save_state(folder.file(STATE), engine.state())
        record = _record(req, engine, folder.id, created, status, error, result, score, files, fields,
                         run_s=run_s, t_start=t_start, chain=chain, missing=missing)
        folder.write_record(record)
        path = folder.commit()
    except BaseException as exc:
        folder.discard()
        if isinstance(exc, OSError):  # a full disk, a folder gone read-only: one line naming the run
            raise folder.write_failed(exc) from None
        raise
    if failure is not None:
        said = engine.failed(error, folder.id, result)
        if said is None:
            what = failure if failure != error else f"the run failed at step {result.global_step + 1} ({error})"
            said = (f"{what}; the {result.steps_done} steps done were saved as run {folder.id} (status failed), "
                    f"and `vqclip continue {folder.id}` picks them up")
        raise VqclipError(said) from None
    return RunOutcome(folder.id, path, status, result.steps_done, result.global_step, record)


def _chain_video(req: RunRequest, folder: RunFolder, video: Path | None, status: str, rep: Reporter,
                 missing: list[str]) -> list[str]:
    """The last stage of a chain (`req.chain` holds the earlier ones; a stage that was interrupted is the last):
    the whole chain as one video, in this run's folder. Returns the chain's run ids when the video was made."""
    stopping = req.should_stop or (lambda: False)
    if not req.chain or not (req.last_stage or status == "interrupted" or stopping()):
        return []
    if stopping():  # a stop request: the stages are what matters; the combined video is left out
        missing.append(CHAIN_VIDEO)
        return []
    from vqclip.pipeline.chainvideo import combine_videos

    sources = [o.path / VIDEO for o in req.chain if (o.path / VIDEO).is_file()]
    if video is not None:
        sources.append(video)
    why = "no stage made a progress video"
    try:
        made = combine_videos(sources, folder.file(CHAIN_VIDEO), req.config.fps) if sources else None
    except Exception as e:  # an unreadable stage video costs the chain video, never the stage itself
        made, why = None, one_line(e)
    if made is None:
        folder.file(CHAIN_VIDEO).unlink(missing_ok=True)
        rep.note(f"no chain video ({why})")
        return []
    return [*(o.id for o in req.chain), folder.id]


def _record(req: RunRequest, engine: Any, run_id: str, created: str, status: str, error: str | None, result: Any,
            score: Any, files: Files, fields: dict[str, Any], *, run_s: float, t_start: float,
            chain: list[str], missing: list[str]) -> RunRecord:
    """details.json: what the skeleton knows (id, times, status, steps, losses, lineage, files) and what the
    engine knows (`fields`: seed, size, device, precision, weights, …)."""
    from vqclip.runfolder.record import Timings

    cfg, resume = req.config, req.resume
    timed = result.step_seconds[1:] or result.step_seconds  # the first step warms up
    parent = resume.parent if resume is not None else None
    base: dict[str, Any] = dict(
        id=run_id, created=created, finished=now_iso(), status=status, error=error, engine=cfg.engine,
        prompt=cfg.prompt, config=cfg.model_dump(mode="json"), steps_done=result.steps_done,
        steps_planned=engine.planned, global_step=result.global_step,
        losses=[round(x, 6) for x in result.losses],  # not finite (an overflow): recorded as null
        skipped_steps=result.skipped_steps, score=score,
        timings=Timings(load_s=round(engine.load_s, 3), run_s=round(run_s, 3),
                        total_s=round(time.perf_counter() - t_start, 3),
                        per_step_s=round(sorted(timed)[len(timed) // 2], 4) if timed else None),
        parent=parent.id if parent else None, root=parent.root if parent else run_id,
        stage=parent.stage + 1 if parent else 1, files=files,
        continue_=resume.continued() if resume is not None else None, batch=req.batch, chain=chain or None,
        missing=missing or None)
    return RunRecord(**{**base, **fields})


__all__ = ["Reporter", "Inputs", "Resume", "RunRequest", "RunOutcome", "execute", "DETAILS"]
