"""`precision`: on the CPU, which reduced precision a step should use (`vqclip.engine.precision`): seconds per
step (median) and peak RSS of

- `decoder fp32, clip bf16, weights stored bf16`: what `precision=auto` picks with AVX512-BF16 but no AMX;
- `bf16`: bf16 everywhere (what auto picks with AMX),

on the real f16_16384 decoder + ViT-B-32-quickgelu at random weights, `--size`² (default 256; 480 is the
default run size) with `--cutn` cutouts, `--warmup` + `--steps` steps. Each run is `vqclip.bench.worker` in a
process of its own (a clean peak RSS), the precision given exactly as a continued run inherits its parent's;
the two alternate `--repeats` times so that a busy machine slows both alike. The CPU features torch and
/proc/cpuinfo report are recorded: without AVX512-BF16 or AMX, bf16 is emulated and both are slow.
"""

from __future__ import annotations

import argparse
import platform
import statistics
from typing import Any

from vqclip.bench.common import Say, format_table, loadavg, machine, quiet, random_weights
from vqclip.bench.engine import run_one

VARIANTS = {"decoder fp32 + CLIP bf16": "decoder fp32, clip bf16, weights stored bf16", "bf16 everywhere": "bf16"}
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_features() -> dict[str, Any]:
    """The CPU's flags that matter for bf16 (from /proc/cpuinfo), torch's own view, and what auto picks."""
    import torch

    from vqclip.engine.precision import choose_precision, cpu_has_amx, cpu_has_native_bf16

    flags: set[str] = set()
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
                elif line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {"model": model, "flags": {k: k in flags for k in FLAGS},
            "torch_capability": torch.backends.cpu.get_cpu_capability(),
            "native_bf16": cpu_has_native_bf16(), "amx": cpu_has_amx(),
            "auto_picks": choose_precision("auto", torch.device("cpu")).describe()}


def run(args: argparse.Namespace, say: Say = quiet) -> dict[str, Any]:
    features = cpu_features()
    seen = ", ".join(k for k, v in features["flags"].items() if v) or "none of " + ", ".join(FLAGS)
    say(f"CPU: {features['model']}; flags seen: {seen}; torch: {features['torch_capability']}; "
        f"auto picks {features['auto_picks']}")
    args.weights = str(random_weights(getattr(args, "weights", None)).parent)
    load = loadavg()
    raw: dict[str, list[dict[str, Any]]] = {name: [] for name in VARIANTS}
    for rep in range(args.repeats):
        for name, described in VARIANTS.items():
            say(f"{args.size}² cutn {args.cutn}, {name} (repeat {rep + 1}/{args.repeats})…")
            one = argparse.Namespace(**{**vars(args), "device": "cpu", "precision": "auto", "described": described})
            r = run_one("ours", args.size, args.cutn, one)
            if "error" in r:
                say(f"{name} failed: {r['error']}")
            raw[name].append(r)
    rows = []
    for name, runs in raw.items():
        ok = [r for r in runs if "error" not in r]
        timed = [t for r in ok for t in r["step_s"][args.warmup:]]
        rows.append({"variant": name, "described": VARIANTS[name], "runs": len(ok),
                     "precision": ok[0]["precision"] if ok else None,
                     "median_s": round(statistics.median(timed), 3) if timed else None,
                     "peak_rss_mb": max(r["peak_rss_mb"] for r in ok) if ok else None,
                     "estimate_mb": ok[0].get("estimate_mb") if ok else None,
                     "step_s": [r["step_s"] for r in ok], "errors": [r["error"] for r in runs if "error" in r]})
    a, b = rows
    speed = round(a["median_s"] / b["median_s"], 3) if a["median_s"] and b["median_s"] else None
    return {"cpu": features, "size": args.size, "cutn": args.cutn, "warmup": args.warmup, "steps": args.steps,
            "repeats": args.repeats, "threads": args.threads, "rows": rows, "bf16_everywhere_speedup": speed,
            "loadavg_start": load, "loadavg_end": loadavg(), "machine": machine()}


def report(data: dict[str, Any]) -> str:
    cpu = data["cpu"]
    seen = ", ".join(k for k, v in cpu["flags"].items() if v) or "none"
    rows = [[r["variant"], r["precision"] or "", f"{r['median_s']:.2f}" if r["median_s"] else "failed",
             f"{r['peak_rss_mb']:.0f}" if r["peak_rss_mb"] else "", f"{r['estimate_mb']:.0f}" if r["estimate_mb"] else "",
             r["runs"]] for r in data["rows"]]
    speed = data["bf16_everywhere_speedup"]
    return (f"CPU precision: {data['size']}² cutn {data['cutn']}, medians of {data['steps']} steps × "
            f"{data['repeats']} runs, {data['threads']} threads; load avg {data['loadavg_start']} → "
            f"{data['loadavg_end']}\n"
            f"CPU: {cpu['model']}; flags: {seen}; torch capability {cpu['torch_capability']}; native bf16 "
            f"{cpu['native_bf16']}, AMX {cpu['amx']}; auto picks {cpu['auto_picks']}\n"
            + format_table(["variant", "precision", "s/step", "peak RSS MiB", "estimate MiB", "runs"], rows,
                           right=(2, 3, 4, 5))
            + (f"\nbf16 everywhere: {speed:.2f}× the speed of decoder fp32 + CLIP bf16" if speed else ""))
