"""Where a continued VQGAN-CLIP run starts, once its models are loaded (`vqclip.pipeline.resume` planned it).

- `state`: the parent's saved latent, MSE anchor, optimizer and random states, bit for bit. A new size crops or
  pads the token grid around its centre (new border tokens are random codebook tokens drawn from the run's seed,
  the same ones a fresh run at that size starts from); the optimizer then restarts (its moments belong to the
  old grid).
- `output.png` (`names.IMAGE`): a parent without a usable state is re-encoded from its image at its own size,
  then cropped/padded like a state; the optimizer and the random stream restart.
- `stretch`: the parent's image resized to the new size and re-encoded (also the way to switch VQGAN).
"""

from __future__ import annotations

from typing import Any, Callable

from vqclip.errors import UsageError, VqclipError
from vqclip.runfolder.names import IMAGE, STATE


def grid_change(old: tuple[int, int], new: tuple[int, int], mode: str | None) -> str:
    """Describe how the token grid (rows, cols) changes; refuse an explicit crop/pad that cannot do it alone."""
    shrink = [axis for axis, o, n in (("height", old[0], new[0]), ("width", old[1], new[1])) if n < o]
    grow = [axis for axis, o, n in (("height", old[0], new[0]), ("width", old[1], new[1])) if n > o]
    if mode == "crop" and grow:
        raise UsageError(f"--resize crop cannot make the {' and '.join(grow)} larger; use --resize pad (or leave "
                         "--resize out to crop and pad as needed), or stretch")
    if mode == "pad" and shrink:
        raise UsageError(f"--resize pad cannot make the {' and '.join(shrink)} smaller; use --resize crop (or "
                         "leave --resize out to crop and pad as needed), or stretch")
    parts = []
    if shrink:
        parts.append(f"centre-cropped ({' and '.join(shrink)})")
    if grow:
        parts.append(f"padded with random tokens ({' and '.join(grow)})")
    return " and ".join(parts)


def fit_grid(z: Any, fill: Any) -> Any:
    """`z` centred on a copy of `fill` (a latent of the new grid): cropped where smaller, `fill` shows where
    larger."""
    out = fill.clone()
    oh, ow = z.shape[-2:]
    nh, nw = fill.shape[-2:]
    h, w = min(oh, nh), min(ow, nw)
    sy, sx, dy, dx = (oh - h) // 2, (ow - w) // 2, (nh - h) // 2, (nw - w) // 2
    out[..., dy:dy + h, dx:dx + w] = z[..., sy:sy + h, sx:sx + w].to(out)
    return out


def _fmt_size(grid: tuple[int, int], factor: int) -> str:
    return f"{grid[1] * factor}x{grid[0] * factor}"


def _encode(models: Any, image: Any, size: tuple[int, int]) -> Any:
    from vqclip.engine import image_to_tensor

    x = image_to_tensor(image, size, models.device)
    return models.vqgan.encode(x * 2 - 1)


def start_state(resume: Any, models: Any, settings: Any, note: Callable[[str], None]) -> dict[str, Any]:
    """The state a continued run's session starts from (`resume`: a pipeline.request.Resume)."""
    import torch

    f = models.vqgan.factor
    new = (settings.height // f, settings.width // f)
    if resume.start == "state":
        state = dict(resume.state)
        if state["z"].shape[1] != models.vqgan.spec.embed_dim:
            raise VqclipError(f"{resume.parent.path / STATE} holds a {state['z'].shape[1]}-channel latent but "
                              f"this VQGAN has {models.vqgan.spec.embed_dim}; continue with the parent's "
                              "model, or pass --resize stretch")
    else:
        image = resume.start_image
        if resume.start == "stretch":
            size = (new[1] * f, new[0] * f)
            note(f"stretch: {resume.parent.id}/{IMAGE} resized to {size[0]}x{size[1]} and re-encoded; "
                 "the optimizer restarts")
        else:  # output.png at its own size, then cropped/padded like a state
            size = (max(1, image.width // f) * f, max(1, image.height // f) * f)
        z = _encode(models, image, size).cpu()
        state = {"z": z, "z_anchor": z.clone(), "step": resume.step, "optimizer": None,
                 "optimizer_state": None, "seed": settings.seed}
        if resume.state is not None:  # stretch from a good state: keep the random stream going
            for key in ("rng_cpu", "rng_noise"):
                if key in resume.state:
                    state[key] = resume.state[key]
    if resume.reseed:
        state.pop("rng_cpu", None)
        state.pop("rng_noise", None)
    old = tuple(state["z"].shape[-2:])
    if old != new:
        how = grid_change(old, new, resume.resize)  # type: ignore[arg-type]
        gen = torch.Generator().manual_seed(settings.seed)
        fill = models.vqgan.random_latent(new[1], new[0], gen).cpu()
        state["z"] = fit_grid(state["z"], fill)
        state["z_anchor"] = fit_grid(state["z_anchor"], fill)
        restarted = state.get("optimizer_state") is not None
        state["optimizer_state"] = None
        note(f"size {_fmt_size(old, f)} → {_fmt_size(new, f)}: token grid {how}"
             f"{f'; new tokens from seed {settings.seed}' if 'padded' in how else ''}"
             f"{'; the optimizer restarts (its moments belong to the old grid)' if restarted else ''}")
    return state


__all__ = ["grid_change", "fit_grid", "start_state"]
