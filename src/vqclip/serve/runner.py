"""A job's three kinds, checked when it is posted and run by a worker: `generate`, `animate` and `continue`
(of a still run or of an animation) — the very pipeline calls the CLI commands make, so a job's run folder is
exactly what the CLI writes (`runs list`, `continue` and the gallery see it as any other).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from vqclip.serve.form import FormError, build_animation, build_run_config, check_no_paths, resolve_images

KINDS = ("generate", "animate", "continue")


@dataclass
class Context:
    """What every job of one server shares."""

    output_dir: Path
    uploads: Any  # uploads.Uploads
    weights_dir: Path | None = None
    download: bool = True
    allow_paths: bool = True  # model fields may be paths (a loopback-only server)


@dataclass
class Checked:
    """A job's settings, validated: what to run, and what to show in the queue."""

    config: Any = None  # RunConfig (generate, animate)
    animation: Any = None  # Animation (animate)
    parent: Any = None  # runs.RunInfo (continue)
    overrides: dict[str, Any] | None = None  # continue: settings changed from the parent's
    frames: int | None = None  # continue of an animation: frames to add (None: finish its plan)
    tokens: tuple[str, ...] = ()  # upload tokens it uses
    label: str = ""


def check_job(ctx: Context, kind: Any, values: Any, animation: Any = None, parent: Any = None,
              frames: Any = None) -> Checked:
    """Validate a job as posted (and again when it runs: an upload may have gone meanwhile)."""
    if kind not in KINDS:
        raise FormError(f"kind: {str(kind)[:30]!r} is not a kind of job; use generate, animate or continue", {}, 400)
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise FormError("config: send a JSON object of settings", {}, 400)
    if kind == "continue":
        return _check_continue(ctx, values, parent, frames)
    resolved, tokens = resolve_images(values, ctx.uploads, ctx.output_dir)
    if kind == "animate":
        anim = build_animation(animation if animation is not None else {})
        resolved = {**resolved, "steps": anim.steps_per_frame, "engine": "animation"}  # as `vqclip animate` does
    else:
        anim = None
        if animation is not None:
            raise FormError("animation: only an animate job takes animation settings", {}, 400)
        if resolved.get("engine") == "animation":
            raise FormError("engine: animations are made from the Animate tab (they need its settings)",
                            {"engine": "use the Animate tab"}, 400)
    cfg = build_run_config(resolved, allow_paths=ctx.allow_paths)
    return Checked(config=cfg, animation=anim, tokens=tuple(tokens), label=_label(cfg.prompt, cfg))


def _label(prompt: str, cfg: Any = None) -> str:
    if prompt:
        return prompt[:200]
    if cfg is not None and (cfg.image_prompts or cfg.noise_prompts):
        return "(image/noise prompts)"
    return ""


def _check_continue(ctx: Context, values: dict[str, Any], parent: Any, frames: Any) -> Checked:
    from pydantic import ValidationError

    from vqclip.config import validation_lines
    from vqclip.errors import VqclipError
    from vqclip.runs import BadRun, is_run_id, read_run

    if not isinstance(parent, str) or not is_run_id(parent):
        raise FormError("parent: give the id of the run to continue", {"parent": "not a run id"}, 400)
    folder = ctx.output_dir / parent
    if folder.is_symlink() or not folder.is_dir():
        raise FormError(f"parent: there is no run {parent} in this output folder", {"parent": "no such run"}, 404)
    try:
        info = read_run(folder)
        record = info.checked()
    except BadRun as e:
        raise FormError(f"parent: {e}", {"parent": "unreadable run"}, 409) from None
    if frames is not None and (isinstance(frames, bool) or not isinstance(frames, int) or not 1 <= frames <= 100_000):
        raise FormError("frames: give a number of frames to add from 1 to 100000", {"frames": "out of range"}, 400)
    if record.animation is not None:
        if values and set(values) - {"device", "precision"}:
            raise FormError(f"{parent} is an animation: it goes on with its own settings; give only frames", {},
                            400)
        return Checked(parent=info, frames=frames, label=f"continue {parent}: " + _label(info.prompt))
    if frames is not None:
        raise FormError(f"frames: {parent} is not an animation; change steps instead", {"frames": "not an animation"},
                        400)
    if "init_image" in values or "image_prompts" in values:
        raise FormError("a continued run keeps its parent's images; start a new run to change them", {}, 400)
    if not ctx.allow_paths:
        check_no_paths(values)
    from vqclip.pipeline.resume import inherit_config

    try:
        cfg, _ = inherit_config(info, {k: v for k, v in values.items() if v is not None})
    except ValidationError as e:
        lines = validation_lines(e)
        raise FormError(lines[0], {ln.split(":")[0]: ln.partition(": ")[2] for ln in lines}) from None
    except VqclipError as e:
        raise FormError(e.message, {}, 409) from None
    return Checked(config=cfg, parent=info, overrides=values, label=f"continue {parent}: " + _label(cfg.prompt))


def run_job(ctx: Context, kind: str, checked: Checked, *, device: str, cache: Any, reporter: Any,
            should_stop: Callable[[], bool]) -> Any:
    """Run one checked job to its run folder (models from `cache`, kept for the next job); the RunOutcome."""
    from vqclip.pipeline.animate import animation_request
    from vqclip.pipeline.execute import execute
    from vqclip.pipeline.request import Inputs, RunRequest
    from vqclip.pipeline.resume import continue_run

    inputs = Inputs(weights_dir=ctx.weights_dir, download=ctx.download)

    def on_device(cfg: Any) -> Any:  # a job left at "auto" runs on its worker's device
        return cfg.model_copy(update={"device": device}) if cfg.device == "auto" and device != "auto" else cfg

    if kind == "generate":
        return execute(RunRequest(config=on_device(checked.config), output_dir=ctx.output_dir, inputs=inputs,
                                  should_stop=should_stop, models_cache=cache), reporter)
    if kind == "animate":
        return execute(animation_request(on_device(checked.config), checked.animation, output_dir=ctx.output_dir,
                                         inputs=inputs, should_stop=should_stop, models_cache=cache), reporter)
    overrides = dict(checked.overrides or {})
    if device != "auto" and "device" not in overrides:
        overrides["device"] = device
    animation = checked.parent.checked().animation is not None
    return continue_run(checked.parent, overrides, output_dir=ctx.output_dir, inputs=inputs,
                        should_stop=should_stop, reporter=reporter, models_cache=cache,
                        extra={"frames": checked.frames} if animation else None)


__all__ = ["Context", "Checked", "check_job", "run_job", "KINDS"]
