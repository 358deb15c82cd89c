"""Speed and memory of vqclip against the classic VQGAN-CLIP implementation (issue 6), plus the gallery bench.

    python scripts/bench.py                 # engine + gallery
    python scripts/bench.py engine          # 256²/cutn 32 and 384²/cutn 32: ours vs classic
    python scripts/bench.py engine --sizes 256 --steps 3 --modes classic,ours,ours-lowmem
    python scripts/bench.py fit             # estimated largest size for 8, 12 and 24 GiB GPUs (no GPU needed)
    python scripts/bench.py gallery --runs 2000
    python scripts/bench.py cache           # pickle load vs the safetensors cache (a ~1 GB random checkpoint)
    python scripts/bench.py startup         # `vqclip --help` and `--version`: median wall time of fresh processes
    python scripts/bench.py frame           # an animation frame transition (decode, warp, encode) vs one step

Both sides build the real architectures with random weights (vqgan_imagenet_f16_16384's ddconfig from the
packaged yaml, open_clip `ViT-B-32-quickgelu` with `pretrained=None`) and run `--warmup` + `--steps` optimiser
steps, each configuration in a fresh subprocess so that peak memory is the process's own: peak RSS
(`getrusage`) on the CPU, `torch.cuda.max_memory_allocated` on CUDA. Modes:

- `classic`: `scripts/classic.py`, the notebook's step (fp32, whole VQModel, per-cutout loop);
- `ours`: what `vqclip generate` does by default (the same engine calls as `vqclip.pipeline.execute`), at
  `--precision` (auto by default; `scripts/gpu_check.py` runs fp32, bf16, fp16 and auto on CUDA);
- `ours-lowmem`: `--low-memory` (decoder blocks recomputed in backward, CLIP over 8 cutouts at a time);
- ablations of the default: `ours-fp32w` (frozen weights kept in fp32), `ours-nochunk` (CLIP over all cutouts
  at once), `ours-notrim` (no heap trimming between phases), `ours-nothp` (no transparent huge pages, see
  `vqclip/hugepages.py`), `ours-compile` (`--compile`; the first step includes compiling).

`startup` times whole `vqclip --help` and `vqclip --version` processes (the installed entry point), with the
bytecode cached as in any install (in a temporary PYTHONPYCACHEPREFIX, after one untimed run), and also as the
environment has it when that forbids writing bytecode (then every vqclip module is compiled at each start).

Prints a Rich table with our/classic ratios and writes JSON to `bench-results/` (or `--out`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = Path(__file__).resolve().parent
MODEL = "vqgan_imagenet_f16_16384"
CLIP = "ViT-B-32-quickgelu"
PROMPT = "A sunny countryside with a Collie"
TARGETS = {"memory_ratio": 0.5, "time_ratio": 0.8}
MODES = ("classic", "ours", "ours-lowmem", "ours-fp32w", "ours-nochunk", "ours-compile", "ours-notrim",
         "ours-nothp")


def _import_path() -> None:
    for p in (str(ROOT / "src"), str(SCRIPTS)):
        if p not in sys.path:
            sys.path.insert(0, p)


# ----------------------------------------------------------------------------------------- the worker side
def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _rss_mb() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:  # pragma: no cover
        return float("nan")


def _random_vqgan(spec: Any, device: Any, with_encoder: bool = False) -> Any:
    """A `VQGAN` (decoder + codebook, as vqclip loads it; + encoder if asked) with random weights in the real
    architecture."""
    import contextlib
    import io

    import torch
    from taming.modules.diffusionmodules.model import Decoder, Encoder

    from vqclip.engine.vqgan import build_vqgan

    z_ch = spec.ddconfig["z_channels"]
    with contextlib.redirect_stdout(io.StringIO()):
        parts = {"decoder": Decoder(**spec.ddconfig), "post_quant_conv": torch.nn.Conv2d(spec.embed_dim, z_ch, 1)}
        if with_encoder:
            parts |= {"encoder": Encoder(**spec.ddconfig), "quant_conv": torch.nn.Conv2d(z_ch, spec.embed_dim, 1)}
    state = {f"{p}.{k}": v for p, m in parts.items() for k, v in m.state_dict().items()}
    state["quantize.embedding.weight"] = torch.empty(spec.n_embed, spec.embed_dim).uniform_(-1, 1) / spec.n_embed
    del parts
    return build_vqgan(spec, state, with_encoder, "random weights").to(device)


def random_models(spec: Any, device: Any, with_encoder: bool = False) -> Any:
    """`engine.Models` of the real architectures with random weights (the f16 decoder + codebook, ViT-B/32)."""
    from vqclip import engine

    return engine.Models(_random_vqgan(spec, device, with_encoder), engine.load_clip(CLIP, "none", device), device)


def make_session(device: Any, width: int, height: int, cutn: int, *, precision: str = "auto", mode: str = "ours",
                 low_memory: bool | None = None, models: Any = None,
                 prompts: Any = None) -> tuple[Any, Any, Any, dict[str, Any]]:
    """A session started with the same engine calls as `vqclip.pipeline.execute`, minus files: plan first (the
    budget is read before anything is loaded, as a run does), then models unless given (random weights), prompts
    unless given, and the frozen weights stored as planned (once per `models`). Returns
    (session, models, prompts, info); pass models and prompts back in for more sessions at other sizes."""
    from vqclip import engine
    from vqclip.config import build_config
    from vqclip.engine.precision import choose_precision
    from vqclip.pipeline import budget
    from vqclip.pipeline.settings import settings_from_config
    from vqclip.weights.registry import packaged_yaml

    low = True if mode == "ours-lowmem" else low_memory
    cfg = build_config(None, {"prompt": PROMPT, "width": width, "height": height, "cutn": cutn, "seed": 0,
                              "clip_pretrained": "none", "device": str(device), "precision": precision,
                              "low_memory": low, "compile": mode == "ours-compile", "save_every": 0})
    spec = engine.read_spec(packaged_yaml(MODEL))
    prec = choose_precision(cfg.precision, device)
    if mode == "ours-fp32w":  # ablation: frozen weights kept in fp32
        prec = dataclasses.replace(prec, weights=None)
    plan = budget.plan_run(cfg, spec, width, height, device, prec)
    chunk = 0 if mode == "ours-nochunk" else plan.clip_chunk  # ablation: CLIP over all cutouts at once
    settings = settings_from_config(cfg, autocast_dtype=prec.decoder, clip_autocast_dtype=prec.clip,
                                    loss_scale=prec.loss_scale, low_memory=plan.low_memory, clip_chunk=chunk)
    if models is None:
        models = random_models(spec, device)
    if prompts is None:
        prompts = engine.build_prompts(models, settings, cfg.text_prompts, [], [])
    session = engine.start_session(models, settings, prompts)
    if not getattr(models, "bench_prepared", False):
        budget.prepare_for_steps(models, plan)
        models.bench_prepared = True
    info = {"precision": prec.describe(), "precision_asked": precision, "low_memory": plan.low_memory,
            "clip_chunk": chunk, "estimate_mb": round(plan.estimate.total / 2**20, 1),
            "estimate_parts_mb": {k: round(v / 2**20, 1) for k, v in dataclasses.asdict(plan.estimate).items()
                                  if isinstance(v, int) and not isinstance(v, bool)
                                  and k not in ("width", "height", "cutn")}}
    return session, models, prompts, info


def _ours(args: argparse.Namespace, device: Any, mode: str) -> tuple[list[float], dict[str, Any]]:
    """The same engine calls as `vqclip.pipeline.execute`, minus files."""
    if mode == "ours-notrim":  # ablation: no heap trimming between phases
        from vqclip.engine import loop

        loop.trim_heap = lambda: None
    session, _, _, info = make_session(device, args.size, args.size, args.cutn, precision=args.precision, mode=mode)
    info["built_rss_mb"] = round(_rss_mb(), 1)
    times: list[float] = []
    session.run(args.warmup + args.steps, lambda step: times.append(step.seconds))
    if session.compile_error:
        info["compile_error"] = session.compile_error
    return times, info


def _classic(args: argparse.Namespace, device: Any) -> tuple[list[float], dict[str, Any]]:
    from classic import ClassicRun

    from vqclip import engine
    from vqclip.weights.registry import packaged_yaml

    run = ClassicRun(engine.read_spec(packaged_yaml(MODEL)), CLIP, args.size, args.size, args.cutn, PROMPT,
                     device=str(device))
    built = _rss_mb()
    times = []
    for _ in range(args.warmup + args.steps):
        t = time.perf_counter()
        run.step()
        if device.type == "cuda":
            import torch

            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return times, {"built_rss_mb": round(built, 1), "precision": "fp32", "low_memory": False}


def worker(args: argparse.Namespace) -> None:
    _import_path()
    huge = False
    if args.mode not in ("classic", "ours-nothp"):  # as `vqclip` does on start (classic: the notebook does not)
        from vqclip import hugepages

        huge = hugepages.enable()
    import torch

    from vqclip.engine import pick_device

    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    base = _rss_mb()
    if args.mode == "classic":
        times, info = _classic(args, device)
    else:
        times, info = _ours(args, device, args.mode)
    timed = times[args.warmup:]
    out = {"mode": args.mode, "size": args.size, "cutn": args.cutn, "device": str(device),
           "step_s": [round(t, 3) for t in times], "median_s": round(statistics.median(timed), 3),
           "peak_rss_mb": round(_peak_rss_mb(), 1), "import_rss_mb": round(base, 1), "huge_pages": huge, **info}
    if device.type == "cuda":
        out["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    print("BENCH-JSON " + json.dumps(out), flush=True)


# ------------------------------------------------------------------------------------- in-process probes (CUDA)
def is_oom(exc: BaseException) -> bool:
    """A device allocation failed (torch's OutOfMemoryError, or cuBLAS/cuDNN failing to get a workspace)."""
    text = str(exc)
    return type(exc).__name__ == "OutOfMemoryError" or isinstance(exc, RuntimeError) and (
        "out of memory" in text or "ALLOC_FAILED" in text)


class Lab:
    """The real architectures built once (auto precision, normal mode) for many sessions in one process, and
    `probe`: a few steps at a size under an allocator cap (`scripts/gpu_check.py`'s fit and profile). On the
    CPU (a rehearsal) a cap is simulated: a size whose estimated step memory is over it raises OutOfMemoryError."""

    def __init__(self, device: Any, cutn: int) -> None:
        import torch

        from vqclip import engine
        from vqclip.engine.precision import choose_precision
        from vqclip.pipeline import budget, memory
        from vqclip.weights.registry import packaged_yaml

        self.dev, self.cutn, self.cuda, self.limit = device, cutn, device.type == "cuda", None
        os.environ[budget.BUDGET_ENV] = "1TiB"  # measuring what fits: the planner must neither refuse nor switch
        s, self.models, self.prompts, _ = make_session(device, 64, 64, cutn, low_memory=False)
        s.run(1)  # cuBLAS/cuDNN handles and workspaces exist before any cap
        spec, prec = engine.read_spec(packaged_yaml(MODEL)), choose_precision("auto", device)
        cuda = torch.device("cuda")  # the estimate of the card being emulated (the rehearsal's too)
        self.estimate = lambda w, h: memory.estimate(spec, CLIP, w, h, cutn, cuda, prec)
        self.model_fit = lambda b: memory.largest_fitting(spec, CLIP, 1024, 1024, cutn, b, cuda, prec, False)
        self.total = torch.cuda.get_device_properties(device).total_memory if self.cuda else None

    def cap(self, limit: int | None) -> None:
        """Let this process's allocator hold at most `limit` bytes (None: the whole card)."""
        import torch

        self.limit = limit
        if self.cuda:
            torch.cuda.set_per_process_memory_fraction(min(1.0, (limit or self.total) / self.total), self.dev)
            torch.cuda.empty_cache()

    def session(self, w: int, h: int) -> Any:
        return make_session(self.dev, w, h, self.cutn, low_memory=False, models=self.models, prompts=self.prompts)[0]

    def probe(self, w: int, h: int, steps: int) -> tuple[bool, float | None]:
        """(fits, peak MiB on CUDA): `steps` steps at w×h under the current cap; out of memory = does not fit."""
        import gc
        import traceback

        import torch

        s, ok = None, True
        try:
            if self.cuda:
                torch.cuda.reset_peak_memory_stats(self.dev)
            elif self.limit is not None and self.estimate(w, h).step_phase > self.limit:
                raise torch.OutOfMemoryError(f"simulated: {w}x{h} needs more than {self.limit} bytes")
            s = self.session(w, h)
            s.run(steps)
        except Exception as e:
            if not is_oom(e):
                raise
            traceback.clear_frames(e.__traceback__)  # the failed step's tensors go with its frames
            ok = False
        s = None
        gc.collect()
        peak = round(torch.cuda.max_memory_allocated(self.dev) / 2**20, 1) if self.cuda and ok else None
        if self.cuda:
            torch.cuda.empty_cache()
        return ok, peak


# ----------------------------------------------------------------------------------------- the parent side
def run_one(mode: str, size: int, cutn: int, args: argparse.Namespace,
            timeout: float | None = None) -> dict[str, Any]:
    """One configuration in a fresh subprocess (so that peak memory is its own); `args.precision` (default
    auto) is the `--precision` of the `ours*` modes."""
    precision = getattr(args, "precision", "auto")
    cmd = [sys.executable, str(Path(__file__).resolve()), "_worker", "--mode", mode, "--size", str(size),
           "--cutn", str(cutn), "--steps", str(args.steps), "--warmup", str(args.warmup), "--device", args.device,
           "--threads", str(args.threads), "--precision", precision]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"mode": mode, "size": size, "cutn": cutn, "precision_asked": precision,
                "error": f"timed out after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("BENCH-JSON "):
            return json.loads(line[len("BENCH-JSON "):])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"mode": mode, "size": size, "cutn": cutn, "precision_asked": precision,
            "error": f"exit {proc.returncode}: {tail[:300]}"}


