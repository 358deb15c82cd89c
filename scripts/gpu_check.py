"""GPU readiness in one command: the `gpu` tests, speed and peak memory per precision and for classic, the largest
size that fits 8, 12 and 24 GiB cards (measured), and a profile of a few steps. Prints a table, writes JSON.

    python scripts/gpu_check.py                    # everything: under 8 minutes on an H100-class GPU
    python scripts/gpu_check.py --quick            # 3 timed steps, 8 GiB fit only, 3 profiled steps
    python scripts/gpu_check.py --skip-tests --skip-fit --out result.json

On a bare GPU machine (no internet; ../shared/gpu/fetch-wheels.sh): wheels installed to /tmp/site, then run with
PYTHONPATH=/tmp/site:$PWD/src. Without CUDA it exits 1 with one line. Sections:
- tests: `python -m pytest -m gpu -q` (tests/test_gpu.py): pass/fail counts;
- bench: the engine worker at 480x480 cutn 32, a fresh process per precision and for classic;
- fit: the largest size for 8, 12 and 24 GiB, measured under an allocator cap;
- profile: GPU busy share and host syncs per step over 5 steps.
The sections and their report are `vqclip.bench.gpu` (see there for how each measures).
`--device cpu` (hidden) rehearses every code path on the CPU at tiny sizes, OOM simulated from the memory model.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
NO_CUDA = "gpu_check.py needs a CUDA GPU: torch sees none here (torch.cuda.is_available() is False)"
GiB = 2**30


def say(line: str) -> None:
    print(line, flush=True)


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
    cfg = argparse.Namespace(**vars(args), test_timeout=420, bench_timeout=240, fit_steps=2, root=ROOT)
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
    cfg, t0 = plan(args), time.perf_counter()
    from vqclip.bench import gpu
    from vqclip.bench.common import machine, random_weights, write_json
    from vqclip.errors import one_line

    dev = torch.device(args.device)
    cap = torch.cuda.get_device_capability() if has_cuda and dev.type == "cuda" else None
    data: dict[str, Any] = {"machine": machine(), "torch": torch.__version__, "device": str(dev),
                            "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "argv": sys.argv[1:],
                            "config": {k: getattr(cfg, k) for k in ("size", "cutn", "warmup", "steps", "quick")}}
    if cap:
        data["gpu"] = {"name": torch.cuda.get_device_name(), "capability": list(cap),
                       "total_mib": gpu.mib(torch.cuda.get_device_properties(dev).total_memory)}

    def guarded(fn: Callable[..., Any], *a: Any) -> Any:
        t = time.perf_counter()
        try:
            return fn(*a)
        except Exception as e:
            return {"error": one_line(e, 300)}
        finally:
            data.setdefault("section_s", {})[fn.__name__] = round(time.perf_counter() - t, 1)

    with tempfile.TemporaryDirectory(prefix="vqclip-gpu-check-") as weights:
        cfg.weights = str(random_weights(weights).parent)  # the f16_16384 architecture at random weights, once
        run_sections(args, cfg, dev, cap, data, guarded)
    data["seconds"] = round(time.perf_counter() - t0, 1)
    out = args.out or ROOT / "bench-results" / f"gpu-check-{time.strftime('%Y%m%dT%H%M%S')}.json"
    print(gpu.report(data))
    print(f"wrote {write_json(data, out)}")
    return 0


def run_sections(args: argparse.Namespace, cfg: argparse.Namespace, dev: Any, cap: Any, data: dict[str, Any],
                 guarded: Callable[..., Any]) -> None:
    """The sections not skipped, into `data`; `guarded` turns a section's exception into {"error": line}."""
    from vqclip.bench import gpu
    from vqclip.bench.lab import Lab

    if not args.skip_tests:
        data["tests"] = guarded(gpu.section_tests, cfg, say)
    if not args.skip_bench:
        data["bench"] = guarded(gpu.section_bench, cfg, dev, cap, say)
    if not (args.skip_fit and args.skip_profile):
        lab = guarded(Lab, dev, cfg.cutn, cfg.weights)
        if isinstance(lab, dict):
            data.update({k: lab for k in ("fit", "profile") if not getattr(args, f"skip_{k}")})
        else:
            if cfg.budgets is None:  # rehearsal: "cards" of these squares' estimated step memory, so they fit
                squares = (48,) if args.quick else (48, 64, 96)
                cfg.budgets = [(f"{s}² est.", lab.estimate(s, s).step_phase) for s in squares]
            if not args.skip_fit:
                data["fit"] = guarded(gpu.section_fit, cfg, lab, say)
            if not args.skip_profile:
                data["profile"] = guarded(gpu.section_profile, cfg, lab, say)


if __name__ == "__main__":
    sys.exit(main())
