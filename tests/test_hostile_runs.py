"""Hostile run folders through the installed `vqclip` command: symlinks out of a run or the output folder,
FIFOs and folders where files belong, strings no terminal or page should receive raw, leftover `.tmp-*`
folders, files given where folders belong. One table; each row builds a folder, runs one command in a
subprocess and checks the exit code, what the output must and must not say, and what is left on disk.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

from vqclip.gallery.synthetic import details, png_bytes, run_id
from clihelp import check_output

VQCLIP = shutil.which("vqclip") or str(Path(sys.executable).parent / "vqclip")
PASSWD = "/etc/passwd"
ESC = "\x1b[31mred\x1b[0m \x1b]0;pwned title\x07 \x1b[2J"
TRAP = "root:x:0:0"  # what /etc/passwd would leak


def write_run(out: Path, i: int, image: bool = True, **overrides: Any) -> Path:
    """A run folder whose details.json may hold any string (ensure_ascii: lone surrogates survive as escapes)."""
    folder = out / run_id(i)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "details.json").write_text(json.dumps(details(i, **overrides), ensure_ascii=True))
    if image:
        (folder / "output.png").write_bytes(png_bytes(i, 16))
    return folder


def relink(path: Path, target: str | Path) -> None:
    if path.exists() or path.is_symlink():
        path.unlink()
    os.symlink(target, path)


def page_data(out: Path) -> dict[str, Any]:
    html = (out / "index.html").read_bytes().decode("utf-8")  # strict: the page is valid UTF-8
    m = re.search(r'<script id="gallery-data" type="application/json">(.*?)</script>', html, re.S)
    assert m
    return json.loads(m.group(1))


def old(path: Path, seconds: float = 3600) -> None:
    t = time.time() - seconds
    for p in [*path.rglob("*"), path]:
        os.utime(p, (t, t), follow_symlinks=False)


@dataclass
class Case:
    id: str
    setup: Callable[[Path, Path], list[str]]  # (out, tmp) → the command's arguments
    rc: int = 0
    says: tuple[str, ...] = ()  # in stdout + stderr
    never: tuple[str, ...] = ()  # nowhere in stdout + stderr
    after: Callable[[Path, Path, str], None] | None = None  # (out, tmp, output) → more checks


HELD: list[int | None] = []  # lock fds a setup keeps open while the command runs (a live writer)


# --- 1. symlinks out of a run or the output folder ------------------------------------------------------------


def linked_run_folder(out: Path, tmp: Path) -> list[str]:
    write_run(out, 1)
    elsewhere = write_run(tmp / "elsewhere", 2, prompt="SECRET elsewhere")
    os.symlink(elsewhere, out / run_id(2))
    return ["runs", "list", "-o", str(out)]


def details_to_passwd(out: Path, tmp: Path) -> list[str]:
    write_run(out, 1)
    relink(write_run(out, 2) / "details.json", PASSWD)
    return ["runs", "list", "--json", "-o", str(out)]


def details_to_sibling(out: Path, tmp: Path) -> list[str]:
    write_run(out, 1, prompt="the sibling")
    relink(write_run(out, 2) / "details.json", out / run_id(1) / "details.json")
    return ["runs", "list", "-o", str(out)]


def show_linked_folder(out: Path, tmp: Path) -> list[str]:
    os.symlink(write_run(tmp / "elsewhere", 3, prompt="SECRET elsewhere"), out / run_id(3))
    return ["runs", "show", run_id(3)[:15], "-o", str(out)]


def show_linked_details(out: Path, tmp: Path) -> list[str]:
    relink(write_run(out, 4) / "details.json", PASSWD)
    return ["runs", "show", run_id(4), "-o", str(out)]


def show_fifo_details(out: Path, tmp: Path) -> list[str]:
    folder = write_run(out, 5)
    (folder / "details.json").unlink()
    os.mkfifo(folder / "details.json")  # reading it would block forever
    return ["runs", "show", run_id(5), "-o", str(out)]


def list_dir_details(out: Path, tmp: Path) -> list[str]:
    write_run(out, 1)
    folder = write_run(out, 6)
    (folder / "details.json").unlink()
    (folder / "details.json").mkdir()
    return ["runs", "list", "-o", str(out)]


def show_linked_parent(out: Path, tmp: Path) -> list[str]:
    os.symlink(write_run(tmp / "elsewhere", 1, prompt="SECRET parent"), out / run_id(1))
    write_run(out, 2, parent=run_id(1), root=run_id(1), stage=2)
    return ["runs", "show", run_id(2), "-o", str(out)]


def gallery_linked_folder(out: Path, tmp: Path) -> list[str]:
    write_run(out, 1)
    os.symlink(write_run(tmp / "elsewhere", 2), out / run_id(2))
    return ["gallery", "build", "-o", str(out)]


def check_gallery_linked_folder(out: Path, tmp: Path, output: str) -> None:
    assert [r["id"] for r in page_data(out)["runs"]] == [run_id(1)]
    assert not (out / ".gallery" / "thumbs" / f"{run_id(2)}.jpg").exists()


def gallery_image_links(out: Path, tmp: Path) -> list[str]:
    relink(write_run(out, 1) / "output.png", PASSWD)
    relink(write_run(out, 2) / "output.png", out / run_id(3) / "output.png")
    write_run(out, 3)
    folder = write_run(out, 4, files={"image": "output.png", "init_image": "init.png", "image_prompts": []})
    os.symlink(PASSWD, folder / "anim.mp4")
    os.symlink(PASSWD, folder / "init.png")
    return ["gallery", "build", "-o", str(out)]


def check_gallery_image_links(out: Path, tmp: Path, output: str) -> None:
    runs = {r["id"]: r for r in page_data(out)["runs"]}
    assert runs[run_id(1)]["image"] is False and runs[run_id(2)]["image"] is False
    assert runs[run_id(3)]["image"] is True
    assert runs[run_id(4)]["video"] is False and runs[run_id(4)]["inputs"] == []
    thumbs = sorted(p.name for p in (out / ".gallery" / "thumbs").iterdir())
    assert thumbs == [f"{run_id(3)}.jpg", f"{run_id(4)}.jpg"]


def gallery_fifo_image(out: Path, tmp: Path) -> list[str]:
    folder = write_run(out, 1, image=False)
    os.mkfifo(folder / "output.png")
    write_run(out, 2)
    (write_run(out, 3) / "details.json").unlink()
    os.mkfifo(out / run_id(3) / "details.json")
    return ["gallery", "build", "-o", str(out)]


# --- 1. strings a details.json may hold -----------------------------------------------------------------------


def escapes_in_prompt(out: Path, tmp: Path) -> list[str]:
    write_run(out, 1, prompt=f"a {ESC} cat")
    return ["runs", "list", "-o", str(out)]


def escapes_in_show(out: Path, tmp: Path) -> list[str]:
    write_run(out, 1, prompt=f"a {ESC} cat", status="\x1b[5mfinished", error="\x9b31m",
              config={"image_prompts": ["\x1b]8;;http://evil\x07x"], "clip_model": "\u202eevil"})
    return ["runs", "show", run_id(1), "-o", str(out)]


def surrogate_and_nul(out: Path, tmp: Path) -> list[str]:
    write_run(out, 1, prompt="lone \ud800 and \udfff, nul \x00, tab\there")
    return ["runs", "list", "-o", str(out)]


def surrogate_json(out: Path, tmp: Path) -> list[str]:
    write_run(out, 1, prompt="lone \ud800 \x1b[31m \x9b ok 🎨")
    return ["runs", "list", "--json", "-o", str(out)]


def check_surrogate_json(out: Path, tmp: Path, output: str) -> None:
    rows = json.loads(output.split("\n[stderr]\n")[0])
    assert rows[0]["prompt"] == "lone \ud800 \x1b[31m \x9b ok 🎨"


def surrogate_show_json(out: Path, tmp: Path) -> list[str]:
    write_run(out, 1, prompt="\ud83d alone", weights={"name": "\udc80"})
    return ["runs", "show", "--json", run_id(1), "-o", str(out)]


def markup_everywhere(out: Path, tmp: Path) -> list[str]:
    write_run(out, 1, prompt="[bold red]loud[/] [link=http://x]y[/link]", status="[blink]odd[/]",
              global_step="[red]7", size=["[b]1", 2])
    return ["runs", "list", "-o", str(out)]


def odd_types(out: Path, tmp: Path) -> list[str]:
    write_run(out, 1, losses={"0": 1}, weights={"name": ["x"], "sha256": 5}, size=[[1], {"a": 1}],
              config={"image_prompts": [1, None], "noise_prompts": "7", "cutn": {"x": 1}}, timings=[],
              files=["x"], created=12, seed="[bold]1", error={"a": "\x1b[2J"}, status=None)
    return ["runs", "show", run_id(1), "-o", str(out)]


def deep_and_huge(out: Path, tmp: Path) -> list[str]:
    write_run(out, 1)
    (write_run(out, 2) / "details.json").write_text("[" * 100_000 + "]" * 100_000)
    (write_run(out, 3) / "details.json").write_text('{"seed": ' + "9" * 5000 + "}")
    return ["runs", "list", "-o", str(out)]


def gallery_hostile_strings(out: Path, tmp: Path) -> list[str]:
    write_run(out, 1, prompt=f"lone \ud800 nul \x00 {ESC} </script><!-- [bold]x[/]",
              weights={"name": "\udcff\x1b[31m"}, status="\x1b[2Jdone", error="\ud800")
    write_run(out, 2)
    (out / ".gallery").mkdir()  # and a hand-edited cache with odd cards
    (out / ".gallery" / "cache.json").write_text(json.dumps({"format": 1, "card_version": 3, "thumb_version": "x",
        "runs": {run_id(2): {"dsig": [0, 0], "card": {"model": "\ud800"}}, "x": 5}}))
    return ["gallery", "build", "-o", str(out)]


def check_gallery_hostile_strings(out: Path, tmp: Path, output: str) -> None:
    raw = (out / "index.html").read_bytes()
    assert b"\x1b" not in raw and b"\x00" not in raw and b"</script><!--" not in raw
    runs = {r["id"]: r for r in page_data(out)["runs"]}
    assert "lone" in runs[run_id(1)]["prompt"] and len(runs) == 2


# --- 2. leftover .tmp-* folders ------------------------------------------------------------------------------


def tmp_name(i: int) -> str:
    return ".tmp-" + run_id(i)


def stale_tmp(out: Path, tmp: Path) -> list[str]:
    write_run(out, 1)
    write_run(out, 9).rename(out / tmp_name(9))
    old(out / tmp_name(9))
    return ["runs", "list", "-o", str(out)]


def fresh_tmp(out: Path, tmp: Path) -> list[str]:
    write_run(out, 1)
    (out / tmp_name(9)).mkdir()  # being written right now, by an older vqclip without an owner record
    return ["runs", "list", "-o", str(out)]


def clean_dry_run(out: Path, tmp: Path) -> list[str]:
    (out / tmp_name(9)).mkdir(parents=True)
    old(out / tmp_name(9))
    return ["runs", "clean", "--dry-run", "-o", str(out)]


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def clean_mixed(out: Path, tmp: Path) -> list[str]:
    from vqclip.runfolder.temp import claim

    write_run(out, 1)
    for i in (5, 6, 7, 8):
        (out / tmp_name(i)).mkdir(parents=True)
    outside = tmp / "precious"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    os.symlink(outside, out / tmp_name(5) / "link")  # rmtree must not follow it
    old(out / tmp_name(5))  # abandoned long ago, no owner record
    (out / tmp_name(6) / ".owner").write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname()}))
    HELD.append(claim(out / tmp_name(7)))  # a live writer (this test process) holds the lock
    old(out / tmp_name(7))  # … on a run that has been going for an hour
    os.symlink(outside, out / ".tmp-20990101T000000-linkedxx")  # not a folder: never touched
    return ["runs", "clean", "-o", str(out)]


def check_clean_mixed(out: Path, tmp: Path, output: str) -> None:
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([".tmp-20990101T000000-linkedxx", tmp_name(7), tmp_name(8), run_id(1)])
    assert (tmp / "precious" / "keep.txt").read_text() == "keep"


def clean_nothing(out: Path, tmp: Path) -> list[str]:
    write_run(out, 1)
    return ["runs", "clean", "-o", str(out)]


def generate_leaves_no_owner(out: Path, tmp: Path) -> list[str]:
    """A committed run folder carries no `.owner`; a discarded one leaves nothing (RunFolder in-process)."""
    from vqclip.runfolder.record import RunRecord
    from vqclip.runs import RunFolder
    from vqclip.runfolder.temp import temp_status

    rf = RunFolder(out).create()
    assert (rf.path / ".owner").is_file()
    assert not temp_status(rf.path).stale  # held by this process
    rf.write_record(RunRecord.model_validate(details(1)))
    final = rf.commit()
    assert not (final / ".owner").exists()
    RunFolder(out).create().discard()
    return ["runs", "clean", "-o", str(out)]


# --- 3. files where folders belong (and the reverse) ----------------------------------------------------------


def file_as(*args: str) -> Callable[[Path, Path], list[str]]:
    def setup(out: Path, tmp: Path) -> list[str]:
        write_run(out, 1)
        (tmp / "afile").write_text("x")
        os.mkfifo(tmp / "fifo.html")
        return [a.replace("FILE", str(tmp / "afile")).replace("FIFO", str(tmp / "fifo.html"))
                .replace("OUT", str(out)).replace("RUN", run_id(1)) for a in args]
    return setup


def check_fifo_kept(out: Path, tmp: Path, output: str) -> None:
    import stat

    assert stat.S_ISFIFO(os.lstat(tmp / "fifo.html").st_mode)


def check_page_in_folder(out: Path, tmp: Path, output: str) -> None:
    assert (tmp / "pages" / "index.html").is_file()


def pages_folder(out: Path, tmp: Path) -> list[str]:
    write_run(out, 1)
    (tmp / "pages").mkdir()
    return ["gallery", "build", "-o", str(out), "--out", str(tmp / "pages")]


CASES = [
    # 1. symlinks
    Case("run folder is a symlink to elsewhere", linked_run_folder, 0,
         ("1 folder skipped (symlink, not followed)", run_id(1)), ("SECRET", run_id(2) + "  ")),
    Case("details.json is a symlink to /etc/passwd", details_to_passwd, 0, ("is a symlink",), (TRAP,)),
    Case("details.json is a symlink to a sibling run's", details_to_sibling, 0, ("symlink",)),
    Case("runs show a symlinked run folder", show_linked_folder, 1, ("is a symlink", "move the run folder"),
         ("SECRET",)),
    Case("runs show a symlinked details.json", show_linked_details, 1, ("details.json is a symlink",), (TRAP,)),
    Case("details.json is a FIFO", show_fifo_details, 1, ("is a FIFO (named pipe), not a regular file",)),
    Case("details.json is a folder", list_dir_details, 0, ("details.json not a regular file",)),
    Case("lineage stops at a symlinked parent", show_linked_parent, 0, ("not found",), ("SECRET",)),
    Case("gallery skips a symlinked run folder", gallery_linked_folder, 0, ("symlinked run folder",),
         after=check_gallery_linked_folder),
    Case("gallery never follows linked images, videos, inputs", gallery_image_links, 0,
         ("2 × output.png is a symlink (not followed)",), (TRAP,), after=check_gallery_image_links),
    Case("gallery: FIFO output.png and details.json", gallery_fifo_image, 0,
         ("details.json is not a regular file", "output.png is not a regular file")),
    # 1. strings
    Case("escape sequences in a prompt (list)", escapes_in_prompt, 0, ("\\x1b[31mred", "\\x1b]0;pwned", "\\x07"),
         ("\x1b", "\x07")),
    Case("escape sequences, C1 and bidi (show)", escapes_in_show, 0,
         ("\\x1b[5mfinished", "\\x9b31m", "\\x1b]8;;http://evil\\x07x", "\\u202eevil"), ("\x1b", "\x9b", "\u202e")),
    Case("lone surrogates, NUL and tab", surrogate_and_nul, 0, ("lone \\ud800 and \\udfff, nul \\x00, tab\\there",),
         ("\x00",)),
    Case("lone surrogate in --json", surrogate_json, 0, ("\\ud800", "🎨"), ("\x1b", "\x9b"),
         after=check_surrogate_json),
    Case("lone surrogate in runs show --json", surrogate_show_json, 0, ('"\\ud83d alone"', '"\\udc80"')),
    Case("Rich markup stays literal", markup_everywhere, 0,
         ("[bold red]loud[/] [link=http://x]y[/link]", "[blink]odd[/]", "[red]7", "[b]1x2")),
    Case("odd field types in runs show", odd_types, 0,
         ("image prompts: 1, None", "noise prompts: 7", "seed:          [bold]1")),
    Case("deeply nested and 5,000-digit details.json", deep_and_huge, 0,
         ("2 folders skipped (corrupt details.json)", run_id(1))),
    Case("gallery with surrogates, NUL, ESC and a hand-edited cache", gallery_hostile_strings, 0, ("2 runs",),
         after=check_gallery_hostile_strings),
    # 2. leftover temp folders
    Case("runs list notes a stale .tmp folder", stale_tmp, 0,
         ("1 unfinished run folder", tmp_name(9), "vqclip runs clean -o")),
    Case("runs list is quiet about a fresh .tmp folder", fresh_tmp, 0, (run_id(1),), ("unfinished",)),
    Case("runs clean --dry-run removes nothing", clean_dry_run, 0, ("would remove", "1 folder would be removed"),
         after=lambda out, tmp, o: (out / tmp_name(9)).is_dir() or pytest.fail("removed in a dry run")),
    Case("runs clean: stale and dead-owner go, live and fresh stay", clean_mixed, 0,
         ("Removed 2 unfinished run folders; 2 in progress kept", "is gone", "untouched for"),
         after=check_clean_mixed),
    Case("runs clean with nothing to do", clean_nothing, 0, ("Nothing to clean",)),
    Case("a run folder's owner record is gone once committed", generate_leaves_no_owner, 0, ("Nothing to clean",)),
    # 3. files where folders belong
    Case("runs list -o FILE", file_as("runs", "list", "-o", "FILE"), 1, ("is a file, not a folder",)),
    Case("runs clean -o FILE", file_as("runs", "clean", "-o", "FILE"), 1, ("is a file, not a folder",)),
    Case("runs show RUN -o FILE", file_as("runs", "show", "RUN", "-o", "FILE"), 1, ("is a file, not a folder",)),
    Case("runs show ./FILE", file_as("runs", "show", "FILE"), 1, ("is a file, not a run folder",)),
    Case("runs show FIFO", file_as("runs", "show", "FIFO"), 1, ("is a FIFO (named pipe), not a run folder",)),
    Case("gallery build -o FILE", file_as("gallery", "build", "-o", "FILE"), 1, ("is a file, not a folder",)),
    Case("gallery build --out FILE/index.html", file_as("gallery", "build", "-o", "OUT", "--out", "FILE/x.html"), 1,
         ("is a file, not a folder",)),
    Case("gallery build --out FIFO", file_as("gallery", "build", "-o", "OUT", "--out", "FIFO"), 1,
         ("is a FIFO (named pipe), not a regular file",), after=check_fifo_kept),
    Case("gallery build --out FOLDER (valid)", pages_folder, 0, ("1 run",), after=check_page_in_folder),
    Case("runs list -o a missing folder (valid)", lambda o, t: ["runs", "list", "-o", str(t / "none")], 0,
         ("No runs",)),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_runs(case: Case, tmp_path: Path) -> None:
    out = tmp_path / "output"
    out.mkdir()
    try:
        args = case.setup(out, tmp_path)
        proc = subprocess.run([VQCLIP, *args], capture_output=True, timeout=60,
                              env={**os.environ, "COLUMNS": "300"})
    finally:
        while HELD:
            fd = HELD.pop()
            if fd is not None:
                os.close(fd)
    stdout, stderr = proc.stdout.decode("utf-8"), proc.stderr.decode("utf-8")  # strict: valid UTF-8 only
    output = stdout + "\n[stderr]\n" + stderr
    assert proc.returncode == case.rc, output
    assert "Traceback" not in output
    check_output(output, stderr, case.rc, case.says, case.never)
    if case.after:
        case.after(out, tmp_path, output)
