"""GPU readiness in one command: the `gpu` tests, speed and peak memory per precision and for classic, the largest
size that fits 8, 12 and 24 GiB cards (measured), and a profile of a few steps. Prints a table, writes JSON.

    python scripts/gpu_check.py                    # everything: under 8 minutes on an H100-class GPU
    python scripts/gpu_check.py --quick            # 3 timed steps, 8 GiB fit only, 3 profiled steps
    python scripts/gpu_check.py --skip-tests --skip-fit --out result.json

On a bare GPU machine (no internet; ../shared/gpu/fetch-wheels.sh): wheels installed to /tmp/site, then run with
PYTHONPATH=/tmp/site:$PWD/src. Without CUDA it exits 1 with one line. Sections:
- tests: `python -m pytest -m gpu -q` (tests/test_gpu.py): pass/fail counts;
- bench: `scripts/bench.py`'s worker (f16 16384 decoder + ViT-B/32-quickgelu at random weights), 480x480 cutn 32,
  a fresh process per precision and for classic: it/s and `torch.cuda.max_memory_allocated`;
- fit: models built once; an N GiB card is emulated with `set_per_process_memory_fraction(N/total)` (the CUDA
  context and libraries outside the allocator are not counted: a real card has ~0.5 GiB less); bisection over
  square sizes in 16 px steps, 2 steps a probe, OOM = does not fit; then 1280x720 peak memory, uncapped;
- profile: torch.profiler over 5 steps: GPU busy = device (kernel + copy) time / wall time; host syncs per step.
`--device cpu` (hidden) rehearses every code path on the CPU at tiny sizes, OOM simulated from the memory model.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = Path(__file__).resolve().parent
NO_CUDA = "gpu_check.py needs a CUDA GPU: torch sees none here (torch.cuda.is_available() is False)"
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


def format_table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


def write_json(data: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str))
    return path


def mib(n: float | None) -> float | None:
    return None if n is None else round(n / 2**20, 1)


# ------------------------------------------------------------------------------------------------- sections
def _bench() -> Any:
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    import bench

    bench._import_path()
    return bench


def section_tests(cfg: argparse.Namespace) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    t = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=cfg.test_timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"pytest -m gpu timed out after {cfg.test_timeout} s"}
    out = proc.stdout + proc.stderr
    return {"rc": proc.returncode, "counts": parse_pytest_counts(proc.stdout),
            "seconds": round(time.perf_counter() - t, 1),
            "failed": [ln for ln in out.splitlines() if ln.startswith(("FAILED", "ERROR"))],
            "tail": out.strip().splitlines()[-15:]}


def section_bench(cfg: argparse.Namespace, dev: Any, cap: tuple[int, int] | None) -> list[dict[str, Any]]:
    bench, rows = _bench(), []
    args = argparse.Namespace(steps=cfg.steps, warmup=cfg.warmup, device=dev.type, threads=os.cpu_count() or 1)
    for name in (*PRECISIONS, "classic"):
        if dev.type == "cpu" and name in ("bf16", "fp16"):
            rows.append({"name": name, "skipped": "CPU rehearsal (emulated on most CPUs: minutes a step)"})
            continue
        if name == "bf16" and cap is not None and cap < (8, 0):
            rows.append({"name": name, "skipped": f"compute capability {cap[0]}.{cap[1]} < 8.0"})
            continue
        args.precision = "auto" if name == "classic" else name
        print(f"bench: {name} {cfg.size}x{cfg.size} cutn {cfg.cutn}…", flush=True)
        r = bench.run_one("classic" if name == "classic" else "ours", cfg.size, cfg.cutn, args, cfg.bench_timeout)
        rows.append({"name": name, **{k: r.get(k) for k in ("precision", "median_s", "estimate_mb", "error", "step_s")},
                     "peak_mb": r.get("peak_cuda_mb", r.get("peak_rss_mb")),
                     "it_s": round(1 / r["median_s"], 2) if r.get("median_s") else None})
    return rows


def section_fit(cfg: argparse.Namespace, lab: Any) -> dict[str, Any]:
    rows, lo, peaks = [], cfg.fit_lo, {}  # peaks by size: a size's peak does not depend on the cap
    try:
        for label, limit in cfg.budgets:  # smallest card first: its answer is the next one's lower bound
            lab.cap(limit)
            print(f"fit: {label}…", flush=True)
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


def section_profile(cfg: argparse.Namespace, lab: Any) -> dict[str, Any]:
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile, schedule

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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default bench-results/gpu-check-<time>.json)")
    ap.add_argument("--quick", action="store_true", help="3 timed steps, 8 GiB fit only, 3 profiled steps")
    for name in ("tests", "bench", "fit", "profile"):
        ap.add_argument(f"--skip-{name}", action="store_true", help=f"skip the {name} section")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def plan(args: argparse.Namespace) -> argparse.Namespace:
    """Sizes and step counts for this device (cuda, or the CPU rehearsal at tiny sizes)."""
    cfg = argparse.Namespace(**vars(args), test_timeout=420, bench_timeout=240, fit_steps=2)
    if args.device == "cuda":
        cfg.size, cfg.cutn, cfg.wide, cfg.fit_lo, cfg.fit_hi = 480, 32, (1280, 720), 16, 4096
        cfg.warmup, cfg.steps, cfg.profile_steps = (1, 3, 3) if args.quick else (2, 10, 5)
        cfg.budgets = [(f"{g} GiB", g * GiB) for g in ((8,) if args.quick else (8, 12, 24))]
    else:
        cfg.size, cfg.cutn, cfg.wide, cfg.fit_lo, cfg.fit_hi = 64, 2, (128, 80), 16, 128
        cfg.warmup, cfg.steps, cfg.profile_steps = 1, 1, 2
        cfg.budgets = None  # from the memory model, once it is importable (main)
    return cfg


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with warnings.catch_warnings():  # "CUDA initialization: …" is warned where there is no driver
            warnings.simplefilter("ignore")
            import torch

            has_cuda = torch.cuda.is_available()
    except Exception:
        has_cuda = False
    if args.device == "cuda" and not has_cuda:
        print(NO_CUDA, file=sys.stderr)
        return 1
    os.environ.setdefault("KINETO_LOG_LEVEL", "5")
    cfg, bench, t0 = plan(args), _bench(), time.perf_counter()
    from vqclip.errors import one_line

    dev = torch.device(args.device)
    cap = torch.cuda.get_device_capability() if has_cuda and dev.type == "cuda" else None
    data: dict[str, Any] = {"machine": bench._machine(), "torch": torch.__version__, "device": str(dev),
                            "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "argv": sys.argv[1:],
                            "config": {k: getattr(cfg, k) for k in ("size", "cutn", "warmup", "steps", "quick")}}
    if cap:
        data["gpu"] = {"name": torch.cuda.get_device_name(), "capability": list(cap),
                       "total_mib": mib(torch.cuda.get_device_properties(dev).total_memory)}

    def guarded(fn: Callable[..., Any], *a: Any) -> Any:
        t = time.perf_counter()
        try:
            return fn(*a)
        except Exception as e:
            return {"error": one_line(e, 300)}
        finally:
            data.setdefault("section_s", {})[fn.__name__] = round(time.perf_counter() - t, 1)

    if not args.skip_tests:
        print("tests: pytest -m gpu…", flush=True)
        data["tests"] = guarded(section_tests, cfg)
    if not args.skip_bench:
        data["bench"] = guarded(section_bench, cfg, dev, cap)
    if not (args.skip_fit and args.skip_profile):
        lab = guarded(bench.Lab, dev, cfg.cutn)
        if isinstance(lab, dict):
            data.update({k: lab for k in ("fit", "profile") if not getattr(args, f"skip_{k}")})
        else:
            if cfg.budgets is None:  # rehearsal: "cards" of these squares' estimated step memory, so they fit
                squares = (48,) if args.quick else (48, 64, 96)
                cfg.budgets = [(f"{s}² est.", lab.estimate(s, s).step_phase) for s in squares]
            if not args.skip_fit:
                data["fit"] = guarded(section_fit, cfg, lab)
            if not args.skip_profile:
                print("profile…", flush=True)
                data["profile"] = guarded(section_profile, cfg, lab)
    data["seconds"] = round(time.perf_counter() - t0, 1)
    out = args.out or ROOT / "bench-results" / f"gpu-check-{time.strftime('%Y%m%dT%H%M%S')}.json"
    print(report(data))
    print(f"wrote {write_json(data, out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
