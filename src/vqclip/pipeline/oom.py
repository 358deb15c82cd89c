"""Out of memory on a GPU: how to recognise it, free what the failed step held, and say what to lower.

A run that runs out of memory mid-way keeps the steps it did (saved as a `failed` run that `continue` picks
up); one that runs out while loading leaves nothing. Either way the user gets one line naming the size, the
cutn and a concrete smaller setting.
"""

from __future__ import annotations

from typing import Any

OOM_SHRINK = 0.75  # an out-of-memory run is told of a size with this share of its pixels (activations ∝ pixels)
_OOM_TEXT = ("CUDA out of memory", "MPS backend out of memory", "CUDA error: out of memory",
             "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED")


def is_out_of_memory(exc: BaseException) -> bool:
    """A device allocation failed: torch.OutOfMemoryError (torch >= 2.5; torch.cuda.OutOfMemoryError before), or
    the RuntimeError older torch raises on MPS and cuBLAS/cuDNN raise when their workspace cannot be had."""
    import torch

    kinds = tuple(k for k in (getattr(torch, "OutOfMemoryError", None),
                              getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)) if isinstance(k, type))
    if kinds and isinstance(exc, kinds):
        return True
    return isinstance(exc, RuntimeError) and any(t in str(exc) for t in _OOM_TEXT)


def free_after_oom(exc: BaseException, session: Any, device: Any) -> None:
    """Let go of what the failed step held (its frames' tensors, the gradients) and hand the device's cache back,
    so the last good latent can still be decoded and saved."""
    import gc
    import traceback

    from vqclip.pipeline import budget

    traceback.clear_frames(exc.__traceback__)  # the frames of the step: activations, cutouts, losses
    if session is not None:
        opt = getattr(session, "opt", None)
        if opt is not None:
            opt.zero_grad(set_to_none=True)
        if getattr(session, "z", None) is not None:
            session.z.grad = None
    gc.collect()
    budget.release_device_cache(device)


def smaller_size(width: int, height: int, factor: int) -> tuple[int, int] | None:
    """The size with OOM_SHRINK of the pixels (same aspect, multiples of the VQGAN factor), if smaller."""
    scale = OOM_SHRINK ** 0.5
    w, h = max(factor, int(width * scale) // factor * factor), max(factor, int(height * scale) // factor * factor)
    if (w, h) == (width, height):
        return None
    return w, h


def oom_message(device: Any, width: int, height: int, cutn: int, low_memory: bool, factor: int) -> str:
    """One line: where it ran out, and what to lower (not --low-memory when the run already used it)."""
    mode = " in low-memory mode" if low_memory else ""
    head = f"the GPU ({device}) ran out of memory at {width}x{height} with cutn {cutn}{mode}"
    tips = [] if low_memory else ["pass --low-memory"]
    smaller = smaller_size(width, height, factor)
    if smaller:
        tips.append(f"try --size {smaller[0]}x{smaller[1]}")
    if cutn > 1:
        tips.append(f"lower --cutn (e.g. {max(1, cutn // 2)})")
    if not tips:  # the smallest run there is
        tips.append("free the memory other programs hold on it, or use --device cpu")
    return f"{head}; {', '.join(tips[:-1])}{' or ' if len(tips) > 1 else ''}{tips[-1]}"


def load_oom_message(device: Any, cfg: Any, plan: Any) -> str:
    from vqclip.pipeline.memory import fmt

    budget = f", {fmt(plan.budget)} was free" if plan.budget is not None else ""
    return (f"the GPU ({device}) ran out of memory while loading {cfg.model} + {cfg.clip_model} and embedding "
            f"the prompts (about {fmt(plan.estimate.load_phase)} estimated{budget}); close other programs using "
            "the GPU, pick a smaller --clip-model, or use --device cpu")


def salvage(session: Any, exc: BaseException) -> Any:
    """After an error mid-run (not Ctrl-C), the steps already done are worth a `failed` run folder."""
    partial = getattr(session, "partial", None)
    if isinstance(exc, KeyboardInterrupt) or not isinstance(exc, Exception) or partial is None \
            or partial.steps_done == 0:
        return None
    try:
        partial.image = session.image()
    except Exception:
        return None
    return partial
