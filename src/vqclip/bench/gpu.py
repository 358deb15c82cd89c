"""The parts of `scripts/gpu_check.py` (GPU readiness in one command): its sections and their report, and the
pure helpers they use (bisection over sizes, pytest's summary line, a profile's summary), which tests check on
the CPU with fake inputs. Sections (each returns its JSON; `say` gets progress lines):

- tests: `python -m pytest -m gpu -q` (tests/test_gpu.py) in the checkout: pass/fail counts;
- bench: the engine worker (`vqclip.bench.worker`: f16 16384 decoder + ViT-B/32-quickgelu at random weights,
  loaded as a run loads them), a fresh process per precision and for classic: it/s and
  `torch.cuda.max_memory_allocated`;
- fit: models loaded once (`vqclip.bench.lab.Lab`); an N GiB card is emulated with
  `set_per_process_memory_fraction(N/total)` (the CUDA context and libraries outside the allocator are not
  counted: a real card has ~0.5 GiB less); bisection over square sizes in 16 px steps, 2 steps a probe, OOM =
  does not fit; then 1280x720 peak memory, uncapped;
- profile: torch.profiler over 5 steps: GPU busy = device (kernel + copy) time / wall time; host syncs per step.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
import warnings
from typing import Any, Callable

from vqclip.bench.common import Say, child_env, format_table, quiet, write_json
from vqclip.bench.engine import run_one

SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy")
PRECISIONS = ("fp32", "bf16", "fp16", "auto")
GiB = 2**30


# ------------------------------------------------------------------------------------------------ pure helpers
def parse_pytest_counts(text: str) -> dict[str, int]:
    """{'passed': 7, 'skipped': 1, ...} from pytest's last summary line ("7 passed, 1 skipped in 3.2s")."""
    kinds = r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed|warnings?)"
    lines = [ln for ln in text.strip().splitlines() if re.search(kinds, ln)]
    counts: dict[str, int] = {}
    for n, what in re.findall(kinds, lines[-1] if lines else ""):
        key = {"error": "errors", "warning": "warnings"}.get(what, what)
        counts[key] = counts.get(key, 0) + int(n)
    return counts


def largest_size(fits: Callable[[int, int], bool], lo: int, hi: int, step: int = 16, aspect: float = 1.0,
                 lo_fits: bool = False) -> tuple[int, int] | None:
    """The largest width in [lo, hi] (multiples of `step`, height = width / aspect, also a multiple) for which
    `fits(w, h)` holds, by bisection (fits is assumed monotonic). None if even `lo` does not fit. `lo_fits`: the
    caller already knows lo fits (a smaller card's answer), so it is not probed again."""
    def size(k: int) -> tuple[int, int]:
        return k * step, max(step, round(k * step / aspect / step) * step)

    a, b = max(1, lo // step), max(1, hi // step)
    if not lo_fits and not fits(*size(a)):
        return None
    if fits(*size(b)):
        return size(b)
    while b - a > 1:  # fits(a) and not fits(b)
        mid = (a + b) // 2
        a, b = (mid, b) if fits(*size(mid)) else (a, mid)
    return size(a)


def summarise_profile(events: list[tuple[str, bool, float]], wall_s: float, steps: int) -> dict[str, Any]:
    """`events`: (name, runs on the device, duration in µs). GPU busy share = device time / wall time; host syncs
    = the CUDA runtime calls that block the host (stream/device/event synchronize, synchronous cudaMemcpy)."""
    device_us = sum(d for _, on_device, d in events if on_device)
    calls = {k: sum(1 for name, on_device, _ in events if not on_device and name == k) for k in SYNC_CALLS}
    dtoh = sum(1 for name, on_device, _ in events if on_device and name.startswith("Memcpy DtoH"))
    total = sum(calls.values())
    return {"steps": steps, "wall_s": round(wall_s, 4), "s_per_step": round(wall_s / max(1, steps), 4),
            "device_ms": round(device_us / 1000, 2), "gpu_busy": round(device_us / 1e6 / wall_s, 4) if wall_s else 0.0,
            "sync_calls": calls, "dtoh_copies": dtoh, "syncs_per_step": round(total / max(1, steps), 2)}


def mib(n: float | None) -> float | None:
    return None if n is None else round(n / 2**20, 1)


# ------------------------------------------------------------------------------------------------- sections
def section_tests(cfg: argparse.Namespace, say: Say = quiet) -> dict[str, Any]:
    """`pytest -m gpu` in `cfg.root` (the checkout): pass/fail counts, the failed lines, the tail."""
    say("tests: pytest -m gpu…")
    t = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"],
                              cwd=cfg.root, env=child_env(), capture_output=True, text=True, timeout=cfg.test_timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"pytest -m gpu timed out after {cfg.test_timeout} s"}
    out = proc.stdout + proc.stderr
    return {"rc": proc.returncode, "counts": parse_pytest_counts(proc.stdout),
            "seconds": round(time.perf_counter() - t, 1),
            "failed": [ln for ln in out.splitlines() if ln.startswith(("FAILED", "ERROR"))],
            "tail": out.strip().splitlines()[-15:]}


