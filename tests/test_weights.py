"""Weights: registry, resolve, verified resumable downloads, manifest, CLI — against a local HTTP server.

The server (http.server on 127.0.0.1, port 0, in a thread) serves small generated files and records every
request; tests inject their own registry entries, so nothing here depends on the real URLs or the network.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import json
import os
import socket
import sys
import subprocess
import threading
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import pytest
from rich.console import Console
from typer.testing import CliRunner

from vqclip.commands.weights import RichTransfer, rich_note
from vqclip.errors import VqclipError, WeightsMissing
from vqclip.weights import download as D  # monkeypatched: TIMEOUT, RETRY_WAIT, fetch_to_part, shutil
from vqclip.weights import registry as R  # monkeypatched: WEIGHTS (the table the CLI reads)
from vqclip.weights import resolve as RS  # monkeypatched: sha256_file
from vqclip.weights.download import part_path
from vqclip.weights.installed import all_status, registry_status
from vqclip.weights.model_yaml import validate_yaml
from vqclip.weights.registry import WeightSpec, packaged_yaml
from vqclip.weights.resolve import ModelFiles, install_registry_model, resolve_model
from vqclip.weights.store import CUSTOM, TOFU, VERIFIED, manifest_entry, weights_dir

TINY_YAML = """model:
  target: taming.models.vqgan.VQModel
  params:
    embed_dim: 16
    n_embed: 64
    ddconfig: {double_z: false, z_channels: 32, resolution: 32, in_channels: 3, out_ch: 3, ch: 32,
               ch_mult: [1, 2], num_res_blocks: 1, attn_resolutions: [16], dropout: 0.0}
"""
HTML = b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>Please log in</body></html>\n"


# --------------------------------------------------------------------------------------------- the server


@dataclass
class Route:
    body: bytes
    status: int = 200
    content_type: str = "application/octet-stream"
    cut_after: int | None = None  # send only this many body bytes, then drop the connection…
    cuts: int = 0  # …for this many requests
    honor_range: bool = True


@dataclass
class Server:
    base: str
    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    def serve(self, path: str, body: bytes, **kw: Any) -> str:
        self.routes[path] = Route(body, **kw)
        return self.url(path)

    def paths(self) -> list[str]:
        return [p for p, _ in self.requests]


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "TestWeights/1"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        state: Server = self.server.state  # type: ignore[attr-defined]
        state.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
        route = state.routes.get(self.path)
        if route is None or route.status == 404:
            self.send_error(404, "Not Found")
            return
        if route.status != 200:
            self.send_error(route.status)
            return
        body, start = route.body, 0
        asked = self.headers.get("Range")
        if asked and route.honor_range:
            start = int(asked.split("=", 1)[1].split("-", 1)[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        chunk = body[start:]
        self.send_header("Content-Type", route.content_type)
        self.send_header("Content-Length", str(len(chunk)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if route.cuts > 0 and route.cut_after is not None:
            route.cuts -= 1
            self.wfile.write(chunk[: route.cut_after])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(chunk)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[Server]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    state = Server(base=f"http://127.0.0.1:{httpd.server_address[1]}")
    httpd.state = state  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def fast_and_local(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxies for 127.0.0.1, short timeouts, no waiting between resumes."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setattr(D, "TIMEOUT", 5.0)
    monkeypatch.setattr(D, "RETRY_WAIT", 0.0)


def payload(n: int = 300_000, seed: int = 1) -> bytes:
    """Deterministic bytes that start like a torch zip checkpoint."""
    block = hashlib.sha256(str(seed).encode()).digest()
    return (b"PK\x03\x04" + block * (n // len(block) + 1))[:n]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_spec(server: Server, name: str = "tiny", data: bytes | None = None, *, known_sha: bool = True,
              known_size: bool = True, ckpt_path: str | None = None, mirrors: tuple[str, ...] = (),
              serve: bool = True) -> WeightSpec:
    data = payload() if data is None else data
    path = ckpt_path or f"/{name}.ckpt"
    if serve:
        server.serve(path, data)
    server.serve(f"/{name}.yaml", TINY_YAML.encode(), content_type="text/yaml")
    return WeightSpec(name=name, description="test model", architecture="VQModel f2, n_embed 64",
                        size=len(data) if known_size else None, sha256=sha(data) if known_sha else None,
                        url=server.url(path), mirrors=mirrors, yaml_urls=(server.url(f"/{name}.yaml"),))


@pytest.fixture
def folder(vqclip_home: Path) -> Path:
    return weights_dir()


def install(spec: WeightSpec, folder: Path, **kw: Any) -> ModelFiles:
    return install_registry_model(spec, folder, **kw)


def rich(console: Console) -> dict[str, Any]:
    """The CLI's Rich note and progress bar, drawing into `console`."""
    return {"note": rich_note(console), "progress": RichTransfer(console)}


