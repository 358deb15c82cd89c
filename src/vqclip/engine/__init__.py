"""The engine: VQGAN + CLIP + cutouts + losses + loop. Never imports the CLI, Rich or the run-folder code."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from vqclip.engine.clip import ClipModel, load_clip
from vqclip.engine.cutouts import Cutouts
from vqclip.engine.losses import Prompt
from vqclip.engine.loop import LoopSettings, Result, Session, StepInfo
from vqclip.engine.vqgan import VQGAN, load_vqgan, read_spec
from vqclip.errors import VqclipError

__all__ = ["Models", "Result", "Session", "StepInfo", "LoopSettings", "pick_device", "probe_device",
           "load_models", "build_prompts", "start_session", "read_spec", "image_to_tensor"]


@dataclass
class Models:
    vqgan: VQGAN
    clip: ClipModel
    device: torch.device


_PROBED: dict[str, str | None] = {}  # str(device) -> why a tiny op failed there (None: it ran)
_NO_KERNELS = ("no kernel image", "is not compatible", "not compatible with the current pytorch",
               "too old", "invalid device function")


def _probe_op(device: torch.device) -> float:
    return float((torch.ones(4, device=device) * 2).sum().item())


def probe_device(device: torch.device) -> str | None:
    """Whether a tiny op runs on `device` (cached per device): None if it does, else the first line of the error
    (a GPU the installed torch has no kernels for fails here: "no kernel image is available …")."""
    device = torch.device(device)
    if device.type == "cpu":
        return None
    key = str(device)
    if key not in _PROBED:
        import warnings

        try:
            with warnings.catch_warnings():  # "sm_35 is not compatible …" is also warned on CUDA's lazy init
                warnings.simplefilter("ignore")
                _probe_op(device)
            _PROBED[key] = None
        except Exception as e:  # RuntimeError / torch.AcceleratorError, or anything a broken driver raises
            lines = str(e).strip().splitlines()
            _PROBED[key] = (lines[0][:200] if lines else type(e).__name__)
    return _PROBED[key]


def _gpu_name(device: torch.device) -> tuple[str, str | None]:
    """("NVIDIA Tesla K80, compute capability 3.7", "3.7"), as far as torch can tell without running a kernel."""
    try:
        major, minor = torch.cuda.get_device_capability(device)
        cap: str | None = f"{major}.{minor}"
    except Exception:
        cap = None
    try:
        name = torch.cuda.get_device_name(device)
    except Exception:
        name = "the CUDA GPU"
    return (f"{name}, compute capability {cap}" if cap else name), cap


def _unusable_gpu(device: torch.device, reason: str) -> str:
    """The fix for a CUDA device the probe op failed on."""
    what, cap = _gpu_name(device)
    if any(k in reason.lower() for k in _NO_KERNELS):
        build = torch.__version__
        fix = (f"install a torch build with kernels for {f'compute capability {cap}' if cap else 'this card'} "
               f"(this one, {build}, has none), or use --device cpu")
        return f"{what} cannot run this torch build ({reason}); {fix}"
    return f"a test operation on {what} failed ({reason}); check the driver with nvidia-smi, or use --device cpu"


def pick_device(name: str = "auto", *, on_fallback: Callable[[str], None] | None = None) -> torch.device:
    """`auto` → cuda, then mps, then cpu, skipping a device a tiny op fails on (`probe_device`): `on_fallback`
    gets a line saying why. An explicit device that is not there or cannot run is a user error."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        skipped: list[str] = []
        if torch.cuda.is_available():
            cuda = torch.device("cuda")
            reason = probe_device(cuda)
            if reason is None:
                return cuda
            skipped.append(_unusable_gpu(cuda, reason))
        mps = getattr(torch.backends, "mps", None)
        dev = torch.device("cpu")
        if mps is not None and mps.is_available():
            reason = probe_device(torch.device("mps"))
            if reason is None:
                dev = torch.device("mps")
            else:
                skipped.append(f"Apple MPS failed a test operation ({reason})")
        if skipped and on_fallback is not None:
            on_fallback(f"--device auto: using the {dev.type.upper()}, since " + "; ".join(skipped))
        return dev
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise VqclipError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise VqclipError("--device cuda asked but no CUDA GPU is visible to torch; use --device cpu "
                              "or install a CUDA build of torch")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise VqclipError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present")
        reason = probe_device(dev)
        if reason is not None:
            raise VqclipError(f"--device {name}: {_unusable_gpu(dev, reason)}")
    if dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise VqclipError("--device mps asked but Apple MPS is not available; use --device cpu")
        reason = probe_device(dev)
        if reason is not None:
            raise VqclipError(f"--device mps: a test operation failed ({reason}); use --device cpu")
    return dev


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
    continued run embeds them identically)."""
    clip, dev = models.clip, models.device
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
    return Session(settings, models.vqgan, models.clip, prompts, models.device, init_z=init_z, state=state)


def generate(models: Models, settings: LoopSettings, prompts: list[Prompt], steps: int, *,
             init_image: Any = None, state: dict[str, Any] | None = None,
             callback: Callable[[StepInfo], None] | None = None,
             should_stop: Callable[[], bool] | None = None) -> tuple[Result, Session]:
    """Run `steps` steps and return the result with the session (whose `state_dict()` continues it)."""
    session = start_session(models, settings, prompts, init_image=init_image, state=state)
    return session.run(steps, callback, should_stop), session