def section_bench(cfg: argparse.Namespace, dev: Any, cap: tuple[int, int] | None,
                  say: Say = quiet) -> list[dict[str, Any]]:
    """The engine worker per precision and for classic: it/s, peak memory, the estimate."""
    rows: list[dict[str, Any]] = []
    args = argparse.Namespace(steps=cfg.steps, warmup=cfg.warmup, device=dev.type, threads=os.cpu_count() or 1,
                              weights=getattr(cfg, "weights", None))
    for name in (*PRECISIONS, "classic"):
        if dev.type == "cpu" and name in ("bf16", "fp16"):
            rows.append({"name": name, "skipped": "CPU rehearsal (emulated on most CPUs: minutes a step)"})
            continue
        if name == "bf16" and cap is not None and cap < (8, 0):
            rows.append({"name": name, "skipped": f"compute capability {cap[0]}.{cap[1]} < 8.0"})
            continue
        args.precision = "auto" if name == "classic" else name
        say(f"bench: {name} {cfg.size}x{cfg.size} cutn {cfg.cutn}…")
        r = run_one("classic" if name == "classic" else "ours", cfg.size, cfg.cutn, args, cfg.bench_timeout)
        rows.append({"name": name, **{k: r.get(k) for k in ("precision", "median_s", "estimate_mb", "error", "step_s")},
                     "peak_mb": r.get("peak_cuda_mb", r.get("peak_rss_mb")),
                     "it_s": round(1 / r["median_s"], 2) if r.get("median_s") else None})
    return rows


def section_fit(cfg: argparse.Namespace, lab: Any, say: Say = quiet) -> dict[str, Any]:
    """Per card size (smallest first), the largest square that runs `cfg.fit_steps` steps under the cap."""
    rows, lo, peaks = [], cfg.fit_lo, {}  # peaks by size: a size's peak does not depend on the cap
    try:
        for label, limit in cfg.budgets:  # smallest card first: its answer is the next one's lower bound
            lab.cap(limit)
            say(f"fit: {label}…")
            probes = [0]

            def fits(w: int, h: int) -> bool:
                probes[0] += 1
                ok, peaks[(w, h)] = lab.probe(w, h, cfg.fit_steps)
                return ok

            best = largest_size(fits, lo, cfg.fit_hi, 16, lo_fits=lo > cfg.fit_lo)
            rows.append({"card": label, "limit_bytes": limit, "largest": best, "peak_mb": peaks.get(best),
                         "model_largest": lab.model_fit(limit), "probes": probes[0]})
            lo = best[0] if best else lo
    finally:
        lab.cap(None)
    w, h = cfg.wide
    ok, peak = lab.probe(w, h, cfg.fit_steps)
    return {"rows": rows, "precision": "auto", "cutn": cfg.cutn, "steps_per_probe": cfg.fit_steps,
            "wide": {"size": [w, h], "fits": ok, "peak_mb": peak, "estimate_mb": mib(lab.estimate(w, h).total)},
            "note": "allocator capped at the card size: the CUDA context and libraries outside it are not counted"}


