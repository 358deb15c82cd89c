"""CLIP weights: open_clip's pretrained files in the Hugging Face hub cache (which are there, fetching one for
`vqclip weights download clip:MODEL/TAG` or a run), and whether they can be loaded now: cached (then the
network is never asked), or fetched by `hub.fetch_hub_file` (every read bounded by the timeout, the bytes
checked against the hub's sha256) when a server answers within seconds, downloads are allowed (`--no-download`
forbids them through `clip_downloads`) and the hub is not in offline mode.

Nothing here imports torch; open_clip and huggingface_hub are imported only when needed.
"""

from __future__ import annotations

import contextlib
import os
import urllib.parse
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from vqclip.errors import VqclipError, WeightsMissing
from vqclip.weights.download import Note, Progress, default_timeout


@dataclass(frozen=True)
class ClipFetch:
    """How a run may fetch CLIP weights: at all (`--no-download` says no), with which notices, bar and timeout."""

    allowed: bool = True
    note: Note | None = None
    progress: Progress | None = None
    timeout: float | None = None  # seconds per read; None: VQCLIP_TIMEOUT or download.TIMEOUT


_FETCH: ContextVar[ClipFetch] = ContextVar("vqclip_clip_fetch", default=ClipFetch())


@contextlib.contextmanager
def clip_downloads(allowed: bool = True, note: Note | None = None, progress: Progress | None = None,
                   timeout: float | None = None) -> Iterator[None]:
    """While active, CLIP weights that are not cached are fetched this way (or, `allowed=False`, refused in
    one line naming `--no-download`). The run pipeline wraps model loading in it."""
    token = _FETCH.set(ClipFetch(allowed, note, progress, timeout))
    try:
        yield
    finally:
        _FETCH.reset(token)


@dataclass(frozen=True)
class ClipWeights:
    """open_clip weights found in the Hugging Face hub cache."""

    name: str  # clip:MODEL/TAG (several names can share one repo)
    repo: str
    path: Path
    size: int


def parse_clip_name(text: str) -> tuple[str, str]:
    """`clip:ViT-B-32/openai` → ("ViT-B-32", "openai"); the tag defaults to openai."""
    body = text.split(":", 1)[1] if text.startswith("clip:") else text
    model, _, tag = body.partition("/")
    if not model:
        raise VqclipError(f"{text!r}: write CLIP weights as clip:MODEL/TAG, e.g. clip:ViT-B-32/openai")
    return model, tag or "openai"


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache folder, read from the environment at call time (tests redirect it)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def _cached_repos(cache: Path) -> dict[str, tuple[Path, int]]:
    found: dict[str, tuple[Path, int]] = {}
    for repo_dir in sorted(cache.glob("models--*")):
        weights = [p for p in repo_dir.glob("snapshots/*/*")
                   if p.suffix in (".bin", ".safetensors", ".pt", ".pth") and p.exists()]
        if weights:
            repo = repo_dir.name.removeprefix("models--").replace("--", "/")
            found[repo] = (weights[0], sum(p.stat().st_size for p in weights))
    return found


def cached_clip_weights() -> list[ClipWeights]:
    """open_clip pretrained weights present in the HF cache (imports open_clip only when the cache has models)."""
    repos = _cached_repos(hf_hub_cache())
    if not repos:
        return []
    import open_clip

    out = []
    for model, tag in open_clip.list_pretrained():
        hub = open_clip.get_pretrained_cfg(model, tag).get("hf_hub", "")
        repo = "/".join(hub.strip("/").split("/")[:2])
        if repo in repos:
            path, size = repos[repo]
            out.append(ClipWeights(f"clip:{model}/{tag}", repo, path, size))
    return out


def download_clip(text: str, *, timeout: float | None = None, note: Note | None = None,
                  progress: Progress | None = None) -> Path:
    """Fetch open_clip weights into the HF hub cache (what `vqclip generate` will load), verified against the
    hub's sha256; return the file. Cached weights are returned without asking the network. Without a connection
    it fails within seconds; a server that stops answering fails after `timeout` seconds of silence."""
    import open_clip

    model, tag = parse_clip_name(text)
    if model not in open_clip.list_models():
        raise VqclipError(f"unknown CLIP model {model!r}; see open_clip.list_models() (e.g. clip:ViT-B-32/openai)")
    cfg = open_clip.get_pretrained_cfg(model, tag)
    if not cfg:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(model)) or "none"
        raise VqclipError(f"CLIP model {model} has no pretrained tag {tag!r}; known tags: {tags}")
    with clip_downloads(True, note, progress, timeout):
        clip_fetch_mode(model, tag, cfg)
    path = clip_cached(cfg)
    if path is None:  # HF_HUB_OFFLINE is set and nothing is cached
        raise WeightsMissing(clip_missing(model, tag, cfg))
    return path


# ------------------------------------------------------------------------ CLIP weights: cached or reachable?

HF_DEFAULT_ENDPOINT = "https://huggingface.co"
HF_WEIGHTS = "open_clip_pytorch_model.bin"
PROBE_TIMEOUT = 3.0  # seconds for the TCP connection that decides "no connection"


def _clip_source(cfg: Mapping[str, Any]) -> tuple[str | None, list[str], str | None]:
    """(Hugging Face repo, file names the hub may hold, in open_clip's order of preference, plain URL)."""
    hub = str(cfg.get("hf_hub") or "")
    if hub:
        repo, filename = os.path.split(hub)
        filename = filename or HF_WEIGHTS
        safe = ["open_clip_model.safetensors"] if filename == HF_WEIGHTS else \
            [filename[:-4] + ".safetensors"] if filename.endswith((".bin", ".pth")) else []
        return repo, [*safe, filename], None
    return None, [], str(cfg.get("url") or "") or None


