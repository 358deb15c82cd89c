"""`vqclip serve`'s HTTP API through Starlette's TestClient: every endpoint's bad inputs are a clear 4xx with a
one-line reason; Host/Origin checks; the token; path traversal; upload bombs; and real jobs on the tiny models
(run, interrupt, skip, stop after this one, remove/reorder, the queue kept across a restart, continue)."""

from __future__ import annotations

import io
import json
import struct
import time
import zlib
from pathlib import Path
from typing import Any, Iterator

import pytest

pytest.importorskip("starlette")
from starlette.testclient import TestClient  # noqa: E402

from vqclip.serve.app import Settings, create_app  # noqa: E402

BASE = "http://127.0.0.1:8501"


def png(w: int = 16, h: int = 16, text: dict[str, str] | None = None) -> bytes:
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for k, v in (text or {}).items():
        info.add_itxt(k, v)
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 40, 40)).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def bomb_png(w: int, h: int) -> bytes:
    """A valid PNG header claiming w×h pixels, with a tiny (truncated) body: never decoded if checked first."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b"")


def one_line_error(r: Any, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    msg = r.json()["error"]
    assert isinstance(msg, str) and msg and "\n" not in msg and "Traceback" not in msg
    return msg


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(Settings(output_dir=tmp_path / "out"))
    with TestClient(app, base_url=BASE) as c:
        yield c


def tiny(t: dict[str, Path], **extra: Any) -> dict[str, Any]:
    return {"prompt": "a red apple", "model": str(t["vqgan_yaml"]), "clip_model": str(t["clip_json"]),
            "clip_pretrained": str(t["clip_ckpt"]), "width": 32, "height": 32, "cutn": 2, "steps": 3,
            "save_every": 1, "seed": 5, **extra}


def wait_for(c: TestClient, pred: Any, timeout: float = 120) -> dict[str, Any]:
    end = time.time() + timeout
    while time.time() < end:
        snap = c.get("/api/jobs").json()
        if pred(snap):
            return snap
        time.sleep(0.05)
    raise AssertionError(f"timed out; last snapshot {json.dumps(snap)[:800]}")


# ------------------------------------------------------------------------------------------------ security


@pytest.mark.parametrize("host,status", [
    ("127.0.0.1:8501", 200), ("localhost:8501", 200), ("[::1]:8501", 200), ("127.0.0.1", 200),
    ("evil.example:8501", 421), ("evil.example", 421), ("127.0.0.1:9999", 421), ("127.0.0.1:85x1", 421),
    ("", 400),
])
def test_host_header_checked_against_dns_rebinding(client: TestClient, host: str, status: int) -> None:
    r = client.get("/api/jobs", headers={"host": host})
    if status == 200:
        assert r.status_code == 200
    else:
        assert "Host" in one_line_error(r, status) or status == 400


@pytest.mark.parametrize("origin,status", [
    ("http://evil.example", 403), ("http://127.0.0.1:8501.evil.example", 403), ("null", 403),
    ("http://localhost:8501", 403),  # another origin than the one the request names in Host
    ("http://127.0.0.1:8501", 200), (None, 200),
])
def test_cross_site_posts_refused(client: TestClient, origin: str | None, status: int) -> None:
    headers = {"origin": origin} if origin else {}
    r = client.post("/api/control", json={"action": "resume"}, headers=headers)
    if status == 200:
        assert r.status_code == 200
    else:
        assert "cross-site" in one_line_error(r, status)
    assert client.get("/api/jobs", headers={"origin": "http://evil.example"}).status_code == 200  # reads: Host only


def test_token_required_off_loopback(tmp_path: Path) -> None:
    app = create_app(Settings(output_dir=tmp_path / "out", host="0.0.0.0", port=8501))
    guard = app.state.server.guard
    assert guard.token and len(guard.token) >= 20 and f"token={guard.token}" in guard.url()
    assert app.state.server.ctx.allow_paths is False
    with TestClient(app, base_url="http://192.168.1.20:8501") as c:
        assert "token" in one_line_error(c.get("/api/jobs"), 401)
        assert "token" in one_line_error(c.get("/api/jobs", headers={"authorization": "Bearer wrong"}), 401)
        assert c.get("/api/jobs", headers={"authorization": f"Bearer {guard.token}"}).status_code == 200
        r = c.get(f"/?token={guard.token}")
        assert r.status_code == 200 and "HttpOnly" in r.headers["set-cookie"] and "SameSite=Strict" in r.headers["set-cookie"]
        assert c.get("/api/jobs").status_code == 200  # the cookie now carries it
        # from the network, models are names, never paths on the server's disk
        r = c.post("/api/check", json={"config": {"prompt": "x", "model": "/etc/passwd"}})
        assert "not a path" in one_line_error(r, 400)


def test_given_token_on_loopback_and_headers(tmp_path: Path) -> None:
    app = create_app(Settings(output_dir=tmp_path / "out", token="s3cret-token"))
    with TestClient(app, base_url=BASE) as c:
        one_line_error(c.get("/"), 401)
        r = c.get("/", headers={"authorization": "Bearer s3cret-token"})
        assert r.status_code == 200
        assert "default-src 'self'" in r.headers["content-security-policy"]
        assert r.headers["x-frame-options"] == "SAMEORIGIN" and r.headers["x-content-type-options"] == "nosniff"


# ---------------------------------------------------------------------------------------------- files


def make_run(out: Path, run_id: str = "20260101T000000-abcdEFGH") -> Path:
    folder = out / run_id
    folder.mkdir(parents=True)
    (folder / "output.png").write_bytes(png(text={"prompt": "a", "parameters": json.dumps({"prompt": "a", "steps": 7})}))
    (folder / "state.pt").write_bytes(b"x")
    (folder / "details.json").write_text(json.dumps({"status": "finished", "prompt": "a lake", "seed": 9,
                                                     "config": {"prompt": "a lake", "steps": 7, "width": 32,
                                                                "height": 32}, "steps_done": 7}))
    return folder


def test_files_never_leave_the_output_folder(client: TestClient, tmp_path: Path) -> None:
    out = tmp_path / "out"
    folder = make_run(out)
    (tmp_path / "secret.png").write_bytes(png())
    (folder / "link.png").symlink_to(tmp_path / "secret.png")
    (out / "20260101T000001-linkLINK").symlink_to(folder)
    r = client.get(f"/files/{folder.name}/output.png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.headers["content-security-policy"] == "sandbox"
    assert client.get(f"/files/{folder.name}/details.json").status_code == 200
    for path, status in [(f"{folder.name}/state.pt", 403), (f"{folder.name}/link.png", 403),
                         ("20260101T000001-linkLINK/output.png", 403), ("../secret.png", 404),
                         ("%2e%2e/secret.png", 404), (f"{folder.name}/%2e%2e/%2e%2e/secret.png", 404),
                         (f"{folder.name}/..%2fsecret.png", 404), ("not-a-run/output.png", 404),
                         (f"{folder.name}/nothing.png", 404), (".gallery/cache.json", 404),
                         (f"{folder.name}/frames/output.png", 404), (f"{folder.name}/.hidden.png", 404)]:
        one_line_error(client.get(f"/files/{path}"), status)


def test_gallery_and_runs(client: TestClient, tmp_path: Path) -> None:
    folder = make_run(tmp_path / "out")
    r = client.get("/gallery")
    assert r.status_code == 200 and folder.name in r.text and "/files/" in r.text
    assert r.headers["content-security-policy"] == "frame-ancestors 'self'"
    assert client.get(f"/files/.gallery/thumbs/{folder.name}.jpg").status_code == 200  # made by the live scan
    assert "kiosk" in client.get("/gallery?kiosk=1").text
    assert [c["id"] for c in client.get("/api/runs").json()["runs"]] == [folder.name]
    d = client.get(f"/api/runs/{folder.name}").json()
    assert d["config"]["prompt"] == "a lake" and d["config"]["seed"] == 9 and d["kind"] == "image"
    one_line_error(client.get("/api/runs/..%2f..%2fetc"), 404)  # no route: / is never in a run id
    one_line_error(client.get("/api/runs/..etc"), 400)
    one_line_error(client.get("/api/runs/20260101T000000-zzzzzzzz"), 404)
    (folder.parent / "20260101T000002-badBADba").mkdir()
    (folder.parent / "20260101T000002-badBADba" / "details.json").write_text("{nope")
    one_line_error(client.get("/api/runs/20260101T000002-badBADba"), 409)


# -------------------------------------------------------------------------------------------- uploads


@pytest.mark.parametrize("body,status,words", [
    (b"", 400, "empty"), (b"hello, not an image", 415, "PNG, JPEG or WebP"),
    (bomb_png(100_000, 100_000), 413, "pixels"), (bomb_png(5000, 5000), 413, "megapixels"),
    (png()[:60], 415, "damaged"), (b"GIF89a" + b"\0" * 100, 415, "PNG, JPEG or WebP"),
])
def test_upload_bombs_and_non_images(client: TestClient, body: bytes, status: int, words: str) -> None:
    assert words in one_line_error(client.post("/api/uploads", content=body), status)


def test_upload_size_bounded_before_reading(client: TestClient) -> None:
    r = client.post("/api/uploads", content=b"x" * 10, headers={"content-length": str(64 * 2**20)})
    assert "MiB" in one_line_error(r, 413)
    big = b"\x89PNG" + b"\0" * (16 * 2**20 + 10)
    assert one_line_error(client.post("/api/uploads", content=big), 413)


def test_upload_stored_reencoded_and_referenced(client: TestClient, tmp_path: Path) -> None:
    r = client.post("/api/uploads", content=png(20, 10))
    assert r.status_code == 201 and r.json()["width"] == 20
    token = r.json()["token"]
    stored = tmp_path / "out" / ".serve" / "uploads" / f"{token}.png"
    assert stored.is_file()
    ok = client.post("/api/check", json={"config": {"prompt": "x", "init_image": {"upload": token}}})
    assert ok.status_code == 200
    for ref, status in [("/etc/hosts", 400), ({"upload": "../../etc/passwd"}, 400), ({"upload": "A" * 22}, 409),
                        ({"run": "../x"}, 400), ({"run": "20260101T000000-abcdEFGH"}, 404),
                        ({"upload": token, "run": "x"}, 400)]:
        one_line_error(client.post("/api/check", json={"config": {"prompt": "x", "init_image": ref}}), status)


def test_png_parameters(client: TestClient) -> None:
    params = {"prompt": "a lake", "steps": 40, "seed": 3, "init_image": "/home/x/in.png", "bogus": 1}
    d = client.post("/api/parameters", content=png(text={"parameters": json.dumps(params)})).json()
    assert d["config"] == {"prompt": "a lake", "steps": 40, "seed": 3}
    assert any("init image" in n for n in d["notes"]) and any("bogus" in n for n in d["notes"])
    assert "no vqclip settings" in one_line_error(client.post("/api/parameters", content=png()), 422)
    assert "not JSON" in one_line_error(client.post("/api/parameters", content=png(text={"parameters": "{x"})), 422)
    one_line_error(client.post("/api/parameters", content=b"\xff\xd8\xff jpeg"), 415)
    one_line_error(client.post("/api/parameters", content=bomb_png(20000, 20000)), 413)


# ----------------------------------------------------------------------------------------- bad requests


@pytest.mark.parametrize("body,status,words", [
    ({"config": {"prompt": "x", "steps": 0}}, 422, "steps"),
    ({"config": {"prompt": "x", "colour": 1}}, 422, "colour"),
    ({"config": {"prompt": "a:1:2:3:x | :5"}}, 422, ""),
    ({"config": {}}, 422, "prompt"),
    ({"config": "prompt"}, 400, "JSON object"),
    ({"kind": "paint", "config": {"prompt": "x"}}, 400, "kind"),
    ({"kind": "animate", "config": {"prompt": "x"}, "animation": {"zoom": "0:(1.0), x"}}, 422, "zoom"),
    ({"kind": "animate", "config": {"prompt": "x"}, "animation": {"frames_done": 3}}, 400, "frames_done"),
    ({"kind": "generate", "config": {"prompt": "x"}, "animation": {}}, 400, "animation"),
    ({"kind": "continue", "parent": "../../x"}, 400, "parent"),
    ({"kind": "continue", "parent": "20260101T000000-abcdEFGH"}, 404, "no run"),
    ({"config": {"prompt": "x", "image_prompts": ["/etc/passwd"]}}, 400, "image_prompts"),
    ({"config": {"prompt": "x", "image_prompts": [{"upload": "A" * 22, "weight": "heavy"}]}}, 409, ""),
])
def test_bad_jobs_are_one_line_4xx(client: TestClient, body: dict[str, Any], status: int, words: str) -> None:
    for url in ("/api/check", "/api/jobs"):
        msg = one_line_error(client.post(url, json=body), status)
        assert words in msg
    assert client.get("/api/jobs").json()["queue"] == []


def test_malformed_requests(client: TestClient) -> None:
    one_line_error(client.post("/api/jobs", content=b"{not json", headers={"content-type": "application/json"}), 400)
    one_line_error(client.post("/api/jobs", content=b"[1]", headers={"content-type": "application/json"}), 400)
    one_line_error(client.post("/api/jobs", content=b"a=1", headers={"content-type": "application/x-www-form-urlencoded"}), 415)
    one_line_error(client.post("/api/jobs", content=b"{" * 300_000, headers={"content-type": "application/json"}), 413)
    one_line_error(client.post("/api/jobs", json={"config": {"prompt": "x"}, "extra": 1}), 400)
    one_line_error(client.post("/api/control", json={"action": "explode"}), 400)
    one_line_error(client.post("/api/jobs/nope/move", json={"index": "first"}), 400)
    one_line_error(client.post("/api/jobs/nope/move", json={"index": 0}), 404)
    one_line_error(client.delete("/api/jobs/nope"), 404)
    one_line_error(client.get("/api/jobs/nope/preview"), 404)
    one_line_error(client.get("/static/../app.py"), 404)
    one_line_error(client.get("/static/secret.js"), 404)
    one_line_error(client.put("/api/jobs"), 405)
    one_line_error(client.get("/nowhere"), 404)
    assert client.get("/static/app.js").headers["content-type"].startswith("text/javascript")


def test_form_spec_comes_from_runconfig(client: TestClient) -> None:
    from vqclip.animation import Animation
    from vqclip.config import RunConfig
    from vqclip.knobs import HELP

    spec = client.get("/api/form").json()
    assert [f["name"] for f in spec["run"]][:3] == ["engine", "prompt", "image_prompts"]
    assert sorted(f["name"] for f in spec["run"]) == sorted(RunConfig.model_fields)
    for f in spec["run"]:
        assert f["help"] == HELP[f["name"]]
    assert "vqgan" in next(f for f in spec["run"] if f["name"] == "engine")["choices"]
    steps = next(f for f in spec["run"] if f["name"] == "steps")
    assert (steps["min"], steps["max"], steps["default"]) == (1, 1_000_000, 300)
    assert {f["name"] for f in spec["animation"]} <= set(Animation.model_fields) and "zoom" in {f["name"] for f in spec["animation"]}
    assert spec["allow_paths"] is True


# ----------------------------------------------------------------------------------------------- jobs


def test_jobs_run_interrupt_skip_continue(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    out = tmp_path / "out"
    app = create_app(Settings(output_dir=out))
    with TestClient(app, base_url=BASE) as c:
        r = c.post("/api/jobs", json={"config": tiny(tiny_models)})
        assert r.status_code == 201
        first = r.json()["id"]
        snap = wait_for(c, lambda s: any(j["id"] == first and j["status"] == "finished" for j in s["history"]))
        run_id = snap["history"][0]["run"]
        details = json.loads((out / run_id / "details.json").read_text())
        assert details["status"] == "finished" and details["steps_done"] == 3
        assert c.get(f"/api/jobs/{first}/preview").headers["content-type"] == "image/jpeg"
        # the PNG it wrote loads the form back
        params = c.post("/api/parameters", content=(out / run_id / "output.png").read_bytes()).json()["config"]
        assert params["prompt"] == "a red apple" and params["seed"] == 5
        # a long job, interrupted after some steps: saved as interrupted, the queue held
        long = c.post("/api/jobs", json={"config": tiny(tiny_models, steps=100_000, prompt="long one")}).json()["id"]
        queued = c.post("/api/jobs", json={"config": tiny(tiny_models, prompt="waits"), "run": False}).json()["id"]
        other = c.post("/api/jobs", json={"config": tiny(tiny_models, prompt="other"), "run": False}).json()["id"]
        wait_for(c, lambda s: s["running"] and s["running"][0]["progress"].get("step", 0) >= 2)
        ids = [j["id"] for j in c.post(f"/api/jobs/{other}/move", json={"index": 0}).json()["queue"]]
        assert ids == [other, queued]
        one_line_error(c.delete(f"/api/jobs/{long}"), 409)
        assert c.delete(f"/api/jobs/{queued}").status_code == 204
        c.post("/api/control", json={"action": "interrupt"})
        snap = wait_for(c, lambda s: any(j["id"] == long and j["status"] == "interrupted" for j in s["history"]))
        assert snap["paused"] and [j["id"] for j in snap["queue"]] == [other]
        long_run = next(j for j in snap["history"] if j["id"] == long)["run"]
        assert json.loads((out / long_run / "details.json").read_text())["status"] == "interrupted"
        # resume; skip a long job: the next one runs
        c.post("/api/jobs", json={"config": tiny(tiny_models, steps=100_000, prompt="skipped")})
        wait_for(c, lambda s: s["running"] and s["running"][0]["label"] == "skipped"
                 and s["running"][0]["progress"].get("step", 0) >= 1 or s["running"] and s["running"][0]["label"] == "other")
        wait_for(c, lambda s: s["running"] and s["running"][0]["label"] == "skipped"
                 and s["running"][0]["progress"].get("step", 0) >= 1)
        c.post("/api/control", json={"action": "skip"})
        c.post("/api/control", json={"action": "stop_after"})  # and hold the queue after the next one
        c.post("/api/jobs", json={"config": tiny(tiny_models, prompt="after"), "run": False})
        snap = wait_for(c, lambda s: not s["running"] and s["paused"])
        statuses = {j["label"]: j["status"] for j in snap["history"]}
        assert statuses["skipped"] == "interrupted" and statuses["other"] == "finished"
        assert [j["label"] for j in snap["queue"]] == ["after"] or statuses.get("after") == "finished"
        # continue the interrupted run with a new prompt: a new folder linked to it
        r = c.post("/api/jobs", json={"kind": "continue", "parent": long_run, "config": {"prompt": "a green apple", "steps": 2}})
        assert r.status_code == 201, r.text
        cont = r.json()["id"]
        snap = wait_for(c, lambda s: any(j["id"] == cont and j["status"] in ("finished", "failed") for j in s["history"]))
        job = next(j for j in snap["history"] if j["id"] == cont)
        assert job["status"] == "finished", job
        child = json.loads((out / job["run"] / "details.json").read_text())
        assert child["parent"] == long_run and child["prompt"] == "a green apple"
        assert app.state.server.jobs.devices == ["auto"]


def test_queue_kept_across_restart(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    out = tmp_path / "out"
    with TestClient(create_app(Settings(output_dir=out)), base_url=BASE) as c:
        c.post("/api/control", json={"action": "stop_after"})  # nothing running: holds the queue
        token = c.post("/api/uploads", content=png(32, 32)).json()["token"]
        stray = c.post("/api/uploads", content=png(8, 8)).json()["token"]
        for p in ("one", "two"):
            assert c.post("/api/jobs", json={"config": tiny(tiny_models, prompt=p, init_image={"upload": token}),
                                             "run": False}).status_code == 201
    saved = json.loads((out / ".serve" / "queue.json").read_text())
    assert [j["label"] for j in saved["jobs"]] == ["one", "two"]
    with TestClient(create_app(Settings(output_dir=out)), base_url=BASE) as c:
        snap = c.get("/api/jobs").json()
        assert snap["restored"] == 2 and snap["paused"] and [j["label"] for j in snap["queue"]] == ["one", "two"]
        assert (out / ".serve" / "uploads" / f"{token}.png").is_file()
        assert not (out / ".serve" / "uploads" / f"{stray}.png").exists()  # named by no kept job
        c.post("/api/control", json={"action": "resume"})
        snap = wait_for(c, lambda s: len([j for j in s["history"] if j["status"] == "finished"]) == 2)
        run = snap["history"][0]["run"]
        assert (out / run / "init.png").is_file()  # the upload, copied into the run folder
    assert json.loads((out / ".serve" / "queue.json").read_text())["jobs"] == []


def test_event_stream_snapshot_and_broadcast() -> None:
    import asyncio

    from vqclip.serve.events import Broadcaster

    async def scenario() -> list[bytes]:
        b = Broadcaster()
        b.snapshot = lambda: [("queue", {"queue": []})]
        got: list[bytes] = []

        async def listen() -> None:
            async for chunk in b.stream():
                got.append(chunk)

        tasks = [asyncio.create_task(listen()) for _ in range(2)]
        await asyncio.sleep(0.05)
        assert b.listeners == 2
        await asyncio.to_thread(b.publish, "progress", {"step": 1})  # from another thread, as workers do
        await asyncio.sleep(0.05)
        b.close()
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
        return got

    got = asyncio.run(scenario())
    text = b"".join(got).decode()
    assert text.count("event: queue") == 2 and text.count('event: progress\ndata: {"step":1}') == 2


# ------------------------------------------------------------------------------------- the command itself


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _vqclip() -> list[str]:
    import shutil
    import sys

    exe = Path(sys.executable).with_name("vqclip")
    return [str(exe)] if exe.exists() else [shutil.which("vqclip") or "vqclip"]


def _get(url: str, method: str = "GET", body: Any = None) -> Any:
    import urllib.request

    req = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body is not None else None,
                                 headers={"content-type": "application/json"} if body is not None else {})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read() or b"{}")


def test_command_sigterm_saves_running_job_and_keeps_queue(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    """The installed `vqclip serve`: prints the URL; SIGTERM mid-job → the job finishes its step and is saved
    as interrupted, the queued job is kept for the next start, exit 143, no traceback."""
    import os
    import signal
    import subprocess

    port, out = _free_port(), tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = subprocess.Popen([*_vqclip(), "serve", "--port", str(port), "--output", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.strip() == f"vqclip serve: http://127.0.0.1:{port}/", line
        base = f"http://127.0.0.1:{port}"
        _get(base + "/api/jobs", "POST", {"config": tiny(tiny_models, steps=100_000, prompt="long")})
        _get(base + "/api/jobs", "POST", {"config": tiny(tiny_models, prompt="kept"), "run": False})
        end = time.time() + 120
        while time.time() < end:
            running = _get(base + "/api/jobs")["running"]
            if running and running[0]["progress"].get("step", 0) >= 1:
                break
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    assert "Traceback" not in err and "Terminated." in err
    runs = [p for p in out.iterdir() if p.name[0].isdigit()]
    assert len(runs) == 1 and json.loads((runs[0] / "details.json").read_text())["status"] == "interrupted"
    kept = json.loads((out / ".serve" / "queue.json").read_text())["jobs"]
    assert [j["label"] for j in kept] == ["kept"]


def test_command_errors_are_one_line(tmp_path: Path) -> None:
    import socket
    import subprocess

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        cases = [(["--port", str(port)], 1, "in use"), (["--token", "short"], 2, "--token"),
                 (["--device", "gpu7"], 2, "--device"), (["--port", "70000"], 2, "--port"),
                 (["--host", "no.such.host.invalid"], 1, "--host")]
        (tmp_path / "file").write_text("x")
        cases.append((["--output", str(tmp_path / "file")], 1, "output folder"))
        for args, code, words in cases:
            done = subprocess.run([*_vqclip(), "serve", *args], capture_output=True, text=True, timeout=60,
                                  cwd=tmp_path)
            lines = done.stderr.strip().splitlines()
            assert done.returncode == code and len(lines) == 1 and words in lines[0], (args, done.stderr)


def test_animate_from_a_run_and_continue_it(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    """"animate from here" (the run's output.png as init image, image prompts by upload) and "continue this
    run" on an animation (frames added), through the API."""
    out = tmp_path / "out"
    with TestClient(create_app(Settings(output_dir=out)), base_url=BASE) as c:
        job = c.post("/api/jobs", json={"config": tiny(tiny_models, steps=2)}).json()["id"]
        snap = wait_for(c, lambda s: any(j["id"] == job and j["status"] == "finished" for j in s["history"]))
        still = snap["history"][0]["run"]
        token = c.post("/api/uploads", content=png(24, 24)).json()["token"]
        config = tiny(tiny_models, init_image={"run": still}, image_prompts=[{"upload": token, "weight": 2}],
                      init_weight=0.5)
        anim = {"frames": 2, "steps_per_frame": 1, "zoom": "0:(1.0), 1:(1.05)", "angle": "2"}
        r = c.post("/api/jobs", json={"kind": "animate", "config": config, "animation": anim})
        assert r.status_code == 201, r.text
        job = r.json()["id"]
        snap = wait_for(c, lambda s: any(j["id"] == job and j["status"] in ("finished", "failed") for j in s["history"]))
        done = next(j for j in snap["history"] if j["id"] == job)
        assert done["status"] == "finished", done
        folder = out / done["run"]
        details = json.loads((folder / "details.json").read_text())
        assert details["animation"]["frames_done"] == 2 and (folder / "init.png").is_file()
        assert (folder / "image_prompt_0.png").is_file() and details["config"]["image_prompts"][0].endswith(":2")
        settings = c.get(f"/api/runs/{done['run']}").json()
        assert settings["kind"] == "animation" and settings["animation"]["zoom"] == "0:(1.0), 1:(1.05)"
        one_line_error(c.post("/api/jobs", json={"kind": "continue", "parent": done["run"],
                                                 "config": {"prompt": "x"}}), 400)
        job = c.post("/api/jobs", json={"kind": "continue", "parent": done["run"], "frames": 1}).json()["id"]
        snap = wait_for(c, lambda s: any(j["id"] == job and j["status"] in ("finished", "failed") for j in s["history"]))
        done = next(j for j in snap["history"] if j["id"] == job)
        assert done["status"] == "finished", done
        assert json.loads((out / done["run"] / "details.json").read_text())["animation"]["frames_done"] == 3