def ckpt_requests(server: Server) -> list[tuple[str, dict[str, str]]]:
    return [(p, h) for p, h in server.requests if p.endswith(".ckpt")]


# ------------------------------------------------------------------------------------------- the registry


def test_registry_entries_are_complete() -> None:
    assert {"vqgan_imagenet_f16_16384", "vqgan_imagenet_f16_1024", "vqgan_gumbel_f8_8192", "wikiart_16384",
            "sflckr", "coco", "faceshq"} <= set(R.WEIGHTS)
    for name, spec in R.WEIGHTS.items():
        assert spec.name == name and spec.description and spec.architecture and spec.license
        assert all(u.startswith("https://") for u in (*spec.urls, *spec.yaml_urls)), name
        assert spec.sha256 is None or len(spec.sha256) == 64 and int(spec.sha256, 16) >= 0
        yaml_path = packaged_yaml(name)
        assert yaml_path is not None, f"{name}: no packaged yaml"
        validate_yaml(yaml_path)
    assert R.WEIGHTS["vqgan_imagenet_f16_16384"].size == 980092370
    assert all("debc22c8f285c7734980c464ff992d335dde6e9a" in s.url for s in R.WEIGHTS.values() if "Somnai" in s.url)
    assert [n for n, s in R.WEIGHTS.items() if s.sha256 is None] == ["vqgan_imagenet_f16_1024"]


def test_packaged_yamls_match_the_architectures() -> None:
    from vqclip.engine.vqgan import read_spec

    expect = {"vqgan_imagenet_f16_16384": (16384, 16, False), "vqgan_imagenet_f16_1024": (1024, 16, False),
              "vqgan_gumbel_f8_8192": (8192, 8, True), "wikiart_16384": (16384, 16, False),
              "sflckr": (1024, 16, False), "coco": (8192, 16, False), "faceshq": (1024, 16, False)}
    for name, (n_embed, factor, gumbel) in expect.items():
        spec = read_spec(packaged_yaml(name))  # type: ignore[arg-type]
        assert (spec.n_embed, spec.factor, spec.gumbel, spec.embed_dim) == (n_embed, factor, gumbel, 256), name


def test_weights_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, vqclip_home: Path) -> None:
    assert weights_dir(tmp_path / "x") == tmp_path / "x"
    assert weights_dir() == vqclip_home / "weights"
    monkeypatch.delenv("VQCLIP_HOME")
    assert weights_dir().parts[-2:] == ("vqclip", "weights")


# --------------------------------------------------------------------------------------------- downloads


def test_happy_path_downloads_verifies_and_records(server: Server, folder: Path) -> None:
    spec = make_spec(server)
    files = install(spec, folder)
    assert files.ckpt_path == folder / "tiny.ckpt" and files.source == "registry"
    assert files.ckpt_path.read_bytes() == server.routes["/tiny.ckpt"].body
    assert files.sha256 == spec.sha256 and files.yaml_path == folder / "tiny.yaml"
    assert not part_path(files.ckpt_path).exists()
    entry = manifest_entry(folder, files.ckpt_path)
    assert entry and entry["status"] == VERIFIED and entry["sha256"] == spec.sha256
    assert entry["url"] == spec.url


def test_download_shows_progress_and_says_what_and_how_big(server: Server, folder: Path) -> None:
    spec = make_spec(server)
    buf = StringIO()
    install_registry_model(spec, folder, **rich(Console(file=buf, width=120)))
    text = buf.getvalue()
    assert "Downloading tiny (300.0 kB" in text and "first use only" in text
    assert "300.0/300.0 kB" in text  # the progress bar's byte column


