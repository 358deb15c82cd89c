"""Verified, resumable HTTP downloads with the standard library (no registry knowledge), and file hashing.

Sources: open_clip `download_pretrained_from_url` (download, then check the sha256 before use) and k-diffusion
`utils.download_file` (a digest mismatch names the file and the URL); resume as `curl -C -` does, with a Range
request from the length of `NAME.part`. A file takes its real name (`os.replace`) only after its size and sha256
check out, so a half-written or wrong file never looks installed. Every socket operation has a timeout and every
retry loop a bound.

Nothing here prints: one-line notices go to a `note` callback and bytes to a `Progress` (the CLI draws Rich bars).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

from vqclip import __version__
from vqclip.errors import VqclipError, WeightsMissing

USER_AGENT = f"vqclip/{__version__} (+urllib)"
CHUNK = 1 << 20
TIMEOUT = 30.0  # seconds without a byte before a connection counts as dead (VQCLIP_TIMEOUT overrides it)
RETRIES = 3  # resumes per URL after a dropped connection
RETRY_WAIT = 1.0  # seconds, times the attempt number
HASH_BAR_MIN = 64 * CHUNK  # smaller files are hashed without reporting progress

Note = Callable[[str], None]  # one-line notices: what is downloaded, a mirror that failed, a paused download


class Progress(Protocol):
    """Where a download or a hash reports its bytes. `start` once the total is known (`done` bytes are there
    already, e.g. a resumed .part), `advance` per block, `stop` at the end (also after an error or Ctrl-C).
    One object may show several bars, one after another."""

    def start(self, label: str, done: int, total: int | None) -> None: ...

    def advance(self, n: int) -> None: ...

    def stop(self) -> None: ...


def env_seconds(name: str, default: float) -> float:
    """A number of seconds from the environment variable `name` (unset or empty: `default`); anything but a
    number from 0 to 86400 is one line naming the variable."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 86400:  # also refuses nan and inf
        raise VqclipError(f"{name}={text[:40]!r} is not a number of seconds between 0 and 86400; "
                          f"set it to e.g. {default:g}, or unset it")
    return value


def default_timeout() -> float:
    """Seconds a download waits for each read when no `--timeout` is given: `VQCLIP_TIMEOUT`, else `TIMEOUT`."""
    return env_seconds("VQCLIP_TIMEOUT", TIMEOUT)


def part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def human_size(n: int | None) -> str:
    """Decimal units, as download tools show them: "980.1 MB", "1 byte", "999 bytes"."""
    if n is None:
        return "unknown size"
    if n == 1:
        return "1 byte"
    if n < 1000:
        return f"{n:,} bytes"
    for i, suffix in enumerate(("kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"), 2):
        unit = 1000**i
        if n < unit:
            break
    return f"{1000 * n / unit:,.1f} {suffix}"


# ----------------------------------------------------------------------------------------------- hashing


def sha256_file(path: Path, progress: Progress | None = None, label: str | None = None) -> str:
    """sha256 of a file; a big one reports to `progress` ("checking LABEL") when one is given."""
    digest = hashlib.sha256()
    size = path.stat().st_size
    bar = progress if size >= HASH_BAR_MIN else None
    with open(path, "rb") as fh:
        if bar is not None:
            bar.start(f"checking {label or path.name}", 0, size)
        try:
            for block in iter(lambda: fh.read(CHUNK), b""):
                digest.update(block)
                if bar is not None:
                    bar.advance(len(block))
        finally:
            if bar is not None:
                bar.stop()
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------- downloads


class DownloadError(Exception):
    """One URL failed. `network`: no answer at all (offline?); `resumable`: the .part is good, retry with Range."""

    def __init__(self, url: str, reason: str, *, network: bool = False, resumable: bool = False) -> None:
        super().__init__(f"{url}: {reason}")
        self.url, self.reason, self.network, self.resumable = url, reason, network, resumable


def looks_like_html(head: bytes, content_type: str = "") -> bool:
    """A login page, a 'file not found' page or a host's download interstitial instead of the file."""
    if "text/html" in content_type.lower():
        return True
    start = head[:1024].lstrip().lower()
    return start.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or b"<html" in start[:256]


