"""A batch from start to end, without printing: make (or find again) its folder, recover the journal after a
crash, pick the workers (this process, one process per device, or Ray), drive the queue, and rank the runs.

The same command line again finds the batch it made: batch.json keeps a fingerprint of the expanded rows (their
validated configs, in order; `rows.fingerprint`), and the newest batch folder in the output folder with the
same fingerprint and rows still to do is resumed instead of starting a new one (`--new` starts a new one).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from vqclip.batch.folder import BatchFolder, creation_lock, find_batch, twin
from vqclip.batch.rows import Row, fingerprint
from vqclip.batch.runner import Events, drive, make_task


@dataclass
class Settings:
    output_dir: str = "output"
    weights_dir: str | None = None
    download: bool = True
    trusted: list[str] = field(default_factory=list)
    devices: list[str] | None = None  # None: every visible CUDA GPU, else the CPU
    ray: str | None = None  # a Ray address, or "auto"
    ray_workers: int | None = None
    ray_timeout: float = 30.0  # seconds to join the Ray cluster


def open_batch(rows: list[Row], source: str, settings: Settings, new: bool = False) -> tuple[BatchFolder, bool]:
    """(the batch folder, whether it is an earlier unfinished batch of the same rows)."""
    out = Path(settings.output_dir)
    print_ = fingerprint(rows)
    with creation_lock(out):  # two commands started together on the same rows make one batch
        if not new:
            earlier = twin(out, print_)
            if earlier is not None:
                return earlier, True
        return _create(out, rows, source, settings, print_), False


def _create(out: Path, rows: list[Row], source: str, settings: Settings, print_: str) -> BatchFolder:
    import secrets

    for row in rows:  # a seed chosen now and kept in batch.json: a row redone after a crash makes the same image
        if row.config.seed is None:
            row.config = row.config.model_copy(update={"seed": secrets.randbelow(2**31)})
    info = {"source": source, "fingerprint": print_, "settings": asdict(settings),
            "rows": [r.to_json() for r in rows]}
    return BatchFolder.create(out, info)


def resume(ref: str, output_dir: Path) -> BatchFolder:
    folder = find_batch(ref, output_dir)
    folder.journal  # noqa: B018  batch.json and the journal readable and in step, or one line naming the file
    return folder


def settings_of(folder: BatchFolder) -> Settings:
    data = folder.info().get("settings") or {}
    known = {k: v for k, v in data.items() if k in Settings.__dataclass_fields__}
    return Settings(**known)


def recover(folder: BatchFolder, output_dir: Path, retry_failed: bool = False) -> int:
    """The journal made consistent with the run folders on disk (after a crash): every run folder of the batch
    recorded, the claims of dead processes given up; returns rows found done."""
    if retry_failed:
        folder.journal.retry_failed()
    return folder.journal.recover(folder.sync_runs(output_dir))


def tasks_of(folder: BatchFolder, settings: Settings) -> dict[int, dict[str, Any]]:
    info = folder.info()
    task_settings = {"output_dir": str(settings.output_dir), "weights_dir": settings.weights_dir,
                     "download": settings.download, "trusted": settings.trusted}
    return {r["row"]: make_task(folder.id, r, task_settings) for r in info["rows"]}


def make_backend(settings: Settings, should_stop: Any = None, on_step: Any = None) -> Any:
    if settings.ray is not None:
        from vqclip.batch.ray_backend import RayBackend

        return RayBackend(settings.ray, settings.ray_workers, Path(settings.output_dir), settings.ray_timeout)
    from vqclip.batch.workers import LocalBackend, ProcessBackend, default_devices

    devices = settings.devices or default_devices()
    if len(devices) == 1:
        return LocalBackend(devices[0], should_stop, on_step)
    return ProcessBackend(devices)


def run(folder: BatchFolder, settings: Settings, events: Events | None = None,
        should_stop: Callable[[], bool] | None = None, backend: Any = None) -> dict[str, int]:
    """Every pending row run (a failed one retried once); the journal's counts at the end."""
    ev = events or Events()
    tasks = tasks_of(folder, settings)
    if not folder.journal.rows("pending"):
        return folder.journal.counts()
    own = backend is None
    if own:
        backend = make_backend(settings, should_stop,
                               lambda worker, step, total: ev.step(worker, -1, step, total))
    try:
        counts = drive(folder.journal, tasks, backend, ev, should_stop)
    finally:
        if own:
            backend.close()
    folder.sync_runs(Path(settings.output_dir))  # an interrupted row's run folder is known to the journal too
    return counts


def ranked(folder: BatchFolder, output_dir: Path) -> list[dict[str, Any]]:
    """The batch's finished runs, best first by CLIP score (`score.summary` in details.json) when the runs have
    one, else in row order: row, run id, path, prompt, seed, score."""
    from vqclip.runfolder.record import BadRun
    from vqclip.runs import read_run

    rows = {r["row"]: r for r in folder.info()["rows"]}
    out = []
    for entry in folder.journal.entries():
        if entry["status"] != "done" or not entry["run_id"]:
            continue
        path = Path(output_dir) / entry["run_id"]
        cfg = rows.get(entry["row"], {}).get("config", {})
        try:  # the typed record, tolerant of odd fields (a run edited by hand still lists)
            record = read_run(path).record
        except BadRun:
            record = None
        summary = record.score.summary if record is not None and record.score is not None else None
        out.append({"row": entry["row"], "run_id": entry["run_id"], "path": str(path),
                    "prompt": record.prompt if record is not None and record.prompt is not None
                    else cfg.get("prompt", ""), "seed": record.seed if record is not None else None,
                    "score": summary, "seconds": entry["seconds"]})
    if any(r["score"] is not None for r in out):
        out.sort(key=lambda r: (r["score"] is None, -(r["score"] or 0.0), r["row"]))
    return out


__all__ = ["Settings", "open_batch", "resume", "settings_of", "recover", "run", "ranked", "make_backend"]