def _merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several interleaved repeats of one (mode, size, cutn): median over all timed steps, max peak."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[0]
    out = dict(ok[0])
    warm = out.get("warmup", 1)
    timed = [t for r in ok for t in r["step_s"][warm:]]
    out["median_s"] = round(statistics.median(timed), 3)
    out["peak_rss_mb"] = max(r["peak_rss_mb"] for r in ok)
    if "peak_cuda_mb" in out:
        out["peak_cuda_mb"] = max(r["peak_cuda_mb"] for r in ok)
    out["repeats"] = len(ok)
    return out


def bench_engine(args: argparse.Namespace, console: Any) -> dict[str, Any]:
    sizes = [int(s) for s in args.sizes.split(",")]
    modes = [m.strip() for m in args.modes.split(",")]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise SystemExit(f"unknown mode {unknown[0]!r}; use {', '.join(MODES)}")
    results: list[dict[str, Any]] = []
    load = [round(x, 2) for x in os.getloadavg()]
    for size in sizes:
        raw: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
        for rep in range(args.repeats):  # interleave modes so that a busy machine hits them alike
            for mode in modes:
                console.print(f"[dim]{size}² cutn {args.cutn} {mode} (repeat {rep + 1}/{args.repeats})…[/dim]")
                r = run_one(mode, size, args.cutn, args)
                r["warmup"] = args.warmup
                raw[mode].append(r)
                if "error" in r:
                    console.print(f"[red]{mode} failed: {r['error']}[/red]")
        results.extend(_merge(v) for v in raw.values())
    rows = _ratios(results)
    load_end = [round(x, 2) for x in os.getloadavg()]
    return {"results": results, "ratios": rows, "loadavg_start": load, "loadavg_end": load_end}