def section_profile(cfg: argparse.Namespace, lab: Any, say: Say = quiet) -> dict[str, Any]:
    """torch.profiler over `cfg.profile_steps` steps: GPU busy share, host syncs per step."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile, schedule

    say("profile…")
    n, s = cfg.profile_steps, lab.session(cfg.size, cfg.size)
    s.run(cfg.warmup)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if lab.cuda else [])
    marks: list[float] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Profiler won't be using warmup"
        with profile(activities=acts, schedule=schedule(wait=0, warmup=0, active=n, repeat=1)) as prof:
            def on_step(info: Any) -> None:
                if lab.cuda and info.index == n:
                    torch.cuda.synchronize()
                marks.append(time.perf_counter())
                prof.step()

            t0 = time.perf_counter()
            s.run(n, on_step)  # the run's closing decode comes after the schedule: not profiled
    events = [(e.name, e.device_type == DeviceType.CUDA, e.time_range.elapsed_us()) for e in prof.events()]
    return {"size": cfg.size, "cutn": cfg.cutn, **summarise_profile(events, marks[-1] - t0, n)}


# --------------------------------------------------------------------------------------------------- report
def report(data: dict[str, Any]) -> str:
    c = data["config"]
    out = [f"vqclip gpu check: {data['machine']}, torch {data['torch']}, {data.get('seconds', '?')} s"]
    t = data.get("tests")
    if t:
        out.append(f"tests (pytest -m gpu): {t.get('error') or t['counts']} (exit {t.get('rc')}, {t.get('seconds')} s)")
        out += [f"  {ln}" for ln in t.get("failed", [])]
    b = data.get("bench")
    if b:
        out.append(f"\nbench {c['size']}² cutn {c['cutn']}, real architectures at random weights (warmup "
                   f"{c['warmup']}, {c['steps']} timed):")
        out.append(format_table(["mode", "precision", "it/s", "s/step", "peak MiB", "estimate MiB", "note"], [
            [r["name"], r.get("precision"), r.get("it_s"), r.get("median_s"), r.get("peak_mb"), r.get("estimate_mb"),
             r.get("skipped") or r.get("error")] for r in (b if isinstance(b, list) else [{"name": "-", **b}])]))
    f = data.get("fit")
    if f and "error" in f:
        out.append(f"\nfit: {f['error']}")
    elif f:
        out.append(f"\nfit (auto precision, normal mode, {f['steps_per_probe']} steps a probe; {f['note']}):")
        out.append(format_table(["card", "largest measured", "peak MiB", "memory model says"], [
            [r["card"], "x".join(map(str, r["largest"])) if r["largest"] else "none", r["peak_mb"],
             "x".join(map(str, r["model_largest"])) if r["model_largest"] else "none"] for r in f.get("rows", [])]))
        if "wide" in f:
            w = f["wide"]
            out.append(f"{w['size'][0]}x{w['size'][1]} cutn {f['cutn']}: peak {w['peak_mb']} MiB "
                       f"(estimate {w['estimate_mb']} MiB){'' if w['fits'] else ', did not fit'}")
    p = data.get("profile")
    if p:
        out.append(f"\nprofile: {p['error']}" if "error" in p else
                   f"\nprofile {p['size']}² cutn {p['cutn']}, {p['steps']} steps: GPU busy {p['gpu_busy']:.0%}, "
                   f"{p['syncs_per_step']} host syncs/step {p['sync_calls']}, {p['dtoh_copies']} DtoH copies, "
                   f"{p['s_per_step']} s/step under the profiler")
    return "\n".join(out)


__all__ = ["parse_pytest_counts", "largest_size", "summarise_profile", "format_table", "write_json", "mib",
           "section_tests", "section_bench", "section_fit", "section_profile", "report", "PRECISIONS", "GiB"]
