"""The VQGAN-CLIP engine: a VQGAN latent optimised so that CLIP's cutouts of the decoded picture match the
prompts (`vqclip.engine.loop.Session` does the steps; this module adapts it to the engine interface)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from vqclip.engines.base import Engine, InputFile, Output, Setup, input_copies
from vqclip.engines.vqgan_state import check_state
from vqclip.errors import VqclipError
from vqclip.runfolder import names
from vqclip.steps import Result

__all__ = ["VqganEngine", "build", "check_state", "plan_continue"]


class VqganEngine(Engine):
    name = "vqgan"

    def __init__(self, setup: Setup, *, with_encoder: bool = False, config: Any = None) -> None:
        from vqclip.pipeline import budget
        from vqclip.pipeline.load import load_run

        self.setup = setup
        resume = setup.resume
        cfg = config or setup.config
        used: dict[str, Any] = {}
        try:
            self.loaded = load_run(
                cfg, setup.inputs, note=setup.note, transfer=setup.transfer, used=used,
                start_image=resume.start_image if resume is not None else None,
                has_state=resume is not None and resume.state is not None,
                recorded=resume.recorded if resume is not None else None, with_encoder=with_encoder,
                models_cache=setup.models_cache)
        except BaseException:
            budget.release_device_cache(used.get("device"))
            raise
        self.device = self.loaded.device
        self.load_s = self.loaded.load_s
        self.planned = cfg.steps
        self.session: Any = None

    # -- the interface ------------------------------------------------------------------------------------
    def input_files(self) -> list[InputFile]:
        return input_copies(self.loaded.init, self.loaded.image_prompts)

    def start(self) -> list[str]:
        from vqclip import engine
        from vqclip.engine.loop import BadState

        run, resume = self.loaded, self.setup.resume
        state = None
        if resume is not None:
            from vqclip.engines.vqgan_start import start_state

            state = start_state(resume, run.models, run.settings, self.setup.note)
        try:
            self.session = engine.start_session(run.models, run.settings, run.prompts,
                                                init_image=run.start_image, state=state)
        except BadState as e:  # load_state checks a state file up front; this is what it cannot foresee
            who = resume.parent.id if resume is not None else "the run"
            raise VqclipError(f"the saved state of {who} cannot be used here: {e}; continue with --resize "
                              f"stretch to start from its {names.IMAGE} instead") from None
        self._ready_models()
        return list(self.session.notes)

    def _ready_models(self) -> None:
        """Weights stored as planned; a single run also frees what its steps do not need (text tower,
        encoder), while cached models keep them for the next run."""
        from vqclip.pipeline import budget

        run, cache = self.loaded, self.setup.models_cache
        if cache is None:
            budget.prepare_for_steps(run.models, run.plan)
        else:
            cache.prepare_for_steps(run.models, run.plan)

    def run(self, out: Output, should_stop: Callable[[], bool] | None) -> Result:
        run, session = self.loaded, self.session
        filmed = [-1]

        def on_step(info: Any) -> None:
            if info.frame is not None:
                filmed[0] = info.frame_step
            out.step(info)

        result = session.run(self.planned, on_step, should_stop)
        if run.config.compile and session.compile_error:
            out.note(f"--compile fell back to eager mode ({session.compile_error})")
        if result.skipped_steps:
            out.note(f"{len(result.skipped_steps)} step(s) not applied because the loss or gradient was not "
                     f"finite ({run.precision.describe()}); if many are, try --precision fp32")
        if filmed[0] != result.global_step:
            out.frame(result.image)
        return result

    def image(self) -> Any:
        return self.session.image()

    def state(self) -> dict[str, Any]:
        return self.session.state_dict()

    def record(self) -> dict[str, Any]:
        return self.loaded.fields()

    def salvage(self, exc: BaseException) -> Result | None:
        from vqclip.pipeline import oom

        return oom.salvage(self.session, exc)

    def after_oom(self, exc: BaseException) -> str:
        from vqclip.pipeline import oom

        run = self.loaded
        oom.free_after_oom(exc, self.session, run.device)  # decoding the last good latent needs the room
        return oom.oom_message(run.device, run.width, run.height, run.config.cutn, run.plan.low_memory,
                               run.spec.factor)

    def score(self, image: Any, note: Callable[[str], None]) -> Any:
        from vqclip.pipeline.score import run_score

        run = self.loaded
        return run_score(run.models.clip, run.prompts, image, run.settings.clip_autocast_dtype, note)

    def release(self) -> None:
        from vqclip.pipeline import budget

        budget.release_device_cache(self.device)


def build(setup: Setup) -> VqganEngine:
    return VqganEngine(setup)


def _same_weights(parent: Any, files: Any) -> bool:
    w = parent.record.weights
    if w.sha256 and files.sha256:
        return w.sha256 == files.sha256
    try:
        return bool(w.path) and Path(w.path).expanduser().resolve() == Path(files.ckpt_path).resolve()
    except OSError:
        return False


def plan_continue(plan: Any, setup: Setup) -> None:
    """Before any model loads: a different VQGAN only by re-encoding the image (its latent space is another),
    and an explicit --resize crop/pad that cannot reach the new size is refused."""
    from vqclip.engines.vqgan_start import grid_change

    parent, cfg, resume = plan.parent, plan.config, plan.resume
    record = parent.record
    parent_model = str((record.config or {}).get("model", ""))
    if cfg.model != parent_model:
        from vqclip.weights.resolve import resolve_model

        files = resolve_model(cfg.model, weights_dir=setup.inputs.weights_dir, download=setup.inputs.download,
                              note=setup.note, progress=setup.transfer)
        if not _same_weights(parent, files):
            if resume.start == "state":
                raise VqclipError(
                    f"{parent.id} was made with VQGAN {parent_model!r}, not {cfg.model!r}: their latent spaces "
                    "differ, so its saved latent means nothing to the new model; leave --model out, or pass "
                    "--resize stretch to re-encode its output.png with the new model")
            plan.notes.append(f"new VQGAN {cfg.model}: re-encoding {parent.id}/{names.IMAGE} with it")
    if resume.state is not None and resume.start == "state":
        old_opt = resume.state.get("optimizer")
        if old_opt and old_opt != cfg.optimizer:
            plan.notes.append(f"optimizer {old_opt} → {cfg.optimizer}: it starts fresh")
        z = resume.state["z"]
        if record.size is not None and z.shape[-1]:  # the factor is known from the parent (same model)
            factor = record.size[0] // int(z.shape[-1])
            if factor > 0:
                new = (max(1, cfg.height // factor), max(1, cfg.width // factor))
                grid_change(tuple(z.shape[-2:]), new, resume.resize)  # type: ignore[arg-type]

