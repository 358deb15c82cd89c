"""Build `index.html`: scan run folders (cached), make missing thumbnails, render one self-contained page.

Why one file with inline CSS/JS (read from the package's static/ folder at build time): it opens from
`file://` with no server and no network, survives being moved or zipped with its output folder, and lets a
Content-Security-Policy allow exactly our script by hash, so no text taken from a run can ever execute. The
run index travels as JSON in a `<script type="application/json">` element and is rendered with `textContent`.

Symlinks are never followed: a linked run folder is skipped, and a details.json, output.png, video or input image
that is a symlink (or a FIFO, or a folder) is treated as absent, so the page never reads, thumbnails or links a
file from outside its run folder.
The page never overwrites anything but a page: it is refused in a run folder (`vqclip.runfolder.guard`), in the
gallery's own .gallery folder, over a symlink, FIFO or device, and over an existing file that is not .html.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

from vqclip import __version__
from vqclip.errors import VqclipError
from vqclip.gallery.cache import load_cache, save_cache, signature
from vqclip.gallery.model import KNOWN_STATUSES, card_from_run, input_images, lineage_strips
from vqclip.gallery.thumbs import THUMB_EXT, ThumbJob, make_thumbnails
from vqclip.runfolder.record import DETAILS, IMAGE, VIDEO, BadRun
from vqclip.runs import read_run, run_folders
from vqclip.files import atomic_write_bytes, path_problem
from vqclip.runfolder.guard import refuse_run_path

GALLERY_DIR = ".gallery"

# Reasons a folder is left out (skipped) or shown with a placeholder (warning); counted in the summary.
NO_DETAILS = "no details.json"
BAD_DETAILS = "corrupt details.json"
UNREADABLE = "unreadable folder"
NO_IMAGE = "no output.png"
BAD_IMAGE = "unreadable output.png"
LINKED_RUN = "symlinked run folder (not followed)"
LINKED_DETAILS = "details.json is a symlink (not followed)"
ODD_DETAILS = "details.json is not a regular file"
LINKED_IMAGE = "output.png is a symlink (not followed)"
ODD_IMAGE = "output.png is not a regular file"


@dataclass
class BuildReport:
    """What a build did, for the CLI summary and for tests."""

    index: Path
    runs: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    warnings: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)  # reason → first folder it happened to
    details_read: int = 0
    details_cached: int = 0
    thumbs_made: int = 0
    thumbs_reused: int = 0
    thumbs_removed: int = 0
    seconds: float = 0.0


def build_gallery(output_dir: str | Path, out: str | Path | None = None, kiosk: bool = False) -> BuildReport:
    """Write the gallery page for every run in `output_dir` and return what happened."""
    start = time.perf_counter()
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        what = (path_problem(output_dir, "folder") or "is not a folder") if output_dir.exists() else "does not exist"
        raise VqclipError(f"output folder {output_dir} {what}; run `vqclip generate` first or pass --output-dir")
    refuse_run_path(output_dir, "--output-dir", "a gallery (index.html and .gallery)")
    index = _index_path(Path(out) if out else output_dir / "index.html", given=out is not None)
    _outside_gallery_files(index, output_dir / GALLERY_DIR)
    gallery = output_dir / GALLERY_DIR
    if gallery.is_symlink() or (gallery.exists() and not gallery.is_dir()):
        raise VqclipError(f"{gallery} is {'a symlink' if gallery.is_symlink() else 'not a folder'}; the gallery "
                          "keeps its thumbnails only in a real folder there, so remove it and build again")
    thumbs_dir = gallery / "thumbs"
    try:
        thumbs_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VqclipError(f"cannot create {thumbs_dir} ({e.strerror}); pass --output-dir to a writable folder") \
            from None
    report = BuildReport(index=index)
    cache_path = output_dir / GALLERY_DIR / "cache.json"
    cards, cache = _scan(output_dir, thumbs_dir, load_cache(cache_path), report)
    strips = lineage_strips(cards)
    for card in cards:
        card["chain"] = strips.get(card["id"])
    html = render_page(cards, base=_base_url(output_dir, index.parent), kiosk=kiosk)
    try:
        index.parent.mkdir(parents=True, exist_ok=True)
        # "replace": a lone surrogate that reached the page (from a hand-edited cache) becomes "?", never a crash
        atomic_write_bytes(index, html.encode("utf-8", "replace"))
    except OSError as e:
        raise VqclipError(f"cannot write {index} ({e.strerror}); pass --out to a writable path") from None
    try:
        save_cache(cache_path, cache)
    except OSError:
        pass  # the page is written; a missing cache only makes the next build slower
    report.runs = len(cards)
    report.seconds = time.perf_counter() - start
    return report


def _index_path(index: Path, given: bool) -> Path:
    """Where the page goes: a folder given as --out gets index.html inside it; anything but a regular file (or
    nothing) already at the path, or a file where its folder should be, is an error naming the fix."""
    flag = "--out" if given else "--output-dir"
    if index.is_dir() and not index.is_symlink():
        index = index / "index.html"
    refuse_run_path(index, flag, "the page")
    if index.is_symlink():  # replacing it would lose the link; writing through it could reach anything
        raise VqclipError(f"{index} is a symlink; pass {flag} the real path for the page (an .html file or a folder)")
    if index.exists():
        problem = path_problem(index, "file")
        if problem:
            raise VqclipError(f"{index} {problem.replace('is a directory, not a file', 'is a folder')}; pass {flag} "
                              "a path for the page (an .html file or a folder)")
        if index.suffix.lower() not in (".html", ".htm"):
            raise VqclipError(f"{index} exists and is not an .html page, so the gallery will not replace it; pass "
                              f"{flag} a new path or a folder")
    problem = path_problem(index.parent, "folder")
    if problem:
        raise VqclipError(f"the page's folder {index.parent} {problem}; pass {flag} a path in a folder")
    return index


def _outside_gallery_files(index: Path, gallery: Path) -> None:
    """The page never goes into .gallery, whose thumbnails and cache each build rewrites and removes."""
    real, own = Path(os.path.realpath(index)), Path(os.path.realpath(gallery))
    if real == own or own in real.parents:
        raise VqclipError(f"--out {index} is inside {gallery}, the gallery's own cache; pass --out a path outside it")


def _plain(entry: os.DirEntry[str] | None) -> bool | None:
    """None: no such entry; True: a regular file (not a symlink); False: a symlink, a FIFO, a folder…"""
    if entry is None:
        return None
    try:
        return entry.is_file(follow_symlinks=False)
    except OSError:
        return False


def _scan(output_dir: Path, thumbs_dir: Path, old: dict[str, dict[str, Any]],
          report: BuildReport) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Cards newest first and the new cache. One `scandir` per run folder gives every file fact needed."""
    present = {n for n in os.listdir(thumbs_dir) if n.endswith(THUMB_EXT)}
    cards: list[dict[str, Any]] = []
    cache: dict[str, dict[str, Any]] = {}
    jobs: list[ThumbJob] = []
    views: dict[str, dict[str, Any]] = {}

    def skip(reason: str, folder: Path) -> None:
        report.skipped[reason] += 1
        report.examples.setdefault(reason, str(folder))

    links: list[Path] = []
    folders = run_folders(output_dir, links)
    for link in links:
        skip(LINKED_RUN, link)
    for folder in folders:
        run_id = folder.name
        try:
            with os.scandir(folder) as it:
                entries = {e.name: e for e in it}
            det = entries.get(DETAILS)
            plain = _plain(det)
            dstat = det.stat(follow_symlinks=False) if det is not None and plain else None
        except OSError:
            skip(UNREADABLE, folder)
            continue
        if dstat is None:
            if plain is None:
                skip(NO_DETAILS, folder)
            else:
                skip(LINKED_DETAILS if det is not None and det.is_symlink() else ODD_DETAILS, folder)
            continue
        prev = old.get(run_id, {})
        dsig = signature(dstat)
        if prev.get("dsig") == dsig:
            card = prev["card"]
            report.details_cached += 1
        else:
            try:
                card = card_from_run(read_run(folder))
            except BadRun:
                skip(BAD_DETAILS, folder)
                continue
            report.details_read += 1
        entry: dict[str, Any] = {"dsig": dsig, "card": card}
        view = {k: v for k, v in card.items() if k != "declared"}
        view["id"] = run_id
        files = {name for name, e in entries.items() if _plain(e)}  # only what the page may link to
        view["video"] = VIDEO in files
        view["inputs"] = input_images(card.get("declared") or [], files)
        view["image"] = False
        view["thumb"] = None
        img = entries.get(IMAGE)
        try:
            istat = img.stat(follow_symlinks=False) if img is not None and _plain(img) else None
        except OSError:
            istat = None
        if istat is None:
            why = NO_IMAGE if img is None else LINKED_IMAGE if img.is_symlink() else ODD_IMAGE
            report.warnings[why] += 1
            report.examples.setdefault(why, str(folder))
        else:
            view["image"] = True
            isig = signature(istat)
            thumb_name = run_id + THUMB_EXT
            if prev.get("isig") == isig and prev.get("thumb") and thumb_name in present:
                entry["isig"], entry["thumb"] = isig, prev["thumb"]
                view["thumb"] = prev["thumb"]
                report.thumbs_reused += 1
            else:
                entry["isig"] = isig
                jobs.append(ThumbJob(run_id, folder / IMAGE, thumbs_dir / thumb_name))
        cache[run_id] = entry
        views[run_id] = view
        cards.append(view)

    for run_id, (size, _err) in make_thumbnails(jobs).items():
        if size is None:
            del cache[run_id]["isig"]  # retried next build, in case the image is fixed
            report.warnings[BAD_IMAGE] += 1
            report.examples.setdefault(BAD_IMAGE, str(output_dir / run_id / IMAGE))
        else:
            cache[run_id]["thumb"] = views[run_id]["thumb"] = list(size)
            report.thumbs_made += 1
    for name in present:  # thumbnails of deleted (or now unreadable) runs
        if "thumb" not in cache.get(name[: -len(THUMB_EXT)], {}):
            try:
                (thumbs_dir / name).unlink()
                report.thumbs_removed += 1
            except OSError:
                pass
    return cards, cache