def _open(url: str, offset: int, timeout: float) -> Any:
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # the .part already holds the whole file (or garbage): the checks decide
            return None
        raise DownloadError(url, f"HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", None) or e
        raise DownloadError(url, f"no connection ({reason})", network=True) from None


def fetch_to_part(url: str, part: Path, *, size: int | None, timeout: float,
                  on_start: Callable[[int, int | None], None], on_bytes: Callable[[int], None]) -> None:
    """Stream `url` into `part`, resuming from its current length with a Range request."""
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset > size:
        part.unlink()
        offset = 0
    if size is not None and offset == size:
        return  # complete already; the hash decides
    resp = _open(url, offset, timeout)
    if resp is None and size is None:  # 416 and nothing to check the .part against: start over
        part.unlink()
        offset = 0
        resp = _open(url, offset, timeout)
    if resp is None:
        return
    with resp:
        ctype = resp.headers.get("Content-Type", "") or ""
        if offset and resp.status != 206:  # server ignored Range: start over
            offset = 0
        length = resp.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else size
        if size is not None and total is not None and total != size:
            if looks_like_html(b"", ctype):
                raise DownloadError(url, "served an HTML page instead of the file (dead link or login page)")
            raise DownloadError(url, f"wrong size: the server has {total} bytes, expected {size}")
        on_start(offset, total)
        _stream(url, resp, part, offset, total, ctype, on_bytes)


def _stream(url: str, resp: Any, part: Path, offset: int, total: int | None, ctype: str,
            on_bytes: Callable[[int], None]) -> None:
    written = offset
    first = _read(url, resp, written)
    if looks_like_html(first if offset == 0 else b"", ctype):
        raise DownloadError(url, "served an HTML page instead of the file (dead link or login page)")
    with open(part, "ab" if offset else "wb") as fh:  # local errors (disk full…) propagate as themselves
        block = first
        while block:
            fh.write(block)
            written += len(block)
            on_bytes(len(block))
            block = _read(url, resp, written)
    if total is not None and written < total:
        raise DownloadError(url, f"connection closed after {written} of {total} bytes", network=True,
                            resumable=True)


def _read(url: str, resp: Any, written: int) -> bytes:
    try:
        return resp.read(CHUNK)
    except (http.client.HTTPException, OSError) as e:
        raise DownloadError(url, f"connection lost after {written} bytes ({type(e).__name__})",
                            network=True, resumable=written > 0) from None


def download_file(urls: Iterable[str], dest: Path, *, size: int | None, sha256: str | None,
                  note: Note | None = None, progress: Progress | None = None, label: str | None = None,
                  timeout: float | None = None, retries: int | None = None,
                  retry_wait: float | None = None, fix: str | None = None) -> tuple[str, str]:
    """Download `dest` from the first URL that yields the right bytes; return (sha256, url).

    Writes `dest.part`, resumes it with Range requests after a dropped connection (up to `retries` times per
    URL), checks size and sha256 (when known), then `os.replace`s it into place. A bad file is deleted and the
    next mirror is tried. Ctrl-C keeps the .part for the next run. Raises `WeightsMissing` when every URL fails
    (ending with `fix` when given, else the `vqclip weights download` / `verify` advice for registry models).
    """
    part = part_path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    _check_free_space(dest, size)
    timeout = default_timeout() if timeout is None else timeout
    retries = RETRIES if retries is None else retries
    retry_wait = RETRY_WAIT if retry_wait is None else retry_wait
    failures: list[DownloadError] = []
    urls = list(urls)
    for i, url in enumerate(urls):
        try:
            got = _download_one(url, part, size=size, sha256=sha256, note=note, progress=progress,
                                label=label or dest.name, timeout=timeout, retries=retries, retry_wait=retry_wait)
        except DownloadError as e:
            failures.append(e)
            if note is not None and i + 1 < len(urls):  # the last failure is the error itself: said once
                note(f"download from {e.url} failed: {e.reason}; trying the next mirror")
            continue
        os.replace(part, dest)
        return got, url
    raise _all_failed(label or dest.name, dest, failures, fix)


