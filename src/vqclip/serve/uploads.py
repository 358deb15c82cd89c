"""Images sent from the page: checked by content, bounded in bytes and pixels, re-encoded, kept by token.

An upload (an init image or an image prompt) is read whole into memory only up to MAX_BYTES, opened by Pillow
from its bytes (never by the name or type the browser claims), refused unless it is a PNG, JPEG or WebP whose
header says at most MAX_PIXELS pixels (checked before decoding, so a decompression bomb is never decoded), and
stored re-encoded as a plain PNG under `OUTPUT/.serve/uploads/TOKEN.png`. Jobs name it by its token only; the
run then copies it into its own folder (init.png, image_prompt_N.png) like the CLI does with a file. Uploads
that no kept job names go at the next start.

`png_parameters` reads the settings a vqclip PNG carries (its `parameters` text chunk) for "drop a PNG on the
page to load its settings".
"""

from __future__ import annotations

import io
import json
import re
import secrets
from pathlib import Path
from typing import Any

from vqclip.errors import VqclipError, one_line

MAX_BYTES = 16 * 1024 * 1024
MAX_PIXELS = 4096 * 4096
MAX_SIDE = 8192
FORMATS = {"PNG", "JPEG", "WEBP"}
TOKEN = re.compile(r"^[A-Za-z0-9_-]{22}$")
SUFFIX = ".png"


class UploadError(VqclipError):
    """A refused upload; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def open_checked(data: bytes, what: str = "upload") -> Any:
    """A decoded RGB PIL image from untrusted bytes, or UploadError with one line saying why not."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise UploadError(f"{what} is empty; send the image file's bytes as the request body")
    if len(data) > MAX_BYTES:
        raise UploadError(f"{what} is larger than {MAX_BYTES // 2**20} MiB; use a smaller image", 413)
    try:
        img = Image.open(io.BytesIO(data), formats=sorted(FORMATS))
    except UnidentifiedImageError:
        raise UploadError(f"{what} is not a PNG, JPEG or WebP image; send one of those", 415) from None
    except Image.DecompressionBombError:
        raise UploadError(f"{what} claims more pixels than any image worth decoding (the most is {MAX_SIDE} per "
                          f"side and {MAX_PIXELS // 10**6} megapixels in all); scale it down", 413) from None
    except (OSError, ValueError) as e:
        raise UploadError(f"{what} cannot be read ({one_line(e, 100, typed=False)}); send a PNG, JPEG or WebP "
                          "image", 415) from None
    w, h = img.size
    if w < 1 or h < 1 or w > MAX_SIDE or h > MAX_SIDE or w * h > MAX_PIXELS:
        raise UploadError(f"{what} is {w}x{h} pixels; the most is {MAX_SIDE} per side and "
                          f"{MAX_PIXELS // 10**6} megapixels in all, so scale it down", 413)
    try:
        img.load()
        return img.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise UploadError(f"{what} is a damaged image ({one_line(e, 100, typed=False)}); send it again or another file",
                          415) from None


class Uploads:
    """The staged uploads of one output folder."""

    def __init__(self, output_dir: Path) -> None:
        self.folder = output_dir / ".serve" / "uploads"

    def save(self, data: bytes) -> dict[str, Any]:
        """Check and store one image; {"token", "width", "height"}."""
        from vqclip.files import atomic_write_bytes

        img = open_checked(data)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        token = secrets.token_urlsafe(16)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.folder / (token + SUFFIX), buf.getvalue())
        except OSError as e:
            raise UploadError(f"cannot store the upload ({e.strerror or e}); free some disk space", 507) from None
        return {"token": token, "width": img.width, "height": img.height}

    def path(self, token: Any) -> Path:
        """The file of an upload token (a plain file inside the uploads folder), or UploadError."""
        if not isinstance(token, str) or not TOKEN.match(token):
            raise UploadError("an image reference is not an upload token; upload the image again")
        path = self.folder / (token + SUFFIX)
        if path.is_symlink() or not path.is_file():
            raise UploadError("an uploaded image is gone (the server was restarted); upload it again", 409)
        return path

    def keep_only(self, tokens: set[str]) -> int:
        """Remove every upload not in `tokens`; how many went."""
        removed = 0
        try:
            entries = list(self.folder.iterdir())
        except OSError:
            return 0
        for entry in entries:
            if entry.name.endswith(SUFFIX) and entry.name[: -len(SUFFIX)] in tokens:
                continue
            try:
                entry.unlink()
                removed += 1
            except OSError:
                pass
        return removed


def png_parameters(data: bytes) -> dict[str, Any]:
    """The run settings a vqclip PNG carries: {"config": {...}, "notes": [...]}. UploadError when the bytes are
    not a PNG or it carries no settings."""
    from PIL import Image

    if len(data) > MAX_BYTES:
        raise UploadError(f"the image is larger than {MAX_BYTES // 2**20} MiB", 413)
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        raise UploadError("not a PNG: settings travel in the PNG files vqclip writes (output.png)", 415)
    try:
        img = Image.open(io.BytesIO(data), formats=["PNG"])
        text = {k: v for k, v in img.info.items() if isinstance(v, str)}  # chunks before the pixels
        if "parameters" not in text:  # maybe after them: decode, within bounds
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise UploadError(f"the image is {w}x{h} pixels, more than a run image can be", 413)
            img.load()
            text = dict(getattr(img, "text", {}) or {})
    except UploadError:
        raise
    except Image.DecompressionBombError:
        raise UploadError("the PNG claims more pixels than a run image can have", 413) from None
    except Exception as e:  # Pillow raises many types for damaged files
        raise UploadError(f"the PNG cannot be read ({one_line(e, 100, typed=False)})", 415) from None
    raw = text.get("parameters")
    if not raw:
        raise UploadError("this PNG carries no vqclip settings (no 'parameters' text chunk)", 422)
    try:
        params = json.loads(raw)
    except ValueError:
        raise UploadError("the PNG's 'parameters' chunk is not JSON; it was not written by vqclip", 422) from None
    if not isinstance(params, dict):
        raise UploadError("the PNG's 'parameters' chunk is not a mapping of settings", 422)
    from vqclip.config import RunConfig

    fields = RunConfig.model_fields
    config = {k: v for k, v in params.items() if k in fields}
    notes = []
    for key in ("init_image", "image_prompts"):  # files of the machine that made it: not here, not sent
        if config.pop(key, None):
            notes.append(f"{key.replace('_', ' ')} left out: upload the image(s) again")
    ignored = sorted(k for k in params if k not in fields)
    if ignored:
        notes.append("ignored: " + ", ".join(ignored[:8]))
    if isinstance(text.get("prompt"), str) and "prompt" not in config:
        config["prompt"] = text["prompt"]
    return {"config": config, "notes": notes}


__all__ = ["Uploads", "UploadError", "open_checked", "png_parameters", "MAX_BYTES", "MAX_PIXELS"]