def _ratios(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        if r.get("mode") == "classic" or "error" in r:
            continue
        base = next((c for c in results if c.get("mode") == "classic" and c["size"] == r["size"]
                     and c["cutn"] == r["cutn"] and "error" not in c), None)
        if base is None:
            continue
        mem_key = "peak_cuda_mb" if "peak_cuda_mb" in r else "peak_rss_mb"
        mem = r[mem_key] / base[mem_key]
        tim = r["median_s"] / base["median_s"]
        rows.append({"mode": r["mode"], "size": r["size"], "cutn": r["cutn"], "memory_ratio": round(mem, 3),
                     "time_ratio": round(tim, 3), "memory_met": mem <= TARGETS["memory_ratio"],
                     "time_met": tim <= TARGETS["time_ratio"]})
    return rows


def print_engine(data: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    results = data["results"]
    t = Table(title=f"VQGAN-CLIP step: vqclip vs classic ({_machine()}); load avg {data['loadavg_start']} → "
                    f"{data['loadavg_end']}")
    for col in ("size", "cutn", "mode", "s/step (median)", "peak MiB", "estimate MiB", "precision", "ratio time",
                "ratio memory"):
        t.add_column(col, justify="right" if col not in ("mode", "precision") else "left")
    ratio = {(r["mode"], r["size"], r["cutn"]): r for r in data["ratios"]}
    for r in results:
        if "error" in r:
            t.add_row(str(r["size"]), str(r["cutn"]), r["mode"], "[red]failed[/red]", "", "", "", "", "")
            continue
        q = ratio.get((r["mode"], r["size"], r["cutn"]))
        mem = r.get("peak_cuda_mb", r["peak_rss_mb"])
        est = f"{r['estimate_mb']:.0f}" if r.get("estimate_mb") else ""

        def mark(v: float, ok: bool) -> str:
            return f"[{'green' if ok else 'red'}]{v:.2f}×[/]"

        t.add_row(str(r["size"]), str(r["cutn"]), r["mode"], f"{r['median_s']:.2f}", f"{mem:.0f}", est,
                  str(r.get("precision", "")) + (" +lowmem" if r.get("low_memory") else "")
                  + (f"; CLIP ×{r['clip_chunk']}" if r.get("clip_chunk") else ""),
                  mark(q["time_ratio"], q["time_met"]) if q else "", mark(q["memory_ratio"], q["memory_met"]) if q else "")
    console.print(t)
    console.print(f"targets: time ≤ {TARGETS['time_ratio']}× and peak memory ≤ {TARGETS['memory_ratio']}× of classic")


def _machine() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name()
    except ImportError:  # pragma: no cover
        pass
    return f"{os.cpu_count()} CPU cores, {platform.machine()}"


def bench_fit(args: argparse.Namespace, console: Any) -> dict[str, Any]:
    """Largest square size per GPU memory size, from the memory model (`vqclip.pipeline.memory`), not a measurement:
    CUDA, bf16 (as `precision=auto` picks on bf16 cards), cutn `--cutn`, f16 ImageNet decoder + ViT-B/32."""
    _import_path()
    import torch
    from rich.table import Table

    from vqclip import engine
    from vqclip.pipeline import memory
    from vqclip.engine.precision import Precision
    from vqclip.weights.registry import packaged_yaml

    spec = engine.read_spec(packaged_yaml(MODEL))
    bf16 = Precision(torch.bfloat16, torch.bfloat16, torch.bfloat16)
    rows = []
    t = Table(title=f"Estimated largest square image on a GPU (CUDA, bf16, cutn {args.cutn}; the memory model, "
                    "not measured on a GPU)")
    for col in ("GPU memory", "normal", "--low-memory", "480² needs"):
        t.add_column(col, justify="right")
    need480 = memory.estimate(spec, CLIP, 480, 480, args.cutn, torch.device("cuda"), bf16).total
    for gib in (8, 12, 24):
        budget = gib * memory.GiB - CUDA_CONTEXT
        best = {low: memory.largest_fitting(spec, CLIP, 1024, 1024, args.cutn, budget, torch.device("cuda"), bf16,
                                            low) for low in (False, True)}
        row = {"gpu_gib": gib, "budget_bytes": budget, "normal": best[False], "low_memory": best[True]}
        rows.append(row)
        t.add_row(f"{gib} GiB", *(f"{b[0]}x{b[1]}" if b else "none" for b in (best[False], best[True])),
                  memory.fmt(need480))
    console.print(t)
    console.print(f"[dim]budget = card memory − {memory.fmt(CUDA_CONTEXT)} for the CUDA context and libraries; "
                  "the CUDA factors of the model are the CPU-calibrated ones[/dim]")
    return {"rows": rows, "need_480_bytes": need480, "cuda_context_bytes": CUDA_CONTEXT, "measured": False}


CUDA_CONTEXT = 600 * 2**20  # what the CUDA context and kernels take outside torch's allocator (typical)


FRAME_SIZE = (384, 256)  # width, height
FRAME_MOVE = {"zoom": 1.02, "angle": 1.0, "tx": 1.5, "ty": -2.0, "border": "wrap"}


def _frame_devices(device: str) -> list[Any]:
    """`--device auto`: the CPU, and CUDA too when there is one; otherwise the device asked for."""
    import torch

    from vqclip.engine import pick_device

    if device != "auto":
        return [pick_device(device)]
    return [torch.device("cpu"), *([pick_device("cuda")] if torch.cuda.is_available() else [])]


def _frame_row(args: argparse.Namespace, device: Any, spec: Any) -> dict[str, Any]:
    """One device's row of the frame section (see `bench_frame`)."""
    import torch

    from vqclip.engine.precision import choose_precision
    from vqclip.engine.warp import warp
    from vqclip.pipeline import memory
    from vqclip.pipeline.animate import _encode

    w, h = FRAME_SIZE

    def timed(fn: Any, *a: Any) -> tuple[Any, float]:
        t = time.perf_counter()
        out = fn(*a)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return out, 1000 * (time.perf_counter() - t)

    def move(image: Any) -> Any:  # as animate: the decoded image (on the CPU) to the device, warped there
        return warp(image[None].to(device, torch.float32), **FRAME_MOVE)[0]

    models = random_models(spec, device, with_encoder=True)
    models.bench_prepared = True  # as animate: encoder kept, weights as loaded (no prepare_for_steps)
    session, _, _, info = make_session(device, w, h, args.cutn, precision=args.precision, models=models)
    models.clip.release_text_tower()
    parts: dict[str, list[float]] = {"step": [], "decode": [], "warp": [], "encode": []}
    reported: list[float] = []  # the step ends when it reports (its numbers on the host); run then decodes
    for i in range(args.warmup + args.steps):  # as animate's frames (of one step here), steps and transitions
        t0 = time.perf_counter()
        image = session.run(1, lambda _: reported.append(time.perf_counter())).image
        t_step, t_dec = 1000 * (reported[-1] - t0), 1000 * (time.perf_counter() - reported[-1])
        moved, t_warp = timed(move, image)
        z, t_enc = timed(_encode, models, moved.clamp(0, 1))
        session.restart_from(z, keep_optimizer=True)
        if i >= args.warmup:
            for times, ms in zip(parts.values(), (t_step, t_dec, t_warp, t_enc)):
                times.append(round(ms, 2))
    med = {f"{k}_ms": round(statistics.median(v), 2) for k, v in parts.items()}
    step = med.pop("step_ms")
    transition = sum(med.values())
    encoder = [models.vqgan.encoder, models.vqgan.quant_conv]
    prec = choose_precision(args.precision, device)

    def estimate(with_encoder: bool) -> dict[str, float]:
        e = memory.estimate(spec, CLIP, w, h, args.cutn, device, prec, info["low_memory"], with_encoder=with_encoder,
                            keep_encoder=with_encoder)
        return {k: round(v / 2**20, 1) for k, v in (("total_mb", e.total), ("step_phase_mb", e.step_phase),
                                                     ("load_phase_mb", e.load_phase))}

    return {"device": str(device), "precision": info["precision"], "low_memory": info["low_memory"], **med,
            "transition_ms": round(transition, 2), "step_ms": round(step, 2), "ratio": round(transition / step, 4),
            "times_ms": parts,
            "encoder_weights_mb": round(sum(p.nbytes for m in encoder for p in m.parameters()) / 2**20, 1),
            "estimate_without_encoder": estimate(False), "estimate_with_encoder": estimate(True)}


def bench_frame(args: argparse.Namespace, console: Any) -> dict[str, Any]:
    """What one animation frame transition costs against one optimiser step, per device, in this process.

    As `vqclip animate` makes frames (`pipeline/animate.py`; models with the encoder, the text tower released,
    weights as loaded), `--warmup` + `--steps` rounds of: one step (`session.run(1)`, until the step has reported),
    decode (the `session.image()` that ends `run`, whose image animate warps), warp on the device (FRAME_MOVE),
    re-encode (`models.vqgan.encode`), `restart_from` (untimed). Steps and transitions interleave, so a busy
    machine slows both alike; medians over the rounds after `--warmup`. Plus the memory estimate of an animation
    at that size with and without the encoder kept through the steps (`memory.estimate(keep_encoder=)`)."""
    _import_path()
    from vqclip import hugepages

    huge = hugepages.enable()  # in effect when `main` could turn it on before torch was imported (not under all)
    import torch
    from rich.table import Table

    from vqclip import engine
    from vqclip.animation import Animation
    from vqclip.pipeline.memory import MiB, fmt
    from vqclip.weights.registry import packaged_yaml

    torch.set_num_threads(args.threads)
    spec, (w, h) = engine.read_spec(packaged_yaml(MODEL)), FRAME_SIZE
    rows, load = [], [round(x, 2) for x in os.getloadavg()]
    for device in _frame_devices(args.device):
        console.print(f"[dim]frame transition {w}x{h} cutn {args.cutn} on {device}…[/dim]")
        rows.append(_frame_row(args, device, spec))
    load_end = [round(x, 2) for x in os.getloadavg()]
    t = Table(title=f"Animation frame transition vs one step: {w}x{h}, cutn {args.cutn}, {FRAME_MOVE} "
                    f"(medians of {args.steps}; {_machine()}; load avg {load} → {load_end})")
    for col in ("device", "precision", "decode ms", "warp ms", "encode ms", "sum ms", "step ms", "sum/step",
                "estimate", "+encoder"):
        t.add_column(col, justify="left" if col in ("device", "precision") else "right")
    for r in rows:
        t.add_row(r["device"], r["precision"],
                  *(f"{r[k]:.1f}" for k in ("decode_ms", "warp_ms", "encode_ms", "transition_ms", "step_ms")),
                  f"{r['ratio']:.2f}×", fmt(r["estimate_without_encoder"]["total_mb"] * MiB),
                  fmt(r["estimate_with_encoder"]["total_mb"] * MiB))
    console.print(t)
    n = Animation.model_fields["steps_per_frame"].default
    for r in rows:
        no, yes = r["estimate_without_encoder"], r["estimate_with_encoder"]
        console.print(f"{r['device']}: a transition costs {r['ratio']:.2f} steps, so a frame of --steps-per-frame N "
                      f"costs N + {r['ratio']:.2f} steps (+{100 * r['ratio'] / n:.0f}% at the default {n}); "
                      f"estimate step / load phase {no['step_phase_mb']:.0f} / {no['load_phase_mb']:.0f} MiB, "
                      f"with the encoder ({r['encoder_weights_mb']:.0f} MiB of weights) "
                      f"{yes['step_phase_mb']:.0f} / {yes['load_phase_mb']:.0f} MiB")
    return {"size": [w, h], "cutn": args.cutn, "move": FRAME_MOVE, "warmup": args.warmup, "repeats": args.steps,
            "huge_pages": huge, "rows": rows, "loadavg_start": load, "loadavg_end": load_end}


STARTUP_ARGS = (("--help",), ("--version",))
STARTUP_TARGET_S = 0.3  # median wall time a user waits for `vqclip --help` / `--version`


def _vqclip_command() -> list[str]:
    """The installed `vqclip` entry point beside this interpreter (else on PATH, else `python -m vqclip`)."""
    beside = Path(sys.executable).with_name("vqclip")
    found = str(beside) if beside.is_file() else shutil.which("vqclip")
    return [found] if found else [sys.executable, "-m", "vqclip"]


def _time_process(cmd: list[str], env: dict[str, str], runs: int) -> tuple[list[float], list[float]]:
    """(wall seconds, CPU seconds) of `runs` fresh processes; CPU time (user + system) is what a busy machine
    distorts least."""
    walls, cpus = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, env=env)
        walls.append(time.perf_counter() - t)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr.decode(errors='replace')[-300:]}")
    return walls, cpus


