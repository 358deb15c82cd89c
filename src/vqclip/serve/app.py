"""The Starlette app of `vqclip serve`: the page, its JSON API, the event stream, the live gallery and run files.

Every refusal is a 4xx whose JSON body is `{"error": "one line"}` (plus `fields` for form errors), never a
traceback page; an unexpected failure is a 500 with one line. Request bodies are bounded before they are read
in full. Endpoints (all under the Host/Origin/token checks of `security.py`):

    GET  /                      the page          GET  /static/app.js, /static/app.css
    GET  /api/form              fields (from RunConfig/Animation), model suggestions
    POST /api/check             validate settings: {ok} or 422 with a line per field
    GET  /api/jobs              queue, running jobs, recent jobs
    POST /api/jobs              queue a job (generate | animate | continue); 201
    DELETE /api/jobs/{id}       remove a queued job
    POST /api/jobs/{id}/move    reorder: {"index": N}
    GET  /api/jobs/{id}/preview the latest preview (JPEG)
    POST /api/control           {"action": interrupt | skip | stop_after | resume | clear}
    GET  /api/events            server-sent events (snapshot first)
    POST /api/uploads           an image as the raw body → {"token", "width", "height"}
    POST /api/parameters        a PNG as the raw body → the settings it carries
    GET  /api/runs              the gallery's cards     GET /api/runs/{id}  a run's settings
    GET  /gallery               the live gallery (?kiosk=1)   GET /files/RUN/FILE  run files
"""

from __future__ import annotations

import json
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, AsyncIterator

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from vqclip import __version__
from vqclip.errors import VqclipError, one_line
from vqclip.serve.events import Broadcaster
from vqclip.serve.form import FormError, form_spec, model_choices, run_settings
from vqclip.serve.jobs import JobManager
from vqclip.serve.live import NotServed, live_cards, live_page, run_file
from vqclip.serve.runner import Context, check_job
from vqclip.serve.security import PAGE_CSP, Guard, GuardMiddleware
from vqclip.serve.uploads import MAX_BYTES, UploadError, Uploads, png_parameters

MAX_JSON = 256 * 1024
STATIC = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}


@dataclass
class Settings:
    output_dir: Path
    host: str = "127.0.0.1"
    port: int = 8501
    token: str | None = None
    weights_dir: Path | None = None
    download: bool = True
    devices: list[str] = field(default_factory=lambda: ["auto"])


class Server:
    """Everything one running server holds: access rules, the queue and its workers, the event fan-out."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.output_dir = settings.output_dir
        self.guard = Guard.for_bind(settings.host, settings.port, settings.token)
        self.events = Broadcaster()
        self.uploads = Uploads(settings.output_dir)
        # a server only this machine can reach may load models from paths, as the CLI does
        self.ctx = Context(settings.output_dir, self.uploads, settings.weights_dir, settings.download,
                           allow_paths=self.guard.token is None)
        self.jobs = JobManager(self.ctx, self.events.publish, settings.devices)
        self.events.snapshot = lambda: [("queue", self.jobs.snapshot())] + [
            ("progress", {"job": j["id"], "run": j["run"], **_progress(j)}) for j in self.jobs.snapshot()["running"]]

    def begin_stop(self) -> None:
        """The first signal: end the event streams (they would hold the server open), ask running jobs to stop."""
        self.events.close()
        self.jobs.request_stop()


def _progress(job: dict[str, Any]) -> dict[str, Any]:
    p = dict(job.get("progress") or {})
    p["global"] = p.pop("global_", p.get("global"))
    return p


def error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status, headers={"cache-control": "no-store"})


async def read_body(request: Request, limit: int, what: str) -> bytes:
    """The body, refused (413) past `limit` bytes before it is all read."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise UploadError(f"{what} is larger than {limit // 1024} KiB" if limit < 2**20 else
                          f"{what} is larger than {limit // 2**20} MiB; use a smaller file", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise UploadError(f"{what} is too large (over {limit} bytes)", 413)
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request) -> dict[str, Any]:
    if "json" not in request.headers.get("content-type", ""):
        raise UploadError("send JSON (Content-Type: application/json)", 415)
    body = await read_body(request, MAX_JSON, "the request")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise UploadError("the request body is not valid JSON", 400) from None
    if not isinstance(data, dict):
        raise UploadError("the request body must be a JSON object", 400)
    return data


