"""Outputs that are not runs never land in a run: the one check for every path a command writes that the user
chose (`gallery build --out` and `--output-dir`, every `--output-dir` that run folders go into).

A run folder is a folder named like a run id or a run being written (`.tmp-…`), or one holding a details.json
(a run copied or renamed elsewhere). A path is in a run when that folder, or any folder above it, is one; links
are followed as a write would follow them, so a symlink into a run counts as the run.
"""

from __future__ import annotations

import os
from pathlib import Path

from vqclip.errors import VqclipError
from vqclip.runfolder.names import DETAILS, TMP_PREFIX, is_run_id


def run_folder_of(path: str | Path) -> Path | None:
    """The run folder that `path` is (or is inside), as the real path; None when it is in no run."""
    real = Path(os.path.realpath(path))
    for folder in (real, *real.parents):
        if _is_run_folder(folder):
            return folder
    return None


def _is_run_folder(folder: Path) -> bool:
    try:
        if not folder.is_dir():
            return False
        if is_run_id(folder.name) or folder.name.startswith(TMP_PREFIX):
            return True
        return os.path.lexists(folder / DETAILS)
    except OSError:  # an unreadable folder: not known to be a run
        return False


def refuse_run_path(path: str | Path, flag: str, what: str) -> None:
    """One line naming the run and the fix when `path` (`what`, given as `flag`) is in a run folder."""
    run = run_folder_of(path)
    if run is not None:
        inside = "is" if Path(os.path.realpath(path)) == run else "is inside"
        raise VqclipError(f"{flag} {path} {inside} the run folder {run}; {what} there would change that run, so "
                          f"pass {flag} a path outside every run folder")
