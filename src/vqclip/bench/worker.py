"""One configuration of the engine benchmark in a process of its own, so that its peak memory is its own:
`python -m vqclip.bench.worker --mode ours --size 256 --cutn 32 --weights DIR --out FILE …` writes FILE, a JSON
object: step times, peak RSS, on CUDA `torch.cuda.max_memory_allocated`, the plan's estimate. `--weights` is the
folder of `common.random_weights`, written by the parent beforehand (its making is not this process's memory).

Modes (see `vqclip.bench.engine`): `classic` (`vqclip.bench.classic`, the notebook's step), `ours` (a run loaded
by `vqclip.pipeline.load.load_run` and started as `vqclip.pipeline.execute` starts it, minus files),
`ours-lowmem` and the ablations `ours-fp32w`, `ours-nochunk`, `ours-notrim`, `ours-nothp`, `ours-compile`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from typing import Any

from vqclip.bench.common import CLIP, MODEL, PROMPT, load_random, peak_rss_mb, rss_mb, run_info


def ours(args: argparse.Namespace, device: Any) -> tuple[list[float], dict[str, Any]]:
    """A run as `vqclip generate` loads and starts it (load_run, start_session, prepare_for_steps), then
    `--warmup` + `--steps` steps."""
    from vqclip import engine
    from vqclip.pipeline import budget

    mode = args.mode
    if mode == "ours-notrim":  # ablation: no heap trimming between phases
        from vqclip.engine import loop

        loop.trim_heap = lambda: None
    run = load_random(device, args.size, args.size, args.cutn, weights=args.weights, precision=args.precision,
                      low_memory=True if mode == "ours-lowmem" else None, compile=mode == "ours-compile",
                      described=args.described)
    if mode == "ours-fp32w":  # ablation: frozen weights kept in fp32 (and planned so)
        run.precision = dataclasses.replace(run.precision, weights=None)
        run.plan = budget.plan_run(run.config, run.spec, run.width, run.height, device, run.precision)
    if mode == "ours-nochunk":  # ablation: CLIP over all cutouts at once
        run.settings = dataclasses.replace(run.settings, clip_chunk=0)
    session = engine.start_session(run.models, run.settings, run.prompts)
    budget.prepare_for_steps(run.models, run.plan)
    info = run_info(run, args.precision)
    info["built_rss_mb"] = round(rss_mb(), 1)
    times: list[float] = []
    session.run(args.warmup + args.steps, lambda step: times.append(step.seconds))
    if session.compile_error:
        info["compile_error"] = session.compile_error
    return times, info


def classic(args: argparse.Namespace, device: Any) -> tuple[list[float], dict[str, Any]]:
    """The notebook's step (fp32, whole VQModel, per-cutout loop) at random weights."""
    from vqclip import engine
    from vqclip.bench.classic import ClassicRun
    from vqclip.weights.registry import packaged_yaml

    run = ClassicRun(engine.read_spec(packaged_yaml(MODEL)), CLIP, args.size, args.size, args.cutn, PROMPT,
                     device=str(device))
    built = rss_mb()
    times = []
    for _ in range(args.warmup + args.steps):
        t = time.perf_counter()
        run.step()
        if device.type == "cuda":
            import torch

            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return times, {"built_rss_mb": round(built, 1), "precision": "fp32", "low_memory": False}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    huge = False
    if args.mode not in ("classic", "ours-nothp"):  # as `vqclip` does on start (classic: the notebook does not)
        from vqclip import hugepages

        huge = hugepages.enable()
    import torch

    from vqclip.engine import pick_device

    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    base = rss_mb()
    times, info = classic(args, device) if args.mode == "classic" else ours(args, device)
    timed = times[args.warmup:]
    out = {"mode": args.mode, "size": args.size, "cutn": args.cutn, "device": str(device),
           "step_s": [round(t, 3) for t in times], "median_s": round(statistics.median(timed), 3),
           "peak_rss_mb": round(peak_rss_mb(), 1), "import_rss_mb": round(base, 1), "huge_pages": huge, **info}
    if device.type == "cuda":
        out["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    import os

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", default="ours")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--cutn", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--described", default=None, help="an exact precision, as details.json records it")
    ap.add_argument("--weights", default=None, help="folder of common.random_weights (needed but for classic)")
    ap.add_argument("--out", required=True, help="the JSON file to write")
    args = ap.parse_args(argv)
    if args.weights is None and args.mode != "classic":
        ap.error("--weights is needed: the folder of vqclip.bench.common.random_weights")
    return args


def main(argv: list[str] | None = None) -> None:
    from pathlib import Path

    args = parse(argv)
    Path(args.out).write_text(json.dumps(measure(args)))


if __name__ == "__main__":
    main()