def _base_url(output_dir: Path, page_dir: Path) -> str:
    """The relative URL from the page to the output folder (`""` when the page lives in it)."""
    try:
        rel = os.path.relpath(output_dir.resolve(), page_dir.resolve())
    except ValueError:  # another drive on Windows: no relative path exists
        return output_dir.resolve().as_uri() + "/"
    if rel == ".":
        return ""
    return "/".join(quote(part) for part in Path(rel).parts) + "/"


def script_json(obj: Any) -> str:
    """JSON safe inside `<script type="application/json">`: no `<`, `>`, `&` (so no `</script>` or `<!--`),
    ASCII only (lone surrogates and U+2028 cannot break the page's encoding)."""
    text = json.dumps(obj, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


@lru_cache(maxsize=None)
def _asset(name: str) -> str:
    return (resources.files("vqclip.gallery") / "static" / name).read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def _template() -> Any:
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    folder = Path(str(resources.files("vqclip.gallery") / "templates"))
    env = Environment(loader=FileSystemLoader(folder), autoescape=True, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    return env.get_template("index.html.j2")


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode() + "'"


def render_page(cards: list[dict[str, Any]], base: str = "", kiosk: bool = False) -> str:
    """The whole page as a string. Run text enters only through the autoescaped template or `script_json`."""
    from markupsafe import Markup

    css, js = _asset("gallery.css"), _asset("gallery.js")
    models = Counter(c["model"] for c in cards)
    statuses = Counter(c["status"] for c in cards)
    status_order = [s for s in KNOWN_STATUSES if s in statuses] + sorted(s for s in statuses
                                                                         if s not in KNOWN_STATUSES)
    return _template().render(
        css=Markup(css),
        js=Markup(js),
        csp=f"script-src {_csp_hash(js)}; style-src {_csp_hash(css)}; object-src 'none'; base-uri 'none'; "
            "form-action 'none'; connect-src 'none'",
        data=Markup(script_json({"base": base, "kiosk": kiosk, "runs": cards})),
        count=len(cards),
        models=sorted(models.items(), key=lambda kv: (-kv[1], kv[0].lower())),
        statuses=[(s, statuses[s]) for s in status_order],
        kiosk=kiosk,
        built=datetime.now().strftime("%Y-%m-%d %H:%M"),
        version=__version__,
    )