def _download_one(url: str, part: Path, *, size: int | None, sha256: str | None, note: Note | None,
                  progress: Progress | None, label: str, timeout: float, retries: int, retry_wait: float) -> str:
    resumed_fresh = False
    attempt = 0
    while True:
        started_at = part.stat().st_size if part.exists() else 0
        try:
            _fetch(url, part, size=size, timeout=timeout, note=note, progress=progress, label=label)
        except DownloadError as e:
            if e.resumable and attempt < retries:
                attempt += 1
                if note is not None:  # one line per retry, never the library's multi-line warnings
                    note(f"{label}: {e.reason}; resuming (try {attempt} of {retries})")
                time.sleep(retry_wait * attempt)
                continue
            if not e.resumable and not e.network and part.exists() and started_at == 0:
                part.unlink()  # an HTML page or a wrong file: nothing worth resuming
            raise
        got = _check_part(url, part, size=size, sha256=sha256)
        if got is not None:
            return got
        part.unlink()
        if started_at > 0 and not resumed_fresh:  # the old .part may have been the bad bytes: once from scratch
            resumed_fresh = True
            continue
        raise DownloadError(url, f"sha256 mismatch (expected {sha256}); the downloaded file was deleted")


def _check_part(url: str, part: Path, *, size: int | None, sha256: str | None) -> str | None:
    """sha256 of a complete .part, or None when it does not match; a wrong size raises."""
    have = part.stat().st_size if part.exists() else 0
    if size is not None and have != size:
        part.unlink(missing_ok=True)
        raise DownloadError(url, f"wrong size: got {have} bytes, expected {size}; the download was deleted")
    with open(part, "rb") as fh:
        head = fh.read(1024)
    if looks_like_html(head):
        part.unlink()
        raise DownloadError(url, "served an HTML page instead of the file (dead link or login page)")
    got = sha256_file(part)
    return got if sha256 is None or got == sha256 else None


def _fetch(url: str, part: Path, *, size: int | None, timeout: float, note: Note | None,
           progress: Progress | None, label: str) -> None:
    """`fetch_to_part`, reporting bytes (done, rate, ETA) to `progress` once the server has answered."""
    shown = False

    def start(offset: int, total: int | None) -> None:
        nonlocal shown
        if progress is not None:
            progress.start(label, offset, total)
            shown = True

    def advance(n: int) -> None:
        if progress is not None and shown:
            progress.advance(n)

    try:
        fetch_to_part(url, part, size=size, timeout=timeout, on_start=start, on_bytes=advance)
    except KeyboardInterrupt:
        if progress is not None and shown:
            progress.stop()
            shown = False
        if note is not None:
            kept = part.stat().st_size if part.exists() else 0
            note(f"Download paused: {human_size(kept)} kept in {part}; run the same command to resume.")
        raise
    finally:
        if progress is not None and shown:  # a bar that never started is never stopped (no empty line)
            progress.stop()


def _check_free_space(dest: Path, size: int | None) -> None:
    if size is None:
        return
    have = part_path(dest).stat().st_size if part_path(dest).exists() else 0
    free = shutil.disk_usage(dest.parent).free
    if free < size - have:
        raise VqclipError(f"{dest.name} needs {human_size(size - have)} but only {human_size(free)} is free in "
                          f"{dest.parent}; free some space or pass --weights-dir")


def _all_failed(label: str, dest: Path, failures: list[DownloadError], fix: str | None = None) -> WeightsMissing:
    first = failures[0].url if failures else "(no URL)"
    if failures and all(f.network and not f.resumable for f in failures):
        return WeightsMissing(f"cannot download {label}: {failures[0].reason}; " + (fix or (
            f"run `vqclip weights download {label}` when online, or save {first} as {dest}")))
    detail = "; ".join(f"{f.url}: {f.reason}" for f in failures)
    kept = " (the partial file is kept; the same command resumes it)" if part_path(dest).exists() else ""
    if fix:
        return WeightsMissing(f"could not download {label}: {detail}{kept}; {fix}")
    return WeightsMissing(f"could not download {label}: {detail}{kept}; run `vqclip weights download {label}` to "
                          f"try again, or save a good copy as {dest} and run `vqclip weights verify {label}`")