def bench_startup(args: argparse.Namespace, console: Any) -> dict[str, Any]:
    """Median wall time of fresh `vqclip --help` and `vqclip --version` processes (`--startup-runs` each)."""
    from rich.table import Table

    exe = _vqclip_command()
    load = [round(x, 2) for x in os.getloadavg()]
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        cached = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        cached["PYTHONPYCACHEPREFIX"] = cache
        setups = [("bytecode cached", cached)]
        if os.environ.get("PYTHONDONTWRITEBYTECODE"):
            setups.append(("no bytecode cache (PYTHONDONTWRITEBYTECODE)", dict(os.environ)))
        for label, env in setups:
            for extra in STARTUP_ARGS:
                _time_process([*exe, *extra], env, 1)  # untimed: writes the bytecode cache, warms the disk cache
                times, cpus = _time_process([*exe, *extra], env, args.startup_runs)
                median = statistics.median(times)
                rows.append({"command": " ".join(["vqclip", *extra]), "bytecode": label, "runs": len(times),
                             "median_s": round(median, 3), "min_s": round(min(times), 3),
                             "cpu_median_s": round(statistics.median(cpus), 3),
                             "times_s": [round(x, 3) for x in times], "met": median <= STARTUP_TARGET_S})
    load_end = [round(x, 2) for x in os.getloadavg()]
    t = Table(title=f"vqclip start-up: wall time of a fresh process ({args.startup_runs} runs; load avg {load} → "
                    f"{load_end})")
    for col in ("command", "bytecode", "median s", "min s", "CPU median s"):
        t.add_column(col, justify="right" if col.endswith(" s") else "left")
    for r in rows:
        colour = "green" if r["met"] else "red"
        t.add_row(r["command"], r["bytecode"], f"[{colour}]{r['median_s']:.3f}[/]", f"{r['min_s']:.3f}",
                  f"{r['cpu_median_s']:.3f}")
    console.print(t)
    console.print(f"target: median ≤ {STARTUP_TARGET_S} s; entry point: {' '.join(exe)}")
    return {"rows": rows, "target_s": STARTUP_TARGET_S, "entry_point": exe, "loadavg_start": load,
            "loadavg_end": load_end}


