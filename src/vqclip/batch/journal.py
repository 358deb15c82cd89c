"""A batch on disk: `output/batch-<ts>-<id>/` with `batch.json` (the command's settings and the expanded rows,
written once) and `journal.sqlite` (one entry per row: pending/running/done/failed, attempts, run id, error,
times), in WAL mode with synchronous=FULL, so that a crash, `kill -9` or power cut loses no committed change.

Only the process driving the batch writes the journal; workers report outcomes to it. A row is marked done only
after its run folder is committed (renamed into place). On resume (`recover`), a row left `running` whose run
folder exists (found by scanning run folders for the batch id and row in their details.json) is marked done,
else it goes back to pending: nothing finished is lost, nothing finished is repeated.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import string
from datetime import datetime
from pathlib import Path
from typing import Any

from vqclip import files
from vqclip.errors import VqclipError

BATCH_JSON = "batch.json"
JOURNAL = "journal.sqlite"
PREFIX = "batch-"
MAX_ATTEMPTS = 2  # a failed run is retried once
_ALPHABET = string.ascii_lowercase + string.digits


def new_batch_id() -> str:
    return datetime.now().strftime("%Y%m%dT%H%M%S") + "-" + "".join(secrets.choice(_ALPHABET) for _ in range(6))


def now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


class Journal:
    """The queue's state in SQLite: each change is one committed transaction."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.db = sqlite3.connect(str(self.path), isolation_level=None, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("CREATE TABLE IF NOT EXISTS entries (row INTEGER PRIMARY KEY, status TEXT NOT NULL, "
                        "attempts INTEGER NOT NULL DEFAULT 0, run_id TEXT, error TEXT, worker TEXT, "
                        "started TEXT, finished TEXT, seconds REAL)")

    def close(self) -> None:
        self.db.close()

    def _set(self, sql: str, *args: Any) -> None:
        with self.db:  # BEGIN … COMMIT
            self.db.execute(sql, args)

    def add_rows(self, count: int) -> None:
        with self.db:
            self.db.executemany("INSERT OR IGNORE INTO entries (row, status) VALUES (?, 'pending')",
                                [(i,) for i in range(count)])

    def running(self, row: int, worker: str) -> None:
        self._set("UPDATE entries SET status='running', attempts=attempts+1, worker=?, started=?, error=NULL "
                  "WHERE row=?", worker, now(), row)

    def done(self, row: int, run_id: str, seconds: float | None = None) -> None:
        self._set("UPDATE entries SET status='done', run_id=?, finished=?, seconds=?, error=NULL WHERE row=?",
                  run_id, now(), seconds, row)

    def failed(self, row: int, error: str) -> bool:
        """A failed attempt: back to pending while attempts are left (True), else failed for good (False)."""
        (attempts,) = self.db.execute("SELECT attempts FROM entries WHERE row=?", (row,)).fetchone()
        final = attempts >= MAX_ATTEMPTS
        self._set("UPDATE entries SET status=?, error=?, finished=? WHERE row=?",
                  "failed" if final else "pending", error, now(), row)
        return not final

    def requeue(self, row: int, note: str | None = None) -> None:
        """Not the row's fault (a worker lost, the batch stopped): pending again, the attempt not counted."""
        self._set("UPDATE entries SET status='pending', attempts=MAX(attempts-1, 0), error=? WHERE row=?",
                  note, row)

    def entries(self) -> list[dict[str, Any]]:
        cur = self.db.execute("SELECT row, status, attempts, run_id, error, worker, started, finished, seconds "
                              "FROM entries ORDER BY row")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]

    def rows(self, status: str) -> list[int]:
        return [r for (r,) in self.db.execute("SELECT row FROM entries WHERE status=? ORDER BY row", (status,))]

    def counts(self) -> dict[str, int]:
        out = {"pending": 0, "running": 0, "done": 0, "failed": 0}
        for status, n in self.db.execute("SELECT status, COUNT(*) FROM entries GROUP BY status"):
            out[status] = n
        return out

    def recover(self, found: dict[int, str]) -> int:
        """After a crash: `running` rows whose run folder exists (`found`: row → run id) are done, the others
        pending again (attempt not counted); a pending row whose folder exists is done too. Returns the count
        of rows found done."""
        recovered = 0
        for entry in self.entries():
            row, status = entry["row"], entry["status"]
            if status in ("running", "pending") and row in found:
                self.done(row, found[row])
                recovered += 1
            elif status == "running":
                self.requeue(row)
        return recovered

    def retry_failed(self) -> None:
        """`--resume` of a batch whose rows failed for good: they get their attempts again."""
        self._set("UPDATE entries SET status='pending', attempts=0 WHERE status='failed'")


