"""`serve`: what watching a run through `vqclip serve` costs — time from POST to the first event, how long after a
step its progress event reaches a listening tab (and the first preview), and the per-step time of a job run
through the server against the same run made directly (`execute`, models kept, as `vqclip generate` runs it).

The server is the real one (uvicorn on 127.0.0.1, a free port, in a thread of this process, so its clock is
ours); a tab is a plain HTTP client reading `/api/events`. A step's time is when the job's reporter heard of
it (the reporter class is wrapped to note that moment, nothing else changes). Per-step times come from each
run's details.json (`timings.per_step_s`, the median step), both ways with a warm-up run first so that loading is not counted, the
two ways interleaved so a busy machine slows both alike. Goals (issue 21): ≤ 5% slower per step, the first
preview within 1 s of the first step. On a busy machine the two step times differ by noise far larger than
the server's cost, so the time the worker spends in the job's reporter (previews encoded, events handed out) is
measured too: that is what the server adds to a step.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from vqclip.bench.common import Say, format_table, quiet


def _config(models: dict[str, str], size: int, cutn: int, steps: int, seed: int) -> dict[str, Any]:
    return {"prompt": "A sunny countryside with a Collie", **models, "width": size, "height": size, "cutn": cutn,
            "steps": steps, "save_every": 1, "seed": seed, "device": "cpu"}


def _models(kind: str, folder: Path) -> dict[str, str]:
    if kind == "tiny":
        from vqclip.testing import make_tiny_clip, make_tiny_vqgan

        yaml_path, _ = make_tiny_vqgan(folder, "tiny_vq")
        clip_json, clip_ckpt = make_tiny_clip(folder, "tiny-clip")
        return {"model": str(yaml_path), "clip_model": str(clip_json), "clip_pretrained": str(clip_ckpt)}
    from vqclip.bench.common import CLIP, random_weights

    return {"model": str(random_weights(folder)), "clip_model": CLIP, "clip_pretrained": "none"}


class _Tab(threading.Thread):
    """A listening tab: every event with the moment it arrived."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.events, self.ready = url, [], threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        with urllib.request.urlopen(self.url + "api/events", timeout=600) as r:
            self.ready.set()
            event = None
            for raw in r:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event:
                    with self.lock:
                        self.events.append((time.perf_counter(), event, json.loads(line[6:])))
                    event = None

    def since(self, t: float) -> list[tuple[float, str, Any]]:
        with self.lock:
            return [e for e in self.events if e[0] >= t]


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(url + "api/jobs", data=json.dumps(body).encode(), method="POST",
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"the server refused the job: {e.read().decode(errors='replace')[:300]}") from None


def _step_seconds(out: Path, run_id: str) -> list[float]:
    """The run's median step (details.json timings.per_step_s: the warming first step left out)."""
    return [float(json.loads((out / run_id / "details.json").read_text())["timings"]["per_step_s"])]