def bench_gallery_section(args: argparse.Namespace, console: Any) -> dict[str, Any] | None:
    path = SCRIPTS / "bench_gallery.py"
    if not path.is_file():
        console.print("[yellow]gallery: scripts/bench_gallery.py is not there yet; skipped[/yellow]")
        return None
    _import_path()
    from bench_gallery import bench_gallery

    with tempfile.TemporaryDirectory() as tmp:
        result = bench_gallery(tmp, args.runs)
    console.print(f"gallery: {result['n_runs']} runs, scratch {result['scratch_s']} s, "
                  f"incremental {result['incremental_s']} s, no-change {result['noop_s']} s")
    return result


def bench_batch_section(args: argparse.Namespace, console: Any) -> dict[str, Any]:
    """`vqclip batch` vs separate `vqclip generate` commands: the per-run overhead (scripts/bench_batch.py)."""
    from rich.table import Table

    _import_path()
    from bench_batch import bench_batch

    result = bench_batch(rows=args.batch_rows, repeats=max(1, args.repeats))
    t = Table(title=f"Per-run overhead: {result['rows']} tiny-model runs ({' '.join(result['row_args'])}), "
                    f"medians of {result['repeats']}")
    for col in ("way", "wall s", "inside runs s", "overhead per run s", "wall per run s"):
        t.add_column(col, justify="left" if col == "way" else "right")
    for way, label in (("batch", "vqclip batch (models kept)"), ("separate", "separate vqclip generate")):
        m = result["median"][way]
        t.add_row(label, f"{m['wall_s']:.1f}", f"{m['inside_s']:.1f}", f"{m['overhead_per_run_s']:.2f}",
                  f"{m['wall_per_run_s']:.2f}")
    console.print(t)
    console.print(f"batch is {result['speedup_wall_per_run']:.2f}× faster per run (wall)")
    return result


