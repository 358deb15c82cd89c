"""Everything a run needs before its first step, shared by `generate`, `continue` and `animate`: the inputs read
(a bad image fails in a second, not after loading a gigabyte), the weights resolved, the size floored to the
model's factor, the device and precision chosen, the memory plan made (refusing a run that will not fit), the
models loaded once and the prompts embedded."""

from __future__ import annotations

import platform
import secrets
import time
from dataclasses import dataclass
from typing import Any

from vqclip import __version__
from vqclip.config import RunConfig
from vqclip.errors import VqclipError


@dataclass
class LoadedRun:
    seed: int
    files: Any  # weights.resolve.ModelFiles
    spec: Any  # engine.vqgan.VQGANSpec
    width: int
    height: int
    device: Any
    precision: Any  # engine.precision.Precision
    plan: Any  # pipeline.budget.Plan
    settings: Any  # engine.LoopSettings
    models: Any  # engine.Models
    prompts: list[Any]
    init: tuple[Any, bytes, str] | None  # (image, bytes, suffix) of --init-image
    image_prompts: list[tuple[tuple[Any, bytes, str], Any]]  # ((image, bytes, suffix), spec)
    start_image: Any
    load_s: float
    config: RunConfig  # as loaded (an animation's: its first story stage)

    def fields(self) -> dict[str, Any]:
        """details.json fields of a run made with what was loaded here: seed, size, device, precision, memory
        plan, weights, CLIP (the first model; `clip.ensemble`: every model with its weight, when `--clip` named
        them) and versions."""
        from vqclip.runfolder.record import Clip, ClipMember, Weights

        specs = self.config.clip_specs()
        ensemble = [ClipMember(model=s.model, pretrained=s.pretrained, weight=s.weight) for s in specs] \
            if self.config.clips else None
        return dict(seed=self.seed, size=(self.width, self.height), device=str(self.device),
                    precision=self.precision.describe(), low_memory=self.plan.low_memory,
                    memory_estimate_mb=round(self.plan.estimate.total / 2**20), versions=versions(),
                    weights=Weights(name=self.files.name, sha256=self.files.sha256, source=self.files.source,
                                    path=str(self.files.ckpt_path)),
                    clip=Clip(model=self.models.clip.name, pretrained=specs[0].pretrained, ensemble=ensemble))


def versions() -> dict[str, str]:
    import torch

    try:
        import open_clip

        oc = getattr(open_clip, "__version__", "unknown")
    except ImportError:  # pragma: no cover
        oc = "missing"
    return {"vqclip": __version__, "torch": torch.__version__, "open_clip": oc,
            "python": platform.python_version()}


def load_ensemble(specs: list[Any], models: Any, models_cache: Any = None, weight_dtype: Any = None) -> list[Any]:
    """The members of the run's CLIP ensemble (`RunConfig.clip_specs()`, each with its weight): the first is
    `models.clip`; the others are loaded (through the model cache when there is one), a model named twice once."""
    from vqclip import engine
    from vqclip.engine.clip import load_clip

    loaded = {(specs[0].model, specs[0].pretrained): models.clip}
    members = []
    for spec in specs:
        key = (spec.model, spec.pretrained)
        if key not in loaded:
            loaded[key] = load_clip(spec.model, spec.pretrained, models.device) if models_cache is None else \
                models_cache.clip(spec.model, spec.pretrained, models.device, weight_dtype)
        members.append(engine.Member(loaded[key], spec.weight))
    return members


def load_run(cfg: RunConfig, inputs: Any, *, note: Any, transfer: Any = None, used: dict[str, Any],
             start_image: Any = None, has_state: bool = False, recorded: tuple[str, str] | None = None,
             with_encoder: bool = False, models_cache: Any = None) -> LoadedRun:
    """`inputs`: a pipeline.request.Inputs. `used["device"]` is set as soon as the device is known, so the caller
    can release its cache whatever happens next. `recorded`: (device type, precision) of the run this one
    continues. `with_encoder` keeps the VQGAN's encoder even without a start image (animation re-encodes)."""
    from vqclip import engine
    from vqclip.pipeline import budget, oom
    from vqclip.pipeline.media import open_image
    from vqclip.pipeline.settings import settings_from_config
    from vqclip.prompts import floor_size
    from vqclip.weights.checkpoint import is_trusted
    from vqclip.weights.clip import clip_downloads
    from vqclip.weights.resolve import resolve_model

    seed = cfg.seed if cfg.seed is not None else secrets.randbelow(2**31)
    init = open_image(cfg.init_image, "init image") if cfg.init_image and not has_state \
        and start_image is None else None
    image_prompts = [(open_image(spec.path, "image prompt"), spec) for spec in cfg.image_prompt_specs]

    files = resolve_model(cfg.model, weights_dir=inputs.weights_dir, download=inputs.download, note=note,
                          progress=transfer)
    spec = engine.read_spec(files.yaml_path)
    width, height = floor_size(cfg.width, cfg.height, spec.factor)
    if (width, height) != (cfg.width, cfg.height):
        note(f"size {cfg.width}x{cfg.height} floored to {width}x{height} "
             f"(a multiple of {spec.factor}, this model's downsampling factor)")
    device, precision = engine.resolve_device(cfg.device, cfg.precision, recorded, on_note=note)
    used["device"] = device
    start = start_image if start_image is not None else (init[0] if init else None)
    encoder = with_encoder or start is not None
    plan = budget.plan_run(cfg, spec, width, height, device, precision, with_encoder=encoder,
                           keep_encoder=with_encoder,
                           first_load_bytes=budget.first_load_bytes(files.ckpt_path))
    if plan.note:
        note(plan.note)
    settings = settings_from_config(cfg, width=width, height=height, seed=seed, autocast_dtype=precision.decoder,
                                    clip_autocast_dtype=precision.clip, loss_scale=precision.loss_scale,
                                    low_memory=plan.low_memory, clip_chunk=plan.clip_chunk)
    t_load = time.perf_counter()
    models = prompts = None
    try:
        clips = cfg.clip_specs()  # the first CLIP comes with the VQGAN; an ensemble's others are loaded beside it
        load_args = (files.yaml_path, files.ckpt_path, clips[0].model, clips[0].pretrained, device)
        load_kw = {"with_encoder": encoder, "trust": is_trusted(files.ckpt_path, inputs.trusted)}
        with clip_downloads(inputs.download, note, transfer):  # --no-download covers CLIP too
            models = engine.load_models(*load_args, **load_kw) if models_cache is None \
                else models_cache.get(load_args, load_kw, plan.weight_dtype)
            models = engine.with_ensemble(models, load_ensemble(clips, models, models_cache, plan.weight_dtype))
        prompts = engine.build_prompts(models, settings, cfg.text_prompts,
                                       [(img, spec_) for (img, _, _), spec_ in image_prompts],
                                       cfg.noise_prompt_specs)
    except BaseException as exc:
        if not oom.is_out_of_memory(exc):
            raise
        models = prompts = None
        oom.free_after_oom(exc, None, device)
        raise VqclipError(oom.load_oom_message(device, cfg, plan)) from None
    return LoadedRun(seed, files, spec, width, height, device, precision, plan, settings, models, prompts, init,
                     image_prompts, start, time.perf_counter() - t_load, cfg)