def create_app(settings: Settings) -> Starlette:
    server = Server(settings)

    def srv(request: Request) -> Server:
        return request.app.state.server

    async def page(request: Request) -> Response:
        html = (resources.files("vqclip.serve") / "static" / "index.html").read_text(encoding="utf-8")
        return HTMLResponse(html, headers={"content-security-policy": PAGE_CSP, "cache-control": "no-store"})

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC:
            return error(404, f"no static file {name[:60]!r}")
        text = (resources.files("vqclip.serve") / "static" / name).read_text(encoding="utf-8")
        return Response(text, media_type=STATIC[name], headers={"cache-control": "no-cache"})

    async def form(request: Request) -> Response:
        s = srv(request)
        choices = await run_in_threadpool(model_choices, s.settings.weights_dir)
        return JSONResponse({**form_spec(choices), "allow_paths": s.ctx.allow_paths, "version": __version__,
                             "output_dir": str(s.output_dir)})

    async def check(request: Request) -> Response:
        data = await read_json(request)
        await run_in_threadpool(check_job, srv(request).ctx, data.get("kind", "generate"), data.get("config"),
                                data.get("animation"), data.get("parent"), data.get("frames"))
        return JSONResponse({"ok": True})

    async def jobs(request: Request) -> Response:
        return JSONResponse(srv(request).jobs.snapshot())

    async def submit(request: Request) -> Response:
        data = await read_json(request)
        unknown = sorted(set(data) - {"kind", "config", "animation", "parent", "frames", "run"})
        if unknown:
            return error(400, f"unknown key {unknown[0][:40]!r}; send kind, config, animation, parent, frames, run")
        job = await run_in_threadpool(srv(request).jobs.submit, data.get("kind", "generate"), data.get("config"),
                                      data.get("animation"), data.get("parent"), data.get("frames"),
                                      data.get("run", True) is not False)
        return JSONResponse(job.public(), status_code=201)

    async def remove(request: Request) -> Response:
        s, job_id = srv(request), request.path_params["job"]
        if s.jobs.remove(job_id):
            return Response(status_code=204)
        job = s.jobs.find(job_id)
        if job is not None and job.status in ("loading", "running"):
            return error(409, "that job is running; use skip or interrupt to stop it")
        return error(404, "no such queued job (it may have started or ended already)")

    async def move(request: Request) -> Response:
        data = await read_json(request)
        index = data.get("index")
        if isinstance(index, bool) or not isinstance(index, int):
            return error(400, 'give the new place as {"index": N} (0 = next)')
        if not srv(request).jobs.move(request.path_params["job"], index):
            return error(404, "no such queued job (it may have started or ended already)")
        return JSONResponse(srv(request).jobs.snapshot())

    async def preview(request: Request) -> Response:
        job = srv(request).jobs.find(request.path_params["job"])
        if job is None or job.preview is None:
            return error(404, "no preview yet for that job")
        return Response(job.preview, media_type="image/jpeg", headers={"cache-control": "no-store"})

    async def control(request: Request) -> Response:
        data = await read_json(request)
        action = data.get("action")
        try:
            srv(request).jobs.control(action if isinstance(action, str) else "")
        except ValueError:
            return error(400, "action: use interrupt, skip, stop_after, resume or clear")
        return JSONResponse(srv(request).jobs.snapshot())

    async def events(request: Request) -> Response:
        return StreamingResponse(srv(request).events.stream(request.is_disconnected), media_type="text/event-stream",
                                 headers={"cache-control": "no-store", "x-accel-buffering": "no"})

    async def upload(request: Request) -> Response:
        body = await read_body(request, MAX_BYTES, "the image")
        return JSONResponse(await run_in_threadpool(srv(request).uploads.save, body), status_code=201)

    async def parameters(request: Request) -> Response:
        body = await read_body(request, MAX_BYTES, "the image")
        return JSONResponse(await run_in_threadpool(png_parameters, body))

    async def runs(request: Request) -> Response:
        return JSONResponse({"runs": await run_in_threadpool(live_cards, srv(request).output_dir)})

    async def run_detail(request: Request) -> Response:
        from vqclip.runs import BadRun, is_run_id, read_run

        run_id, out = request.path_params["run"], srv(request).output_dir
        if not is_run_id(run_id):
            return error(400, "not a run id (YYYYmmddTHHMMSS-xxxxxxxx)")
        if (out / run_id).is_symlink() or not (out / run_id).is_dir():
            return error(404, f"no run {run_id} in this output folder")
        try:
            info = await run_in_threadpool(read_run, out / run_id)
        except BadRun as e:
            return error(409, one_line(e, typed=False))
        d = info.details
        return JSONResponse({"id": run_id, "status": info.status, "prompt": info.prompt, "seed": d.get("seed"),
                             "kind": "animation" if d.get("animation") else "image", "config": run_settings(d),
                             "animation": {k: v for k, v in (d.get("animation") or {}).items()
                                           if k not in ("frames_done", "per_frame", "story_frames")} or None,
                             "steps_done": d.get("steps_done"), "global_step": d.get("global_step")})

    async def gallery(request: Request) -> Response:
        kiosk = request.query_params.get("kiosk") in ("1", "true", "yes")
        html = await run_in_threadpool(live_page, srv(request).output_dir, kiosk)
        return HTMLResponse(html, headers={"cache-control": "no-store", "content-security-policy":
                                           "frame-ancestors 'self'"})

    async def files(request: Request) -> Response:
        path, kind = run_file(srv(request).output_dir, request.path_params["path"])
        return FileResponse(path, media_type=kind, headers={"content-security-policy": "sandbox",
                                                            "cache-control": "no-cache"})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        server.jobs.start()
        try:
            yield
        finally:
            server.begin_stop()
            await run_in_threadpool(server.jobs.shutdown)

    routes = [
        Route("/", page), Route("/static/{name}", static), Route("/api/form", form),
        Route("/api/check", check, methods=["POST"]), Route("/api/jobs", jobs),
        Route("/api/jobs", submit, methods=["POST"]), Route("/api/jobs/{job}", remove, methods=["DELETE"]),
        Route("/api/jobs/{job}/move", move, methods=["POST"]), Route("/api/jobs/{job}/preview", preview),
        Route("/api/control", control, methods=["POST"]), Route("/api/events", events),
        Route("/api/uploads", upload, methods=["POST"]), Route("/api/parameters", parameters, methods=["POST"]),
        Route("/api/runs", runs), Route("/api/runs/{run}", run_detail), Route("/gallery", gallery),
        Route("/files/{path:path}", files),
    ]

    async def http_error(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 500)
        detail = getattr(exc, "detail", "") or ""
        text = {404: f"no such page or endpoint: {request.url.path[:80]}",
                405: f"{request.method} is not allowed on {request.url.path[:80]}"}.get(status, str(detail))
        return error(status, text)

    async def vqclip_error(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status", 400 if isinstance(exc, (FormError, UploadError, NotServed)) else 409)
        extra = {"fields": exc.fields} if isinstance(exc, FormError) else {}
        return error(status, getattr(exc, "message", str(exc)), **extra)

    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: http_error, VqclipError: vqclip_error})
    app.state.server = server
    app.add_middleware(CatchAll)
    app.add_middleware(GuardMiddleware, guard=server.guard)
    return app


class CatchAll:
    """An unexpected exception in a request: a 500 with one line (Starlette's own handler for Exception re-raises
    it after answering, which would print a traceback in the server's terminal)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            if not started:
                from vqclip.serve.security import reject

                await reject(send, 500, f"internal error ({one_line(exc)}); the server goes on")


__all__ = ["create_app", "Settings", "Server"]