# ------------------------------------------------------------------------------------ the safetensors cache


def benchmark_cache(folder: str | Path, *, optimizer_states: bool = True, repeats: int = 3) -> dict[str, float]:
    """Time a pickle load against the safetensors cache on a random checkpoint with vqgan_imagenet_f16_16384's
    shapes (VQModel f16, 16384 codes, a loss discriminator and, like the real 980 MB file, Adam states).

    Returns sizes (MB) and seconds: `pickle_s` (safe torch.load + filtering), `first_load_s` (pickle + writing
    the cache), `cached_s` (all five prefixes from the cache), `cached_decoder_s` (what generate needs without
    an init image). safetensors maps the file lazily, so the cached timings include copying every tensor into
    fresh memory (as moving them to a GPU would). Best of `repeats`; files are in the page cache (warm).
    """
    import torch

    from vqclip.testing import _lightning_callback_key, _save_with_fake_lightning
    from vqclip.weights.checkpoint import VQGAN_KEYS, cache_path, load_checkpoint, load_vqgan_state, vqgan_tensors

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ckpt = folder / "bench_f16_16384.ckpt"
    cache_path(ckpt).unlink(missing_ok=True)
    state = _f16_16384_random_state()
    obj: dict[str, Any] = {"epoch": 1, "global_step": 1, "state_dict": state}
    if optimizer_states:
        gen = [v for k, v in state.items() if not k.startswith("loss.")]
        obj["optimizer_states"] = [{"state": {i: {"exp_avg": torch.randn_like(p), "exp_avg_sq": torch.rand_like(p)}
                                              for i, p in enumerate(gen)}}]
    cb = _lightning_callback_key()
    obj["callbacks"] = {cb: {"best_model_score": None}}
    _save_with_fake_lightning(obj, ckpt, cb)
    del obj, state
    os.sync()  # let writeback of the fresh file finish before timing reads
    out = {"ckpt_mb": ckpt.stat().st_size / 1e6}
    out["pickle_s"] = _best(repeats, lambda: vqgan_tensors(load_checkpoint(ckpt), ckpt))
    out["first_load_s"] = _best(repeats, lambda: load_vqgan_state(ckpt), before=cache_path(ckpt).unlink)
    os.sync()
    out["cache_mb"] = cache_path(ckpt).stat().st_size / 1e6
    out["cached_s"] = _best(repeats, lambda: load_vqgan_state(ckpt))
    out["cached_decoder_s"] = _best(repeats, lambda: load_vqgan_state(ckpt, keys=VQGAN_KEYS[:3]))
    return out


