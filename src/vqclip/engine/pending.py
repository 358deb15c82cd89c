"""Reading a step's numbers back from the device without stalling it (the loop's side of `engine/loop.py`):
copies into pinned memory queued behind the step, and the steps still waiting for theirs."""

from __future__ import annotations

from dataclasses import dataclass

import torch


def report_lag(device: torch.device) -> int:
    """Steps between taking a step and reporting it: on a GPU step k is reported once step k+1 is queued, so
    reading its numbers never leaves the GPU idle; on the CPU everything is synchronous anyway."""
    return 0 if device.type == "cpu" else 1


class Host:
    """A device tensor on its way to the host: queued as a non-blocking copy into pinned memory on CUDA (so
    the host does not wait for the GPU now), read with `wait()`. On the CPU it is the tensor itself."""

    def __init__(self, t: torch.Tensor) -> None:
        self.event = None
        if t.device.type == "cuda":
            self.t = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            self.t.copy_(t, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
        else:
            self.t = t.cpu()

    def wait(self) -> torch.Tensor:
        if self.event is not None:
            self.event.synchronize()
        return self.t


@dataclass
class Pending:
    """A step taken whose numbers are still on their way from the device."""

    step: int
    index: int
    keys: list[str]
    values: Host
    frame: Host | None
    frame_step: int
    seconds: float


__all__ = ["Host", "Pending", "report_lag"]
