"""The batch folder, `output/batch-<ts>-<id>/`: batch.json (written once), the journal, and finding a batch again
(by path, id or prefix, or as the same command line's earlier batch).

Looking for an earlier batch and making a new one happen under a lock on `output/.batch.lock`, so that two
`vqclip batch` commands started together on the same rows make one batch and share its queue.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import string
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

from vqclip import files
from vqclip.batch.journal import BATCH_JSON, Journal, JournalMissing, now
from vqclip.errors import VqclipError

JOURNAL = "journal.sqlite"
PREFIX = "batch-"
LOCK = ".batch.lock"
MAX_BATCH_JSON = 1 << 30  # 100,000 rows of full configs stay far below this
_ALPHABET = string.ascii_lowercase + string.digits


def new_batch_id() -> str:
    return datetime.now().strftime("%Y%m%dT%H%M%S") + "-" + "".join(secrets.choice(_ALPHABET) for _ in range(6))


@contextlib.contextmanager
def creation_lock(output_dir: Path) -> Iterator[None]:
    """Held while the same command line's batch is looked up and, if there is none, made (POSIX flock; where
    there is none, nothing is locked)."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(out / LOCK, flags, 0o644)
    except OSError as e:
        raise VqclipError(f"{out / LOCK} cannot be used as the batch lock ({e.strerror or e}); "
                          "remove it and run the batch again") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


