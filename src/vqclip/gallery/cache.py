"""The build cache `<output>/.gallery/cache.json`: parsed cards and thumbnail facts, keyed by file signatures.

Why: rebuilding after one new run must not re-read 2,000 details.json files (~0.3 s, each carrying its loss
history) nor re-encode 2,000 thumbnails. A file's signature is (mtime_ns, size): a rewritten details.json or
output.png changes at least one of them (runs are written by atomic rename, which gives a new mtime). A cache
that is missing, corrupt or from another version is simply ignored: it can only make a build faster.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from vqclip.gallery.model import CARD_KEYS, CARD_VERSION
from vqclip.gallery.thumbs import THUMB_VERSION
from vqclip.files import atomic_write_bytes

CACHE_FORMAT = 1


def signature(st: os.stat_result) -> list[int]:
    return [st.st_mtime_ns, st.st_size]


def load_cache(path: Path) -> dict[str, dict[str, Any]]:
    """Run id → cache entry (`dsig`, `card`, and when valid `isig`, `thumb`). Anything odd → empty."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or not isinstance(data.get("runs"), dict):
        return {}
    same_cards = data.get("card_version") == CARD_VERSION
    card_keys = CARD_KEYS
    same_thumbs = data.get("thumb_version") == THUMB_VERSION
    runs: dict[str, dict[str, Any]] = {}
    for run_id, entry in data["runs"].items():
        if not isinstance(entry, dict):
            continue
        kept: dict[str, Any] = {}
        card = entry.get("card")
        if same_cards and isinstance(card, dict) and card_keys <= set(card) and isinstance(entry.get("dsig"), list):
            kept["dsig"], kept["card"] = entry["dsig"], entry["card"]
        thumb = entry.get("thumb")
        if (same_thumbs and isinstance(entry.get("isig"), list) and isinstance(thumb, list) and len(thumb) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in thumb)):
            kept["isig"], kept["thumb"] = entry["isig"], thumb
        if kept:
            runs[run_id] = kept
    return runs


def save_cache(path: Path, runs: dict[str, dict[str, Any]]) -> None:
    data = {"format": CACHE_FORMAT, "card_version": CARD_VERSION, "thumb_version": THUMB_VERSION, "runs": runs}
    atomic_write_bytes(path, json.dumps(data, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode())