def _best(repeats: int, fn: Any, before: Any = None) -> float:
    """Best of `repeats` timings; every tensor is touched, so lazily mapped tensors pay for their reads too."""
    times = []
    for _ in range(max(1, repeats)):
        if before is not None:
            before(missing_ok=True)
        t = time.perf_counter()
        for v in fn().values():
            v.clone()
        times.append(time.perf_counter() - t)
    return min(times)


def _f16_16384_random_state() -> dict[str, Any]:
    """Random tensors with the real f16_16384 names and shapes (modules built on the meta device: no init cost)."""
    import contextlib
    import io

    import torch
    from taming.modules.diffusionmodules.model import Decoder, Encoder

    dd = {"double_z": False, "z_channels": 256, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
          "ch_mult": [1, 1, 2, 2, 4], "num_res_blocks": 2, "attn_resolutions": [16], "dropout": 0.0}
    with torch.device("meta"), contextlib.redirect_stdout(io.StringIO()):
        parts = {"encoder": Encoder(**dd), "decoder": Decoder(**dd), "quant_conv": torch.nn.Conv2d(256, 256, 1),
                 "post_quant_conv": torch.nn.Conv2d(256, 256, 1)}
        disc = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 4), torch.nn.Conv2d(64, 128, 4),
                                   torch.nn.Conv2d(128, 256, 4), torch.nn.Conv2d(256, 1, 4))
    shapes = {f"{p}.{k}": v.shape for p, m in parts.items() for k, v in m.state_dict().items()}
    shapes["quantize.embedding.weight"] = torch.Size([16384, 256])
    shapes |= {f"loss.discriminator.main.{k}": v.shape for k, v in disc.state_dict().items()}
    return {k: torch.randn(s) for k, s in shapes.items()}


