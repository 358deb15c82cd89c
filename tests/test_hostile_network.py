"""Hostile networks and hostile model files through the installed `vqclip` command: a hub that never answers,
a hub that serves the wrong bytes, image URLs that drip or flood, `--no-download` (which must keep every
download away, CLIP's too), a checkpoint loaded by path (nothing may be written beside it), a read-only weights
folder, and model configs (CLIP JSON, taming yaml, the weights manifest) that no model can be built from.

Every server listens on 127.0.0.1 only, answers from a table, and stops by itself: handlers loop a bounded number
of times, the silent server accepts for a bounded time, and every fixture shuts its server down.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

VQCLIP = shutil.which("vqclip") or str(Path(sys.executable).parent / "vqclip")
REPO = "timm/vit_base_patch32_clip_224.openai"  # open_clip's hub repo for clip:ViT-B-32/openai
COMMIT = "0123456789abcdef0123456789abcdef01234567"
GOOD = bytes(range(256)) * 64  # what the hub says the weights are (by their sha256)
BAD = bytes(reversed(GOOD))  # what a broken mirror serves instead: same size, other bytes


# ------------------------------------------------------------------------------------------------ servers


@dataclass
class Site:
    """A loopback server's routes (path → handler function) and the requests it saw."""

    base: str
    routes: dict[str, Callable[[Any, str], None]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "TestNetwork/1"

    def _serve(self, method: str) -> None:
        site: Site = self.server.site  # type: ignore[attr-defined]
        site.requests.append((method, self.path))
        route = site.routes.get(self.path.split("?")[0])
        if route is None:
            self.send_error(404, "Not Found")
            return
        try:
            route(self, method)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up: what the test wants
            pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._serve("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve("HEAD")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def site() -> Iterator[Site]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    state = Site(base=f"http://127.0.0.1:{httpd.server_address[1]}")
    httpd.site = state  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def silent() -> Iterator[tuple[int, list[socket.socket]]]:
    """A port that accepts connections and never says a word (until the test ends, 10 minutes at most; then it
    closes them all)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.1)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        until = time.monotonic() + 600
        while not stop.is_set() and time.monotonic() < until:
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1], held
    stop.set()
    thread.join(2)
    for conn in held:
        conn.close()
    listener.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fake_hub(site: Site, served: bytes, *, sha256: str | None = None) -> None:
    """The hub's answers for clip:ViT-B-32/openai: no safetensors file, the .bin behind a 302 whose headers
    carry the commit, the LFS sha256 (of GOOD unless told) and the size; the 'CDN' serves `served`."""
    sha = hashlib.sha256(GOOD).hexdigest() if sha256 is None else sha256

    def head(h: Any, method: str) -> None:
        h.send_response(302)
        h.send_header("Location", "/cdn/blob")
        h.send_header("X-Repo-Commit", COMMIT)
        h.send_header("X-Linked-Etag", f'"{sha}"')
        h.send_header("X-Linked-Size", str(len(served)))
        h.send_header("Content-Length", "0")
        h.end_headers()

    def blob(h: Any, method: str) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(len(served)))
        h.send_header("Content-Type", "application/octet-stream")
        h.end_headers()
        if method == "GET":
            h.wfile.write(served)

    site.routes[f"/{REPO}/resolve/main/open_clip_pytorch_model.bin"] = head
    site.routes["/cdn/blob"] = blob


def drip(h: Any, method: str) -> None:
    """Headers at once, then one byte every half second (40 bytes at most, so it stops by itself)."""
    h.send_response(200)
    h.send_header("Content-Type", "image/png")
    h.send_header("Content-Length", "1000")
    h.end_headers()
    for _ in range(40):
        h.wfile.write(b"\x89")
        h.wfile.flush()
        time.sleep(0.5)


def flood(length: bool) -> Callable[[Any, str], None]:
    """100 MB of image-looking bytes, with a Content-Length that says so or (length=False) none at all."""
    def route(h: Any, method: str) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "image/png")
        if length:
            h.send_header("Content-Length", str(100_000_000))
        h.end_headers()
        block = b"\0" * (1 << 20)
        for _ in range(100):  # bounded: 100 MiB at most, and the client hangs up long before
            h.wfile.write(block)
    return route


def not_found(h: Any, method: str) -> None:
    h.send_error(404, "Not Found")


# ------------------------------------------------------------------------------------------------ running


def env_for(tmp: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "COLUMNS": "300", "NO_PROXY": "*", "HTTPS_PROXY": "", "HTTP_PROXY": "", "ALL_PROXY": "",
           "HF_HUB_OFFLINE": "", **extra}
    return {k: v for k, v in env.items() if v != ""}  # "" unsets


def vqclip(args: list[str], env: dict[str, str], timeout: float = 180) -> tuple[int, str, str, float]:
    start = time.perf_counter()
    proc = subprocess.run([VQCLIP, *args], capture_output=True, text=True, timeout=timeout, env=env)
    return proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - start


def in_process(args: list[str], env: dict[str, str]) -> tuple[int, str, str, float]:
    """The same command in this process (typer's CliRunner): for tables of cases, where a torch start-up per
    case would cost minutes; each table's first case still runs the installed command."""
    from typer.testing import CliRunner

    from vqclip.cli import app

    start = time.perf_counter()
    result = CliRunner().invoke(app, args, env={k: env.get(k) for k in ("VQCLIP_HOME", "HF_HUB_OFFLINE")})
    return result.exit_code, result.stdout, result.stderr, time.perf_counter() - start


def one_error(rc: int, out: str, err: str, *says: str, notes: bool = False) -> str:
    """Exit 1, one stderr line starting "Error: " that says each of `says`, and no traceback. `notes`: a download
    may say what it fetches (and draw its bar) first; the error is still one line, and the last."""
    both = out + "\n[stderr]\n" + err
    assert rc == 1, both
    assert "Traceback" not in both
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("Error: "), both
    assert len(lines) == 1 or notes and not any("Error" in ln for ln in lines[:-1]), both
    for text in says:
        assert text in lines[-1], f"{text!r} not in {lines[-1]!r}"
    return lines[-1]


def generate(tiny: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["generate", "a lighthouse", "--model", str(tiny["vqgan_yaml"]), "--size", "32x32", "--steps", "1",
            "--cutn", "2", "--device", "cpu", "-q", "-o", str(out), *extra]


def tiny_clip(tiny: dict[str, Path]) -> list[str]:
    return ["--clip-model", str(tiny["clip_json"]), "--clip-pretrained", str(tiny["clip_ckpt"])]


# ------------------------------------------------------------------------- item 4: nothing waits forever


def test_clip_download_from_a_silent_hub_fails_in_about_its_timeout(tmp_path: Path, silent: Any) -> None:
    port, held = silent
    env = env_for(tmp_path, HF_ENDPOINT=f"http://127.0.0.1:{port}")
    # The same command against a port that refuses at once: the start-up cost on a busy machine.
    base = vqclip(["weights", "download", "clip:ViT-B-32/openai"],
                  env_for(tmp_path, HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}"))
    one_error(*base[:3], "there is no connection")
    rc, out, err, took = vqclip(["weights", "download", "clip:ViT-B-32/openai", "--timeout", "2"], env)
    line = one_error(rc, out, err, "did not answer", "timed out", "--timeout")
    assert held, "the command never connected"
    assert took < base[3] + 2 + 8, f"took {took:.1f} s against a start-up of {base[3]:.1f} s: {line}"
    assert "Retrying" not in err and "Trying to resume" not in err


def test_image_url_that_drips_is_refused_at_its_deadline(tmp_path: Path, site: Site,
                                                          tiny_models: dict[str, Path]) -> None:
    site.routes["/drip.png"] = drip
    site.routes["/gone.png"] = not_found
    env = env_for(tmp_path, VQCLIP_URL_DEADLINE="2")
    base = vqclip(generate(tiny_models, tmp_path / "out", "--init-image", f"{site.base}/gone.png"), env)
    one_error(*base[:3], "HTTP 404")
    rc, out, err, took = vqclip(generate(tiny_models, tmp_path / "out", "--init-image", f"{site.base}/drip.png"),
                                env)
    one_error(rc, out, err, "init image", "/drip.png", "did not arrive within 2 s", "VQCLIP_URL_DEADLINE")
    assert took < base[3] + 2 + 6, f"took {took:.1f} s against {base[3]:.1f} s for a 404"
    assert not list((tmp_path / "out").glob("*/details.json")), "a run folder for a run that never started"


@pytest.mark.parametrize("length", [True, False], ids=["content-length", "no-length"])
def test_image_url_of_100_mb_is_refused(tmp_path: Path, site: Site, tiny_models: dict[str, Path],
                                         length: bool) -> None:
    site.routes["/big.png"] = flood(length)
    rc, out, err, _ = vqclip(generate(tiny_models, tmp_path / "out", "--image-prompt", f"{site.base}/big.png"),
                             env_for(tmp_path))
    one_error(rc, out, err, "image prompt", "/big.png", "images are limited to 64 MiB")


# -------------------------------------------------------------- item 8: every downloaded weight is verified


def hub_folder(home: Path) -> Path:
    return home / "hf" / "hub" / ("models--" + REPO.replace("/", "--"))


def test_clip_weights_with_the_wrong_bytes_are_deleted_then_the_right_ones_are_kept(
        tmp_path: Path, site: Site, vqclip_home: Path) -> None:
    env = env_for(tmp_path, HF_ENDPOINT=site.base)
    fake_hub(site, BAD)
    rc, out, err, _ = vqclip(["weights", "download", "clip:ViT-B-32/openai"], env)
    line = one_error(rc, out, err, "sha256 mismatch", "deleted", "clip:ViT-B-32/openai", notes=True)
    assert ("GET", "/cdn/blob") in site.requests, line
    blobs = hub_folder(vqclip_home) / "blobs"
    assert not blobs.exists() or not any(blobs.iterdir()), list(blobs.iterdir())
    assert not (hub_folder(vqclip_home) / "snapshots").exists()

    fake_hub(site, GOOD)
    rc, out, err, _ = vqclip(["weights", "download", "clip:ViT-B-32/openai"], env)
    assert rc == 0 and "✓ clip:ViT-B-32/openai" in out, out + err
    snap = hub_folder(vqclip_home) / "snapshots" / COMMIT / "open_clip_pytorch_model.bin"
    assert snap.read_bytes() == GOOD
    assert (hub_folder(vqclip_home) / "refs" / "main").read_text() == COMMIT
    seen = len(site.requests)
    rc, out, err, _ = vqclip(["weights", "download", "clip:ViT-B-32/openai"], env)
    assert rc == 0 and len(site.requests) == seen, "cached weights made a request"


def test_clip_weights_without_a_published_hash_are_not_downloaded(tmp_path: Path, site: Site,
                                                                  vqclip_home: Path) -> None:
    fake_hub(site, GOOD, sha256="")
    rc, out, err, _ = vqclip(["weights", "download", "clip:ViT-B-32/openai"], env_for(tmp_path, HF_ENDPOINT=site.base))
    one_error(rc, out, err, "no sha256", "--clip-pretrained FILE")
    assert ("GET", "/cdn/blob") not in site.requests


# --------------------------------------------------------------------------------- item 11: promises kept


def test_no_download_never_asks_the_hub_for_clip(tmp_path: Path, site: Site, tiny_models: dict[str, Path]) -> None:
    fake_hub(site, GOOD)
    args = generate(tiny_models, tmp_path / "out", "--clip-model", "ViT-B-32", "--clip-pretrained", "openai",
                    "--no-download")
    rc, out, err, _ = vqclip(args, env_for(tmp_path, HF_ENDPOINT=site.base))
    one_error(rc, out, err, "--no-download", "vqclip weights download clip:ViT-B-32/openai")
    assert site.requests == [], site.requests


def test_a_checkpoint_loaded_by_path_leaves_its_folder_alone(tmp_path: Path, tiny_models: dict[str, Path],
                                                             vqclip_home: Path) -> None:
    mine = tmp_path / "my models"
    mine.mkdir()
    for key in ("vqgan_yaml", "vqgan_ckpt"):
        shutil.copy(tiny_models[key], mine / tiny_models[key].name)
    before = sorted(p.name for p in mine.iterdir())
    model = mine / tiny_models["vqgan_yaml"].name
    for _ in range(2):  # the first run writes the cache, the second reads it
        args = [*generate(tiny_models, tmp_path / "out", *tiny_clip(tiny_models)), "--model", str(model)]
        rc, out, err, _ = vqclip(args, env_for(tmp_path))
        assert rc == 0, out + err
        assert sorted(p.name for p in mine.iterdir()) == before
    assert list((vqclip_home / "cache" / "vqgan").glob("tiny_vq-*.safetensors"))


# ------------------------------------------------------------------------- item 10: a read-only home


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Callable[[Path], None]]:
    """Makes folders read-only, for root too (the immutable flag), and writable again afterwards."""
    made: list[Path] = []

    def lock(folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o555)
        made.append(folder)
        if os.geteuid() == 0 and subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode:
            pytest.skip("running as root where the immutable flag is not available: nothing is read-only")

    yield lock
    for folder in made:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
        folder.chmod(0o755)


def test_a_read_only_home_names_the_folder_and_how_to_move_it(tmp_path: Path, read_only: Any) -> None:
    home = tmp_path / "home"
    read_only(home)
    env = env_for(tmp_path, VQCLIP_HOME=str(home))
    rc, out, err, _ = vqclip(["weights", "download", "coco"], env)
    one_error(rc, out, err, f"weights folder {home / 'weights'} is not writable", "VQCLIP_HOME", "--weights-dir")
    locked = tmp_path / "locked"
    read_only(locked)
    rc, out, err, _ = vqclip(["weights", "download", "coco", "--weights-dir", str(locked)], env)
    one_error(rc, out, err, f"weights folder {locked} is not writable", "--weights-dir")


# ---------------------------------------------- item 1: model files no model can be built from, one line


BASE_CLIP = {"embed_dim": 32,
             "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def clip_cfg(tower: str, key: str, value: Any) -> dict[str, Any]:
    cfg = json.loads(json.dumps(BASE_CLIP))
    cfg[tower][key] = value
    return cfg


CLIP_CASES = [
    ("0 heads", clip_cfg("text_cfg", "heads", 0), "text_cfg.heads 0 is out of range"),
    ("head width 0", clip_cfg("vision_cfg", "head_width", 0), "vision_cfg.head_width 0 is out of range"),
    ("negative width", clip_cfg("vision_cfg", "width", -32), "vision_cfg.width -32 is out of range"),
    ("huge sizes", {**clip_cfg("text_cfg", "layers", 256), "vision_cfg": {**BASE_CLIP["vision_cfg"], "width": 16384,
                    "layers": 256, "head_width": 64}}, "billion parameters"),
    ("width not split by heads", clip_cfg("text_cfg", "heads", 3), "not a multiple of heads 3"),
    ("a string for layers", clip_cfg("vision_cfg", "layers", "twelve"), "vision_cfg.layers must be a whole number"),
    ("a float embed_dim", {**BASE_CLIP, "embed_dim": 32.5}, "embed_dim must be an integer"),
    ("a string for a flag", clip_cfg("text_cfg", "no_causal_mask", "yes"), "no_causal_mask has the wrong type"),
    ("an unknown field", clip_cfg("vision_cfg", "depth", 3), "vision_cfg has no field 'depth'"),
    ("patch larger than the image", clip_cfg("vision_cfg", "patch_size", 64), "patch_size 64 is larger"),
    ("timm downloads on its own", {**BASE_CLIP, "vision_cfg": {"timm_model_name": "vit_tiny_patch16_224",
                                                                "timm_model_pretrained": True}},
     "timm_model_pretrained would have timm download"),
    ("NaN", '{"embed_dim": 32, "vision_cfg": {"mlp_ratio": NaN}, "text_cfg": {}}', "is not JSON"),
]


def test_clip_configs_that_build_no_model_are_one_line(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    """One command per config: the first through the installed command, the rest in-process."""
    for i, (name, cfg, says) in enumerate(CLIP_CASES):
        path = tmp_path / f"{name.replace(' ', '_')}.json"
        path.write_text(cfg if isinstance(cfg, str) else json.dumps(cfg))
        run = vqclip if i == 0 else in_process
        rc, out, err, _ = run(generate(tiny_models, tmp_path / "out", "--clip-model", str(path),
                                       "--clip-pretrained", "none"), env_for(tmp_path))
        one_error(rc, out, err, f"CLIP model config {path}", says)


TINY_YAML = """model:
  target: taming.models.vqgan.VQModel
  params:
    embed_dim: 32
    n_embed: 64
    ddconfig: {double_z: false, z_channels: 32, resolution: 32, in_channels: 3, out_ch: 3, ch: 32,
               ch_mult: [1, 2], num_res_blocks: 1, attn_resolutions: [16], dropout: 0.0}
"""

YAML_CASES = [
    ("ch 0", TINY_YAML.replace("ch: 32", "ch: 0"), "ddconfig.ch 0 is out of range"),
    ("negative z_channels", TINY_YAML.replace("z_channels: 32", "z_channels: -1"), "z_channels -1 is out of range"),
    ("ch_mult with a 0", TINY_YAML.replace("ch_mult: [1, 2]", "ch_mult: [1, 0]"), "ch_mult must be a list"),
    ("40 levels", TINY_YAML.replace("ch_mult: [1, 2]", f"ch_mult: {[1] * 40}"), "ch_mult must be a list"),
    ("a string resolution", TINY_YAML.replace("resolution: 32", "resolution: big"), "must be a whole number"),
    ("no n_embed", TINY_YAML.replace("    n_embed: 64\n", ""), "no model.params.n_embed"),
    ("grey output", TINY_YAML.replace("out_ch: 3", "out_ch: 1"), "out_ch 1 is out of range (vqclip needs 3 (RGB))"),
    ("huge decoder", TINY_YAML.replace("ch: 32", "ch: 4096").replace("ch_mult: [1, 2]", "ch_mult: [64, 64]"),
     "billion parameters"),
    ("aliases", "a: &a [1, 1]\nb: &b [*a, *a]\nc: [*b, *b]\n" + TINY_YAML, "uses yaml aliases"),
]


def test_vqgan_configs_that_build_no_model_are_one_line(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    wd = tmp_path / "weights"
    wd.mkdir()
    for i, (name, text, says) in enumerate(YAML_CASES):
        path = tmp_path / f"m{i}.yaml"
        path.write_text(text)
        shutil.copy(tiny_models["vqgan_ckpt"], path.with_suffix(".ckpt"))
        args = [*generate(tiny_models, tmp_path / "out", *tiny_clip(tiny_models)), "--model", str(path)]
        rc, out, err, _ = (vqclip if i == 0 else in_process)(args, env_for(tmp_path))
        one_error(rc, out, err, str(path), says)
        shutil.copy(path, wd / f"bad{i}.yaml")  # the same file as a custom pair: listed as broken, with why
        shutil.copy(tiny_models["vqgan_ckpt"], wd / f"bad{i}.ckpt")
    (wd / "manifest.json").write_text(json.dumps({"version": 1, "files": {"bad0.ckpt": 5, "bad1.ckpt": [1]}}))
    rc, out, err, _ = vqclip(["weights", "list", "--json", "--no-clip", "--weights-dir", str(wd)], env_for(tmp_path))
    assert rc == 0 and "Traceback" not in err, out + err
    rows = {r["name"]: r for r in json.loads(out)}
    for i, (_, _, says) in enumerate(YAML_CASES):
        assert rows[f"bad{i}"]["status"] == "broken" and says in rows[f"bad{i}"]["problem"], rows[f"bad{i}"]


def test_verified_hub_weights_then_load_from_the_cache_without_the_network(
        site: Site, tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end in-process, on the tiny model registered as an open_clip pretrained tag: the run fetches the
    weights from the loopback hub (verified), then open_clip loads them from the cache with the hub offline;
    a second load asks the network nothing."""
    import open_clip

    from vqclip.engine.clip import load_clip, resolve_clip_name
    from vqclip.weights.clip import clip_downloads

    name = resolve_clip_name(str(tiny_models["clip_json"]))
    weights = tiny_models["clip_ckpt"].read_bytes()
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, name, {"loopback": {"hf_hub": "test/tiny-clip/"}})
    monkeypatch.setenv("HF_ENDPOINT", site.base)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    sha = hashlib.sha256(weights).hexdigest()

    def head(h: Any, method: str) -> None:
        h.send_response(200)
        h.send_header("X-Repo-Commit", COMMIT)
        h.send_header("ETag", f'"{sha}"')
        h.send_header("Content-Length", str(len(weights)))
        h.end_headers()
        if method == "GET":
            h.wfile.write(weights)

    site.routes["/test/tiny-clip/resolve/main/open_clip_pytorch_model.bin"] = head
    notes: list[str] = []
    with clip_downloads(True, notes.append):
        model = load_clip(name, "loopback")
    assert model.embed_dim == 32 and any("Downloading CLIP weights" in n for n in notes), notes
    assert [m for m, _ in site.requests] == ["HEAD", "HEAD", "GET"]  # no safetensors; the .bin; its bytes
    seen = len(site.requests)
    with clip_downloads(False):  # cached: even --no-download loads them, and nothing is asked
        load_clip(name, "loopback")
    assert len(site.requests) == seen
