"""`vqclip batch FILE --ray ADDRESS`: the queue on a Ray cluster. One actor per GPU (`num_gpus=1`), or on a CPU-only
cluster `--ray-workers N` actors of `num_cpus=1`; each keeps its models loaded between rows.

No shared file system is needed: an actor writes its run in a temporary folder on its node and sends the run
folder's files back as bytes; the driver writes them as a run folder (under a temporary name, renamed into place
by `RunFolder`) and only then records the row as done. An actor or node that is lost loses only the run it had in
progress: that row goes back to the queue and a fresh actor takes the lost one's place.

Joining a cluster has a deadline (`--ray-timeout`, or VQCLIP_RAY_TIMEOUT; 30 s by default): the address is checked
first (a malformed one is a usage error), a closed port is refused at once, and a cluster that does not answer
fails when the deadline passes, naming the address (Ray's own connect retries for minutes).

Ray is optional: `pip install 'vqclip[ray]'`.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from vqclip.errors import UsageError, VqclipError, one_line

INSTALL = "--ray needs Ray, which is not installed; install it with: pip install 'vqclip[ray]'"
TIMEOUT_ENV = "VQCLIP_RAY_TIMEOUT"
DEFAULT_TIMEOUT = 30.0
_HOST = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]{0,252})|\[[0-9A-Fa-f:.]{2,45}\]", re.ASCII)
_ADDRESS_HELP = "write auto, local, HOST:PORT (e.g. 10.0.0.5:6379) or ray://HOST:PORT (Ray Client, e.g. port 10001)"


def check_address(address: str) -> tuple[str, int] | None:
    """(host, port) of a Ray address, None for `auto`/`local`; a malformed address is a UsageError."""
    text = address.strip()
    if text in ("auto", "local"):
        return None
    shown = text if len(text) <= 80 else text[:80] + "…"
    rest = text[len("ray://"):] if text.startswith("ray://") else text
    host, sep, port = rest.rpartition(":")
    if len(text) > 300 or not sep or not _HOST.fullmatch(host) or not port.isascii() or not port.isdigit() \
            or len(port) > 5 or not 1 <= int(port) <= 65535:
        raise UsageError(f"--ray {shown!r} is not a Ray address; {_ADDRESS_HELP}")
    return host.strip("[]"), int(port)


def _probe(address: str, host: str, port: int, timeout: float) -> None:
    """A TCP connect to the cluster's port: a closed port or an unknown host fails now, not after Ray's retries."""
    import socket

    try:
        socket.create_connection((host, port), timeout=max(0.1, timeout)).close()
    except socket.gaierror:
        raise VqclipError(f"cannot join the Ray cluster at {address}: the host {host} is not known; check the "
                          "--ray address") from None
    except (TimeoutError, socket.timeout):
        raise _no_answer(address, timeout) from None
    except OSError as e:
        raise VqclipError(f"cannot join the Ray cluster at {address}: {e.strerror or type(e).__name__}; is "
                          "`ray start --head` running there? Check the --ray address") from None


def probe(address: str, timeout: float = DEFAULT_TIMEOUT) -> None:
    """A closed port or unknown host behind `--ray ADDRESS` fails now, before a batch folder is made."""
    target = check_address(address)
    if target is not None:
        _probe(address, *target, timeout)


def _no_answer(address: str, timeout: float) -> VqclipError:
    return VqclipError(f"the Ray cluster at {address} did not answer within {timeout:g} s; check the --ray address "
                       f"(is `ray start --head` running there?), or wait longer with --ray-timeout or {TIMEOUT_ENV}")


def connect(ray: Any, address: str | None, timeout: float = DEFAULT_TIMEOUT) -> None:
    """`ray.init` for the batch driver, within `timeout` seconds when joining a cluster (starting a local one,
    `local`, has no deadline). The command's Ctrl-C/SIGTERM handlers are kept."""
    import logging
    import threading
    import time

    options = {"include_dashboard": False, "log_to_driver": False}
    if address in (None, "local"):
        init_keeping_signals(ray, address=None, **options)
        return
    deadline = time.monotonic() + timeout
    target = check_address(address)
    if target is not None:
        _probe(address, *target, timeout)
    outcome: dict[str, BaseException | None] = {}

    def join() -> None:  # in a thread: Ray's own connect waits far longer than any deadline
        try:
            ray.init(address=address, **options)
            outcome["error"] = None
        except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
            outcome["error"] = e

    logging.disable(logging.WARNING)  # not "SIGTERM handler is not set…": the command keeps its own handlers
    try:
        thread = threading.Thread(target=join, name="vqclip-ray-connect", daemon=True)
        thread.start()
        thread.join(max(0.1, deadline - time.monotonic()))
    finally:
        logging.disable(logging.NOTSET)
    if thread.is_alive() or "error" not in outcome:
        raise _no_answer(address, timeout)
    error = outcome["error"]
    if error is not None:
        raise VqclipError(f"cannot join the Ray cluster at {address}: {one_line(error, typed=False).rstrip('.')}; "
                          "check the --ray address") from None


def require_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise VqclipError(INSTALL) from None
    return ray


