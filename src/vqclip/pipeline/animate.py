"""An animation, end to end: frames made one after another, the camera moved between them.

Frame 0 is the image after `pre_steps` steps. Every later frame k decodes the current latent, warps the image
by the schedules' move at k (`vqclip.engine.warp`), re-encodes it with the VQGAN's encoder as the new latent
(and MSE anchor) and iterates `steps_per_frame` steps on it. The models load once for the whole animation.

The run folder is a generate run's plus `frames/frame_NNNNN.png`, `anim.mp4` (the frames at `fps`) and, with
`interpolate` > 1, `anim_xN.mp4`. A stop request is honoured between frames (the current frame is finished);
the state saved after the last frame lets `continue` add frames that are, on the CPU, byte for byte the ones a
longer run would have made. A continued animation copies its parent's frames, so each run folder holds the
whole animation so far. Prints nothing: progress and notes go to the reporter.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from vqclip.animation import Animation, FrameStat, story_stage
from vqclip.config import RunConfig
from vqclip.errors import VqclipError, one_line
from vqclip.pipeline import oom
from vqclip.pipeline.execute import Reporter, RunOutcome
from vqclip.record import IMAGE, STATE, VIDEO, Continued, Files, now_iso
from vqclip.runs import RunFolder

FRAMES = "frames"


def frame_name(index: int) -> str:
    return f"frame_{index:05d}.png"


@dataclass
class AnimateRequest:
    config: RunConfig  # the run settings (prompt may be a story "a ^ b ^ c")
    animation: Animation  # frames = the total the animation should reach
    output_dir: Path = Path("output")
    weights_dir: Path | None = None
    download: bool = True
    trusted: list[Path] = field(default_factory=list)
    should_stop: Callable[[], bool] | None = None
    # continuing an animation: its folder, saved state and the frame to go on from
    parent: Any = None  # runs.RunInfo
    state: dict[str, Any] | None = None
    inherit_precision: tuple[str, str] | None = None  # (device type, precision) the parent recorded


def _stage_prompts(cfg: RunConfig, run: Any) -> list[list[Any]]:
    """The embedded prompts of every story stage (image and noise prompts belong to each)."""
    from vqclip import engine
    from vqclip.prompts import parse_story, parse_text_prompts

    stages = parse_story(cfg.prompt) if cfg.prompt else [""]
    out = [run.prompts]
    images = [(img, spec) for (img, _, _), spec in run.image_prompts]
    for text in stages[1:]:
        texts = parse_text_prompts(text) if text else []
        out.append(engine.build_prompts(run.models, run.settings, texts, images, cfg.noise_prompt_specs))
    return out


def _encode(models: Any, image: Any) -> Any:
    """An image [3, H, W] in [0, 1] → the VQGAN's quantised latent of it, on the models' device."""
    import torch

    with torch.no_grad():
        return models.vqgan.encode(image[None].to(models.device, torch.float32) * 2 - 1)


def animate(req: AnimateRequest, reporter: Reporter | None = None) -> RunOutcome:
    """Make (or extend) an animation and leave a complete run folder, or nothing at all."""
    from vqclip.pipeline import budget

    used: dict[str, Any] = {}
    try:
        return _animate(req, reporter or Reporter(), used)
    finally:
        budget.release_device_cache(used.get("device"))


def _animate(req: AnimateRequest, rep: Reporter, used: dict[str, Any]) -> RunOutcome:
    import torch

    from vqclip import engine
    from vqclip.engine.warp import warp
    from vqclip.pipeline.load import load_run
    from vqclip.pipeline.media import VideoWriter, image_parameters, interpolate_video, png_bytes
    from vqclip.pipeline.score import run_score, score_text
    from vqclip.prompts import parse_story
    from vqclip.state import save_state

    anim, t_start = req.animation, time.perf_counter()
    stories = parse_story(req.config.prompt) if req.config.prompt else [""]
    cfg = req.config.model_copy(update={"prompt": stories[0], "save_every": 0})
    run = load_run(cfg, weights_dir=req.weights_dir, download=req.download, trusted=req.trusted, reporter=rep,
                   used=used, has_state=req.state is not None, with_encoder=True,
                   inherit_precision=req.inherit_precision)
    models, device = run.models, run.device
    stage_prompts = _stage_prompts(req.config, run)
    start = anim.frames_done if req.parent is not None else 0
    story_frames = anim.story_frames or anim.frames
    planned = anim.steps_planned() if start == 0 else (anim.frames - start) * anim.steps_per_frame

    folder = RunFolder(req.output_dir).create()
    created, run_files = now_iso(), Files(image=IMAGE, state=STATE, frames=FRAMES)
    video = VideoWriter(folder.file(VIDEO), cfg.fps)
    per_frame = list(anim.per_frame[:start])
    session = last_state = None
    losses: list[float] = []
    step_seconds: list[float] = []
    skipped: list[int] = []
    frame, image, status, error, failure = start, None, "finished", None, None
    t_run = time.perf_counter()
    try:
        folder.file(FRAMES).mkdir()
        if req.parent is not None:  # the frames so far, so this folder holds the whole animation
            for i in range(start):
                data = (req.parent.path / FRAMES / frame_name(i)).read_bytes()
                folder.write(f"{FRAMES}/{frame_name(i)}", data)
                video.append(frame_pixels(data))
        session = engine.start_session(models, run.settings, stage_prompts[0], init_image=run.start_image,
                                       state=req.state)
        for note in session.notes:
            rep.note(note)
        if run.plan.weight_dtype is not None:  # frozen weights stored as planned; the encoder keeps fp32
            models.vqgan.set_weight_dtype(run.plan.weight_dtype)
            models.clip.set_weight_dtype(run.plan.weight_dtype)
        models.clip.release_text_tower()  # the encoder stays: every frame is re-encoded
        done = [0]

        def on_step(info: Any) -> None:
            rep.step(dataclasses.replace(info, index=done[0] + info.index, total=planned))

        def make_frame(index: int, steps: int) -> Any:
            nonlocal last_state
            session.prompts = stage_prompts[story_stage(index, story_frames, len(stage_prompts))]
            t0 = time.perf_counter()
            result = session.run(steps, on_step) if steps else None
            done[0] += steps
            img = result.image if result is not None else session.image()
            if result is not None:
                losses.extend(result.losses)
                step_seconds.extend(result.step_seconds)
                skipped.extend(result.skipped_steps)
            folder.write(f"{FRAMES}/{frame_name(index)}", png_bytes(img, {}))
            video.append(img)
            last = result.losses[-1] if result is not None and result.losses else None
            per_frame.append(FrameStat(frame=index, step=session.step, loss=last,
                                       seconds=round(time.perf_counter() - t0, 4)))
            last_state = session.state_dict()  # what continue starts from: the end of a whole frame
            return img

        rep.start(planned, folder.id)
        try:
            if start == 0:
                image = make_frame(0, anim.first_steps)
                frame = 1
            else:
                image = session.image()  # the parent's last frame, decoded from its latent as it was made
            while frame < anim.frames:
                if req.should_stop is not None and req.should_stop():
                    status = "interrupted"
                    break
                zoom, angle, tx, ty = anim.move(frame)
                moved = warp(image[None].to(device, torch.float32), zoom, angle, tx, ty, anim.border)[0]
                session.restart_from(_encode(models, moved.clamp(0, 1)), keep_optimizer=not anim.reset_optimizer)
                image = make_frame(frame, anim.steps_per_frame)
                frame += 1
        finally:
            rep.end()
    except BaseException as exc:
        out_of_memory = oom.is_out_of_memory(exc)
        if out_of_memory:
            oom.free_after_oom(exc, session, device)
        if isinstance(exc, KeyboardInterrupt) or not isinstance(exc, Exception) or frame <= start \
                or image is None:
            video.close()
            folder.discard()
            if isinstance(exc, OSError):
                raise folder.write_failed(exc) from None
            if out_of_memory:
                raise VqclipError(oom.oom_message(device, run.width, run.height, cfg.cutn, run.plan.low_memory,
                                                  run.spec.factor)) from None
            raise
        failure, status, error = exc, "failed", one_line(exc)  # the frames made are kept
    run_s = time.perf_counter() - t_run
    try:
        video_path = video.close()
        if video.error:
            rep.note(f"no video ({video.error})")
        run_files.video = VIDEO if video_path else None
        if video_path is not None and anim.interpolate > 1:
            name = f"anim_x{anim.interpolate}.mp4"
            why = interpolate_video(video_path, folder.file(name), anim.interpolate, cfg.fps)
            if why:
                rep.note(f"no interpolated video ({why})")
            else:
                run_files.video_interpolated = name
        step = int(last_state["step"]) if last_state is not None else session.step
        last = stage_prompts[story_stage(max(len(per_frame) - 1, 0), story_frames, len(stage_prompts))]
        score = run_score(models.clip, last, image, run.settings.clip_autocast_dtype, rep.note)  # the last frame
        folder.write(IMAGE, png_bytes(image, image_parameters(req.config, run.seed, step, (run.width, run.height),
                                                              score_text(score))))
        save_state(folder.file(STATE), last_state if last_state is not None else session.state_dict())
        record_anim = anim.model_copy(update={"frames_done": len(per_frame), "per_frame": per_frame,
                                              "story_frames": story_frames})
        parent = req.parent
        record = run.record(
            folder.id, created, status=status, error=error, prompt=req.config.prompt,
            config=req.config.model_dump(mode="json"), steps_done=len(losses), steps_planned=planned,
            global_step=step, losses=losses, skipped_steps=skipped, score=score, step_seconds=step_seconds,
            run_s=run_s, t_start=t_start, parent=parent.id if parent else None,
            root=(parent.record.root or parent.id) if parent else folder.id, stage=parent.stage + 1 if parent else 1,
            files=run_files, animation=record_anim.model_dump(mode="json"),
            continue_=Continued(from_=parent.id, from_step=req.state["step"] if req.state else None, start="state")
            if parent else None)
        folder.write_record(record)
        path = folder.commit()
    except BaseException as exc:
        folder.discard()
        if isinstance(exc, OSError):
            raise folder.write_failed(exc) from None
        raise
    if failure is not None:
        raise VqclipError(f"the animation failed at frame {frame} ({error}); the {len(per_frame)} frames made "
                          f"were saved as run {folder.id} (status failed)") from None
    return RunOutcome(folder.id, path, status, len(losses), step, record)


def extension_request(parent: Any, more_frames: int | None, *, output_dir: Path | None = None,
                      weights_dir: Path | None = None, download: bool = True, trusted: list[Path] | None = None,
                      should_stop: Callable[[], bool] | None = None, device: str | None = None,
                      precision: str | None = None) -> tuple[AnimateRequest, list[str]]:
    """`vqclip continue RUN --frames M` for an animation: the next M frames from its saved state, the schedules
    carried on from the frame it stopped at (without --frames, an interrupted one finishes its plan)."""
    from pydantic import ValidationError

    from vqclip.config import validation_lines
    from vqclip.errors import UsageError
    from vqclip.pipeline.resume import recorded_precision
    from vqclip.record import BadRun
    from vqclip.state import load_state

    record = parent.checked()
    where = parent.path / "details.json"
    try:
        anim = Animation.model_validate({k: v for k, v in (record.animation or {}).items()})
        cfg = RunConfig.model_validate({**(record.config or {}), "seed": record.seed,
                                        **({"device": device} if device else {}),
                                        **({"precision": precision} if precision else {})})
    except ValidationError as e:
        raise BadRun(f"{where} holds animation settings that are not valid ({'; '.join(validation_lines(e))}); "
                     "fix that file, or start anew with `vqclip animate`") from None
    notes = []
    if more_frames is None:
        if anim.frames_done >= anim.frames:
            raise UsageError(f"{parent.id} made all its {anim.frames} frames; pass --frames M to add M more")
        notes.append(f"{parent.id} stopped after {anim.frames_done} of {anim.frames} frames; making the "
                     f"{anim.frames - anim.frames_done} left (pass --frames to choose)")
        frames = anim.frames
    else:
        frames = anim.frames_done + more_frames
    missing = [i for i in range(anim.frames_done) if not (parent.path / FRAMES / frame_name(i)).is_file()]
    if anim.frames_done == 0 or missing:
        raise BadRun(f"{parent.path / FRAMES} lacks frame {missing[0] if missing else 0}; an animation continues "
                     "from its frames and state — start anew with `vqclip animate`")
    state = load_state(parent.path / STATE)
    anim = anim.model_copy(update={"frames": frames, "story_frames": anim.story_frames or anim.frames})
    return AnimateRequest(config=cfg, animation=anim, output_dir=output_dir or parent.path.parent,
                          weights_dir=weights_dir, download=download, trusted=list(trusted or []),
                          should_stop=should_stop, parent=parent, state=state,
                          inherit_precision=recorded_precision(record)), notes


def frame_pixels(data: bytes) -> Any:
    """A frame PNG's bytes → an HxWx3 uint8 array for the video."""
    import io

    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