def test_interrupted_download_resumes_on_the_next_run(server: Server, folder: Path) -> None:
    data = payload(300_000)
    spec = make_spec(server, data=data, serve=False)
    server.serve("/tiny.ckpt", data, cut_after=120_000, cuts=1)
    with pytest.raises(WeightsMissing, match="partial file is kept"):
        install(spec, folder, retries=0)
    part = part_path(folder / "tiny.ckpt")
    assert part.stat().st_size == 120_000 and not (folder / "tiny.ckpt").exists()
    status = registry_status(spec, folder)
    assert (status.status, status.partial_bytes, status.installed) == ("partial", 120_000, False)
    files = install(spec, folder)
    assert files.ckpt_path.read_bytes() == data
    (_, first), (_, second) = ckpt_requests(server)
    assert "range" not in first and second["range"] == "bytes=120000-"


def test_dropped_connection_is_resumed_within_one_download(server: Server, folder: Path) -> None:
    data = payload(300_000)
    spec = make_spec(server, data=data, serve=False)
    server.serve("/tiny.ckpt", data, cut_after=50_000, cuts=2)
    notes: list[str] = []
    files = install(spec, folder, retries=3, note=notes.append)
    assert files.ckpt_path.read_bytes() == data
    ranges = [h.get("range") for _, h in ckpt_requests(server)]
    assert ranges == [None, "bytes=50000-", "bytes=100000-"]
    retries = [n for n in notes if "resuming" in n]  # each retry is one line that says which try it is
    assert len(retries) == 2 and all("\n" not in n for n in retries) and "try 2 of 3" in retries[1], notes


def test_server_that_ignores_range_restarts_from_zero(server: Server, folder: Path) -> None:
    data = payload(200_000)
    spec = make_spec(server, data=data, serve=False)
    server.serve("/tiny.ckpt", data, honor_range=False)
    part_path(folder / "tiny.ckpt").parent.mkdir(parents=True, exist_ok=True)
    part_path(folder / "tiny.ckpt").write_bytes(b"junk" * 100)
    assert install(spec, folder).ckpt_path.read_bytes() == data


def test_part_longer_than_the_file_starts_over_when_size_is_unknown(server: Server, folder: Path) -> None:
    data = payload(100_000)
    spec = make_spec(server, data=data, known_sha=False, known_size=False)
    folder.mkdir(parents=True, exist_ok=True)
    part_path(folder / "tiny.ckpt").write_bytes(payload(150_000, seed=5))  # left over from something else
    assert install(spec, folder).ckpt_path.read_bytes() == data
    assert [h.get("range") for _, h in ckpt_requests(server)] == ["bytes=150000-", None]


def test_sha_mismatch_deletes_the_file_and_names_url_and_fix(server: Server, folder: Path) -> None:
    spec = make_spec(server)
    server.serve("/tiny.ckpt", payload(seed=2))  # same size, other bytes
    with pytest.raises(WeightsMissing) as err:
        install(spec, folder)
    msg = err.value.message
    assert spec.url in msg and "sha256 mismatch" in msg and "vqclip weights download tiny" in msg
    assert "\n" not in msg
    assert not (folder / "tiny.ckpt").exists() and not part_path(folder / "tiny.ckpt").exists()


def test_first_mirror_404_then_second_mirror(server: Server, folder: Path) -> None:
    data = payload()
    server.serve("/mirror2/tiny.ckpt", data)
    spec = make_spec(server, data=data, serve=False, ckpt_path="/gone/tiny.ckpt",
                     mirrors=(server.url("/mirror2/tiny.ckpt"),))
    files = install(spec, folder)
    assert files.ckpt_path.read_bytes() == data
    assert [p for p, _ in ckpt_requests(server)] == ["/gone/tiny.ckpt", "/mirror2/tiny.ckpt"]
    assert manifest_entry(folder, files.ckpt_path)["url"] == server.url("/mirror2/tiny.ckpt")  # type: ignore


@pytest.mark.parametrize("content_type,known", [("text/html; charset=utf-8", True),
                                                ("application/octet-stream", False)])