def bench_cache_section(console: Any) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        result = benchmark_cache(tmp)
    console.print(f"safetensors cache: {result['ckpt_mb']:.0f} MB checkpoint, pickle {result['pickle_s']:.2f} s, "
                  f"first load + cache {result['first_load_s']:.2f} s, cached {result['cached_s']:.2f} s, "
                  f"cached decoder only {result['cached_decoder_s']:.2f} s")
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("section", nargs="?", default="all", choices=("engine", "fit", "gallery", "cache", "startup",
                                                                "frame", "batch", "all", "_worker"))
    ap.add_argument("--sizes", default="256,384", help="square sizes, comma-separated (default 256,384)")
    ap.add_argument("--cutn", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per run (frame: and transitions; default 3)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed first steps (frame: and transitions; default 1)")
    ap.add_argument("--repeats", type=int, default=1, help="interleaved subprocesses per mode (default 1)")
    ap.add_argument("--modes", default="classic,ours", help=f"comma-separated, of {', '.join(MODES)}")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                    help="--precision of the ours* modes (classic is fp32 always)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--runs", type=int, default=2000, help="gallery: synthetic runs")
    ap.add_argument("--startup-runs", type=int, default=7, help="startup: timed processes per command (default 7)")
    ap.add_argument("--batch-rows", type=int, default=6, help="batch: rows (default 6)")
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default bench-results/bench-<time>.json)")
    ap.add_argument("--mode", default="ours", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, default=256, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.section == "_worker":
        worker(args)
        return 0
    if args.section == "frame":  # as `vqclip` does on start, before torch is imported (`_machine` imports it);
        _import_path()  # not under "all": the engine workers' ablations (classic, ours-nothp) would inherit it
        from vqclip import hugepages

        hugepages.enable()
    from rich.console import Console

    console = Console(width=max(120, Console().width))
    data: dict[str, Any] = {"machine": _machine(), "python": platform.python_version(),
                            "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "argv": sys.argv[1:]}
    if args.section in ("engine", "all"):
        data["engine"] = bench_engine(args, console)
        print_engine(data["engine"], console)
    if args.section in ("fit", "all"):
        data["fit"] = bench_fit(args, console)
    if args.section in ("gallery", "all"):
        data["gallery"] = bench_gallery_section(args, console)
    if args.section in ("startup", "all"):
        data["startup"] = bench_startup(args, console)
    if args.section in ("frame", "all"):
        data["frame"] = bench_frame(args, console)
    if args.section in ("batch", "all"):
        data["batch"] = bench_batch_section(args, console)
    if args.section == "cache":  # not part of "all": it writes a ~1 GB checkpoint
        data["cache"] = bench_cache_section(console)
    out = args.out or ROOT / "bench-results" / f"bench-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2))
    console.print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
