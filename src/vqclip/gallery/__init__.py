"""A static, offline HTML gallery of run folders (`vqclip gallery build`). Imports nothing heavy (no torch).

Pieces: `model` coerces untrusted details.json into cards, `thumbs` makes cached JPEG thumbnails, `cache`
remembers both by file signature, `build` renders one self-contained page from `templates/` and `static/`.
"""

from __future__ import annotations

from vqclip.gallery.build import BuildReport, build_gallery

__all__ = ["BuildReport", "build_gallery"]
