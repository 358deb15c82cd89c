"""A batch on disk: `output/batch-<ts>-<id>/` with `batch.json` (the command's settings and the expanded rows,
written once) and `journal.sqlite` (one entry per row: pending/running/done/failed, attempts, run id, error,
times, the process holding it; and every run folder the batch made), in WAL mode with synchronous=FULL, so
that a crash, `kill -9` or power cut loses no committed change.

The journal is a real queue: a process takes a row by claiming it in one transaction (`claim_next`), so two
`vqclip batch` processes on the same batch (or `--resume` twice) never run a row twice; a row claimed by a
process that died (`owner.Owner.alive`) is reclaimed. Only the process that claimed a row writes its outcome;
workers report to it. A row is marked done only after its run folder is committed (renamed into place). On
resume (`recover`), a row left `running` by a dead process whose run folder exists (found by scanning run
folders for the batch id and row in their details.json) is marked done, else it goes back to pending: nothing
finished is lost, nothing finished is repeated.

A file that is not a journal of this version (garbage, truncated, another SQLite database, a newer schema) is
an error naming the file and the fix: a journal moved away is rebuilt from batch.json and the run folders.
"""

from __future__ import annotations

import contextlib
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

from vqclip import files
from vqclip.batch.owner import Owner
from vqclip.errors import VqclipError

BATCH_JSON = "batch.json"  # beside the journal (named in messages)
MAX_ATTEMPTS = 2  # a failed run is retried once
SCHEMA = 2  # 1: entries only (no owner, no runs, no meta); 2: claims, the runs table, meta
APP = "vqclip-batch"
STATUSES = ("pending", "running", "done", "failed")
_SQLITE_MAGIC = b"SQLite format 3\x00"
_ENTRY_COLUMNS = ("row", "status", "attempts", "run_id", "error", "worker", "started", "finished", "seconds")


def now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


class JournalMissing(VqclipError):
    """The batch folder has no journal (deleted, moved away, or a crash right after batch.json was written)."""


def _fix(path: Path) -> str:
    return (f"move it away (e.g. `mv {path} {path}.bad`) and resume the batch with `vqclip batch --resume "
            f"{path.parent}`: the journal is rebuilt from batch.json and the run folders on disk")