class BatchFolder:
    """`output/batch-<id>/`: batch.json and the journal."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.id = self.path.name.removeprefix(PREFIX)
        self._journal: Journal | None = None
        self._info: dict[str, Any] | None = None
        self.rebuilt = False  # the journal was missing and has been rebuilt from batch.json

    @classmethod
    def create(cls, output_dir: Path, info: dict[str, Any]) -> BatchFolder:
        bid = new_batch_id()
        folder = cls(Path(output_dir) / f"{PREFIX}{bid}")
        folder.path.mkdir(parents=True)
        files.atomic_write_json(folder.path / BATCH_JSON, {"id": bid, "created": now(), **info})
        journal = Journal(folder.path / JOURNAL, create=True)
        journal.add_rows(len(info["rows"]))
        folder._journal = journal
        return folder

    @property
    def journal(self) -> Journal:
        """The journal, checked against batch.json; a missing one is rebuilt (every row pending: `recover`
        then finds the rows whose runs are on disk)."""
        if self._journal is None:
            count = len(self.info()["rows"])
            try:
                journal = Journal(self.path / JOURNAL)
            except JournalMissing:
                journal = Journal(self.path / JOURNAL, create=True)
                journal.add_rows(count)
                self.rebuilt = True
            try:
                journal.check_rows(count)
            except VqclipError:
                journal.close()
                raise
            self._journal = journal
        return self._journal

    def info(self) -> dict[str, Any]:
        if self._info is not None:
            return self._info
        where = self.path / BATCH_JSON
        try:
            data = json.loads(files.read_regular(where, MAX_BATCH_JSON).decode("utf-8"))
        except FileNotFoundError:
            raise VqclipError(f"{where} is missing; that folder is not a batch that can be resumed") from None
        except (OSError, ValueError, RecursionError) as e:
            why = e.strerror if isinstance(e, OSError) and e.strerror else type(e).__name__
            raise VqclipError(f"{where} cannot be read ({why}); that batch cannot be resumed") from None
        if not isinstance(data, dict) or not isinstance(data.get("rows"), list) \
                or not all(isinstance(r, dict) and isinstance(r.get("config"), dict) for r in data["rows"]):
            raise VqclipError(f"{where} is not a batch description; that batch cannot be resumed")
        self._info = data
        return data

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None

    def runs_on_disk(self, output_dir: Path) -> dict[str, tuple[int, str]]:
        """Every run folder in `output_dir` made for this batch: run id → (row, status)."""
        from vqclip.runs import scan_runs

        found: dict[str, tuple[int, str]] = {}
        for run in scan_runs(output_dir)[0]:
            tag = run.details.get("batch")
            if isinstance(tag, dict) and tag.get("id") == self.id and isinstance(tag.get("row"), int) \
                    and not isinstance(tag.get("row"), bool):
                found[run.path.name] = (tag["row"], str(run.details.get("status")))
        return found

    def sync_runs(self, output_dir: Path) -> dict[int, str]:
        """The journal learns every run folder of this batch on disk; returns row → id of the newest finished
        run of each row (for `Journal.recover`)."""
        runs = self.runs_on_disk(output_dir)
        if runs:
            self.journal.record_runs(runs)
        finished: dict[int, str] = {}
        for run_id in sorted(runs):  # oldest first (ids start with the time), so the newest wins
            row, status = runs[run_id]
            if status == "finished":
                finished[row] = run_id
        return finished


def find_batch(ref: str, output_dir: Path) -> BatchFolder:
    """A batch by folder path (or the path of its batch.json or journal), `batch-<id>` name, id or unique id
    prefix."""
    from vqclip.errors import UsageError

    shown = ref if len(ref) <= 80 else ref[:80] + "…"
    if not ref.removeprefix(PREFIX).strip() or len(ref) > 4096 or "\x00" in ref:
        raise UsageError(f"--resume {shown!r}: give a batch folder ({output_dir}/{PREFIX}…) or its id")
    try:
        return _find_batch(ref, Path(ref), output_dir)
    except OSError as e:
        raise VqclipError(f"--resume {shown}: {e.strerror or type(e).__name__}; give a batch folder "
                          f"({output_dir}/{PREFIX}…) or its id") from None


def _find_batch(ref: str, path: Path, output_dir: Path) -> BatchFolder:
    if path.is_file() or (path.exists() and not path.is_dir()):
        if path.name in (BATCH_JSON, JOURNAL) and (path.parent / BATCH_JSON).is_file():
            return BatchFolder(path.parent)
        raise VqclipError(f"--resume {ref}: that is a file, not a batch folder; give the batch folder "
                          f"({output_dir}/{PREFIX}…) or its id")
    if (path / BATCH_JSON).is_file():
        return BatchFolder(path)
    if path.is_dir() and (path / JOURNAL).exists():
        raise VqclipError(f"--resume {ref}: {path / BATCH_JSON} is missing, so that batch cannot be resumed; "
                          "start its rows again with `vqclip batch FILE --new`")
    ref = ref.removeprefix(PREFIX)
    found = [p for p in batch_folders(output_dir) if p.name.removeprefix(PREFIX).startswith(ref)]
    if len(found) == 1:
        return BatchFolder(found[0])
    if not found:
        raise VqclipError(f"no batch {ref!r} in {output_dir}; give the batch folder's path or its id")
    raise VqclipError(f"{ref!r} matches {len(found)} batches in {output_dir}; give more of the id")


def batch_folders(output_dir: Path) -> list[Path]:
    """Batch folders in `output_dir` (real folders, not symlinks), newest first."""
    try:
        with os.scandir(output_dir) as it:
            names = [e.name for e in it if e.name.startswith(PREFIX) and e.is_dir(follow_symlinks=False)]
    except OSError:
        return []
    return sorted((Path(output_dir) / n for n in names if (Path(output_dir) / n / BATCH_JSON).is_file()),
                  reverse=True)


def twin(output_dir: Path, fingerprint: str) -> BatchFolder | None:
    """The newest batch with the same expanded rows (the same command line again), finished or not: running it
    again does only what is left, which for a finished batch is nothing (`--new` starts another). A batch whose
    batch.json cannot be read is not this one; a matching batch whose journal is broken is an error."""
    for path in batch_folders(output_dir):
        folder = BatchFolder(path)
        try:
            if folder.info().get("fingerprint") != fingerprint:
                continue
        except VqclipError:
            continue
        folder.journal  # noqa: B018  opened and checked now: a broken journal is one line naming it
        return folder
    return None


__all__ = ["BatchFolder", "find_batch", "batch_folders", "twin", "creation_lock", "JOURNAL", "PREFIX"]
