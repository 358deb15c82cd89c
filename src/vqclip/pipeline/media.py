"""Images in and out of a run: input images read safely (files and URLs), the PNG with its text chunks. The
videos live in `vqclip.pipeline.video`; their names stay importable from here."""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from vqclip import __version__
from vqclip.errors import VqclipError, one_line, shorten
from vqclip.pipeline.video import VideoWriter, concat_videos, even, interpolate_video, to_uint8  # noqa: F401

MAX_IMAGE_BYTES = 64 * 1024 * 1024
URL_DEADLINE = 120.0  # seconds for a whole image URL, name lookup to last byte (VQCLIP_URL_DEADLINE overrides it)


def open_image(ref: str, what: str) -> tuple[Any, bytes, str]:
    """Read an image file (or http(s) URL) fully; any problem is one line naming the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        if ref.startswith(("http://", "https://")):
            data = read_url(ref, what)
        else:
            path = Path(ref).expanduser()
            if not path.is_file():
                from vqclip.files import path_problem

                problem = path_problem(path)  # a directory, a FIFO (never opened: it would wait), a device…
                problem = "not found" if problem in (None, "does not exist") else problem
                raise VqclipError(f"{what} {ref} {problem}; check the path")
            if path.stat().st_size > MAX_IMAGE_BYTES:  # before reading it all into memory
                raise VqclipError(f"{what} {ref} is larger than 64 MiB; use a smaller image")
            data = path.read_bytes()
        if len(data) > MAX_IMAGE_BYTES:
            raise VqclipError(f"{what} {ref} is larger than 64 MiB; use a smaller image")
        img = Image.open(io.BytesIO(data))
        img.load()
        img = img.convert("RGB")
    except VqclipError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        reason = ("not an image Pillow can read" if isinstance(e, UnidentifiedImageError)
                  else one_line(e, 120, typed=False))
        raise VqclipError(f"cannot read {what} {ref} ({reason}); give a PNG, JPEG or WebP file") from None
    suffix = Path(ref.split("?")[0]).suffix.lower()
    return img, data, suffix if suffix in (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff") else ".png"


def url_deadline() -> float:
    """Seconds an image URL may take in all: `VQCLIP_URL_DEADLINE`, else `URL_DEADLINE`."""
    from vqclip.weights.download import env_seconds

    return env_seconds("VQCLIP_URL_DEADLINE", URL_DEADLINE)


def read_url(url: str, what: str) -> bytes:
    """The bytes at an http(s) URL, whole within `url_deadline()` seconds and at most `MAX_IMAGE_BYTES`, or one
    line saying why not. The transfer runs in a worker thread, so nothing (a name lookup that hangs, a server
    that drips a byte every few seconds) outlasts the deadline; the worker stops itself at the deadline too."""
    deadline = url_deadline()
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["data"] = _read_url(url, what, deadline)
        except BaseException as e:  # handed to the caller's thread
            box["error"] = e

    worker = threading.Thread(target=work, name="vqclip-url", daemon=True)
    worker.start()
    worker.join(deadline + 1.0)
    if "error" in box:
        raise box["error"]
    if "data" in box:
        return box["data"]  # type: ignore[no-any-return]
    raise _too_slow(url, what, deadline, None)


def _too_slow(url: str, what: str, deadline: float, got: int | None) -> VqclipError:
    so_far = "" if got is None else f" ({got:,} bytes had come)"
    return VqclipError(f"{what} {url} did not arrive within {deadline:g} s{so_far}; save the image and pass the "
                       "file, or set VQCLIP_URL_DEADLINE=SECONDS to wait longer")


def _too_big(url: str, what: str, size: str) -> VqclipError:
    return VqclipError(f"{what} {url} is {size}: images are limited to 64 MiB; use a smaller image")


def _read_url(url: str, what: str, deadline: float) -> bytes:
    import http.client
    import urllib.error
    import urllib.request

    from vqclip.errors import one_line
    from vqclip.weights.download import USER_AGENT, default_timeout, human_size

    deadline_at = time.monotonic() + deadline
    per_read = min(default_timeout(), deadline)  # each wait; the loop below holds the total
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
    try:
        resp = urllib.request.urlopen(request, timeout=per_read)  # noqa: S310 (a user-given http(s) URL)
    except urllib.error.HTTPError as e:
        raise VqclipError(f"{what} {url}: the server answered HTTP {e.code} {e.reason}; check the URL") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        why = one_line(reason, 120, typed=False) if isinstance(reason, BaseException) else shorten(str(reason), 120)
        raise VqclipError(f"cannot fetch {what} {url} ({why}); check the URL and the connection") from None
    chunks: list[bytes] = []
    got = 0
    with resp:
        length = resp.headers.get("Content-Length") or ""
        if length.strip().isdigit() and int(length) > MAX_IMAGE_BYTES:  # refused before a byte of the body
            raise _too_big(url, what, human_size(int(length)))
        while True:
            if time.monotonic() > deadline_at:
                raise _too_slow(url, what, deadline, got)
            try:
                block = resp.read1(1 << 16)  # returns what has come, so a slow drip still meets the deadline check
            except (OSError, http.client.HTTPException) as e:
                raise VqclipError(f"{what} {url}: the connection failed after {got:,} bytes "
                                  f"({type(e).__name__}); try again, or save the image and pass the file") from None
            if not block:
                break
            got += len(block)
            if got > MAX_IMAGE_BYTES:
                raise _too_big(url, what, "more than that")
            chunks.append(block)
    return b"".join(chunks)


def png_bytes(image: Any, text: dict[str, str]) -> bytes:
    """Encode the final image as PNG with text chunks carrying the prompt and parameters."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for k, v in text.items():  # a lone surrogate (no UTF-8 for it) goes in as its escape, `\udcff`
        info.add_itxt(k, v.encode("utf-8", "backslashreplace").decode("utf-8"))
    buf = io.BytesIO()
    Image.fromarray(to_uint8(image)).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def image_parameters(config: Any, seed: int, global_step: int, size: tuple[int, int],
                     clip_score: str | None = None) -> dict[str, str]:
    """PNG text chunks. They describe the *image* (total steps, resolved size), not the run, so an image reached
    by a chain of runs carries the same bytes as one reached by a single run with the same settings.
    `clip_score`: the image's CLIP score as JSON (`vqclip.pipeline.score.score_text`), chunk `clip_score`."""
    params = config.model_dump(mode="json")
    params.update({"seed": seed, "steps": global_step, "width": size[0], "height": size[1]})
    for k in ("save_every", "fps", "device", "compile", "low_memory"):
        params.pop(k, None)
    text = {"prompt": config.prompt, "parameters": json.dumps(params, sort_keys=True),
            "Software": f"vqclip {__version__}"}
    if clip_score is not None:
        text["clip_score"] = clip_score
    return text


