"""The engine: VQGAN + CLIP + cutouts + losses + loop. Never imports the CLI, Rich or the run-folder code."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

import torch

from vqclip.engine.clip import ClipModel, load_clip
from vqclip.engine.cutouts import Cutouts
from vqclip.engine.ensemble import EnsemblePrompt, Member, is_ensemble, zip_prompts
from vqclip.engine.losses import Prompt
from vqclip.engine.loop import LoopSettings, Result, Session, StepInfo
from vqclip.engine.vqgan import VQGAN, load_vqgan, read_spec
from vqclip.engine.device import pick_device, probe_device, resolve_device

__all__ = ["Models", "Result", "Session", "StepInfo", "LoopSettings", "pick_device", "probe_device",
           "resolve_device", "load_models", "build_prompts", "start_session", "read_spec", "image_to_tensor",
           "Member", "EnsemblePrompt", "with_ensemble", "embed_prompts"]


@dataclass
class Models:
    vqgan: VQGAN
    clip: ClipModel  # the run's first CLIP: a single run's only one, the one the CLIP score uses
    device: torch.device
    ensemble: list[Member] | None = None  # a CLIP ensemble (`--clip`), the first member's clip being `clip`

    @property
    def clips(self) -> list[ClipModel]:
        """Every CLIP model of the run, the first first (a model named twice is one object, listed twice)."""
        return [m.clip for m in self.ensemble] if self.ensemble else [self.clip]


def with_ensemble(models: Models, members: list[Member]) -> Models:
    """`models` (a VQGAN and the first CLIP, maybe shared with other runs through a model cache) with the run's
    CLIP ensemble: a new Models, `models` itself untouched. One CLIP of weight 1 is no ensemble: `models`."""
    if not members or members[0].clip is not models.clip:
        raise ValueError("the ensemble's first model must be the models' CLIP")
    return replace(models, ensemble=list(members)) if is_ensemble(members) else models


def load_models(yaml_path: Any, ckpt_path: Any, clip_model: str, clip_pretrained: str | None,
                device: torch.device, *, with_encoder: bool = False, trust: bool = False) -> Models:
    vqgan = load_vqgan(yaml_path, ckpt_path, with_encoder=with_encoder, trust=trust, device=device)
    clip = load_clip(clip_model, clip_pretrained, device)
    return Models(vqgan, clip, device)


def image_to_tensor(image: Any, size: tuple[int, int], device: torch.device) -> torch.Tensor:
    """A PIL image resized (Lanczos) to `size` = (W, H) → [1, 3, H, W] in [0, 1]."""
    import numpy as np
    from PIL import Image

    img = image.convert("RGB").resize(size, Image.LANCZOS)
    arr = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()) / 255.0
    return arr.permute(2, 0, 1)[None].to(device)


def build_prompts(models: Models, settings: LoopSettings, texts: list[Any], images: list[tuple[Any, Any]],
                  noises: list[Any]) -> list[Prompt]:
    """Embed every prompt once. `texts`: TextPrompt-likes; `images`: (PIL image, ImagePrompt-like);
    `noises`: NoisePrompt-likes. Image prompts are cut out the same way as the image (own seeded RNG, so a
    continued run embeds them identically). With a CLIP ensemble every model embeds them (`embed_prompts` per
    model) and each prompt is an EnsemblePrompt holding them all."""
    if not getattr(models, "ensemble", None):  # (the diffusion engine passes a namespace of clip and device)
        return embed_prompts(models.clip, models.device, settings, texts, images, noises)
    return zip_prompts([embed_prompts(m.clip, models.device, settings, texts, images, noises)
                        for m in models.ensemble])


def embed_prompts(clip: ClipModel, dev: torch.device, settings: LoopSettings, texts: list[Any],
                  images: list[tuple[Any, Any]], noises: list[Any]) -> list[Prompt]:
    """The prompts embedded by one CLIP model (see build_prompts)."""
    prompts: list[Prompt] = []
    if texts:
        embeds = clip.encode_text([t.text for t in texts], dev)
        for t, e in zip(texts, embeds):
            prompts.append(Prompt(e[None], t.weight, t.stop, label=f"text:{t.text[:40]}", text=t.text))
    cut = Cutouts(clip.input_size, settings.cutn, settings.cut_pow, settings.augment, settings.noise_fac)
    for i, (img, spec) in enumerate(images):
        gen = torch.Generator().manual_seed(settings.seed + 1000 + i)
        x = image_to_tensor(img, (settings.width, settings.height), dev)
        with torch.no_grad():
            e = clip.encode_image(clip.normalize(cut(x, gen, gen if dev.type == "cpu" else None)))
        prompts.append(Prompt(e, spec.weight, spec.stop, label=f"image:{i}"))
    for n in noises:
        gen = torch.Generator().manual_seed(int(n.seed))
        e = torch.empty(1, clip.embed_dim).normal_(generator=gen).to(dev)
        prompts.append(Prompt(e, n.weight, label=f"noise:{n.seed}"))
    return prompts


def start_session(models: Models, settings: LoopSettings, prompts: list[Prompt], *, init_image: Any = None,
                  state: dict[str, Any] | None = None) -> Session:
    """A Session from scratch, from an init image (encoded), or from a saved state."""
    init_z = None
    if state is None and init_image is not None:
        f = models.vqgan.factor
        gw, gh = settings.width // f, settings.height // f
        x = image_to_tensor(init_image, (gw * f, gh * f), models.device)
        init_z = models.vqgan.encode(x * 2 - 1)
    clip = models.ensemble if models.ensemble else models.clip
    return Session(settings, models.vqgan, clip, prompts, models.device, init_z=init_z, state=state)


def generate(models: Models, settings: LoopSettings, prompts: list[Prompt], steps: int, *,
             init_image: Any = None, state: dict[str, Any] | None = None,
             callback: Callable[[StepInfo], None] | None = None,
             should_stop: Callable[[], bool] | None = None) -> tuple[Result, Session]:
    """Run `steps` steps and return the result with the session (whose `state_dict()` continues it)."""
    session = start_session(models, settings, prompts, init_image=init_image, state=state)
    return session.run(steps, callback, should_stop), session
