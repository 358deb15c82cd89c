"""Run folders, the unit of record (DESIGN "Run folder"; nanoGPT keeps the config beside every checkpoint).

`output/<YYYYmmddTHHMMSS>-<8 url-safe chars>/` holds output.png, anim.mp4, details.json, state.pt and copies of
input images. A run is assembled in a hidden `.tmp-<id>` folder and renamed into place at the end, so a crash
never leaves a half-written run folder; every file inside is itself written to a temporary name and renamed.
Imports nothing heavy (the gallery and `runs list` must not import torch).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import string
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

from vqclip.errors import VqclipError

DETAILS = "details.json"
IMAGE = "output.png"
VIDEO = "anim.mp4"
STATE = "state.pt"
SCHEMA = 1

_ALPHABET = string.ascii_letters + string.digits + "-_"
RUN_ID_RE = re.compile(r"^\d{8}T\d{6}-[A-Za-z0-9_-]{8}$")


_last_id_time: datetime | None = None  # the newest id this process made


def new_run_id(now: datetime | None = None) -> str:
    """`20261125T101500-042k3J9a`: the time to the millisecond (the suffix's three digits), then 30 random bits.
    Names sort in creation order, also for the stages of a chain made within one second: a process never hands
    out the same or an earlier millisecond twice."""
    global _last_id_time
    if now is None:
        now = datetime.now()
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)
        if _last_id_time is not None and now <= _last_id_time:
            now = _last_id_time + timedelta(milliseconds=1)
        _last_id_time = now
    ms = f"{now.microsecond // 1000:03d}"
    return now.strftime("%Y%m%dT%H%M%S") + "-" + ms + "".join(secrets.choice(_ALPHABET) for _ in range(5))


def is_run_id(text: str) -> bool:
    return bool(RUN_ID_RE.match(text))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode())


def temp_path(path: Path) -> Path:
    """A sibling name to write to before `os.replace(tmp, path)` (for writers that need a filename)."""
    return path.with_name(f".{path.stem}.tmp-{secrets.token_hex(4)}{path.suffix}")


class RunFolder:
    """A run being written: files go to `<output>/.tmp-<id>/`; `commit()` renames it to `<output>/<id>/`."""

    def __init__(self, output_dir: str | Path, run_id: str | None = None) -> None:
        self.output_dir = Path(output_dir)
        self.id = run_id or new_run_id()
        self.final = self.output_dir / self.id
        self.path = self.output_dir / f".tmp-{self.id}"
        self.committed = False

    def create(self) -> RunFolder:
        try:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self.path.mkdir()
        except OSError as e:
            raise VqclipError(f"cannot create a run folder in {self.output_dir} ({e.strerror}); "
                              "pass --output-dir to a writable folder") from None
        return self

    def file(self, name: str) -> Path:
        return self.path / name

    def write_details(self, details: dict[str, Any]) -> None:
        atomic_write_json(self.file(DETAILS), details)

    def commit(self) -> Path:
        """Move the finished folder into place; the id is unique so nothing is ever overwritten."""
        if self.final.exists():
            raise VqclipError(f"{self.final} already exists; refusing to overwrite it")
        os.replace(self.path, self.final)
        self.committed = True
        self.path = self.final
        return self.final

    def discard(self) -> None:
        if not self.committed:
            shutil.rmtree(self.path, ignore_errors=True)


def now_iso() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------------------
# Reading runs back


@dataclass
class RunInfo:
    """A run folder read back from disk; `details` is the parsed details.json."""

    path: Path
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def status(self) -> str:
        return str(self.details.get("status", "unknown"))

    @property
    def prompt(self) -> str:
        prompt = self.details.get("prompt")
        if not isinstance(prompt, str):
            config = self.details.get("config")
            prompt = config.get("prompt") if isinstance(config, dict) else None
        return prompt if isinstance(prompt, str) else ""

    @property
    def parent(self) -> str | None:
        parent = self.details.get("parent")
        return parent if isinstance(parent, str) and is_run_id(parent) else None

    @property
    def root(self) -> str:
        root = self.details.get("root")
        return root if isinstance(root, str) and is_run_id(root) else self.id

    @property
    def stage(self) -> int:
        stage = self.details.get("stage")
        return stage if isinstance(stage, int) and not isinstance(stage, bool) and stage >= 1 else 1

    @property
    def image(self) -> Path:
        return self.path / IMAGE

    @property
    def has_state(self) -> bool:
        return (self.path / STATE).is_file()


class BadRun(VqclipError):
    """A folder that looks like a run but whose details.json is missing or corrupt."""

    def __init__(self, message: str, path: Path | None = None, reason: str = "corrupt") -> None:
        super().__init__(message)
        self.path = path
        self.reason = reason


def read_details(folder: Path) -> dict[str, Any]:
    path = folder / DETAILS
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadRun(f"{path} is missing; {folder} is not a vqclip run folder", folder, "missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadRun(f"{path} is corrupt ({type(e).__name__}: {e}); fix or remove that run folder", folder) from None
    if not isinstance(data, dict):
        raise BadRun(f"{path} is corrupt (not a JSON object); fix or remove that run folder", folder)
    return data


def run_folders(output_dir: str | Path) -> list[Path]:
    """Candidate run folders (named like run ids), newest first; hidden/temporary folders are skipped."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    return sorted((p for p in out.iterdir() if p.is_dir() and is_run_id(p.name)), key=lambda p: p.name,
                  reverse=True)


