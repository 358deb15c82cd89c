"""Run folders, the unit of record: what a run made and all it takes to repeat it sit in one folder, so a run
can be copied, shared or deleted whole (as nanoGPT keeps the config beside every checkpoint).

What a run folder holds, and the names of its files, is `vqclip.runfolder` (names, record, state, the folder
being written); this module finds and reads runs back: by id or prefix, all of them, their lineage.

Reading is defensive: a run folder, details.json or output.png that is a symlink is never followed (it could
lead out of the run or the output folder), and a FIFO or folder where a file belongs is named as such.
Imports nothing heavy (the gallery and `runs list` must not import torch).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vqclip.errors import VqclipError
from vqclip.files import is_plain_file, path_problem
from vqclip.runfolder.folder import RunFolder
from vqclip.runfolder.guard import refuse_run_path
from vqclip.runfolder.names import DETAILS, IMAGE, STATE, VIDEO, is_run_id, new_run_id
from vqclip.runfolder.record import SCHEMA, BadRun, RunRecord, parse_record, read_details, tolerant_record

def check_output_dir(output_dir: str | Path) -> Path:
    """The output folder, or a one-line error when something other than a folder is in its place."""
    out = Path(output_dir)
    problem = path_problem(out, "folder")
    if problem:
        raise VqclipError(f"output folder {out} {problem}; pass --output-dir a folder")
    refuse_run_path(out, "--output-dir", "run folders")  # a run is never nested in (or written over) another
    return out


# ---------------------------------------------------------------------------------------------------------
# Reading runs back


@dataclass
class RunInfo:
    """A run folder read back from disk. `details` is details.json as found (what `runs show --json` prints);
    `record` is its typed view, with every field of the wrong type left at its default and set aside in `odd`
    as found, so listing and showing never fail on one odd run. A command that acts on the run (`continue`)
    takes `checked()`, which refuses those fields in one line instead."""

    path: Path
    details: dict[str, Any] = field(default_factory=dict)
    record: RunRecord = field(init=False, repr=False)
    odd: dict[str, Any] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.record, self.odd = tolerant_record(self.details)

    @classmethod
    def of(cls, path: Path, record: RunRecord) -> RunInfo:
        """A run just written (its record in hand)."""
        return cls(path, record.model_dump(mode="json"))

    def checked(self) -> RunRecord:
        """The record, or a one-line BadRun naming details.json and its first field of the wrong type."""
        return parse_record(self.details, self.path / DETAILS) if self.odd else self.record

    def shown(self, name: str) -> Any:
        """A top-level field to display: the typed value, or what the file holds there when of the wrong type."""
        return self.odd[name] if name in self.odd else getattr(self.record, name, None)

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def status(self) -> str:
        return self.record.status

    @property
    def prompt(self) -> str:
        if self.record.prompt is not None:
            return self.record.prompt
        prompt = (self.record.config or {}).get("prompt")
        return prompt if isinstance(prompt, str) else ""

    @property
    def parent(self) -> str | None:
        parent = self.record.parent
        return parent if parent is not None and is_run_id(parent) else None

    @property
    def root(self) -> str:
        root = self.record.root
        return root if root is not None and is_run_id(root) else self.id

    @property
    def stage(self) -> int:
        return self.record.stage

    @property
    def image(self) -> Path:
        return self.path / IMAGE

    @property
    def has_state(self) -> bool:
        return is_plain_file(self.path / STATE)

    @property
    def has_image(self) -> bool:
        """output.png is there as a regular file (a symlink in its place is not followed)."""
        return is_plain_file(self.path / IMAGE)


def read_run(folder: Path) -> RunInfo:
    """The run in `folder` (details.json a regular file, never followed through a symlink)."""
    return RunInfo(folder, read_details(folder))


def run_folders(output_dir: str | Path, links: list[Path] | None = None) -> list[Path]:
    """Candidate run folders (named like run ids), newest first; hidden/temporary folders are skipped, and so
    are symlinks (a linked run folder would let a run lead out of the output folder): those go to `links`."""
    out = Path(output_dir)
    found = []
    try:
        with os.scandir(out) as it:
            for entry in it:
                if not is_run_id(entry.name):
                    continue
                try:
                    if entry.is_symlink():
                        if links is not None:
                            links.append(Path(entry.path))
                    elif entry.is_dir(follow_symlinks=False):
                        found.append(Path(entry.path))
                except OSError:
                    continue
    except OSError:
        return []
    if links is not None:
        links.sort(key=lambda p: p.name, reverse=True)
    return sorted(found, key=lambda p: p.name, reverse=True)


def _linked(folder: Path) -> BadRun:
    return BadRun(f"{folder} is a symlink, which vqclip does not follow out of the output folder; move the run "
                  f"folder itself into {folder.parent}", folder, "symlink")


def scan_runs(output_dir: str | Path) -> tuple[list[RunInfo], list[BadRun]]:
    """All readable runs (newest first) and the problems met on the way (for counted warnings)."""
    good: list[RunInfo] = []
    bad: list[BadRun] = []
    links: list[Path] = []
    for folder in run_folders(output_dir, links):
        try:
            good.append(read_run(folder))
        except BadRun as e:
            bad.append(e)
    bad += [_linked(p) for p in links]
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
        if as_path.is_symlink() and is_run_id(as_path.name):
            raise _linked(as_path)
        if as_path.is_dir():
            if not (as_path / DETAILS).exists() and not (as_path / DETAILS).is_symlink():
                raise VqclipError(f"{as_path} is not a run folder (no {DETAILS}); see `vqclip runs list`")
            return read_run(as_path)
        problem = path_problem(as_path, "folder")
        if problem and as_path.exists():
            raise VqclipError(f"{as_path} {problem.replace('folder', 'run folder')}; give a run folder or a run id "
                              "(see `vqclip runs list`)")
        raise VqclipError(f"{ref!r} is not a run id or an existing run folder; see `vqclip runs list`")
    if not re.fullmatch(r"[A-Za-z0-9_-]+", ref) and not re.fullmatch(r"[0-9T-]+", ref):
        raise VqclipError(f"{ref!r} is not a run id; see `vqclip runs list`")
    check_output_dir(output_dir)
    links: list[Path] = []
    folders = run_folders(output_dir, links)
    exact = [p for p in folders + links if p.name == ref]
    matches = exact or [p for p in folders + links if p.name.startswith(ref)]
    if len(matches) == 1 and matches[0] in links:
        raise _linked(matches[0])
    if not matches:
        newest = ", ".join(p.name for p in folders[:5]) or "none yet"
        raise VqclipError(f"no run {ref!r} in {output_dir}; newest runs: {newest}")
    if len(matches) > 1:
        shown = ", ".join(p.name for p in matches[:10])
        more = f" (+{len(matches) - 10} more)" if len(matches) > 10 else ""
        raise VqclipError(f"run prefix {ref!r} is ambiguous: {shown}{more}; give more characters")
    return read_run(matches[0])


def lineage(run: RunInfo, output_dir: str | Path) -> list[RunInfo]:
    """The chain root → … → run, following `parent` links (stops at a missing or looping parent)."""
    chain = [run]
    seen = {run.id}
    while chain[0].parent and chain[0].parent not in seen:
        folder = Path(output_dir) / chain[0].parent
        if folder.is_symlink():
            break
        try:
            chain.insert(0, read_run(folder))
        except BadRun:
            break
        seen.add(chain[0].id)
    return chain


__all__ = ["DETAILS", "IMAGE", "VIDEO", "STATE", "SCHEMA", "BadRun", "RunFolder", "RunInfo", "check_output_dir",
           "find_run", "is_run_id", "lineage", "new_run_id", "read_details", "read_run", "run_folders", "scan_runs"]
