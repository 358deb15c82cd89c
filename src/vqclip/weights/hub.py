"""CLIP weights from the Hugging Face hub, fetched by vqclip itself rather than by the hub client, so that every
read has the user's deadline (`--timeout`, else `VQCLIP_TIMEOUT`), retries stay bounded and quiet, and no file
enters the cache before its sha256 matches the one the hub publishes (the `X-Linked-Etag` of an LFS file, which
the hub client also uses as the blob's name).

The file lands in the hub client's own cache layout (documented in huggingface_hub's "cache system" guide):
`models--ORG--NAME/blobs/<sha256>`, `snapshots/<commit>/<file>` linking to it and `refs/main` naming the commit,
so open_clip then loads it with the hub in offline mode. Values the server sends (commit, hash) become file
names only after they are checked to be plain names.

Nothing here prints or imports torch: notices go to a `note` callback and bytes to a `download.Progress`.
"""

from __future__ import annotations

import http.client
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vqclip.errors import VqclipError, WeightsMissing, one_line
from vqclip.weights.download import USER_AGENT, Note, Progress, download_file, human_size
from vqclip.weights.store import ensure_writable

SHA256 = re.compile(r"^[0-9a-f]{64}$")
PLAIN_NAME = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]{0,127}$")  # a commit id or a repo part: never a path
REVISION = "main"
MAX_REDIRECTS = 3  # relative redirects inside the hub (renamed repos) followed to reach the file's headers


@dataclass(frozen=True)
class HubFile:
    """What the hub says about one file before it is downloaded."""

    repo: str
    filename: str
    commit: str
    sha256: str | None  # None: the hub gave no sha256 (not an LFS file); such a file is refused
    size: int | None
    url: str  # where the bytes are (the CDN address the hub redirects to, or the resolve URL itself)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Keep a redirect's own headers: the hub puts the file's hash and commit on its 302, not on the CDN's 200."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "").rstrip("/") or "https://huggingface.co"


def resolve_url(repo: str, filename: str) -> str:
    return f"{endpoint()}/{repo}/resolve/{REVISION}/{urllib.parse.quote(filename)}"


def file_info(repo: str, filename: str, timeout: float) -> HubFile | None:
    """The hub's headers for `repo/filename` (a HEAD request; every wait bounded by `timeout`), or None when the
    repo has no such file. Raises `WeightsMissing` when the hub cannot be asked or answers nonsense."""
    url = resolve_url(repo, filename)
    opener = urllib.request.build_opener(_NoRedirect)
    for _ in range(MAX_REDIRECTS + 1):
        request = urllib.request.Request(url, method="HEAD",
                                         headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
        try:
            with opener.open(request, timeout=timeout) as resp:
                status, headers = resp.status, resp.headers
        except urllib.error.HTTPError as e:
            status, headers = e.code, e.headers
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            reason = getattr(e, "reason", None) or e
            raise WeightsMissing(f"the Hugging Face hub at {endpoint()} did not answer for {repo}/{filename} "
                                 f"({one_line(reason, 120) if isinstance(reason, BaseException) else reason}); "
                                 "check the connection, or pass --timeout SECONDS "
                                 "(VQCLIP_TIMEOUT for generate) to wait longer") from None
        if status == 404:
            return None
        location = headers.get("Location") or ""
        target = urllib.parse.urljoin(url, location) if location else url
        if status in (301, 302, 303, 307, 308) and not headers.get("X-Repo-Commit"):
            if urllib.parse.urlsplit(target).netloc != urllib.parse.urlsplit(url).netloc:
                break  # a redirect away from the hub without the file's headers: nothing to verify against
            url = target
            continue
        if status >= 400:
            raise WeightsMissing(f"the Hugging Face hub refused {repo}/{filename} (HTTP {status}); "
                                 "check the model name, or pass --clip-pretrained FILE")
        return _hub_file(repo, filename, headers, target, status)
    raise WeightsMissing(f"the Hugging Face hub at {endpoint()} sent no file headers for {repo}/{filename}; "
                         "pass --clip-pretrained FILE to load a local copy")


def _hub_file(repo: str, filename: str, headers: Any, url: str, status: int) -> HubFile:
    commit = (headers.get("X-Repo-Commit") or "").strip()
    if not PLAIN_NAME.match(commit):
        raise WeightsMissing(f"the Hugging Face hub at {endpoint()} gave {repo}/{filename} no usable commit id "
                             f"({commit[:60]!r}); pass --clip-pretrained FILE to load a local copy")
    etag = (headers.get("X-Linked-Etag") or headers.get("ETag") or "").strip().removeprefix("W/").strip('"')
    size_text = headers.get("X-Linked-Size") or (headers.get("Content-Length") if status == 200 else None) or ""
    size = int(size_text) if size_text.strip().isdigit() else None
    return HubFile(repo, filename, commit, etag.lower() if SHA256.match(etag.lower()) else None, size, url)


def fetch_hub_file(repo: str, names: list[str], cache: Path, *, label: str, timeout: float,
                   note: Note | None = None, progress: Progress | None = None) -> Path:
    """Download the first of `names` that `repo` has into the hub cache at `cache`, verified against the hub's
    sha256; return the snapshot path open_clip will load. A file with no published sha256 is refused; a file
    whose bytes do not match is deleted and the error says so."""
    if not all(PLAIN_NAME.match(part) for part in repo.split("/")) or repo.count("/") != 1:
        raise VqclipError(f"{label}: {repo!r} is not a Hugging Face repo name (ORG/NAME)")
    info = None
    for name in names:
        info = file_info(repo, name, timeout)
        if info is not None:
            break
    if info is None:
        raise WeightsMissing(f"the Hugging Face hub has none of {', '.join(names)} in {repo}; "
                             "pass --clip-pretrained FILE to load a local copy")
    if info.sha256 is None:
        raise WeightsMissing(f"the Hugging Face hub gave no sha256 for {repo}/{info.filename}, so it cannot be "
                             "verified; not downloading it. Pass --clip-pretrained FILE to load a copy you trust")
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    ensure_writable(cache, "the Hugging Face cache", "set HF_HOME (or HF_HUB_CACHE) to a writable folder")
    blob = repo_dir / "blobs" / info.sha256
    if note is not None:
        note(f"Downloading CLIP weights {label} ({human_size(info.size)}) from {urllib.parse.urlsplit(info.url).netloc}"
             f" into {cache}; first use only.")
    if not (blob.is_file() and info.size in (None, blob.stat().st_size)):
        download_file([info.url], blob, size=info.size, sha256=info.sha256, note=note, progress=progress,
                      label=label, timeout=timeout, retries=None,
                      fix=f"run `vqclip weights download {label}` to try again, or pass --clip-pretrained FILE")
    return _link_snapshot(repo_dir, info, blob)


def _link_snapshot(repo_dir: Path, info: HubFile, blob: Path) -> Path:
    """snapshots/<commit>/<file> → ../../blobs/<sha256> (a copy where links are not allowed), refs/main."""
    from vqclip.files import atomic_write_bytes, temp_path

    snap = repo_dir / "snapshots" / info.commit / info.filename
    snap.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(snap)
    try:
        os.symlink(os.path.relpath(blob, snap.parent), tmp)
    except OSError:  # no symlinks here (some Windows setups): the hub client copies too
        import shutil

        shutil.copyfile(blob, tmp)
    os.replace(tmp, snap)
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(repo_dir / "refs" / REVISION, info.commit.encode())
    return snap