def scan_runs(output_dir: str | Path) -> tuple[list[RunInfo], list[BadRun]]:
    """All readable runs (newest first) and the problems met on the way (for counted warnings)."""
    good: list[RunInfo] = []
    bad: list[BadRun] = []
    for folder in run_folders(output_dir):
        try:
            good.append(RunInfo(folder, read_details(folder)))
        except BadRun as e:
            bad.append(e)
    return good, bad


def find_run(ref: str, output_dir: str | Path) -> RunInfo:
    """A run by id, unique id prefix, or run-folder path. Errors list what would have helped."""
    ref = ref.strip()
    if not ref:
        raise VqclipError("empty run reference; give a run id (see `vqclip runs list`)")
    as_path = Path(ref)
    if os.sep in ref or "/" in ref or ref.startswith(".") or as_path.is_absolute():
        if ".." in as_path.parts and not as_path.exists():
            raise VqclipError(f"{ref!r} is not a run id or a run folder; see `vqclip runs list`")
        if as_path.is_dir():
            if not (as_path / DETAILS).exists():
                raise VqclipError(f"{as_path} is not a run folder (no {DETAILS}); see `vqclip runs list`")
            return RunInfo(as_path, read_details(as_path))
        raise VqclipError(f"{ref!r} is not a run id or an existing run folder; see `vqclip runs list`")
    if not re.fullmatch(r"[A-Za-z0-9_-]+", ref) and not re.fullmatch(r"[0-9T-]+", ref):
        raise VqclipError(f"{ref!r} is not a run id; see `vqclip runs list`")
    folders = run_folders(output_dir)
    exact = [p for p in folders if p.name == ref]
    matches = exact or [p for p in folders if p.name.startswith(ref)]
    if not matches:
        newest = ", ".join(p.name for p in folders[:5]) or "none yet"
        raise VqclipError(f"no run {ref!r} in {output_dir}; newest runs: {newest}")
    if len(matches) > 1:
        shown = ", ".join(p.name for p in matches[:10])
        more = f" (+{len(matches) - 10} more)" if len(matches) > 10 else ""
        raise VqclipError(f"run prefix {ref!r} is ambiguous: {shown}{more}; give more characters")
    return RunInfo(matches[0], read_details(matches[0]))


def lineage(run: RunInfo, output_dir: str | Path) -> list[RunInfo]:
    """The chain root → … → run, following `parent` links (stops at a missing or looping parent)."""
    chain = [run]
    seen = {run.id}
    while chain[0].parent and chain[0].parent not in seen:
        folder = Path(output_dir) / chain[0].parent
        try:
            chain.insert(0, RunInfo(folder, read_details(folder)))
        except BadRun:
            break
        seen.add(chain[0].id)
    return chain
