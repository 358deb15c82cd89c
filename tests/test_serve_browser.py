"""`vqclip serve` in real headless Chromium (Playwright), on the tiny random models.

The real server (uvicorn, 127.0.0.1, a free port, in a thread that the fixture stops) and the real page: fill
the form, run, watch the preview change, reload mid-job and still see progress, interrupt, find the partial run
in the live gallery, load its settings back, queue three jobs and skip one. A missing browser is a failure with
the fix in the message, never a skip (see tests/test_gallery_browser.py, whose Chromium finder this reuses).
The screenshot of the page mid-run (tiny random models) lands in test-artifacts/serve.png.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

pytest.importorskip("uvicorn")

from test_gallery_browser import ARGS, ARTIFACTS, CHROMIUM, _install_chromium  # noqa: E402

pytestmark = pytest.mark.browser


@pytest.fixture
def server(tmp_path: Path) -> Iterator[dict[str, Any]]:
    import uvicorn

    from vqclip.serve.app import Settings, create_app

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    port = sock.getsockname()[1]
    out = tmp_path / "out"
    app = create_app(Settings(output_dir=out, port=port))
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                                        timeout_graceful_shutdown=3))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    end = time.time() + 30
    while not srv.started and time.time() < end:
        time.sleep(0.05)
    assert srv.started, "the server did not start"
    try:
        yield {"url": f"http://127.0.0.1:{port}/", "out": out, "app": app}
    finally:
        app.state.server.begin_stop()  # a running job stops after its step; event streams end
        srv.should_exit = True
        thread.join(60)
        sock.close()
    assert not thread.is_alive(), "the server did not stop"


@pytest.fixture
def page(server: dict[str, Any]) -> Iterator[Any]:
    why = _install_chromium() if not CHROMIUM.exists() else None
    if not CHROMIUM.exists():
        pytest.fail(f"Chromium not found at {CHROMIUM} and could not be installed ({why}): install it "
                    "(`apt-get install -y chromium`) or set VQCLIP_CHROMIUM", pytrace=False)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the playwright package is missing: pip install -e '.[test]'", pytrace=False)
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
        pg = ctx.new_page()
        pg.set_default_timeout(90_000)  # a loaded 2-core CI machine: model loading alone can take tens of seconds
        pg.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
        pg.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
        pg.on("response", lambda r: errors.append(f"HTTP {r.status} {r.request.method} {r.url}")
              if r.status >= 400 and not r.url.endswith("/api/check") else None)
        pg.goto(server["url"])
        pg.wait_for_selector("body[data-ready='yes']")
        yield pg
        ctx.close()
        browser.close()
    # the inline form check answers 422 by design (the browser logs each as a failed resource)
    real = [e for e in errors if not e.startswith("console.error: Failed to load resource: the server responded "
                                                  "with a status of 422")]
    assert real == [], "the page logged errors:\n" + "\n".join(real)


def fill_form(pg: Any, t: dict[str, Path], prompt: str, steps: int) -> None:
    pg.fill("#f-prompt", prompt)
    pg.fill("#f-steps", str(steps))


def history(pg: Any) -> dict[str, str]:
    return pg.eval_on_selector_all("#history li.job", "lis => Object.fromEntries(lis.map(li => "
                                   "[li.querySelector('.label').textContent, li.dataset.status]))")


def stats_step(pg: Any) -> int:
    text = pg.inner_text("#stats")
    return int(text.split()[1]) if text.startswith("step ") else -1


def test_make_watch_stop_browse_queue(server: dict[str, Any], page: Any, tiny_models: dict[str, Path]) -> None:
    pg, t, out = page, tiny_models, server["out"]
    pg.click("#more-box summary")
    for field, value in [("model", t["vqgan_yaml"]), ("clip_model", t["clip_json"]),
                         ("clip_pretrained", t["clip_ckpt"]), ("width", 32), ("height", 32), ("cutn", 2),
                         ("save_every", 1)]:
        pg.fill(f"#f-{field}", str(value))
    pg.select_option("#seed-mode", "fixed")
    pg.fill("#f-seed", "7")
    fill_form(pg, t, "a red apple", 100_000)
    pg.fill("#f-prompt", "a red apple:1:2:3:x |")  # the grammar's one-line error, inline
    pg.wait_for_function("() => !document.getElementById('form-error').hidden")
    fill_form(pg, t, "a red apple", 100_000)
    pg.wait_for_function("() => document.getElementById('form-error').hidden")

    # run; the preview changes at least twice
    pg.click("#run")
    pg.wait_for_function("() => Number(document.getElementById('preview').dataset.version || 0) >= 1")
    first = pg.get_attribute("#preview", "src")
    pg.wait_for_function("v => Number(document.getElementById('preview').dataset.version) >= v + 2",
                         arg=int(pg.get_attribute("#preview", "data-version")))
    assert pg.get_attribute("#preview", "src") != first
    pg.wait_for_function("() => { const i = document.getElementById('preview'); return i.complete && i.naturalWidth > 0 }")

    # the form survives a reload, and so does the view of the running job
    pg.reload()
    pg.wait_for_selector("body[data-ready='yes']")
    assert pg.input_value("#f-prompt") == "a red apple" and pg.input_value("#f-cutn") == "2"
    pg.wait_for_function("() => document.getElementById('stats').textContent.startsWith('step ')")
    before = stats_step(pg)
    pg.wait_for_function("s => Number(document.getElementById('stats').textContent.split(' ')[1]) > s", arg=before)
    pg.wait_for_function("() => !document.getElementById('preview').hidden")
    assert "Running: a red apple" in pg.inner_text("#now-label")

    # interrupt: saved as an interrupted run, shown in the live gallery
    pg.click("#interrupt")
    pg.wait_for_selector("#history li.job[data-status='interrupted']")
    run_id = pg.get_attribute("#history li.job[data-status='interrupted']", "data-job")
    gallery = pg.frame_locator("#gallery")
    card = gallery.locator("article.card[data-status='interrupted']")
    card.wait_for()
    run = card.get_attribute("id")[4:]
    details = json.loads((out / run / "details.json").read_text())
    assert details["status"] == "interrupted" and 0 < details["steps_done"] < 100_000 and run_id

    # load its settings back
    pg.fill("#f-prompt", "something else")
    pg.fill("#f-seed", "")
    card.locator("a.vq-action[data-action='load']").click()
    pg.wait_for_function("() => document.getElementById('f-prompt').value === 'a red apple'")
    assert pg.input_value("#f-seed") == "7" and pg.input_value("#f-steps") == "100000"

    # queue three jobs (the queue is held since the interrupt: Run resumes it) and skip the first
    fill_form(pg, t, "job A", 100_000)
    pg.click("#run")
    pg.wait_for_function("() => document.getElementById('now-label').textContent.includes('job A')")
    fill_form(pg, t, "job B", 2)
    pg.click("#enqueue")
    fill_form(pg, t, "job C", 2)
    pg.click("#enqueue")
    pg.wait_for_function("() => document.querySelectorAll('#queue-list li.job').length === 2")
    pg.wait_for_function("() => document.getElementById('now-label').textContent.includes('job A') && "
                         "Number(document.getElementById('stats').textContent.split(' ')[1]) >= 2 && "
                         "!document.getElementById('preview').hidden")
    ARTIFACTS.mkdir(exist_ok=True)  # the README's picture: a job running, two queued, a run in the gallery
    pg.evaluate("window.scrollTo(0, 0)")
    pg.wait_for_timeout(200)
    pg.screenshot(path=str(ARTIFACTS / "serve.png"))
    pg.click("#skip")
    pg.wait_for_function("() => document.querySelectorAll('#history li.job[data-status=finished]').length >= 2",
                         timeout=120_000)
    done = history(pg)
    assert done["job A"] == "interrupted" and done["job B"] == "finished" and done["job C"] == "finished"
    assert pg.locator("#queue-list li.job").count() == 0
