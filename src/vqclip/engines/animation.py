"""The animation engine: VQGAN-CLIP frames made one after another, the camera moved between them.

Frame 0 is the image after `pre_steps` steps. Every later frame k decodes the current latent, warps the image by
the schedules' move at k (`vqclip.engine.warp`), re-encodes it with the VQGAN's encoder as the new latent (and
MSE anchor) and iterates `steps_per_frame` steps on it. The models load once for the whole animation.

Besides a generate run's files the run folder holds `frames/frame_NNNNN.png`, the progress video is the frames
at `fps`, and `--interpolate N` adds `anim_xN.mp4`. A stop request is honoured between frames (the current frame
is finished); the state saved after the last whole frame lets `continue RUN --frames M` add frames that are, on
the CPU, byte for byte the ones a longer run would have made. A continued animation copies its parent's frames,
so each run folder holds the whole animation so far.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

from vqclip.animation import Animation, FrameStat, story_stage
from vqclip.engines.base import Output, Setup
from vqclip.engines.vqgan import VqganEngine
from vqclip.engines.vqgan_state import check_state
from vqclip.errors import UsageError
from vqclip.runfolder import names
from vqclip.runfolder.record import BadRun
from vqclip.steps import Result

__all__ = ["AnimationEngine", "build", "check_state", "plan_continue", "CONTINUE_OPTIONS", "CONTINUE_ADDS_STEPS"]

CONTINUE_OPTIONS = ("frames",)  # `vqclip continue RUN --frames M`
CONTINUE_ADDS_STEPS = False  # an interrupted animation finishes its frames (plan_continue), not a number of steps
CHANGEABLE = {"device", "precision"}  # what may change when an animation goes on; the rest carries over


class AnimationEngine(VqganEngine):
    name = "animation"

    def __init__(self, setup: Setup) -> None:
        from vqclip.prompts import parse_story

        self.anim: Animation = setup.options["animation"]
        self.stories = parse_story(setup.config.prompt) if setup.config.prompt else [""]
        first = setup.config.model_copy(update={"prompt": self.stories[0], "save_every": 0})
        super().__init__(setup, with_encoder=True, config=first)
        anim, resume = self.anim, setup.resume
        self.first = anim.frames_done if resume is not None else 0
        self.story_frames = anim.story_frames or anim.frames
        self.planned = anim.steps_planned() if self.first == 0 else (anim.frames - self.first) * anim.steps_per_frame
        self.stage_prompts = self._stage_prompts()
        self.per_frame: list[FrameStat] = list(anim.per_frame[:self.first])
        self.frame = self.first
        self.last_state: dict[str, Any] | None = None
        self.current: Any = None  # the last frame made
        self.losses: list[float] = []
        self.step_seconds: list[float] = []
        self.skipped: list[int] = []

    def _stage_prompts(self) -> list[list[Any]]:
        """The embedded prompts of every story stage (image and noise prompts belong to each)."""
        from vqclip import engine
        from vqclip.prompts import parse_text_prompts

        run, cfg = self.loaded, self.setup.config
        out = [run.prompts]
        images = [(img, spec) for (img, _, _), spec in run.image_prompts]
        for text in self.stories[1:]:
            texts = parse_text_prompts(text) if text else []
            out.append(engine.build_prompts(run.models, run.settings, texts, images, cfg.noise_prompt_specs))
        return out

    def start(self) -> list[str]:
        from vqclip import engine

        run, resume = self.loaded, self.setup.resume
        self.session = engine.start_session(run.models, run.settings, self.stage_prompts[0],
                                            init_image=run.start_image,
                                            state=resume.state if resume is not None else None)
        if run.plan.weight_dtype is not None:  # frozen weights stored as planned; the encoder keeps fp32
            run.models.vqgan.set_weight_dtype(run.plan.weight_dtype)
            for clip in _each(run.models.clips):  # every CLIP of an ensemble, each once
                clip.set_weight_dtype(run.plan.weight_dtype)
        if self.setup.models_cache is None:
            for clip in _each(run.models.clips):  # the encoder stays: every frame is re-encoded
                clip.release_text_tower()
        return list(self.session.notes)

    def run(self, out: Output, should_stop: Callable[[], bool] | None) -> Result:
        import torch

        from vqclip.engine.warp import warp

        anim, session, device = self.anim, self.session, self.loaded.device
        resume = self.setup.resume
        if resume is not None:  # the frames so far, so this folder holds the whole animation
            import numpy as np

            from vqclip.runfolder.folder import read_run_image

            for i in range(self.first):  # never through a symlink, never an image bomb
                image, data = read_run_image(resume.parent.path, names.frame_path(i))
                out.write(names.frame_path(i), data)
                out.frame(np.asarray(image, dtype=np.uint8))
        done = [0]

        def on_step(info: Any) -> None:  # progress over the whole animation; the video films whole frames
            out.step(dataclasses.replace(info, index=done[0] + info.index, total=self.planned, frame=None,
                                         frame_step=None))

        def make_frame(index: int, steps: int) -> Any:
            session.prompts = self.stage_prompts[story_stage(index, self.story_frames, len(self.stage_prompts))]
            t0 = time.perf_counter()
            result = session.run(steps, on_step) if steps else None
            done[0] += steps
            img = result.image if result is not None else session.image()
            if result is not None:
                self.losses.extend(result.losses)
                self.step_seconds.extend(result.step_seconds)
                self.skipped.extend(result.skipped_steps)
            from vqclip.pipeline.media import png_bytes

            out.write(names.frame_path(index), png_bytes(img, {}))
            out.frame(img)
            last = result.losses[-1] if result is not None and result.losses else None
            self.per_frame.append(FrameStat(frame=index, step=session.step, loss=last,
                                            seconds=round(time.perf_counter() - t0, 4)))
            self.last_state = session.state_dict()  # what continue starts from: the end of a whole frame
            return img

        stopped = False
        if self.first == 0:
            self.current = make_frame(0, anim.first_steps)
            self.frame = 1
        else:
            self.current = session.image()  # the parent's last frame, decoded from its latent as it was made
        while self.frame < anim.frames:
            if should_stop is not None and should_stop():
                stopped = True
                break
            zoom, angle, tx, ty = anim.move(self.frame)
            moved = warp(self.current[None].to(device, torch.float32), zoom, angle, tx, ty, anim.border)[0]
            session.restart_from(_encode(self.loaded.models, moved.clamp(0, 1)),
                                 keep_optimizer=not anim.reset_optimizer)
            self.current = make_frame(self.frame, anim.steps_per_frame)
            self.frame += 1
        return self._result(stopped)

    def _result(self, stopped: bool = False) -> Result:
        step = int(self.last_state["step"]) if self.last_state is not None else self.session.step
        return Result(self.current, len(self.losses), step, self.losses, self.step_seconds, stopped, self.skipped)

    def state(self) -> dict[str, Any]:
        return self.last_state if self.last_state is not None else self.session.state_dict()

    def record(self) -> dict[str, Any]:
        anim = self.anim.model_copy(update={"frames_done": len(self.per_frame), "per_frame": self.per_frame,
                                            "story_frames": self.story_frames})
        return {**self.loaded.fields(), "animation": anim.model_dump(mode="json")}

    def salvage(self, exc: BaseException) -> Result | None:
        """The frames made are kept after an error (not after Ctrl-C, nor when no new frame was made)."""
        if isinstance(exc, KeyboardInterrupt) or not isinstance(exc, Exception) or self.frame <= self.first \
                or self.current is None:
            return None
        return self._result()

    def extras(self, video: Any) -> list[str]:
        return [names.interpolated_video(self.anim.interpolate)] if video is not None and self.anim.interpolate > 1 \
            else []

    def finish(self, video: Any, out: Output) -> dict[str, Any]:
        from vqclip.pipeline.media import interpolate_video

        files: dict[str, Any] = {"frames": names.FRAMES}
        for name in self.extras(video):
            why = interpolate_video(video, video.parent / name, self.anim.interpolate, self.setup.config.fps)
            if why:
                out.note(f"no interpolated video ({why})")
            else:
                files["video_interpolated"] = name
        return files

    def score(self, image: Any, note: Callable[[str], None]) -> Any:  # the last frame, its story stage's prompts
        from vqclip.pipeline.score import run_score

        last = self.stage_prompts[story_stage(max(len(self.per_frame) - 1, 0), self.story_frames,
                                              len(self.stage_prompts))]
        return run_score(self.loaded.models.clip, last, image, self.loaded.settings.clip_autocast_dtype, note)

    def failed(self, error: str, run_id: str, result: Result) -> str | None:
        return (f"the animation failed at frame {self.frame} ({error}); the {len(self.per_frame)} frames made "
                f"were saved as run {run_id} (status failed)")


def _each(models: list[Any]) -> list[Any]:
    """`models` with each object once (a model named twice in an ensemble is one object)."""
    return list({id(m): m for m in models}.values())


def _encode(models: Any, image: Any) -> Any:
    """An image [3, H, W] in [0, 1] → the VQGAN's quantised latent of it, on the models' device."""
    import torch

    with torch.no_grad():
        return models.vqgan.encode(image[None].to(models.device, torch.float32) * 2 - 1)


def build(setup: Setup) -> AnimationEngine:
    return AnimationEngine(setup)


def plan_continue(plan: Any, setup: Setup) -> None:
    """`vqclip continue RUN [--frames M]` for an animation: the next M frames from its saved state, the
    schedules carried on from the frame it stopped at (without --frames, an interrupted one finishes its plan).
    Its own settings go on: only the device and precision may change."""
    from pydantic import ValidationError

    from vqclip.config import validation_lines

    parent, resume = plan.parent, plan.resume
    other = sorted(set(plan.given) - CHANGEABLE)
    if resume.resize is not None:
        other.append("resize")
    if other:
        flags = ", ".join(sorted({"--" + ("size" if k in ("width", "height") else k.replace("_", "-"))
                                  for k in other}))
        raise UsageError(f"{parent.id} is an animation: it goes on with its own settings, so {flags} cannot "
                         "change; pass --frames M (and --device or --precision), or start anew with `vqclip animate`")
    record = parent.record
    try:
        anim = Animation.model_validate(dict(record.animation or {}))
    except ValidationError as e:
        raise BadRun(f"{parent.path / names.DETAILS} holds animation settings that are not valid "
                     f"({'; '.join(validation_lines(e))}); fix that file, or start anew with `vqclip animate`") from None
    more = resume.extra.get("frames")
    if more is None:
        if anim.frames_done >= anim.frames:
            raise UsageError(f"{parent.id} made all its {anim.frames} frames; pass --frames M to add M more")
        plan.notes.append(f"{parent.id} stopped after {anim.frames_done} of {anim.frames} frames; making the "
                          f"{anim.frames - anim.frames_done} left (pass --frames to choose)")
        frames = anim.frames
    else:
        frames = anim.frames_done + more
    missing = [i for i in range(anim.frames_done) if not (parent.path / names.frame_path(i)).is_file()
               or (parent.path / names.frame_path(i)).is_symlink()]
    if anim.frames_done == 0 or missing:
        raise BadRun(f"{parent.path / names.FRAMES} lacks frame {missing[0] if missing else 0}; an animation "
                     "continues from its frames and state — start anew with `vqclip animate`")
    if resume.start != "state" or resume.state is None:
        raise BadRun(f"{parent.path / names.STATE} is missing or unusable; an animation continues from its frames "
                     "and state — start anew with `vqclip animate`")
    plan.options = {"animation": anim.model_copy(update={"frames": frames,
                                                         "story_frames": anim.story_frames or anim.frames})}
