"""In-process probes for `scripts/gpu_check.py`'s fit and profile sections: the real architectures at random
weights loaded once (auto precision, normal mode), sessions at any size on them, and `probe`: a few steps at a
size under an allocator cap, where running out of memory means "does not fit"."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from vqclip.bench.common import CLIP, MODEL, load_random


def is_oom(exc: BaseException) -> bool:
    """A device allocation failed (torch's OutOfMemoryError, or cuBLAS/cuDNN failing to get a workspace)."""
    text = str(exc)
    return type(exc).__name__ == "OutOfMemoryError" or isinstance(exc, RuntimeError) and (
        "out of memory" in text or "ALLOC_FAILED" in text)


class Lab:
    """Models loaded once by `load_run` (at 64², as a run would be, then prepared for steps), for many sessions
    in one process. On the CPU (a rehearsal) a cap is simulated: a size whose estimated step memory is over it
    raises OutOfMemoryError."""

    def __init__(self, device: Any, cutn: int, weights: Any = None) -> None:
        import torch

        from vqclip import engine
        from vqclip.engine.precision import choose_precision
        from vqclip.pipeline import budget, memory
        from vqclip.weights.registry import packaged_yaml

        self.dev, self.cutn, self.cuda, self.limit = device, cutn, device.type == "cuda", None
        os.environ[budget.BUDGET_ENV] = "1TiB"  # measuring what fits: the planner must neither refuse nor switch
        self.run = load_random(device, 64, 64, cutn, weights=weights, low_memory=False)
        s = engine.start_session(self.run.models, self.run.settings, self.run.prompts)
        budget.prepare_for_steps(self.run.models, self.run.plan)
        s.run(1)  # cuBLAS/cuDNN handles and workspaces exist before any cap
        spec, prec = engine.read_spec(packaged_yaml(MODEL)), choose_precision("auto", device)
        cuda = torch.device("cuda")  # the estimate of the card being emulated (the rehearsal's too)
        self.estimate = lambda w, h: memory.estimate(spec, CLIP, w, h, cutn, cuda, prec)
        self.model_fit = lambda b: memory.largest_fitting(spec, CLIP, 1024, 1024, cutn, b, cuda, prec, False)
        self.total = torch.cuda.get_device_properties(device).total_memory if self.cuda else None

    def cap(self, limit: int | None) -> None:
        """Let this process's allocator hold at most `limit` bytes (None: the whole card)."""
        import torch

        self.limit = limit
        if self.cuda:
            torch.cuda.set_per_process_memory_fraction(min(1.0, (limit or self.total) / self.total), self.dev)
            torch.cuda.empty_cache()

    def session(self, w: int, h: int) -> Any:
        """A session at w×h on the loaded models and prompts (normal mode: the CLIP chunk does not depend on the
        size)."""
        from vqclip import engine

        settings = dataclasses.replace(self.run.settings, width=w, height=h)
        return engine.start_session(self.run.models, settings, self.run.prompts)

    def probe(self, w: int, h: int, steps: int) -> tuple[bool, float | None]:
        """(fits, peak MiB on CUDA): `steps` steps at w×h under the current cap; out of memory = does not fit."""
        import gc
        import traceback

        import torch

        s, ok = None, True
        try:
            if self.cuda:
                torch.cuda.reset_peak_memory_stats(self.dev)
            elif self.limit is not None and self.estimate(w, h).step_phase > self.limit:
                raise torch.OutOfMemoryError(f"simulated: {w}x{h} needs more than {self.limit} bytes")
            s = self.session(w, h)
            s.run(steps)
        except Exception as e:
            if not is_oom(e):
                raise
            traceback.clear_frames(e.__traceback__)  # the failed step's tensors go with its frames
            ok = False
        s = None
        gc.collect()
        peak = round(torch.cuda.max_memory_allocated(self.dev) / 2**20, 1) if self.cuda and ok else None
        if self.cuda:
            torch.cuda.empty_cache()
        return ok, peak
