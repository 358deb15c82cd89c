"""The reporter of a job run by the server: keeps the latest step (step, total, loss, it/s, time left) and a JPEG
of the latest frame, and tells every tab — at most a few times a second, so the page stays cheap to watch and
the run pays almost nothing for it (`vqclip.bench.serve` measures how little).

Frames come from the engine on the steps a video frame is taken (`save_every`, and always the first step);
the newest one is encoded when PREVIEW_S has passed since the last preview, the one left over at the end.
"""

from __future__ import annotations

import io
import time
from typing import Any, Callable

from vqclip.pipeline.execute import Reporter

PREVIEW_S = 0.25  # at most 4 previews a second
PROGRESS_S = 0.1  # at most 10 progress events a second (always the first and the last step)
MAX_NOTES = 20


class JobCancelled(Exception):
    """Raised where a run begins stepping when the server is stopping before the job took a step: the pipeline
    then leaves no run folder, and the job stays queued for the next start."""


def jpeg(frame: Any, quality: int = 85) -> bytes:
    """A [3, H, W] float tensor in [0, 1] → JPEG bytes."""
    from PIL import Image

    from vqclip.pipeline.media import to_uint8

    buf = io.BytesIO()
    Image.fromarray(to_uint8(frame)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


class PreviewReporter(Reporter):
    """Progress of one job, for the page. `publish(event, data)` tells the tabs."""

    def __init__(self, job: Any, publish: Callable[[str, Any], None]) -> None:
        self.job = job
        self.publish = publish
        self._pending: Any = None
        self._last_preview = 0.0
        self._last_event = 0.0
        self._t0 = 0.0
        self._started = False

    def note(self, message: str) -> None:
        self.job.notes = (self.job.notes + [message])[-MAX_NOTES:]
        self.publish("note", {"job": self.job.id, "text": message})

    def start(self, total: int, run_id: str) -> None:
        if self.job.cancel:
            raise JobCancelled("the server is stopping")
        job = self.job
        job.run_id, job.status = run_id, "running"
        job.progress = {"step": 0, "total": total, "global": None, "loss": None, "rate": None, "eta": None,
                        "elapsed": 0.0, "preview": job.progress.get("preview", 0)}
        self._t0 = time.perf_counter()
        self._started = True
        self.publish("job", job.public())

    def step(self, info: Any) -> None:
        job = self.job
        job.stepped = True
        now = time.perf_counter()
        elapsed = now - self._t0
        rate = info.index / elapsed if elapsed > 0 else None
        left = max(0, info.total - info.index)
        p = job.progress
        p.update(step=info.index, total=info.total, global_=info.step, loss=float(info.loss), elapsed=elapsed,
                 rate=rate, eta=(left / rate) if rate else None)
        if info.frame is not None:
            self._pending = info.frame
        made = False
        if self._pending is not None and now - self._last_preview >= PREVIEW_S:
            made = self._make_preview(now)
        if made or info.index in (1, info.total) or now - self._last_event >= PROGRESS_S:
            self._last_event = now
            self.publish("progress", self.progress_event())

    def _make_preview(self, now: float) -> bool:
        frame, self._pending = self._pending, None
        try:
            self.job.preview = jpeg(frame)
        except Exception as e:  # a preview is never worth failing a run over
            self.note(f"no preview ({type(e).__name__})")
            return False
        self.job.progress["preview"] = self.job.progress.get("preview", 0) + 1
        self._last_preview = now
        return True

    def end(self) -> None:
        if self._pending is not None:
            self._make_preview(time.perf_counter())
        if self._started:
            self.publish("progress", self.progress_event())

    def progress_event(self) -> dict[str, Any]:
        p = dict(self.job.progress)
        p["global"] = p.pop("global_", p.get("global"))
        return {"job": self.job.id, "run": self.job.run_id, **p}


__all__ = ["PreviewReporter", "JobCancelled", "jpeg", "PREVIEW_S"]