class RunActor:
    """Runs rows on one Ray worker, its models kept (the class is made a Ray actor by `RayBackend`)."""

    def __init__(self, device: str) -> None:
        from vqclip.pipeline.cache import ModelCache

        self.device = device
        self.cache = ModelCache()

    def run(self, task: dict[str, Any]) -> dict[str, Any]:
        from vqclip.batch.runner import run_task

        tmp = Path(tempfile.mkdtemp(prefix="vqclip-ray-"))
        try:
            result = run_task(dict(task, output_dir=str(tmp)), self.cache, self.device)
            if result["status"] == "finished":
                folder = tmp / result["run_id"]
                result["files"] = {str(p.relative_to(folder)): p.read_bytes()
                                   for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}
            return result
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def pid(self) -> int:
        import os

        return os.getpid()


def write_run(output_dir: Path, run_id: str, files: dict[str, bytes]) -> Path:
    """The run folder sent back by an actor, written whole under a temporary name and renamed into place."""
    from vqclip.runs import RunFolder, is_run_id

    if not is_run_id(run_id):
        raise VqclipError(f"a Ray worker sent back a run with an odd id {run_id!r}")
    final = Path(output_dir) / run_id
    if final.exists():  # sent twice (a retried delivery): already written
        return final
    folder = RunFolder(output_dir, run_id).create()
    try:
        for name, data in files.items():
            rel = Path(name)
            if rel.is_absolute() or ".." in rel.parts:
                raise VqclipError(f"a Ray worker sent back a file outside its run folder ({name!r})")
            if len(rel.parts) > 1:
                folder.file(str(rel.parent)).mkdir(parents=True, exist_ok=True)
            folder.write(name, data)
        return folder.commit()
    except BaseException:
        folder.discard()
        raise


def init_keeping_signals(ray: Any, **options: Any) -> None:
    """`ray.init`, leaving this process's Ctrl-C and SIGTERM handlers as they were: Ray's driver installs its own
    (SIGTERM → exit 15), which would take over the command's clean stop (a saved journal, exit 143)."""
    import signal

    kept = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        ray.init(**options)
    finally:
        for sig, handler in kept.items():
            if handler is not None:
                signal.signal(sig, handler)


class RayBackend:
    """Actors on a Ray cluster (joined at `address`: "auto", "ray://host:10001", host:port; "local" starts one
    here). A driver that is already connected (`ray.is_initialized()`) uses that connection."""

    def __init__(self, address: str | None, workers: int | None, output_dir: Path,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        ray = self.ray = require_ray()
        self.owns = not ray.is_initialized()
        if self.owns:
            connect(ray, address, timeout)
        self.output_dir = Path(output_dir)
        gpus = int(ray.cluster_resources().get("GPU", 0))
        cpus = int(ray.cluster_resources().get("CPU", 1))
        if gpus:
            count, self.options, self.device = (workers or gpus), {"num_gpus": 1}, "cuda"
        else:
            count, self.options, self.device = (workers or max(1, cpus)), {"num_cpus": 1}, "cpu"
        self.actor_class = ray.remote(max_restarts=0)(RunActor)
        self.actors: dict[str, Any] = {f"ray-{i}": self._new_actor() for i in range(count)}
        self.refs: dict[str, Any] = {}
        self.replaced = 0

    def _new_actor(self) -> Any:
        return self.actor_class.options(**self.options).remote(self.device)

    def idle(self) -> str | None:
        return next((w for w in self.actors if w not in self.refs), None)

    def submit(self, worker: str, task: dict[str, Any]) -> None:
        self.refs[worker] = self.actors[worker].run.remote(task)

    def poll(self, timeout: float) -> list[tuple[str, str, Any]]:
        if not self.refs:
            return []
        ready, _ = self.ray.wait(list(self.refs.values()), num_returns=1, timeout=timeout)
        events: list[tuple[str, str, Any]] = []
        for ref in ready:
            worker = next(w for w, r in self.refs.items() if r == ref)
            del self.refs[worker]
            try:
                result = self.ray.get(ref)
            except self.ray.exceptions.RayError as e:  # the actor or its node died
                self.actors[worker] = self._new_actor()  # a fresh actor in its place
                self.replaced += 1
                events.append(("lost", worker, type(e).__name__))
                continue
            files = result.pop("files", None)
            if result["status"] == "finished" and files is not None:
                try:
                    result["path"] = str(write_run(self.output_dir, result["run_id"], files))
                except (OSError, VqclipError) as e:
                    message = e.message if isinstance(e, VqclipError) else f"{e.strerror or e}"
                    result = {**result, "status": "failed", "error": f"could not write the run: {message}"}
            events.append(("done", worker, result))
        return events

    def close(self) -> None:
        for actor in self.actors.values():
            try:
                self.ray.kill(actor)
            except Exception:
                pass
        self.actors.clear()
        if self.owns:
            self.ray.shutdown()


__all__ = ["RayBackend", "RunActor", "require_ray", "write_run", "connect", "check_address", "probe", "INSTALL",
           "TIMEOUT_ENV", "DEFAULT_TIMEOUT"]