class BatchFolder:
    """`output/batch-<id>/`: batch.json and the journal."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.id = self.path.name.removeprefix(PREFIX)
        self._journal: Journal | None = None

    @classmethod
    def create(cls, output_dir: Path, info: dict[str, Any]) -> BatchFolder:
        bid = new_batch_id()
        folder = cls(Path(output_dir) / f"{PREFIX}{bid}")
        folder.path.mkdir(parents=True)
        files.atomic_write_json(folder.path / BATCH_JSON, {"id": bid, "created": now(), **info})
        folder.journal.add_rows(len(info["rows"]))
        return folder

    @property
    def journal(self) -> Journal:
        if self._journal is None:
            self._journal = Journal(self.path / JOURNAL)
        return self._journal

    def info(self) -> dict[str, Any]:
        try:
            data = json.loads((self.path / BATCH_JSON).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise VqclipError(f"{self.path / BATCH_JSON} cannot be read ({type(e).__name__}); "
                              "that batch cannot be resumed") from None
        if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
            raise VqclipError(f"{self.path / BATCH_JSON} is not a batch description; that batch cannot be resumed")
        return data

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None

    def runs_found(self, output_dir: Path) -> dict[int, str]:
        """row → id of a finished run folder in `output_dir` made for this batch (the newest if several)."""
        from vqclip.runs import scan_runs

        found: dict[int, str] = {}
        runs, _ = scan_runs(output_dir)
        for run in reversed(runs):  # oldest first, so the newest wins
            tag = run.details.get("batch")
            if isinstance(tag, dict) and tag.get("id") == self.id and isinstance(tag.get("row"), int) \
                    and run.details.get("status") == "finished":
                found[tag["row"]] = run.path.name
        return found


def find_batch(ref: str, output_dir: Path) -> BatchFolder:
    """A batch by folder path, `batch-<id>` name, id or unique id prefix."""
    path = Path(ref)
    if (path / BATCH_JSON).is_file():
        return BatchFolder(path)
    ref = ref.removeprefix(PREFIX)
    found = [p for p in batch_folders(output_dir) if p.name.removeprefix(PREFIX).startswith(ref)]
    if len(found) == 1:
        return BatchFolder(found[0])
    if not found:
        raise VqclipError(f"no batch {ref!r} in {output_dir}; give the batch folder's path or its id")
    raise VqclipError(f"{ref!r} matches {len(found)} batches in {output_dir}; give more of the id")


def batch_folders(output_dir: Path) -> list[Path]:
    """Batch folders in `output_dir`, newest first."""
    try:
        return sorted((p for p in Path(output_dir).iterdir()
                       if p.name.startswith(PREFIX) and (p / BATCH_JSON).is_file()), reverse=True)
    except OSError:
        return []


def unfinished_twin(output_dir: Path, fingerprint: str) -> BatchFolder | None:
    """The newest batch with the same expanded rows (the same command line again), finished or not: running it
    again does only what is left, which for a finished batch is nothing (`--new` starts another)."""
    for path in batch_folders(output_dir):
        folder = BatchFolder(path)
        try:
            if folder.info().get("fingerprint") != fingerprint:
                continue
            counts = folder.journal.counts()
        except (VqclipError, sqlite3.Error):
            continue
        finally:
            folder.close()
        if sum(counts.values()):
            return folder
    return None


__all__ = ["BatchFolder", "Journal", "find_batch", "batch_folders", "unfinished_twin", "MAX_ATTEMPTS"]
