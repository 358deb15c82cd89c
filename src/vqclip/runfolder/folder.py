"""A run being written: files go to `<output>/.tmp-<id>/` and `commit()` renames the folder to `<output>/<id>/`,
so a crash or a full disk never leaves a half-written run folder (each file is itself written whole or not at
all). Also the one reader of a run's files: never through a symlink, never a FIFO or a folder where a file
belongs, never outside the run folder."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any

from vqclip import files
from vqclip.errors import VqclipError
from vqclip.files import path_problem
from vqclip.runfolder.names import DETAILS, OWNER, TMP_PREFIX, new_run_id
from vqclip.runfolder.record import BadRun, RunRecord, write_record
from vqclip.runfolder.temp import claim


class RunFolder:
    """A run being written: files go to `<output>/.tmp-<id>/`; `commit()` renames it to `<output>/<id>/`."""

    def __init__(self, output_dir: str | Path, run_id: str | None = None) -> None:
        self.output_dir = Path(output_dir)
        self.id = run_id or new_run_id()
        self.final = self.output_dir / self.id
        self.path = self.output_dir / f"{TMP_PREFIX}{self.id}"
        self.committed = False
        self._lock: int | None = None

    def create(self) -> RunFolder:
        problem = path_problem(self.output_dir, "folder")
        if problem:
            raise VqclipError(f"output folder {self.output_dir} {problem}; pass --output-dir a folder")
        try:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self.path.mkdir()
        except OSError as e:
            raise VqclipError(f"cannot create a run folder in {self.output_dir} ({e.strerror}); "
                              "pass --output-dir to a writable folder") from None
        self._lock = claim(self.path)
        return self

    def file(self, name: str) -> Path:
        return self.path / name

    def write(self, name: str, data: bytes) -> None:
        """A file of the run, written whole or not at all."""
        files.atomic_write_bytes(self.file(name), data)

    def write_record(self, record: RunRecord) -> None:
        write_record(self.file(DETAILS), record)

    def commit(self) -> Path:
        """Move the finished folder into place; the id is unique so nothing is ever overwritten."""
        if self.final.exists():
            raise VqclipError(f"{self.final} already exists; refusing to overwrite it")
        (self.path / OWNER).unlink(missing_ok=True)  # the lock stays held (open) until the rename is done
        os.replace(self.path, self.final)
        self._release()
        self.committed = True
        self.path = self.final
        return self.final

    def discard(self) -> None:
        if not self.committed:
            shutil.rmtree(self.path, ignore_errors=True)
        self._release()

    def write_failed(self, exc: OSError) -> VqclipError:
        """The one line for a write that failed (a full disk, a folder made read-only mid-run); the caller has
        discarded the temporary folder, so nothing half-written is left."""
        reason = exc.strerror or str(exc) or type(exc).__name__
        fix = {errno.ENOSPC: "free some disk space and run it again",
               errno.EDQUOT: "free some disk space (or raise the quota) and run it again",
               errno.EACCES: f"check the permissions of {self.output_dir}",
               errno.EPERM: f"check the permissions of {self.output_dir}",
               errno.EROFS: "choose a writable --output-dir"}.get(exc.errno or 0, "check the folder and run it again")
        return VqclipError(f"could not write run {self.id} in {self.output_dir}: {reason}; {fix}")

    def _release(self) -> None:
        fd = getattr(self, "_lock", None)
        self._lock = None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass


def read_run_file(run: Path, name: str, limit: int = files.MAX_READ_BYTES) -> bytes:
    """The bytes of `name` (a path relative to the run folder `run`): a regular file inside the run, reached
    without following a symlink at any level; otherwise a one-line BadRun naming it."""
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts:
        raise BadRun(f"{name!r} is not a file name inside a run folder", run, "not-file")
    here = run
    for part in rel.parts[:-1]:
        here = here / part
        if here.is_symlink() or not here.is_dir():
            raise BadRun(f"{here} is {'a symlink' if here.is_symlink() else 'not a folder'}; vqclip reads a "
                         "run's files only inside its folder", here, "symlink" if here.is_symlink() else "not-file")
    path = run / rel
    if path.is_symlink():
        raise BadRun(f"{path} is a symlink, which vqclip does not follow out of a run folder", path, "symlink")
    problem = path_problem(path, "file")
    if problem:
        raise BadRun(f"{path} {problem}", path, "symlink" if path.is_symlink() else "not-file")
    try:
        return files.read_regular(path, limit)
    except OSError as e:
        raise BadRun(f"{path} is unreadable ({e.strerror or type(e).__name__})", path) from None


def read_run_image(run: Path, name: str) -> tuple[Any, bytes]:
    """An image of the run (`read_run_file`'s rules) decoded as RGB, with its bytes; a file that is no image, or
    one that would decompress to more pixels than Pillow allows (a decompression bomb), is a one-line BadRun."""
    import io

    from PIL import Image, UnidentifiedImageError

    data = read_run_file(run, name)
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.convert("RGB"), data
    except Image.DecompressionBombError:
        raise BadRun(f"{run / name} would decompress to more pixels than an image may have; vqclip did not make "
                     "it, and will not read it", run / name) from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise BadRun(f"{run / name} is not a readable image ({type(e).__name__})", run / name) from None


__all__ = ["RunFolder", "read_run_file", "read_run_image", "DETAILS"]
