"""The job queue of `vqclip serve`: one worker thread per device, models kept loaded between jobs.

Each worker owns a `ModelCache` (as `vqclip batch`'s workers do), so a second job with the same VQGAN and CLIP
starts stepping at once. Controls: interrupt (stop the running job after its step — it is saved as an
interrupted run — and hold the queue), skip (stop it and go on with the next job), stop after this one (hold
the queue when it ends), resume, remove and reorder queued jobs.

Queued jobs live in `OUTPUT/.serve/queue.json` (rewritten atomically on every change), so a server stopped with
jobs waiting offers them again at its next start — held, until the page resumes or discards them. A job the
server stops before its first step (models still loading) goes back to the queue instead of leaving an empty
run; a job that has stepped is saved as an interrupted run, like Ctrl-C on the command line.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from vqclip.errors import VqclipError, one_line
from vqclip.serve.preview import JobCancelled, PreviewReporter
from vqclip.serve.runner import Context, check_job, run_job

QUEUE_FILE = "queue.json"
QUEUE_VERSION = 1
MAX_QUEUED = 500
HISTORY = 30  # finished jobs the page still lists


@dataclass
class Job:
    id: str
    kind: str
    values: dict[str, Any]  # the settings as posted (images as upload/run references), for queue.json
    animation: dict[str, Any] | None = None
    parent: str | None = None
    frames: int | None = None
    label: str = ""
    status: str = "queued"  # queued → loading → running → finished | interrupted | failed | cancelled
    created: float = field(default_factory=time.time)
    run_id: str | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    progress: dict[str, Any] = field(default_factory=dict)
    preview: bytes | None = None
    device: str | None = None
    stop: bool = False  # finish the current step, save as interrupted
    cancel: bool = False  # the server is stopping: before the first step, give the job back to the queue
    stepped: bool = False
    tokens: tuple[str, ...] = ()

    def saved(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "values": self.values, "animation": self.animation,
                "parent": self.parent, "frames": self.frames, "label": self.label, "created": self.created}

    def public(self) -> dict[str, Any]:
        return {**self.saved(), "status": self.status, "run": self.run_id, "error": self.error,
                "notes": self.notes[-5:], "progress": self.progress, "device": self.device}


class JobManager:
    """The queue, its workers and its controls; every change is published to the tabs."""

    def __init__(self, ctx: Context, publish: Callable[[str, Any], None], devices: list[str] | None = None) -> None:
        self.ctx = ctx
        self.publish = publish
        self.devices = devices or ["auto"]
        self.queue: list[Job] = []
        self.running: dict[str, Job | None] = {d: None for d in self.devices}
        self.history: list[Job] = []
        self.paused = False
        self.stop_after = False
        self.restored = 0  # jobs offered again from the last run of the server
        self.closing = False
        self.abandon = False  # a second Ctrl-C: stop waiting for the running job (it is not saved)
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self.file = ctx.output_dir / ".serve" / QUEUE_FILE

    # ------------------------------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        self._restore()
        for device in self.devices:
            t = threading.Thread(target=self._worker, args=(device,), name=f"vqclip-serve-{device}", daemon=True)
            t.start()
            self._threads.append(t)

    def shutdown(self, wait: bool = True, timeout: float | None = None) -> None:
        """Stop: running jobs finish their step and are saved (or, before their first step, go back to the
        queue); the queue is written for the next start."""
        self.request_stop()
        end = None if timeout is None else time.monotonic() + timeout
        while wait and not self.abandon and any(t.is_alive() for t in self._threads):
            if end is not None and time.monotonic() > end:
                break
            for t in self._threads:
                t.join(0.1)
        with self._cond:
            self._save()

    def request_stop(self) -> None:
        """Start no more jobs; running ones stop after their step (or before their first, back to the queue)."""
        with self._cond:
            self.closing = True
            for job in self.running.values():
                if job is not None:
                    job.cancel = job.stop = True
            self._cond.notify_all()

    def _restore(self) -> None:
        try:
            data = json.loads(self.file.read_text(encoding="utf-8")) if self.file.is_file() else None
        except (OSError, ValueError):
            data = None
        jobs = data.get("jobs") if isinstance(data, dict) and data.get("version") == QUEUE_VERSION else None
        for item in jobs if isinstance(jobs, list) else []:
            if not isinstance(item, dict) or not isinstance(item.get("id"), str):
                continue
            job = Job(id=item["id"][:40], kind=str(item.get("kind")), values=item.get("values") or {},
                      animation=item.get("animation"), parent=item.get("parent"), frames=item.get("frames"),
                      label=str(item.get("label") or "")[:200], created=float(item.get("created") or time.time()))
            self.queue.append(job)
        self.restored = len(self.queue)
        self.paused = bool(self.queue)  # offered again: they wait until the page resumes them
        tokens: set[str] = set()
        for job in self.queue:
            tokens |= _tokens(job.values)
        self.ctx.uploads.keep_only(tokens)

    def _save(self) -> None:
        """queue.json: the queued jobs, and running ones that have not stepped (they would run again)."""
        from vqclip.files import atomic_write_bytes

        pending = [j for j in self.running.values() if j is not None and not j.stepped and j.cancel]
        jobs = [j.saved() for j in pending + self.queue]
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.file, json.dumps({"version": QUEUE_VERSION, "jobs": jobs}, indent=1).encode())
        except OSError:
            pass  # a read-only output folder: the queue simply is not kept

    # -------------------------------------------------------------------------------------------- the page

    def snapshot(self) -> dict[str, Any]:
        with self._cond:
            return self._snap()

    def _snap(self) -> dict[str, Any]:
        return {"queue": [j.public() for j in self.queue],
                "running": [j.public() for j in self.running.values() if j is not None],
                "history": [j.public() for j in reversed(self.history)],
                "paused": self.paused, "stop_after": self.stop_after, "restored": self.restored,
                "devices": self.devices}

    def _changed(self) -> None:
        """After any change (lock held): write queue.json, wake the workers, tell the tabs."""
        self._save()
        self._cond.notify_all()
        self.publish("queue", self._snap())

    def submit(self, kind: Any, values: Any, animation: Any = None, parent: Any = None, frames: Any = None,
               run_now: bool = True) -> Job:
        """Check and queue a job (FormError with one line when it is not valid). `run_now` resumes a held queue."""
        checked = check_job(self.ctx, kind, values, animation, parent, frames)
        job = Job(id=secrets.token_urlsafe(8), kind=str(kind), values=values or {}, animation=animation,
                  parent=parent, frames=frames, label=checked.label, tokens=checked.tokens)
        with self._cond:
            if self.closing:
                raise VqclipError("the server is stopping; start it again to queue jobs")
            if len(self.queue) >= MAX_QUEUED:
                raise VqclipError(f"the queue holds {MAX_QUEUED} jobs already; remove some first")
            self.queue.append(job)
            if run_now:
                self.paused, self.restored = False, 0
            self._changed()
        return job

    def find(self, job_id: str) -> Job | None:
        with self._cond:
            for job in [*self.queue, *(j for j in self.running.values() if j), *self.history]:
                if job.id == job_id:
                    return job
        return None

    def remove(self, job_id: str) -> bool:
        with self._cond:
            for i, job in enumerate(self.queue):
                if job.id == job_id:
                    del self.queue[i]
                    job.status = "cancelled"
                    self._changed()
                    return True
        return False

    def move(self, job_id: str, index: int) -> bool:
        with self._cond:
            for i, job in enumerate(self.queue):
                if job.id == job_id:
                    self.queue.insert(max(0, min(index, len(self.queue) - 1)), self.queue.pop(i))
                    self._changed()
                    return True
        return False

    def control(self, action: str) -> None:
        """interrupt | skip | stop_after | resume | clear (ValueError for anything else)."""
        with self._cond:
            running = [j for j in self.running.values() if j is not None]
            if action in ("interrupt", "skip"):
                for job in running:
                    job.stop = True
                if action == "interrupt":
                    self.paused = True
            elif action == "stop_after":
                self.stop_after = not self.stop_after if running else False
                if not running:
                    self.paused = True
            elif action == "resume":
                self.paused, self.stop_after, self.restored = False, False, 0
            elif action == "clear":
                for job in self.queue:
                    job.status = "cancelled"
                self.queue.clear()
                self.restored = 0
            else:
                raise ValueError(action)
            self._changed()

    # ----------------------------------------------------------------------------------------------- work

    def _next(self, device: str) -> Job | None:
        for i, job in enumerate(self.queue):
            wanted = job.values.get("device") if isinstance(job.values, dict) else None
            if wanted in (None, "", "auto", device) or device == "auto" or wanted not in self.devices:
                return self.queue.pop(i)
        return None

    def _worker(self, device: str) -> None:
        from vqclip.pipeline.cache import ModelCache

        cache = ModelCache()
        while True:
            with self._cond:
                job = None
                while not self.closing and (self.paused or (job := self._next(device)) is None):
                    self._cond.wait()
                if self.closing:
                    if job is not None:
                        self.queue.insert(0, job)
                    return
                job.status, job.device = "loading", device
                self.running[device] = job
                self._changed()
            self._run(job, device, cache)
            with self._cond:
                self.running[device] = None
                if job.cancel and not job.stepped:  # stopped while loading: run it at the next start
                    job.status, job.stop, job.cancel, job.error = "queued", False, False, None
                    self.queue.insert(0, job)
                else:
                    self.history = (self.history + [job])[-HISTORY:]
                    if self.stop_after:
                        self.paused, self.stop_after = True, False
                self._changed()
                if self.closing:
                    return

    def _run(self, job: Job, device: str, cache: Any) -> None:
        reporter = PreviewReporter(job, self.publish)
        try:
            checked = check_job(self.ctx, job.kind, job.values, job.animation, job.parent, job.frames)
            outcome = run_job(self.ctx, job.kind, checked, device=device, cache=cache, reporter=reporter,
                              should_stop=lambda: job.stop)
            job.status, job.run_id = outcome.status, outcome.id
        except JobCancelled:
            job.status = "queued"
        except VqclipError as e:
            job.status, job.error = "failed", e.message
        except Exception as e:  # the server goes on; the job says what happened in one line
            from vqclip.pipeline import oom

            job.status = "failed"
            job.error = "out of memory: lower the size or cutn" if oom.is_out_of_memory(e) else one_line(e)
        self.publish("done", {"job": job.id, "status": job.status, "run": job.run_id, "error": job.error})


def _tokens(values: Any) -> set[str]:
    """Upload tokens named by a job's settings."""
    out: set[str] = set()
    if not isinstance(values, dict):
        return out
    refs = [values.get("init_image")] + list(values.get("image_prompts") or [])
    for ref in refs:
        if isinstance(ref, dict) and isinstance(ref.get("upload"), str):
            out.add(ref["upload"])
    return out


def queue_file(output_dir: Path) -> Path:
    return output_dir / ".serve" / QUEUE_FILE


__all__ = ["Job", "JobManager", "queue_file", "QUEUE_FILE"]
