"""The gallery served live, and the run files it links to.

The page is the static gallery's own (`vqclip.gallery.build`: the same scan with its cache and thumbnails, the
same template with its search, lineage strips and kiosk mode), rendered per request with its links pointing at
`/files/`. `/files/` serves only what a run folder holds for people to look at — images, videos, frames and
details.json, by plain names — never through a symlink, never a path that leads outside the output folder.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

from vqclip.errors import VqclipError

FILES_URL = "/files/"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,120}$")
TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp",
         ".mp4": "video/mp4", ".json": "application/json"}
_scan_lock = threading.Lock()  # two tabs refreshing at once must not write the same thumbnails


class NotServed(VqclipError):
    def __init__(self, message: str, status: int = 404) -> None:
        super().__init__(message)
        self.status = status


def live_cards(output_dir: Path) -> list[dict[str, Any]]:
    """The gallery's cards (newest first, with lineage strips), thumbnails made as needed."""
    from vqclip.gallery.build import GALLERY_DIR, BuildReport, _scan
    from vqclip.gallery.cache import load_cache, save_cache
    from vqclip.gallery.model import lineage_strips

    gallery = output_dir / GALLERY_DIR
    if gallery.is_symlink() or (gallery.exists() and not gallery.is_dir()):
        raise NotServed(f"{gallery} is not a plain folder; remove it so the gallery can keep thumbnails there", 409)
    thumbs = gallery / "thumbs"
    with _scan_lock:
        try:
            thumbs.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise NotServed(f"cannot create {thumbs} ({e.strerror}); make the output folder writable", 500) from None
        cache_path = gallery / "cache.json"
        cards, cache = _scan(output_dir, thumbs, load_cache(cache_path), BuildReport(index=output_dir / "index.html"))
        try:
            save_cache(cache_path, cache)
        except OSError:
            pass  # only the next scan is slower
    strips = lineage_strips(cards)
    for card in cards:
        card["chain"] = strips.get(card["id"])
    return cards


def live_page(output_dir: Path, kiosk: bool = False) -> str:
    from vqclip.gallery.build import render_page

    return render_page(live_cards(output_dir), base=FILES_URL, kiosk=kiosk)


def run_file(output_dir: Path, rel: str) -> tuple[Path, str]:
    """(file, media type) for `/files/REL`: RUN_ID/NAME, RUN_ID/frames/NAME or .gallery/thumbs/NAME; every part a
    plain name, every step a real folder (not a symlink), the end a regular file of a type worth showing."""
    from vqclip.runs import is_run_id

    parts = rel.split("/")
    ok = (len(parts) == 2 and is_run_id(parts[0])) or \
         (len(parts) == 3 and is_run_id(parts[0]) and parts[1] == "frames") or \
         (len(parts) == 3 and parts[:2] == [".gallery", "thumbs"])
    if not ok or not _NAME.match(parts[-1]):
        raise NotServed("no such file: /files/ serves RUN_ID/FILE, RUN_ID/frames/FILE and gallery thumbnails")
    kind = TYPES.get(Path(parts[-1]).suffix.lower())
    if kind is None:
        raise NotServed(f"{parts[-1]} is not served (only images, videos and details.json)", 403)
    path = output_dir
    for part in parts:
        path = path / part
        if path.is_symlink():
            raise NotServed(f"{rel} leads through a symlink, which is never followed", 403)
    if not path.is_file():
        raise NotServed(f"no such file: {rel}")
    return path, kind


__all__ = ["live_cards", "live_page", "run_file", "NotServed", "FILES_URL"]