def bench_serve(models: str = "real", size: int = 128, cutn: int = 8, steps: int = 12, repeats: int = 2,
                say: Say = quiet) -> dict[str, Any]:
    import uvicorn

    from vqclip.config import RunConfig
    from vqclip.pipeline.cache import ModelCache
    from vqclip.pipeline.execute import execute
    from vqclip.pipeline.request import RunRequest
    from vqclip.serve import jobs as jobs_module
    from vqclip.serve.app import Settings, create_app

    stepped: dict[tuple[str, int], float] = {}  # (job id, step) → when its reporter heard of it
    inside: list[float] = []  # seconds the worker spent in the reporter per step (previews, events)
    original = jobs_module.PreviewReporter

    class Timed(original):  # type: ignore[misc, valid-type]
        def step(self, info: Any) -> None:
            t = time.perf_counter()
            stepped[(self.job.id, info.index)] = t
            super().step(info)
            inside.append(time.perf_counter() - t)

    jobs_module.PreviewReporter = Timed
    direct: list[float] = []
    served: list[float] = []
    first_event, first_progress, first_preview, latency = [], [], [], []
    try:
        with tempfile.TemporaryDirectory(prefix="vqclip-bench-serve-") as tmp:
            root = Path(tmp)
            say(f"models: {models}…")
            m = _models(models, root / "models")
            out = root / "out"
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sock.listen(16)
            port = sock.getsockname()[1]
            app = create_app(Settings(output_dir=out, port=port))
            server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                                                   timeout_graceful_shutdown=2))
            thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
            thread.start()
            while not server.started:
                time.sleep(0.02)
            url = f"http://127.0.0.1:{port}/"
            tab = _Tab(url)
            tab.start()
            tab.ready.wait(30)
            cache = ModelCache()
            for r in range(repeats + 1):  # round 0 warms both up (models loaded, kept)
                cfg = _config(m, size, cutn, steps, seed=r + 1)
                say(f"round {r}/{repeats}: direct…")
                outcome = execute(RunRequest(config=RunConfig.model_validate(cfg), output_dir=out,
                                             models_cache=cache))
                if r:
                    direct += _step_seconds(out, outcome.id)
                say(f"round {r}/{repeats}: through the server…")
                t_post = time.perf_counter()
                job = _post(url, {"config": cfg})["id"]
                while True:
                    done = [e for e in tab.since(t_post) if e[1] == "done" and e[2]["job"] == job]
                    if done:
                        break
                    time.sleep(0.02)
                if done[0][2]["status"] != "finished":
                    raise RuntimeError(f"the served job ended {done[0][2]['status']}: {done[0][2].get('error')}")
                if not r:
                    continue
                served += _step_seconds(out, done[0][2]["run"])
                events = tab.since(t_post)
                first_event.append(events[0][0] - t_post)
                progress = [e for e in events if e[1] == "progress" and e[2]["job"] == job]
                first_progress.append(progress[0][0] - t_post)
                seen: set[int] = set()
                for t, _, data in progress:  # the first event that tells of each step (end() repeats the last)
                    if (job, data["step"]) in stepped and data["step"] not in seen:
                        seen.add(data["step"])
                        latency.append(t - stepped[(job, data["step"])])
                preview = next(e for e in progress if e[2].get("preview"))
                first_preview.append(preview[0] - stepped[(job, 1)])
            app.state.server.begin_stop()
            server.should_exit = True
            thread.join(30)
            sock.close()
    finally:
        jobs_module.PreviewReporter = original

    def ms(xs: list[float]) -> float:
        return round(1000 * statistics.median(xs), 1)

    step_direct, step_served = statistics.median(direct), statistics.median(served)
    return {"models": models, "size": size, "cutn": cutn, "steps": steps, "repeats": repeats,
            "post_to_first_event_ms": ms(first_event), "post_to_first_progress_ms": ms(first_progress),
            "event_latency_ms": ms(latency), "event_latency_max_ms": round(1000 * max(latency), 1),
            "first_preview_after_step1_ms": ms(first_preview),
            "step_s_direct": round(step_direct, 4), "step_s_served": round(step_served, 4),
            "step_overhead_pct": round(100 * (step_served / step_direct - 1), 1),
            "reporter_ms_per_step": round(1000 * statistics.mean(inside), 3),
            "reporter_ms_max": round(1000 * max(inside), 2),
            "events_per_job": round(len(latency) / max(1, repeats), 1)}


def run(args: argparse.Namespace, say: Say = quiet) -> dict[str, Any]:
    return bench_serve(models=getattr(args, "serve_models", "real"), repeats=max(1, args.repeats), say=say)


def _ok(met: bool) -> str:
    return "ok" if met else "MISSED"


def report(result: dict[str, Any]) -> str:
    r = result
    rows = [["POST → first event", f"{r['post_to_first_event_ms']} ms", ""],
            ["POST → first progress event", f"{r['post_to_first_progress_ms']} ms", "(includes the first step)"],
            ["step → its event at a tab (median / max)", f"{r['event_latency_ms']} / {r['event_latency_max_ms']} ms", ""],
            ["step 1 → first preview at a tab", f"{r['first_preview_after_step1_ms']} ms",
             _ok(r["first_preview_after_step1_ms"] <= 1000) + " (goal ≤ 1000 ms)"],
            ["worker time in the reporter per step (mean / max)",
             f"{r['reporter_ms_per_step']} / {r['reporter_ms_max']} ms",
             f"{100 * r['reporter_ms_per_step'] / 1000 / r['step_s_direct']:.2f}% of a direct step"],
            ["step time direct / served", f"{r['step_s_direct']} / {r['step_s_served']} s",
             f"{r['step_overhead_pct']:+.1f}% " + _ok(r["step_overhead_pct"] <= 5) + " (goal ≤ 5%)"]]
    return (f"vqclip serve: {r['models']} models, {r['size']}x{r['size']}, cutn {r['cutn']}, {r['steps']} steps, "
            f"a frame every step, medians of {r['repeats']} rounds\n"
            + format_table(["what", "time", "note"], rows))


__all__ = ["bench_serve", "run", "report"]
