"""`engine`: speed and peak memory of a vqclip step against the classic VQGAN-CLIP implementation (issue 6).

Both sides run the real architectures at random weights (vqgan_imagenet_f16_16384's ddconfig from the packaged
yaml, open_clip `ViT-B-32-quickgelu` with `pretrained=None`), `--warmup` + `--steps` optimiser steps, each
configuration in a fresh subprocess (`vqclip.bench.worker`) so that peak memory is the process's own: peak RSS
(`getrusage`) on the CPU, `torch.cuda.max_memory_allocated` on CUDA. Modes:

- `classic`: `vqclip.bench.classic`, the notebook's step (fp32, whole VQModel, per-cutout loop);
- `ours`: what `vqclip generate` does by default (`load_run`, then the session started as `execute` starts it),
  at `--precision` (auto by default; `scripts/gpu_check.py` runs fp32, bf16, fp16 and auto on CUDA);
- `ours-lowmem`: `--low-memory` (decoder blocks recomputed in backward, CLIP over 8 cutouts at a time);
- ablations of the default: `ours-fp32w` (frozen weights kept in fp32), `ours-nochunk` (CLIP over all cutouts
  at once), `ours-notrim` (no heap trimming between phases), `ours-nothp` (no transparent huge pages, see
  `vqclip/hugepages.py`), `ours-compile` (`--compile`; the first step includes compiling).

Repeats interleave the modes so that a busy machine slows them alike; ratios are ours/classic.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from vqclip.bench.common import Say, child_env, format_table, loadavg, machine, mark, quiet, random_weights

TARGETS = {"memory_ratio": 0.5, "time_ratio": 0.8}
MODES = ("classic", "ours", "ours-lowmem", "ours-fp32w", "ours-nochunk", "ours-compile", "ours-notrim",
         "ours-nothp")


def run_one(mode: str, size: int, cutn: int, args: argparse.Namespace,
            timeout: float | None = None) -> dict[str, Any]:
    """One configuration in a fresh subprocess (so that peak memory is its own). From `args`: steps, warmup,
    device, threads, `precision` (default auto: the `--precision` of the `ours*` modes), `described` (an exact
    precision as details.json records it; default none) and `weights` (the folder of `common.random_weights`;
    default: this process's temporary one, written on first use)."""
    precision = getattr(args, "precision", "auto")
    weights, described = getattr(args, "weights", None), getattr(args, "described", None)
    if mode != "classic":
        weights = str(random_weights(weights).parent)  # written here: its making is not the worker's memory
    with tempfile.TemporaryDirectory(prefix="vqclip-bench-run-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "vqclip.bench.worker", "--mode", mode, "--size", str(size), "--cutn",
               str(cutn), "--steps", str(args.steps), "--warmup", str(args.warmup), "--device", args.device,
               "--threads", str(args.threads), "--precision", precision, "--out", str(out),
               *(["--weights", weights] if weights else []), *(["--described", described] if described else [])]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"mode": mode, "size": size, "cutn": cutn, "precision_asked": precision,
                    "error": f"timed out after {timeout:.0f} s"}
        if proc.returncode == 0 and out.is_file():
            return json.loads(out.read_text())
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"mode": mode, "size": size, "cutn": cutn, "precision_asked": precision,
            "error": f"exit {proc.returncode}: {tail[:300]}"}


def merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
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


def ratios(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """ours/classic time and memory per (mode, size, cutn), against TARGETS."""
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


def run(args: argparse.Namespace, say: Say = quiet) -> dict[str, Any]:
    """`--sizes` × `--modes`, `--repeats` interleaved subprocesses each."""
    sizes = [int(s) for s in args.sizes.split(",")]
    modes = [m.strip() for m in args.modes.split(",")]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise SystemExit(f"unknown mode {unknown[0]!r}; use {', '.join(MODES)}")
    results: list[dict[str, Any]] = []
    load = loadavg()
    for size in sizes:
        raw: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
        for rep in range(args.repeats):  # interleave modes so that a busy machine hits them alike
            for mode in modes:
                say(f"{size}² cutn {args.cutn} {mode} (repeat {rep + 1}/{args.repeats})…")
                r = run_one(mode, size, args.cutn, args)
                r["warmup"] = args.warmup
                raw[mode].append(r)
                if "error" in r:
                    say(f"{mode} failed: {r['error']}")
        results.extend(merge(v) for v in raw.values())
    return {"results": results, "ratios": ratios(results), "loadavg_start": load, "loadavg_end": loadavg(),
            "machine": machine()}


def report(data: dict[str, Any]) -> str:
    ratio = {(r["mode"], r["size"], r["cutn"]): r for r in data["ratios"]}
    rows = []
    for r in data["results"]:
        if "error" in r:
            rows.append([r["size"], r["cutn"], r["mode"], "failed", "", "", r["error"][:60], "", ""])
            continue
        q = ratio.get((r["mode"], r["size"], r["cutn"]))
        mem = r.get("peak_cuda_mb", r["peak_rss_mb"])
        rows.append([r["size"], r["cutn"], r["mode"], f"{r['median_s']:.2f}", f"{mem:.0f}",
                     f"{r['estimate_mb']:.0f}" if r.get("estimate_mb") else "",
                     str(r.get("precision", "")) + (" +lowmem" if r.get("low_memory") else "")
                     + (f"; CLIP ×{r['clip_chunk']}" if r.get("clip_chunk") else ""),
                     mark(q["time_ratio"], q["time_met"]) if q else "",
                     mark(q["memory_ratio"], q["memory_met"]) if q else ""])
    title = (f"VQGAN-CLIP step: vqclip vs classic ({data.get('machine') or machine()}); load avg "
             f"{data['loadavg_start']} → {data['loadavg_end']}")
    table = format_table(["size", "cutn", "mode", "s/step (median)", "peak MiB", "estimate MiB", "precision",
                          "ratio time", "ratio memory"], rows, right=(0, 1, 3, 4, 5))
    return (f"{title}\n{table}\ntargets: time ≤ {TARGETS['time_ratio']}× and peak memory ≤ "
            f"{TARGETS['memory_ratio']}× of classic")
