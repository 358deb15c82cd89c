"""`torch.compile` with a fallback to eager mode that never costs a run."""

from __future__ import annotations

from typing import Callable

import torch

from vqclip.errors import one_line

OutOfMemory = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)  # torch.OutOfMemoryError: 2.5+

COMPILE_BACKEND = "inductor"  # tests use "aot_eager" (no C++ compiler, seconds instead of minutes)


def compiled(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """`torch.compile(fn)` that falls back to `fn` for good, recording why in `.error`, if compiling is not
    available here (no C++ compiler, an old torch, an unsupported op) or the compiled call fails. Compile
    errors can surface in the backward pass, so the first call of each input shape runs a trial forward and
    backward of the compiled function inside the fallback before its result is used."""
    try:
        fast = torch.compile(fn, backend=COMPILE_BACKEND, dynamic=False)
    except Exception as e:  # torch.compile itself missing or refusing this platform
        fast, reason = None, one_line(e)
    else:
        reason = None
    tried: set[tuple[int, ...]] = set()

    def call(x: torch.Tensor) -> torch.Tensor:
        if call.fast is not None:  # type: ignore[attr-defined]
            try:
                if tuple(x.shape) not in tried:
                    probe = x.detach().requires_grad_(True)
                    torch.autograd.grad(call.fast(probe).float().sum(), probe)  # type: ignore[attr-defined]
                    tried.add(tuple(x.shape))
                return call.fast(x)  # type: ignore[attr-defined]
            except OutOfMemory:
                raise
            except Exception as e:  # compile errors surface at the first call, forward or backward
                call.error, call.fast = one_line(e), None  # type: ignore[attr-defined]
        return fn(x)

    call.fast, call.error = fast, reason  # type: ignore[attr-defined]
    return call
