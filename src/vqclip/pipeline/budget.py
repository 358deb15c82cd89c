"""What a run may use and what it will do about it: the device's memory budget, the run's plan (low-memory mode
on or off, or a refusal up front naming the largest size that fits), the `--dry-run` report, and handing memory
back (the device's cache between runs, CLIP's text tower and the VQGAN encoder once the steps start).

The numbers come from the estimate model in `vqclip.pipeline.memory`; this module decides with them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vqclip.errors import VqclipError
from vqclip.pipeline.memory import Estimate, clip_chunk_for, estimate, fmt, largest_fitting

HEADROOM = 0.9  # switch low-memory on when the normal estimate passes this share of the budget
BUDGET_ENV = "VQCLIP_MEMORY_BUDGET"  # e.g. "6GiB", "800MB": pretend this much memory is free (tests, sharing)


# --------------------------------------------------------------------------------------------------- budget
def parse_bytes(text: str) -> int:
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b?)\s*", text.strip().lower())
    if not m:
        raise VqclipError(f"{BUDGET_ENV}={text!r} is not a size; write e.g. 6GiB or 800MB")
    unit = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}[m.group(2)]
    return int(float(m.group(1)) * unit)


def memory_budget(device: Any) -> int | None:
    """Bytes this run may use, read before it allocates anything (pipeline.execute plans before loading models):
    `VQCLIP_MEMORY_BUDGET`, else on CUDA `free + reserved - allocated` (the allocator's cache is ours to reuse,
    live tensors belong to no part of this run), on MPS the recommended working set less live tensors, else
    available RAM (+ what this process already holds, since the estimate counts the runtime). None when it
    cannot be told."""
    env = os.environ.get(BUDGET_ENV)
    if env:
        return parse_bytes(env)
    import torch

    device = torch.device(device) if not isinstance(device, torch.device) else device
    if device.type == "cuda":
        # free: not held by any process (this one's CUDA context and allocator segments excluded);
        # reserved - allocated: segments this process's caching allocator keeps but no tensor uses, e.g. all of
        # a previous run's in a batch or chain. The estimate counts this run's whole need, weights included.
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + max(0, cached))
    if device.type == "mps":
        mps = getattr(torch, "mps", None)
        recommended = getattr(mps, "recommended_max_memory", None)  # torch >= 2.5
        if recommended is not None:
            allocated = getattr(mps, "current_allocated_memory", None)
            try:
                return int(max(0, recommended() - (allocated() if allocated is not None else 0)))
            except RuntimeError:  # MPS not usable after all: fall back to RAM, as older torch does
                pass
    try:
        import psutil
    except ImportError:  # pragma: no cover
        return None
    available = psutil.virtual_memory().available
    if device.type == "cpu":
        return int(available + psutil.Process().memory_info().rss)
    return int(available)


def release_device_cache(device: Any) -> None:
    """Hand the device memory no tensor uses back to the driver (between runs and chain stages): gc first, so
    tensors kept only by reference cycles go too. Nothing to do on the CPU (release_unused trims the heap)."""
    if device is None:
        return
    import torch

    try:
        device = torch.device(device) if not isinstance(device, torch.device) else device
    except (RuntimeError, TypeError):
        return
    if device.type == "cpu":
        return
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        empty = getattr(getattr(torch, "mps", None), "empty_cache", None)
        if empty is not None:
            empty()


# ----------------------------------------------------------------------------------------------------- plan
@dataclass
class Plan:
    """What a run will use, decided before anything large is loaded."""

    estimate: Estimate
    low_memory: bool
    budget: int | None
    note: str | None = None  # a line for the user (low-memory switched on automatically, …)
    precision: Any = None  # engine.precision.Precision the estimate assumed

    @property
    def weight_dtype(self) -> Any:
        """Storage dtype of the frozen weights during the steps (None = leave as loaded)."""
        return getattr(self.precision, "weights", None)

    @property
    def clip_chunk(self) -> int:
        """`LoopSettings.clip_chunk` (0 = all cutouts in one CLIP batch)."""
        return clip_chunk_for(self.estimate.device, self.low_memory, self.estimate.cutn)


def clip_names(config: Any) -> list[str]:
    """The CLIP models a run loads (`--clip`, else `clip_model`), the first first: the estimate counts them all."""
    specs = getattr(config, "clip_specs", None)
    return [s.model for s in specs()] if specs is not None else [config.clip_model]


class WontFit(VqclipError):
    """A run that the estimate says cannot fit in the memory available."""


def _low_memory(config: Any, normal: Estimate, budget: int | None) -> bool:
    """`--low-memory` as asked, or on when the normal estimate passes HEADROOM of the budget."""
    if config.low_memory is not None:
        return bool(config.low_memory)
    return budget is not None and normal.total > HEADROOM * budget


def plan_run(config: Any, spec: Any, width: int, height: int, device: Any, precision: Any, *,
             with_encoder: bool = False, first_load_bytes: int = 0, keep_encoder: bool = False) -> Plan:
    """Decide low-memory mode (when `config.low_memory` is None) and refuse up front a run that will not fit."""
    budget = memory_budget(device)
    kw = {"with_encoder": with_encoder, "first_load_bytes": first_load_bytes, "keep_encoder": keep_encoder}
    args = (spec, clip_names(config), width, height, config.cutn, device, precision)
    normal = estimate(*args, low_memory=False, **kw)
    low = _low_memory(config, normal, budget)
    est = estimate(*args, low_memory=True, **kw) if low else normal
    note = None
    if low and config.low_memory is None:
        note = (f"low-memory mode on: {width}x{height} with cutn {config.cutn} needs about {fmt(normal.total)} "
                f"normally, {fmt(est.total)} with decoder checkpointing; {fmt(budget or 0)} available")
    if budget is not None and est.total > budget:
        raise WontFit(_refusal(config, spec, width, height, device, precision, est, budget, kw))
    return Plan(est, low, budget, note, precision)


def _refusal(config: Any, spec: Any, width: int, height: int, device: Any, precision: Any, est: Estimate,
             budget: int, kw: dict[str, Any]) -> str:
    """One line: what the run needs, what there is, and the largest size that would fit."""
    allow_low = config.low_memory is not False

    def best_for(low: bool) -> tuple[int, int] | None:
        return largest_fitting(spec, clip_names(config), width, height, config.cutn, budget, device, precision,
                               low, **kw)

    best = best_for(allow_low)
    hint = ""
    if not allow_low:
        low_best = best_for(True)
        if low_best and (best is None or low_best[0] * low_best[1] > best[0] * best[1]):
            hint = f" ({low_best[0]}x{low_best[1]} with --low-memory)"
    head = (f"{width}x{height} with cutn {config.cutn} needs about {fmt(est.total)}"
            f"{' even in low-memory mode' if est.low_memory else ''} but {device} has {fmt(budget)} available")
    if best is None:
        return f"{head}; no size fits{hint or ''}: lower --cutn or free some memory"
    return f"{head}; the largest size that fits is {best[0]}x{best[1]}{hint} (or lower --cutn)"


def first_load_bytes(ckpt_path: Any) -> int:
    """A first load reads the whole checkpoint (optimizer states included) before the decoder cache exists."""
    from vqclip.weights.checkpoint import cache_path

    try:
        ckpt = Path(ckpt_path)
        return 0 if cache_path(ckpt).is_file() else ckpt.stat().st_size
    except (OSError, TypeError):
        return 0


def prepare_for_steps(models: Any, plan: Plan) -> None:
    """Once the session has started: free what the steps never use and store frozen weights as planned."""
    if plan.weight_dtype is not None:
        models.vqgan.set_weight_dtype(plan.weight_dtype)
        for clip in models.clips:  # (a model named twice in an ensemble: the second call changes nothing)
            clip.set_weight_dtype(plan.weight_dtype)
    release_unused(models)


def release_unused(models: Any) -> None:
    """After the prompts are embedded and the session started: free every CLIP's text tower and the VQGAN
    encoder, and hand the freed pages back to the OS (glibc keeps freed heap memory otherwise: ~250 MiB for
    ViT-B/32's text tower stayed in the process's RSS)."""
    for clip in models.clips:
        clip.release_text_tower()
    models.vqgan.drop_encoder()
    import gc

    from vqclip.engine.heap import trim_heap

    gc.collect()
    trim_heap()


# -------------------------------------------------------------------------------------------------- dry run
@dataclass
class DryRun:
    """What `generate --dry-run` shows: both estimates, the mode a run would take, and what would fit."""

    width: int
    height: int
    device: Any
    precision: str
    normal: Estimate
    low: Estimate
    low_memory: bool  # the mode this run would use
    budget: int | None
    largest: dict[bool, tuple[int, int] | None]  # low_memory → the largest size that fits

    @property
    def chosen(self) -> Estimate:
        return self.low if self.low_memory else self.normal


def dry_run(config: Any, *, weights_dir: Any = None, on_note: Any = None) -> DryRun:
    """The estimated peak memory of `config` and the largest sizes that fit; starts nothing, prints nothing."""
    from vqclip import engine
    from vqclip.prompts import floor_size
    from vqclip.weights.resolve import resolve_model

    # The yaml alone, through the resolver `generate` uses: nothing is downloaded or hashed.
    spec = engine.read_spec(resolve_model(config.model, weights_dir=weights_dir, yaml_only=True).yaml_path)
    width, height = floor_size(config.width, config.height, spec.factor)
    device, precision = engine.resolve_device(config.device, config.precision, on_note=on_note)
    budget = memory_budget(device)
    args = (spec, clip_names(config), width, height, config.cutn, device, precision)
    with_encoder = bool(config.init_image)
    normal = estimate(*args, low_memory=False, with_encoder=with_encoder)
    low = estimate(*args, low_memory=True, with_encoder=with_encoder)
    largest: dict[bool, tuple[int, int] | None] = {}
    if budget is not None:
        for lm in (False, True):
            largest[lm] = largest_fitting(spec, clip_names(config), width, height, config.cutn, budget, device,
                                          precision, lm, with_encoder=with_encoder)
    return DryRun(width, height, device, precision.describe(), normal, low, _low_memory(config, normal, budget),
                  budget, largest)


__all__ = ["BUDGET_ENV", "HEADROOM", "Plan", "WontFit", "plan_run", "dry_run", "DryRun", "memory_budget", "parse_bytes",
           "clip_names", "first_load_bytes", "prepare_for_steps", "release_unused", "release_device_cache"]
