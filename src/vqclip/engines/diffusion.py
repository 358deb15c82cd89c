"""The CLIP-guided diffusion engine: OpenAI's ADM U-Net denoises from noise (or from a noised init image) over
`steps` respaced steps of its 1000-step schedule, and CLIP's verdict on the predicted clean image steers every
step (`vqclip.engine.diffusion`: the U-Net, the schedule, the DDIM/PLMS samplers, the guidance).

Exact resume: the sampler's x, its PLMS history and the two random streams (sampler noise, cutouts) are the
state, so on the CPU a run stopped at step k and continued gives the bytes of an uninterrupted one. Continuing a
finished run starts a new one from its picture as the init image, skipping `--skip-steps` of the schedule.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

from vqclip.engines.base import Engine, InputFile, Output, Setup, input_copies
from vqclip.errors import UsageError, VqclipError
from vqclip.runfolder import names
from vqclip.runfolder.record import BadRun
from vqclip.steps import Result, StepInfo

__all__ = ["DiffusionEngine", "build", "check_state", "plan_continue", "STATE_VERSION", "CONTINUE_ADDS_STEPS"]

STATE_VERSION = 1
CONTINUE_ADDS_STEPS = False  # `steps` is the schedule's length: an interrupted run finishes it, never extends it
SIDE = 64  # every side a multiple of this (the U-Net halves the picture 5-6 times)


class DiffusionEngine(Engine):
    name = "diffusion"

    def __init__(self, setup: Setup) -> None:
        from vqclip.pipeline import budget

        self.setup = setup
        self.held: dict[str, Any] = {}
        try:
            self._load()
        except BaseException:
            budget.release_device_cache(self.held.get("device"))
            raise

    # -- loading ------------------------------------------------------------------------------------------
    def _load(self) -> None:
        from vqclip.engine import resolve_device
        from vqclip.pipeline.media import open_image
        from vqclip.weights.diffusion_files import resolve_diffusion, unet_config_of

        cfg, inputs, resume = self.setup.config, self.setup.inputs, self.setup.resume
        self.seed = cfg.seed if cfg.seed is not None else secrets.randbelow(2**31)
        start_from_image = resume is not None and resume.start != "state"
        self.init = None if start_from_image or not cfg.init_image else open_image(cfg.init_image, "init image")
        self.image_prompts = [(open_image(s.path, "image prompt"), s) for s in cfg.image_prompt_specs]
        self.files = resolve_diffusion(cfg.model, "diffusion", weights_dir=inputs.weights_dir,
                                       download=inputs.download, note=self.setup.note, progress=self.setup.transfer)
        self.secondary_files = resolve_diffusion("secondary_model_imagenet_2", "secondary",
                                                 weights_dir=inputs.weights_dir, download=inputs.download,
                                                 note=self.setup.note, progress=self.setup.transfer) \
            if cfg.secondary else None
        self.unet_config = unet_config_of(self.files)
        self.size = _check_size(cfg.width, cfg.height, self.unet_config.image_size)
        self.device, precision = resolve_device(cfg.device, cfg.precision,
                                                resume.recorded if resume is not None else None,
                                                on_note=self.setup.note)
        self.precision = dataclasses.replace(precision, weights=None)  # the U-Net's torso casts itself
        self.held["device"] = self.device
        self.low_memory = self._low_memory()
        t0 = time.perf_counter()
        self._load_models()
        self.load_s = time.perf_counter() - t0
        self.planned = cfg.steps - cfg.skip_steps

    def _load_models(self) -> None:
        from vqclip.engine.clip import load_clip
        from vqclip.pipeline.oom import is_out_of_memory
        from vqclip.weights.checkpoint import is_trusted
        from vqclip.weights.clip import clip_downloads
        from vqclip.weights.diffusion import load_secondary, load_unet

        cfg, inputs, device, cache = self.setup.config, self.setup.inputs, self.device, self.setup.models_cache

        def kept(key: tuple[Any, ...], load: Callable[[], Any]) -> Any:
            return load() if cache is None else cache.keep(key, load)

        try:
            trust = is_trusted(self.files.path, inputs.trusted)
            self.unet = kept(("unet", str(self.files.path), self.unet_config, str(device), trust),
                             lambda: load_unet(self.files.path, self.unet_config, trust=trust, device=device))
            if self.precision.decoder is not None:  # the torso in fp16/bf16; norms and the head stay fp32
                self.unet.set_compute_dtype(self.precision.decoder)
            self.unet.set_gradient_checkpointing(self.low_memory)
            self.secondary = None
            if self.secondary_files is not None:
                path = self.secondary_files.path
                self.secondary = kept(("secondary", str(path), str(device)),
                                      lambda: load_secondary(path, trust=is_trusted(path, inputs.trusted),
                                                             device=device))
            self.clips = []
            with clip_downloads(inputs.download, self.setup.note, self.setup.transfer):
                for spec in cfg.clip_specs():
                    clip = kept(("clip", spec.model, spec.pretrained, str(device)),
                                lambda spec=spec: load_clip(spec.model, spec.pretrained, device))
                    self.clips.append((spec, clip))
        except BaseException as exc:
            if is_out_of_memory(exc):
                raise VqclipError(f"the GPU ({device}) ran out of memory while loading {cfg.model} and CLIP; close "
                                  "other programs using it, pass --secondary, or use --device cpu") from None
            raise

    def _low_memory(self) -> bool:
        """--low-memory as asked; undecided: on when the estimate does not fit the device (with a note)."""
        from vqclip.pipeline.budget import memory_budget
        from vqclip.pipeline.memory import fmt
        from vqclip.pipeline.memory_diffusion import estimate_bytes

        cfg = self.setup.config
        if cfg.low_memory is not None or cfg.secondary:
            return bool(cfg.low_memory)
        need = estimate_bytes(self.unet_config, self.size, cfg, self.precision, secondary=False)
        budget = memory_budget(self.device)
        if budget is None or need <= budget:
            return False
        self.setup.note(f"about {fmt(need)} needed and {fmt(budget)} available: gradient checkpointing through the "
                        "U-Net is on (--low-memory); --secondary needs less still")
        return True

    def input_files(self) -> list[InputFile]:
        return input_copies(self.init, self.image_prompts)

    # -- the run ------------------------------------------------------------------------------------------
    def start(self) -> list[str]:
        import torch

        from vqclip.engine.diffusion.gaussian import SpacedDiffusion
        from vqclip.engine.diffusion.guidance import ClipGuidance, GuidanceSettings, GuidedClip
        from vqclip.engine.diffusion.samplers import Sampler, start_x

        cfg, resume, device = self.setup.config, self.setup.resume, self.device
        self.diffusion = _schedule(SpacedDiffusion, cfg.steps, self.unet_config)
        width, height = self.size
        gen = torch.Generator().manual_seed(self.seed)
        noise = torch.randn(1, 3, height, width, generator=gen).to(device)
        self.y = None
        if self.unet_config.class_conditional:
            label = cfg.class_label if cfg.class_label is not None else \
                int(torch.randint(0, int(self.unet_config.num_classes), (1,), generator=gen))
            self.y = torch.tensor([label], device=device)
        start_image = resume.start_image if resume is not None and resume.start != "state" else \
            (self.init[0] if self.init is not None else None)
        init = _to_model_space(start_image, self.size, device) if start_image is not None else None
        skip = cfg.skip_steps if init is not None or cfg.skip_steps else 0
        clips = [GuidedClip(clip, self._prompts(clip), spec.weight, self.precision.clip) for spec, clip in self.clips]
        settings = GuidanceSettings(
            clip_guidance_scale=cfg.guidance_scale, tv_scale=cfg.tv_scale, range_scale=cfg.range_scale,
            sat_scale=cfg.sat_scale, init_scale=cfg.init_scale, clamp_max=cfg.clamp_max, cutn=cfg.cutn,
            overview=cfg.overview_cuts, cutn_batches=cfg.cutn_batches, cut_pow=cfg.cut_pow, augment=cfg.augment,
            noise_fac=cfg.noise_fac)
        self.guidance = ClipGuidance(self.diffusion, clips, settings, secondary=self.secondary,
                                     init=init if cfg.init_scale else None,
                                     generator=torch.Generator().manual_seed(self.seed + 1))
        self.sampler = Sampler(self.diffusion, self._model_fn, start_x(self.diffusion, noise, skip, init),
                               method=cfg.sampler, eta=cfg.eta, cond_fn=self.guidance, skip_steps=skip,
                               generator=torch.Generator().manual_seed(self.seed + 2))
        notes = []
        if resume is not None and resume.start == "state":
            state = resume.state
            try:
                self.sampler.load_state_dict(state["sampler"])
                self.guidance.generator.set_state(state["guidance_rng"])
            except (ValueError, KeyError, TypeError, RuntimeError) as e:
                raise VqclipError(f"the saved state of {resume.parent.id} cannot be used here ({e}); continue "
                                  f"with --skip-steps N to start from its {names.IMAGE} instead") from None
            if state.get("y") is not None and self.y is not None:
                self.y = torch.tensor([int(state["y"])], device=device)
            notes.append(f"going on from step {self.sampler.done} of {self.sampler.num_steps}")
        self.planned = self.sampler.num_steps - self.sampler.done
        return notes

    def _model_fn(self, x: Any, t: Any) -> Any:
        y = self.y.expand(x.shape[0]) if self.y is not None else None
        return self.unet(x, t, y)

    def _prompts(self, clip: Any) -> list[Any]:
        from vqclip import engine

        cfg = self.setup.config
        models = SimpleNamespace(clip=clip, device=self.device)
        settings = SimpleNamespace(cutn=cfg.cutn, cut_pow=cfg.cut_pow, augment=cfg.augment, noise_fac=cfg.noise_fac,
                                   seed=self.seed, width=self.size[0], height=self.size[1])
        return engine.build_prompts(models, settings, cfg.text_prompts,  # type: ignore[arg-type]
                                    [(img, spec) for (img, _, _), spec in self.image_prompts],
                                    cfg.noise_prompt_specs)

    def run(self, out: Output, should_stop: Callable[[], bool] | None) -> Result:
        from vqclip.engine.diffusion.guidance import GuidanceReport

        cfg, sampler = self.setup.config, self.sampler
        result = Result(None, 0, sampler.done)
        self.partial = result
        every = cfg.save_every
        t0 = time.perf_counter()
        index = 0
        while not sampler.finished:
            if should_stop is not None and should_stop():
                result.stopped = True
                break
            before = sampler.done
            step = sampler.step()
            index += 1
            report = GuidanceReport.of(self.guidance)
            loss = sum(report.losses.values())
            due = index == 1 or (every > 0 and sampler.done % every == 0) or sampler.finished
            frame = _to_image(step["pred_xstart"]) if due else None
            t1 = time.perf_counter()
            result.losses.append(loss)
            result.step_seconds.append(t1 - t0)
            if report.nonfinite:
                result.skipped_steps.append(sampler.done)
            result.steps_done, result.global_step = index, sampler.done
            out.step(StepInfo(sampler.done, index, self.planned, loss, report.losses, t1 - t0, frame,
                              before if frame is not None else None, report.nonfinite))
            t0 = t1
        result.image = self.image()
        if not result.stopped:
            out.frame(result.image)
        return result

    def image(self) -> Any:
        return _to_image(self.sampler.x)

    def state(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "engine": self.name, "step": self.sampler.done,
                "sampler": self.sampler.state_dict(), "guidance_rng": self.guidance.generator.get_state(),
                "y": int(self.y[0]) if self.y is not None else None}

    def record(self) -> dict[str, Any]:
        from vqclip.pipeline.load import versions
        from vqclip.runfolder.record import Clip, ClipMember, Weights

        cfg, first = self.setup.config, self.clips[0][0]
        return dict(seed=self.seed, size=self.size, device=str(self.device), precision=self.precision.describe(),
                    low_memory=self.low_memory, versions=versions(),
                    memory_estimate_mb=round(_estimate(self) / 2**20),
                    weights=Weights(name=self.files.name, sha256=self.files.sha256, source=self.files.source,
                                    path=str(self.files.path)),
                    clip=Clip(model=first.model, pretrained=first.pretrained, ensemble=[
                        ClipMember(model=s.model, pretrained=s.pretrained, weight=s.weight) for s, _ in self.clips]
                        if cfg.clips else None),
                    diffusion={"model": self.files.name, "image_size": self.unet_config.image_size,
                               "sampler": cfg.sampler, "steps": cfg.steps, "skip_steps": self.sampler.skip_steps,
                               "secondary": self.secondary is not None,
                               "class_label": int(self.y[0]) if self.y is not None else None})

    def salvage(self, exc: BaseException) -> Result | None:
        partial = getattr(self, "partial", None)
        if isinstance(exc, KeyboardInterrupt) or not isinstance(exc, Exception) or partial is None \
                or partial.steps_done == 0:
            return None
        partial.image = self.image()
        return partial

    def after_oom(self, exc: BaseException) -> str:
        from vqclip.pipeline import oom

        oom.free_after_oom(exc, None, self.device)
        w, h = self.size
        smaller = f"try --size {max(SIDE, w // 2 // SIDE * SIDE)}x{max(SIDE, h // 2 // SIDE * SIDE)}, " \
            if w * h > SIDE * SIDE else ""
        return (f"the GPU ({self.device}) ran out of memory at {w}x{h} with cutn {self.setup.config.cutn}; "
                f"{smaller}pass --secondary or --low-memory, or lower --cutn")

    def score(self, image: Any, note: Callable[[str], None]) -> Any:
        from vqclip.pipeline.score import run_score

        clip = self.clips[0][1]
        return run_score(clip, self.guidance.clips[0].prompts if self.guidance.clips else [], image,
                         self.precision.clip, note)

    def release(self) -> None:
        from vqclip.pipeline import budget

        budget.release_device_cache(self.device)


def build(setup: Setup) -> DiffusionEngine:
    return DiffusionEngine(setup)


# ---------------------------------------------------------------------------------------------- helpers


def _check_size(width: int, height: int, image_size: int) -> tuple[int, int]:
    if width % SIDE or height % SIDE:
        fix = f"{max(SIDE, round(width / SIDE) * SIDE)}x{max(SIDE, round(height / SIDE) * SIDE)}"
        raise UsageError(f"--size {width}x{height}: diffusion needs both sides a multiple of {SIDE}; try {fix}")
    limit = 2 * image_size
    if max(width, height) > limit:
        raise UsageError(f"--size {width}x{height} is too large for this {image_size}x{image_size} model (at most "
                         f"{limit} a side; it was trained at {image_size}); use a smaller size")
    return width, height


def _schedule(kind: Any, steps: int, config: Any) -> Any:
    """`steps` evenly spread over the model's schedule (DDIM striding when it divides evenly)."""
    try:
        return kind.create(f"ddim{steps}", config.schedule, config.diffusion_steps)
    except ValueError:
        return kind.create(str(steps), config.schedule, config.diffusion_steps)