class Journal:
    """The queue's state in SQLite: each change is one committed transaction."""

    def __init__(self, path: Path, create: bool = False) -> None:
        self.path = Path(path)
        self.owner = Owner.me()
        if not create:
            self._check_file()
        try:
            self.db = sqlite3.connect(str(self.path), isolation_level=None, timeout=30)
        except sqlite3.Error as e:
            raise self._bad(f"cannot be opened ({e})") from None
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            if create:
                self._create()
            else:
                self._check_schema()
        except sqlite3.Error as e:
            self.db.close()
            raise self._bad(f"is damaged (SQLite: {e})") from None
        except BaseException:
            self.db.close()
            raise

    # ------------------------------------------------------------------------------------- opening, checks
    def _bad(self, what: str) -> VqclipError:
        return VqclipError(f"batch journal {self.path} {what}; {_fix(self.path)}")

    def _check_file(self) -> None:
        problem = files.path_problem(self.path)
        if problem == "does not exist":
            raise JournalMissing(f"batch journal {self.path} is missing")
        if problem is not None:
            raise self._bad(problem)
        try:
            with open(self.path, "rb") as fh:
                head = fh.read(len(_SQLITE_MAGIC))
        except OSError as e:
            raise self._bad(f"cannot be read ({e.strerror or type(e).__name__})") from None
        if not head:
            raise self._bad("is empty (truncated)")
        if head != _SQLITE_MAGIC:
            raise self._bad("is not an SQLite database (not a vqclip batch journal)")

    def _create(self) -> None:
        with self._tx():
            self.db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            self.db.executemany("INSERT INTO meta VALUES (?, ?)", [("app", APP), ("schema", str(SCHEMA))])
            self.db.execute("CREATE TABLE entries (row INTEGER PRIMARY KEY, status TEXT NOT NULL, "
                            "attempts INTEGER NOT NULL DEFAULT 0, run_id TEXT, error TEXT, worker TEXT, "
                            "started TEXT, finished TEXT, seconds REAL, owner TEXT)")
            self.db.execute("CREATE TABLE runs (run_id TEXT PRIMARY KEY, row INTEGER NOT NULL, status TEXT)")

    def _check_schema(self) -> None:
        check = [r[0] for r in self.db.execute("PRAGMA quick_check").fetchall()]
        if check != ["ok"]:
            raise self._bad(f"is damaged (SQLite's check: {'; '.join(map(str, check[:2]))})")
        tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "meta" in tables:
            meta = dict(self.db.execute("SELECT key, value FROM meta").fetchall())
            if meta.get("app") != APP:
                raise self._bad("is an SQLite database but not a vqclip batch journal")
            try:
                version = int(meta.get("schema", ""))
            except ValueError:
                raise self._bad(f"has an unreadable schema version {meta.get('schema')!r}") from None
            if version > SCHEMA:
                raise VqclipError(f"batch journal {self.path} was written by a newer vqclip (journal version "
                                  f"{version}; this vqclip reads up to {SCHEMA}); upgrade vqclip "
                                  "(pip install -U vqclip) to resume that batch")
        elif "entries" in tables and set(_ENTRY_COLUMNS) <= self._columns("entries"):
            version = 1
        else:
            raise self._bad("is an SQLite database but not a vqclip batch journal (no batch entries)")
        if not {"entries", "runs"} <= tables and version == SCHEMA:
            raise self._bad("is a vqclip batch journal with tables missing")
        if version < SCHEMA:
            self._migrate(version)
        (odd,) = self.db.execute(f"SELECT COUNT(*) FROM entries WHERE status NOT IN {STATUSES}").fetchone()
        if odd:
            raise self._bad(f"has {odd} entr{'y' if odd == 1 else 'ies'} with an unknown status")

    def _columns(self, table: str) -> set[str]:
        return {r[1] for r in self.db.execute(f"PRAGMA table_info({table})")}

    def _migrate(self, version: int) -> None:
        """A journal of an earlier vqclip, brought up to this schema in one transaction."""
        with self._tx():
            if "owner" not in self._columns("entries"):
                self.db.execute("ALTER TABLE entries ADD COLUMN owner TEXT")
            self.db.execute("CREATE TABLE IF NOT EXISTS runs (run_id TEXT PRIMARY KEY, row INTEGER NOT NULL, "
                            "status TEXT)")
            self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            self.db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [("app", APP), ("schema", str(SCHEMA))])

    def check_rows(self, count: int) -> None:
        """The journal has exactly the rows 0…count-1 of batch.json."""
        n, lo, hi = self._one("SELECT COUNT(*), MIN(row), MAX(row) FROM entries")
        if n != count or (count and (lo, hi) != (0, count - 1)):
            raise self._bad(f"has {n} rows but {self.path.parent / BATCH_JSON} has {count}")

    # ------------------------------------------------------------------------------------------ plumbing
    @contextlib.contextmanager
    def _tx(self) -> Iterator[None]:
        """One write transaction (BEGIN IMMEDIATE: the write lock is taken first, so a read-then-write cannot
        interleave with another process's)."""
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise self._failed(e) from None
        try:
            yield
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise self._failed(exc) from None
            raise
        try:
            self.db.execute("COMMIT")
        except sqlite3.Error as e:
            raise self._failed(e) from None

    def _failed(self, exc: sqlite3.Error) -> VqclipError:
        if "locked" in str(exc) or "busy" in str(exc):
            return VqclipError(f"batch journal {self.path} stayed locked by another process for 30 s; "
                               "run the batch again when it is free")
        if "full" in str(exc):
            return VqclipError(f"batch journal {self.path}: the disk is full; free some disk space and run "
                               "the batch again (finished runs are kept)")
        return self._bad(f"cannot be written or read (SQLite: {exc})")

    def _all(self, sql: str, *args: Any) -> list[Any]:
        try:
            return self.db.execute(sql, args).fetchall()
        except sqlite3.Error as e:
            raise self._failed(e) from None

    def _one(self, sql: str, *args: Any) -> Any:
        rows = self._all(sql, *args)
        return rows[0] if rows else None

    def _set(self, sql: str, *args: Any) -> int:
        with self._tx():
            return self.db.execute(sql, args).rowcount

    def close(self) -> None:
        self.db.close()

    # ---------------------------------------------------------------------------------------------- queue
    def add_rows(self, count: int) -> None:
        with self._tx():
            self.db.executemany("INSERT OR IGNORE INTO entries (row, status) VALUES (?, 'pending')",
                                ((i,) for i in range(count)))

    def claim_next(self, worker: str) -> int | None:
        """The lowest pending row, now held by this process for `worker`; None when no row is pending."""
        with self._tx():
            found = self.db.execute("SELECT row FROM entries WHERE status='pending' ORDER BY row LIMIT 1").fetchone()
            if found is None:
                return None
            self.db.execute("UPDATE entries SET status='running', attempts=attempts+1, worker=?, owner=?, "
                            "started=?, error=NULL WHERE row=?", (worker, self.owner.to_text(), now(), found[0]))
            return int(found[0])

    def done(self, row: int, run_id: str, seconds: float | None = None) -> None:
        with self._tx():
            self.db.execute("UPDATE entries SET status='done', run_id=?, finished=?, seconds=?, error=NULL, "
                            "owner=NULL WHERE row=?", (run_id, now(), seconds, row))
            self.db.execute("INSERT OR REPLACE INTO runs VALUES (?, ?, 'finished')", (run_id, row))

    def failed(self, row: int, error: str) -> bool:
        """A failed attempt: back to pending while attempts are left (True), else failed for good (False)."""
        with self._tx():
            (attempts,) = self.db.execute("SELECT attempts FROM entries WHERE row=?", (row,)).fetchone()
            final = attempts >= MAX_ATTEMPTS
            self.db.execute("UPDATE entries SET status=?, error=?, finished=?, owner=NULL WHERE row=?",
                            ("failed" if final else "pending", error, now(), row))
        return not final

    def requeue(self, row: int, note: str | None = None) -> None:
        """Not the row's fault (a worker lost, the batch stopped): pending again, the attempt not counted."""
        self._set("UPDATE entries SET status='pending', attempts=MAX(attempts-1, 0), error=?, owner=NULL "
                  "WHERE row=?", note, row)

    def entries(self) -> list[dict[str, Any]]:
        rows = self._all("SELECT row, status, attempts, run_id, error, worker, started, finished, seconds, owner "
                         "FROM entries ORDER BY row")
        names = [*_ENTRY_COLUMNS, "owner"]
        return [dict(zip(names, r)) for r in rows]

    def rows(self, status: str) -> list[int]:
        return [r for (r,) in self._all("SELECT row FROM entries WHERE status=? ORDER BY row", status)]

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in STATUSES}
        for status, n in self._all("SELECT status, COUNT(*) FROM entries GROUP BY status"):
            out[status] = n
        return out

    def held_elsewhere(self) -> dict[int, Owner]:
        """Rows running in another live process (this one's own claims are not listed)."""
        out = {}
        for row, text in self._all("SELECT row, owner FROM entries WHERE status='running'"):
            owner = Owner.from_text(text)
            if owner is not None and owner != self.owner and owner.alive():
                out[row] = owner
        return out

    def recover(self, found: dict[int, str]) -> int:
        """Claims of dead processes given up: a `running` row whose run folder exists (`found`: row → run id)
        is done, the others pending again (attempt not counted); a pending row whose folder exists is done too.
        Rows another live process runs are left to it; this process's own claims are stale here (called before
        it drives, e.g. after an exception in a process that runs batches one after another). Returns the count
        of rows found done."""
        recovered = 0
        with self._tx():
            for row, status, text in self.db.execute("SELECT row, status, owner FROM entries "
                                                     "WHERE status IN ('pending', 'running')").fetchall():
                owner = Owner.from_text(text) if status == "running" else None
                if owner is not None and owner != self.owner and owner.alive():
                    continue  # another live process runs it (this one has nothing in flight before it drives)
                if row in found:
                    self.db.execute("UPDATE entries SET status='done', run_id=?, finished=?, error=NULL, owner=NULL "
                                    "WHERE row=?", (found[row], now(), row))
                    recovered += 1
                elif status == "running":
                    self.db.execute("UPDATE entries SET status='pending', attempts=MAX(attempts-1, 0), owner=NULL "
                                    "WHERE row=?", (row,))
        return recovered

    def retry_failed(self) -> None:
        """`--resume` of a batch whose rows failed for good: they get their attempts again."""
        self._set("UPDATE entries SET status='pending', attempts=0 WHERE status='failed'")

    def record_runs(self, runs: dict[str, tuple[int, str]]) -> None:
        """Every run folder made for this batch (run id → (row, status)), whatever became of it."""
        with self._tx():
            self.db.executemany("INSERT OR REPLACE INTO runs VALUES (?, ?, ?)",
                                [(rid, row, status) for rid, (row, status) in runs.items()])

    def runs(self) -> dict[str, tuple[int, str]]:
        return {rid: (row, status) for rid, row, status in self._all("SELECT run_id, row, status FROM runs")}


__all__ = ["Journal", "JournalMissing", "MAX_ATTEMPTS", "SCHEMA", "STATUSES", "now"]
