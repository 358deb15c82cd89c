"""Workers on this machine: one per device. A single device runs the rows in this process (`LocalBackend`); several
run one worker process each (`ProcessBackend`, multiprocessing's `spawn` context), every worker keeping its
models loaded (`ModelCache`) and reporting steps and outcomes to the parent, which alone writes the journal.

A worker process ignores Ctrl-C, SIGTERM and SIGHUP (a terminal, `kill -- -PGID` or a service manager sends them
to the whole process group): the parent asks it to stop through an Event (the run in progress saves what it did, as a single run would); and it dies with its parent
(PR_SET_PDEATHSIG on Linux), so a `kill -9` of the parent leaves no worker behind to commit a run behind the
journal's back.
"""

from __future__ import annotations

import queue as queue_mod
from typing import Any

from vqclip.errors import UsageError

def default_devices() -> list[str]:
    """Every visible CUDA GPU, else the CPU."""
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [f"cuda:{i}" for i in range(n)] or ["cpu"]


def parse_devices(text: str | None) -> list[str]:
    """`--devices cuda:0,cuda:1` (or `cpu,cpu`: two CPU workers); None → `default_devices()`."""
    if text is None:
        return default_devices()
    devices = [d.strip().lower() for d in text.split(",") if d.strip()]
    from vqclip.config import DEVICE

    bad = [d for d in devices if not DEVICE.fullmatch(d)]
    if bad or not devices:
        raise UsageError(f"--devices {text!r}: {bad[0] + ' is not a device' if bad else 'no device'}; "
                         "write e.g. cuda:0,cuda:1 or cpu")
    return devices


class LocalBackend:
    """One worker, this process: `poll` runs the submitted row to the end (steps reported as it goes)."""

    def __init__(self, device: str | None, should_stop: Any = None, on_step: Any = None) -> None:
        from vqclip.pipeline.cache import ModelCache

        self.device = device
        self.name = device or "local"
        self.cache = ModelCache()
        self.should_stop = should_stop
        self.on_step = on_step  # (worker, step, total): the step events cannot wait for poll to return
        self.task: dict[str, Any] | None = None

    def idle(self) -> str | None:
        return None if self.task is not None else self.name

    def submit(self, worker: str, task: dict[str, Any]) -> None:
        self.task = task

    def poll(self, timeout: float) -> list[tuple[str, str, Any]]:
        from vqclip.batch.runner import StepReporter, run_task

        task, self.task = self.task, None
        if task is None:
            return []

        def send(step: int, total: int) -> None:
            if self.on_step is not None:
                self.on_step(self.name, step, total)

        return [("done", self.name, run_task(task, self.cache, self.device, self.should_stop, StepReporter(send)))]

    def close(self) -> None:
        self.cache.clear()


def _die_with_parent() -> None:
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def _worker_main(name: str, device: str, tasks: Any, results: Any, stop: Any, parent: int) -> None:
    import os
    import signal

    _die_with_parent()
    for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)):  # a stop sent to the whole
        if sig is not None:  # process group reaches the parent, which asks the worker to save and stop
            signal.signal(sig, signal.SIG_IGN)
    if os.getppid() != parent:  # the parent died before PR_SET_PDEATHSIG was in place
        return
    from vqclip.batch.runner import StepReporter, run_task
    from vqclip.pipeline.cache import ModelCache

    cache = ModelCache()
    results.put(("ready", name, os.getpid()))
    while True:
        task = tasks.get()
        if task is None:
            return
        reporter = StepReporter(lambda step, total: results.put(("step", name, (step, total))))
        results.put(("done", name, run_task(task, cache, device, stop.is_set, reporter)))


class ProcessBackend:
    """One spawned worker process per device (`cpu,cpu` gives two CPU workers)."""

    def __init__(self, devices: list[str]) -> None:
        import multiprocessing as mp
        import os

        ctx = mp.get_context("spawn")
        self.results = ctx.Queue()
        self.stop_event = ctx.Event()
        self.workers: dict[str, tuple[Any, Any]] = {}  # name -> (process, task queue)
        self.busy: set[str] = set()
        for i, device in enumerate(devices):
            name = f"{device}#{i}" if devices.count(device) > 1 else device
            tasks = ctx.Queue()
            proc = ctx.Process(target=_worker_main, name=f"vqclip-batch-{name}",
                               args=(name, device, tasks, self.results, self.stop_event, os.getpid()), daemon=True)
            proc.start()
            self.workers[name] = (proc, tasks)

    def stop(self) -> None:
        """The runs in progress save what they did and end; no new row starts (the driver stops handing out)."""
        self.stop_event.set()

    def idle(self) -> str | None:
        for name, (proc, _) in self.workers.items():
            if name not in self.busy and proc.is_alive():
                return name
        return None

    def submit(self, worker: str, task: dict[str, Any]) -> None:
        self.busy.add(worker)
        self.workers[worker][1].put(task)

    def poll(self, timeout: float) -> list[tuple[str, str, Any]]:
        events: list[tuple[str, str, Any]] = []
        try:
            events.append(self.results.get(timeout=timeout))
            while True:
                events.append(self.results.get_nowait())
        except queue_mod.Empty:
            pass
        events = [e for e in events if e[0] != "ready"]
        for e in events:
            if e[0] == "done":
                self.busy.discard(e[1])
        for name in list(self.busy):
            proc = self.workers[name][0]
            if not proc.is_alive() and not any(e[1] == name and e[0] == "done" for e in events):
                self.busy.discard(name)
                events.append(("lost", name, f"worker process exited with code {proc.exitcode}"))
        if self.workers and not any(p.is_alive() for p, _ in self.workers.values()) and not events:
            from vqclip.errors import VqclipError

            raise VqclipError("every batch worker process has died; see the messages above")
        return events

    def close(self) -> None:
        for proc, tasks in self.workers.values():
            if proc.is_alive():
                try:
                    tasks.put(None)
                except (OSError, ValueError):
                    pass
        for proc, _ in self.workers.values():
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()  # it ignores SIGTERM (see _worker_main)
                proc.join(timeout=5)
        self.workers.clear()


__all__ = ["default_devices", "parse_devices", "LocalBackend", "ProcessBackend"]