def _to_model_space(image: Any, size: tuple[int, int], device: Any) -> Any:
    from vqclip.engine import image_to_tensor

    return image_to_tensor(image, size, device) * 2 - 1


def _to_image(x: Any) -> Any:
    return x[0].detach().float().clamp(-1, 1).add(1).div(2).cpu()


def _estimate(engine: DiffusionEngine) -> int:
    from vqclip.pipeline.memory_diffusion import estimate_bytes

    run = engine.setup.config.model_copy(update={"low_memory": engine.low_memory})
    return estimate_bytes(engine.unet_config, engine.size, run, engine.precision,
                          secondary=engine.secondary is not None)


# ---------------------------------------------------------------------------------------------- continue


def check_state(path: Path, state: dict[str, Any]) -> None:
    """A diffusion state.pt: this engine's, a version this vqclip reads, a sampler state inside."""
    version = state.get("version")
    if state.get("engine") != "diffusion" or not isinstance(state.get("sampler"), dict):
        raise BadRun(f"{path} is not a diffusion state (no sampler state)")
    if isinstance(version, int) and version > STATE_VERSION:
        raise VqclipError(f"{path} was made by a newer vqclip (state version {version}); upgrade vqclip to "
                          "continue this run")


def plan_continue(plan: Any, setup: Setup) -> None:
    """An interrupted run finishes its schedule where it stopped; a finished one (or one without a usable
    state) starts a new run from its picture as the init image, skipping `--skip-steps` of the schedule."""
    parent, resume, cfg = plan.parent, plan.resume, plan.config
    state = resume.state
    finished = state is None or int(state.get("sampler", {}).get("done", 0)) >= \
        cfg.steps - int(state.get("sampler", {}).get("skip_steps", 0))
    if resume.start == "state" and not finished and "steps" not in plan.given:
        return
    if resume.start == "state" and not finished:
        raise UsageError(f"{parent.id} stopped at step {state['sampler']['done']}; it goes on over the same schedule, "
                         "so --steps cannot change (leave it out)")
    skip = cfg.skip_steps if "skip_steps" in plan.given else max(1, cfg.steps // 2)
    if skip >= cfg.steps:
        raise UsageError(f"--skip-steps {skip} skips every one of the {cfg.steps} steps; give a smaller number")
    plan.config = cfg.model_copy(update={"skip_steps": skip, "init_image": None})
    if resume.start == "state":
        resume.start = names.IMAGE
    plan.notes.append(f"{parent.id} is finished: a new run from its {names.IMAGE}, skipping {skip} of {cfg.steps} "
                      "steps (--skip-steps: more keeps more of it)")