def test_html_page_instead_of_checkpoint_is_detected(server: Server, folder: Path, content_type: str,
                                                     known: bool) -> None:
    spec = make_spec(server, known_sha=known, known_size=known, serve=False)
    server.serve("/tiny.ckpt", HTML, content_type=content_type)
    with pytest.raises(WeightsMissing, match="HTML page"):
        install(spec, folder)
    assert not (folder / "tiny.ckpt").exists() and not part_path(folder / "tiny.ckpt").exists()


def test_wrong_size_is_reported(server: Server, folder: Path) -> None:
    spec = make_spec(server, data=payload(1000), serve=False)
    server.serve("/tiny.ckpt", payload(900))
    with pytest.raises(WeightsMissing, match="wrong size.*900.*expected 1000"):
        install(spec, folder)
    assert not (folder / "tiny.ckpt").exists()


def test_good_cached_file_makes_no_request_and_is_not_rehashed(server: Server, folder: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    spec = make_spec(server)
    install(spec, folder)
    server.requests.clear()
    monkeypatch.setattr(RS, "sha256_file", lambda *a, **k: pytest.fail("a verified file was hashed again"))
    files = resolve_model("tiny", registry={"tiny": spec}, download=True, **rich(Console(file=StringIO())))
    assert files.sha256 == spec.sha256 and server.requests == []


def test_corrupt_cached_file_is_downloaded_again(server: Server, folder: Path) -> None:
    spec = make_spec(server)
    ckpt = install(spec, folder).ckpt_path
    ckpt.write_bytes(payload(seed=3))  # same size, new mtime, wrong bytes
    with pytest.raises(WeightsMissing, match="corrupt.*vqclip weights download tiny"):
        install(spec, folder, download=False)
    server.requests.clear()
    files = install(spec, folder)
    assert files.ckpt_path.read_bytes() == server.routes["/tiny.ckpt"].body
    assert len(ckpt_requests(server)) == 1


def test_trust_on_first_use_is_recorded_and_enforced(server: Server, folder: Path) -> None:
    spec = make_spec(server, known_sha=False, known_size=False)
    files = install(spec, folder)
    entry = manifest_entry(folder, files.ckpt_path)
    assert entry and entry["status"] == TOFU and entry["sha256"] == sha(server.routes["/tiny.ckpt"].body)
    assert registry_status(spec, folder).status == TOFU
    files.ckpt_path.unlink()  # lost locally, and the server now has other bytes: the recorded hash wins
    server.serve("/tiny.ckpt", payload(seed=9))
    with pytest.raises(WeightsMissing, match="sha256 mismatch"):
        install(spec, folder)


def test_offline_gives_one_line_with_command_and_url(folder: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/tiny.ckpt"
    spec = dataclasses.replace(R.WEIGHTS["coco"], url=url, mirrors=())  # the packaged yaml needs no network
    with pytest.raises(WeightsMissing) as err:
        resolve_model("coco", registry={"coco": spec}, **rich(Console(file=StringIO())))
    msg = err.value.message
    assert "no connection" in msg and "vqclip weights download coco" in msg and url in msg
    assert "\n" not in msg


def test_not_downloaded_and_no_download_names_file_command_and_url(folder: Path) -> None:
    with pytest.raises(WeightsMissing) as err:
        resolve_model("vqgan_imagenet_f16_16384", download=False)
    msg = err.value.message
    assert str(folder / "vqgan_imagenet_f16_16384.ckpt") in msg
    assert "vqclip weights download vqgan_imagenet_f16_16384" in msg
    assert R.WEIGHTS["vqgan_imagenet_f16_16384"].url in msg and "980.1 MB" in msg


def test_ctrl_c_keeps_the_part_file(server: Server, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = payload(3_000_000)
    spec = make_spec(server, data=data)
    real = D.fetch_to_part

    def interrupted(url: str, *a: Any, on_bytes: Any, **k: Any) -> None:
        def tick(n: int) -> None:  # Ctrl-C arrives after the first megabyte
            on_bytes(n)
            raise KeyboardInterrupt

        real(url, *a, on_bytes=tick if url.endswith(".ckpt") else on_bytes, **k)

    monkeypatch.setattr(D, "fetch_to_part", interrupted)
    buf = StringIO()
    with pytest.raises(KeyboardInterrupt):
        install_registry_model(spec, folder, **rich(Console(file=buf, width=200)))
    assert part_path(folder / "tiny.ckpt").stat().st_size > 0
    assert "run the same command to resume" in buf.getvalue()


def test_not_enough_disk_space_is_refused(server: Server, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = make_spec(server)
    monkeypatch.setattr(D.shutil, "disk_usage", lambda p: SimpleNamespace(total=100, used=90, free=10))
    with pytest.raises(VqclipError, match="free some space or pass --weights-dir"):
        install(spec, folder)
    assert ckpt_requests(server) == []


def test_yaml_link_serving_html_is_rejected(server: Server, folder: Path) -> None:
    spec = make_spec(server)
    server.serve("/tiny.yaml", HTML, content_type="text/html")
    with pytest.raises(WeightsMissing, match="HTML"):
        install(spec, folder)
    assert not (folder / "tiny.yaml").exists()


def test_yaml_without_ddconfig_is_rejected(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  params:\n    first_stage_config: {params: {}}\n")
    with pytest.raises(VqclipError, match="no model.params.ddconfig.*first_stage_config"):
        validate_yaml(bad)


# --------------------------------------------------------------------------------------- names and paths


def test_custom_pair_resolves_by_name(tiny_models: dict[str, Path], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mine.yaml").write_bytes(tiny_models["vqgan_yaml"].read_bytes())
    (folder / "mine.ckpt").write_bytes(tiny_models["vqgan_ckpt"].read_bytes())
    files = resolve_model("mine")
    assert files.source == "custom" and files.ckpt_path == folder / "mine.ckpt"
    assert files.sha256 == sha(tiny_models["vqgan_ckpt"].read_bytes())
    status = {s.name: s for s in all_status(folder)}["mine"]
    assert status.kind == "custom" and status.status == CUSTOM and status.installed


def test_custom_yaml_without_ckpt_names_the_expected_file(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "half.yaml").write_text(TINY_YAML)
    with pytest.raises(WeightsMissing, match=f"expected {folder / 'half.ckpt'}"):
        resolve_model("half")


def test_paths_to_yaml_or_ckpt(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    by_yaml = resolve_model(str(tiny_models["vqgan_yaml"]))
    by_ckpt = resolve_model(str(tiny_models["vqgan_ckpt"]))
    assert by_yaml == by_ckpt and by_yaml.source == "path" and by_yaml.name == "tiny_vq"
    assert by_yaml.sha256 == sha(tiny_models["vqgan_ckpt"].read_bytes())  # for the run record
    lonely = tmp_path / "lonely.yaml"
    lonely.write_text(TINY_YAML)
    with pytest.raises(WeightsMissing, match=f"expected {tmp_path / 'lonely.ckpt'}"):
        resolve_model(str(lonely))
    with pytest.raises(WeightsMissing, match="not found"):
        resolve_model(str(tmp_path / "nope.yaml"))


def test_unknown_name_lists_known_names(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mine.yaml").write_text(TINY_YAML)
    with pytest.raises(VqclipError) as err:
        resolve_model("imagenet")
    assert type(err.value) is VqclipError
    for word in ("vqgan_imagenet_f16_16384", "coco", "mine", ".yaml"):
        assert word in err.value.message


def test_yaml_only_finds_the_yaml_without_downloading_or_hashing(tiny_models: dict[str, Path], folder: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """What the dry run's estimate uses: the same resolver, the yaml alone (no checkpoint needed)."""
    monkeypatch.setattr(RS, "sha256_file", lambda *a, **k: pytest.fail("yaml_only hashed a checkpoint"))
    monkeypatch.setattr(RS, "download_file", lambda *a, **k: pytest.fail("yaml_only downloaded"))
    files = resolve_model("vqgan_imagenet_f16_16384", yaml_only=True)
    assert files.yaml_path == packaged_yaml("vqgan_imagenet_f16_16384") and files.sha256 is None
    assert files.ckpt_path == folder / "vqgan_imagenet_f16_16384.ckpt" and not files.ckpt_path.exists()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "half.yaml").write_text(TINY_YAML)  # a custom yaml whose checkpoint is not there yet
    assert resolve_model("half", yaml_only=True).yaml_path == folder / "half.yaml"
    lonely = folder.parent / "lonely.yaml"
    lonely.write_text(TINY_YAML)
    assert resolve_model(str(lonely), yaml_only=True).yaml_path == lonely
    assert resolve_model(str(tiny_models["vqgan_ckpt"]), yaml_only=True).yaml_path == tiny_models["vqgan_yaml"]
    with pytest.raises(WeightsMissing, match="has no model config beside it"):
        resolve_model(str(folder.parent / "nothing.ckpt"), yaml_only=True)
    with pytest.raises(VqclipError, match="unknown model 'imagenet'"):
        resolve_model("imagenet", yaml_only=True)


# ----------------------------------------------------------------------------------------------------- CLI


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch) -> Any:
    from vqclip.commands import common as cli_common
    from vqclip.cli import app

    monkeypatch.setattr(cli_common.out_console, "width", 200)  # whole table cells, whatever the terminal
    runner = CliRunner()

    def invoke(*args: str, **kw: Any) -> Any:
        return runner.invoke(app, ["weights", *args], **kw)

    return invoke


@pytest.fixture
def test_registry(server: Server, monkeypatch: pytest.MonkeyPatch, tiny_models: dict[str, Path]) -> dict:
    """The registry as the CLI sees it: one verified model (a real tiny checkpoint) and one trust-on-first-use."""
    good = make_spec(server, "tinyvq", tiny_models["vqgan_ckpt"].read_bytes())
    tofu = make_spec(server, "tofu", payload(50_000), known_sha=False, known_size=False)
    registry = {"tinyvq": good, "tofu": tofu}
    monkeypatch.setattr(R, "WEIGHTS", registry)
    return registry


@pytest.mark.parametrize("command", ["list", "download", "verify", "path", "remove"])
def test_every_command_has_help_with_an_example(cli: Any, command: str) -> None:
    result = cli(command, "-h")
    assert result.exit_code == 0 and "Example" in result.output and "--weights-dir" in result.output


def test_cli_list_shows_registry_custom_and_status(cli: Any, tiny_models: dict[str, Path], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mine.yaml").write_bytes(tiny_models["vqgan_yaml"].read_bytes())
    (folder / "mine.ckpt").write_bytes(tiny_models["vqgan_ckpt"].read_bytes())
    result = cli("list")
    assert result.exit_code == 0, result.output
    for word in ("vqgan_imagenet_f16_16384", "980.1 MB", "not downloaded", "mine", "custom", str(folder)):
        assert word in result.output
    data = json.loads(cli("list", "--json").output)
    by_name = {d["name"]: d for d in data}
    assert by_name["mine"]["kind"] == "custom" and by_name["mine"]["installed"] is True
    assert by_name["coco"]["installed"] is False and by_name["coco"]["size"] == 296030214


def test_cli_download_then_list_shows_verified_and_tofu(cli: Any, test_registry: dict, folder: Path) -> None:
    result = cli("download", "tinyvq", "tofu")
    assert result.exit_code == 0, result.output
    assert "tinyvq verified" in result.output and "tofu trusted on first use" in result.output
    assert (folder / "tinyvq.safetensors").exists()  # the real tiny checkpoint got its pickle-free cache
    listing = cli("list").output
    assert "verified" in listing and "trusted on first use" in listing
    status = {d["name"]: d["status"] for d in json.loads(cli("list", "--json").output)}
    assert status == {"tinyvq": VERIFIED, "tofu": TOFU}


def test_cli_download_errors_are_one_line(cli: Any, test_registry: dict) -> None:
    result = cli("download", "nope")
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert "unknown model 'nope'" in result.output and "tinyvq" in result.output
    assert cli("download").exit_code == 1


def test_cli_download_reports_a_failed_download(cli: Any, test_registry: dict, server: Server) -> None:
    server.serve("/tinyvq.ckpt", HTML, content_type="text/html")
    result = cli("download", "tinyvq")
    assert result.exit_code == 1
    assert "Error:" in result.output and "HTML page" in result.output


def test_cli_verify_good_and_corrupt(cli: Any, test_registry: dict, folder: Path) -> None:
    assert cli("download", "tinyvq", "--no-cache").exit_code == 0
    ok = cli("verify")
    assert ok.exit_code == 0 and "ok" in ok.output
    ckpt = folder / "tinyvq.ckpt"
    data = bytearray(ckpt.read_bytes())
    data[-10] ^= 0xFF
    ckpt.write_bytes(bytes(data))
    bad = cli("verify", "tinyvq")
    assert bad.exit_code == 1 and "bad" in bad.output and "vqclip weights download tinyvq" in bad.output


def test_cli_path_and_remove(cli: Any, test_registry: dict, folder: Path) -> None:
    assert cli("path").output.strip() == str(folder)
    assert cli("path", "tinyvq").output.strip().endswith("tinyvq.ckpt")  # not downloaded yet: where it will be
    assert cli("download", "tinyvq").exit_code == 0
    assert cli("path", "tinyvq", "--yaml").output.strip() == str(folder / "tinyvq.yaml")
    kept = cli("remove", "tinyvq", input="n\n")
    assert kept.exit_code == 1 and (folder / "tinyvq.ckpt").exists()
    gone = cli("remove", "tinyvq", "--yes")
    assert gone.exit_code == 0, gone.output
    assert not (folder / "tinyvq.ckpt").exists() and not (folder / "tinyvq.safetensors").exists()
    assert manifest_entry(folder, folder / "tinyvq.ckpt") is None
    again = cli("remove", "tinyvq", "--yes")
    assert again.exit_code == 1 and "not installed" in again.output


def test_cli_weights_dir_option(cli: Any, test_registry: dict, tmp_path: Path) -> None:
    other = tmp_path / "elsewhere"
    assert cli("download", "tofu", "--weights-dir", str(other)).exit_code == 0
    assert (other / "tofu.ckpt").exists()
    assert cli("path", "--weights-dir", str(other)).output.strip() == str(other)


def test_cli_clip_download_and_list(cli: Any, monkeypatch: pytest.MonkeyPatch, vqclip_home: Path) -> None:
    import open_clip

    def offline(cfg: dict, **kw: Any) -> str:
        raise OSError("We have no connection to the Hub\nsecond line")

    monkeypatch.setattr(open_clip.pretrained, "download_pretrained", offline)
    result = cli("download", "clip:ViT-B-32/openai")
    assert result.exit_code == 1
    assert "vqclip weights download clip:ViT-B-32/openai" in result.output and "second line" not in result.output
    assert "no pretrained tag" in cli("download", "clip:ViT-B-32/nope").output
    # A file in the HF cache layout shows up in `list` under open_clip's names.
    snap = vqclip_home / "hf" / "hub" / "models--timm--vit_base_patch32_clip_224.openai" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap / "open_clip_model.safetensors").write_bytes(b"x" * 10)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("abc")  # the hub cache's pointer to the snapshot
    assert cli("download", "clip:ViT-B-32/openai").exit_code == 0
    listing = cli("list").output
    assert "clip:ViT-B-32/openai" in listing and "timm/vit_base_patch32_clip_224.openai" in listing


def test_fetch_weights_script_is_a_thin_wrapper(test_registry: dict, folder: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    import runpy

    script = Path(__file__).resolve().parents[1] / "scripts" / "fetch_weights.py"
    monkeypatch.setattr(sys, "argv", [str(script), "tofu"])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(script), run_name="__main__")
    assert done.value.code in (0, None) and (folder / "tofu.ckpt").exists()


def test_installed_script_in_a_real_subprocess(vqclip_home: Path) -> None:
    script = Path(sys.executable).with_name("vqclip")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "vqclip"]
    env = {**os.environ, "VQCLIP_HOME": str(vqclip_home)}
    done = subprocess.run([*cmd, "weights", "path"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == str(vqclip_home / "weights")
    bad = subprocess.run([*cmd, "weights", "download", "nope"], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "unknown model 'nope'" in bad.stderr
    listing = subprocess.run([*cmd, "weights", "list", "--json", "--no-clip"], env=env, capture_output=True,
                             text=True, timeout=60)
    assert {d["name"] for d in json.loads(listing.stdout)} == set(R.WEIGHTS)


def test_weights_cli_does_not_import_torch() -> None:
    modules = ", ".join(f"vqclip.weights.{m}" for m in ("registry", "store", "download", "model_yaml", "resolve",
                                                         "pickle_scan", "installed", "clip"))
    code = f"import sys, vqclip.commands.weights, {modules}; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