def clip_cached(cfg: Mapping[str, Any]) -> Path | None:
    """The cached weights file of an open_clip pretrained config, if any (no network)."""
    if cfg.get("file"):
        return Path(str(cfg["file"]))
    repo, names, url = _clip_source(cfg)
    if repo:
        from huggingface_hub import try_to_load_from_cache

        for name in names:
            hit = try_to_load_from_cache(repo, name, cache_dir=str(hf_hub_cache()))
            if isinstance(hit, str) and os.path.isfile(hit):
                return Path(hit)
        return None
    if url:
        local = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(urllib.parse.urlsplit(url).path)
        return local if local.is_file() else None
    return None


def hub_is_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def unreachable(url: str, timeout: float = PROBE_TIMEOUT) -> str | None:
    """None when a TCP connection to the server of `url` (or to the proxy for it) opens within `timeout`
    seconds; otherwise why not, in a few words. Name resolution runs in a thread so it cannot hang either."""
    import socket
    import threading
    import urllib.request

    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if proxy and host and not urllib.request.proxy_bypass(host):
        pp = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = pp.hostname or host, pp.port or 8080
    result: list[str | None] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(None)
        except socket.gaierror:
            result.append(f"{host} cannot be resolved")
        except OSError as e:
            result.append(f"{host}:{port} refused or unreachable ({e.strerror or type(e).__name__})")

    worker = threading.Thread(target=probe, name="vqclip-probe", daemon=True)
    worker.start()
    worker.join(timeout + 1.0)
    return result[0] if result else f"{host}:{port} did not answer within {timeout:.0f} s"


def clip_fetch_mode(model: str, tag: str, cfg: Mapping[str, Any]) -> str:
    """Make open_clip weights `model/tag` loadable without the hub client touching the network; returns
    "offline" (the hub client then answers from its cache). Cached weights are used as they are; others are
    fetched and verified here, as `clip_downloads` allows. Raises `WeightsMissing` in one line, before any model
    is built, when HF_HUB_OFFLINE is set or downloads are forbidden, when there is no connection (within
    seconds, instead of the hub client's minute of retries), or when the download fails or does not match the
    hub's sha256 (the file is deleted)."""
    if clip_cached(cfg) is not None:
        return "offline"
    if hub_is_offline():
        raise WeightsMissing(clip_missing(model, tag, cfg))
    fetch = _FETCH.get()
    if not fetch.allowed:
        raise WeightsMissing(clip_missing(model, tag, cfg, "--no-download forbids fetching them"))
    repo, names, url = _clip_source(cfg)
    if not repo:
        raise WeightsMissing(f"CLIP weights {model}/{tag} have no Hugging Face source in open_clip ({url or 'none'}); "
                             "download them yourself and pass --clip-pretrained FILE")
    server = os.environ.get("HF_ENDPOINT", "").rstrip("/") or HF_DEFAULT_ENDPOINT
    timeout = fetch.timeout if fetch.timeout is not None else default_timeout()
    why = unreachable(server, min(PROBE_TIMEOUT, timeout))
    if why is not None:
        raise WeightsMissing(clip_missing(model, tag, cfg, f"there is no connection ({why})"))
    from vqclip.weights.hub import fetch_hub_file

    fetch_hub_file(repo, names, hf_hub_cache(), label=f"clip:{model}/{tag}", timeout=timeout, note=fetch.note,
                   progress=fetch.progress)
    return "offline"


def clip_missing(model: str, tag: str, cfg: Mapping[str, Any], why: str | None = None) -> str:
    """The one line for CLIP weights that are not cached and cannot be fetched now: the command, or the copy."""
    why = why or ("HF_HUB_OFFLINE is set" if hub_is_offline() else "they could not be downloaded")
    repo, _names, url = _clip_source(cfg)
    if repo:
        where = f"copy the folder {hf_hub_cache() / ('models--' + repo.replace('/', '--'))} from a machine that has it"
    else:
        where = f"copy {os.path.basename(url or '?')} into ~/.cache/clip"
    return (f"CLIP weights {model}/{tag} are not downloaded and {why}; run `vqclip weights download "
            f"clip:{model}/{tag}` when online, or {where} (or pass --clip-pretrained FILE)")


class hub_offline:
    """While active (when `on`), the Hugging Face hub client answers from its cache and never touches the
    network (its offline mode, flipped for this call only)."""

    def __init__(self, on: bool = True) -> None:
        self.on = on
        self.saved: bool | None = None

    def __enter__(self) -> hub_offline:
        if self.on:
            from huggingface_hub import constants

            self.saved = constants.HF_HUB_OFFLINE
            constants.HF_HUB_OFFLINE = True
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.on and self.saved is not None:
            from huggingface_hub import constants

            constants.HF_HUB_OFFLINE = self.saved


class quiet_root_logger:
    """Libraries that call `logging.error(...)` on the root logger (open_clip does, before raising) print a
    stray `ERROR:root:` line, and install a stderr handler for good; vqclip reports the error itself."""

    def __enter__(self) -> quiet_root_logger:
        import logging

        root = logging.getLogger()
        self.level = root.level
        self.null = logging.NullHandler()
        root.addHandler(self.null)  # so logging.error() does not call basicConfig()
        root.setLevel(logging.CRITICAL + 1)
        return self

    def __exit__(self, *exc: Any) -> None:
        import logging

        root = logging.getLogger()
        root.removeHandler(self.null)
        root.setLevel(self.level)
