"""Running a batch: one row as a run (`run_task`, the same in every kind of worker) and the queue (`drive`): rows
handed out as workers free up, every outcome written to the journal by this (the driving) process only.

A backend (`workers.LocalBackend`, `workers.ProcessBackend`, `ray_backend.RayBackend`) has `idle()` (a free
worker's name or None), `submit(worker, task)`, `poll(timeout)` → events `(kind, worker, payload)` with kind
"step" (payload (step, total)), "done" (payload: the result dict) or "lost" (the worker died; payload: why), and
`close()`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from vqclip.errors import VqclipError, one_line
from vqclip.pipeline.request import Reporter


def make_task(batch_id: str, row: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """A row as a worker gets it: plain JSON (it crosses process and machine boundaries)."""
    return {"row": row["row"], "config": row["config"], "batch": {"id": batch_id, "row": row["row"]},
            "output_dir": settings["output_dir"], "weights_dir": settings.get("weights_dir"),
            "download": settings.get("download", True), "trusted": settings.get("trusted", []),
            "prompt": row["config"].get("prompt", "")}


class StepReporter(Reporter):
    """A pipeline Reporter that forwards each step (at most every `every` seconds) to `send(step, total)`."""

    def __init__(self, send: Callable[[int, int], None], every: float = 0.5) -> None:
        self.send, self.every, self.total, self.last = send, every, 0, 0.0

    def note(self, message: str) -> None:
        pass

    def transfer(self) -> Any:
        return None

    def start(self, total: int, run_id: str) -> None:
        self.total = total

    def step(self, info: Any) -> None:
        t = time.monotonic()
        if t - self.last >= self.every or info.index >= self.total:
            self.last = t
            self.send(info.index, self.total)

    def end(self) -> None:
        pass


def run_task(task: dict[str, Any], cache: Any, device: str | None = None, should_stop: Any = None,
             reporter: Any = None) -> dict[str, Any]:
    """Run one row; never raises for a run that fails (the result says so), only for Ctrl-C/SIGTERM."""
    from pydantic import ValidationError

    from vqclip.config import RunConfig
    from vqclip.pipeline.execute import execute
    from vqclip.pipeline.request import Inputs, RunRequest

    t0 = time.perf_counter()
    base = {"row": task["row"], "prompt": task.get("prompt", "")}
    try:
        data = dict(task["config"])
        if device is not None:
            data["device"] = device
        cfg = RunConfig.model_validate(data)
        inputs = Inputs(weights_dir=Path(task["weights_dir"]) if task.get("weights_dir") else None,
                        download=bool(task.get("download", True)),
                        trusted=[Path(p) for p in task.get("trusted", [])])
        outcome = execute(RunRequest(config=cfg, output_dir=Path(task["output_dir"]), inputs=inputs,
                                     should_stop=should_stop, batch=task["batch"], models_cache=cache), reporter)
    except (VqclipError, ValidationError, Exception) as e:  # noqa: B014  (KeyboardInterrupt passes)
        message = e.message if isinstance(e, VqclipError) else one_line(e)
        return {**base, "status": "failed", "error": message, "seconds": time.perf_counter() - t0}
    score = getattr(outcome.record, "score", None)
    return {**base, "status": outcome.status, "run_id": outcome.id, "path": str(outcome.path),
            "seed": outcome.record.seed, "seconds": time.perf_counter() - t0,
            "score": getattr(score, "summary", None)}


class Events:
    """What the CLI hears of a batch (all no-ops here)."""

    def started(self, worker: str, row: int, task: dict[str, Any]) -> None:
        pass

    def step(self, worker: str, row: int, step: int, total: int) -> None:
        pass

    def finished(self, worker: str, row: int, result: dict[str, Any], retry: bool) -> None:
        pass

    def lost(self, worker: str, row: int, why: str) -> None:
        pass


def drive(journal: Any, tasks: dict[int, dict[str, Any]], backend: Any, events: Events | None = None,
          should_stop: Callable[[], bool] | None = None) -> dict[str, int]:
    """Hand the journal's pending rows to the backend's workers until none is left (or a stop is asked: then
    no new row starts, the runs in progress end and are recorded). Returns the journal's counts."""
    ev = events or Events()
    stop = should_stop or (lambda: False)
    in_flight: dict[str, int] = {}
    stopping = False
    while True:
        if not stopping and stop():
            stopping = True
            getattr(backend, "stop", lambda: None)()  # worker processes / actors: save the run in progress
        while not stop():  # rows are claimed in the journal one at a time: another process may share the queue
            worker = backend.idle()
            if worker is None:
                break
            row = journal.claim_next(worker)
            if row is None:
                break
            in_flight[worker] = row
            backend.submit(worker, tasks[row])
            ev.started(worker, row, tasks[row])
        if not in_flight:
            break
        for kind, worker, payload in backend.poll(0.2):
            if worker not in in_flight:
                continue
            if kind == "step":
                ev.step(worker, in_flight[worker], *payload)
                continue
            row = in_flight.pop(worker)
            if kind == "lost":
                journal.requeue(row, f"worker {worker} lost: {payload}")
                ev.lost(worker, row, str(payload))
                continue
            result = payload
            retry = False
            if result["status"] == "finished":
                journal.done(row, result["run_id"], result.get("seconds"))
            elif result["status"] == "interrupted":
                journal.requeue(row, f"interrupted (saved as run {result.get('run_id')})")
            else:
                retry = journal.failed(row, result.get("error") or "failed")
            ev.finished(worker, row, result, retry)
    return journal.counts()


__all__ = ["make_task", "run_task", "drive", "Events", "StepReporter"]
