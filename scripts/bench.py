"""Benchmarks of vqclip (issue 6 and after): `python scripts/bench.py NAME [options]` runs one (or `all`), prints
its table and writes the results as JSON to `bench-results/` (or `--out`). One module per benchmark in
`vqclip.bench` holds what it measures and how (see its docstring):

    python scripts/bench.py                 # all: engine, fit, gallery, startup, frame, batch
    python scripts/bench.py engine          # 256²/cutn 32 and 384²/cutn 32: ours vs classic
    python scripts/bench.py engine --sizes 256 --steps 3 --modes classic,ours,ours-lowmem
    python scripts/bench.py fit             # estimated largest size for 8, 12 and 24 GiB GPUs (no GPU needed)
    python scripts/bench.py gallery --runs 2000 [--image-size 480]
    python scripts/bench.py cache           # pickle load vs the safetensors cache (a ~1 GB random checkpoint)
    python scripts/bench.py startup         # `vqclip --help` and `--version`: median wall time of fresh processes
    python scripts/bench.py frame           # an animation frame transition (decode, warp, encode) vs one step
    python scripts/bench.py batch           # per-run overhead of `vqclip batch` vs separate `vqclip generate`
    python scripts/bench.py precision --size 256 --cutn 32   # CPU: decoder fp32 + CLIP bf16 vs bf16 everywhere
    python scripts/bench.py serve [--serve-models tiny]       # a job through `vqclip serve` vs the same run direct
    python scripts/bench.py diffuse --size 256 --cutn 16      # a guided diffusion step: vqclip vs the reference code
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

from vqclip.bench import BENCHMARKS, IN_ALL, benchmark
from vqclip.bench.common import machine, write_json
from vqclip.bench.engine import MODES

ROOT = Path(__file__).resolve().parents[1]


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("section", nargs="?", default="all", choices=(*BENCHMARKS, "all"))
    ap.add_argument("--sizes", default="256,384", help="engine: square sizes, comma-separated (default 256,384)")
    ap.add_argument("--size", type=int, default=256, help="precision: the square size (default 256)")
    ap.add_argument("--cutn", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per run (frame: and transitions; default 3)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed first steps (frame: and transitions; default 1)")
    ap.add_argument("--repeats", type=int, default=1, help="interleaved subprocesses per mode (default 1)")
    ap.add_argument("--modes", default="classic,ours", help=f"engine: comma-separated, of {', '.join(MODES)}")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                    help="--precision of the ours* modes and of frame (classic is fp32 always)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--runs", type=int, default=2000, help="gallery: synthetic runs")
    ap.add_argument("--image-size", type=int, default=64, help="gallery: side of the synthetic output.png files")
    ap.add_argument("--startup-runs", type=int, default=7, help="startup: timed processes per command (default 7)")
    ap.add_argument("--batch-rows", type=int, default=6, help="batch: rows (default 6)")
    ap.add_argument("--serve-models", default="real", choices=("real", "tiny"),
                    help="serve: the f16_16384 architecture at random weights (default) or the tiny test models")
    ap.add_argument("--weights", default=None, help="folder for the random-weight f16_16384 checkpoint "
                                                    "(default: a temporary one)")
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default bench-results/bench-<time>.json)")
    return ap.parse_args(argv)


def say(line: str) -> None:
    print(f"  {line}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.section == "frame":  # as `vqclip` does on start, before torch is imported; not under "all":
        from vqclip import hugepages  # the engine workers' ablations (classic, ours-nothp) would inherit it

        hugepages.enable()
    data = {"machine": machine(), "python": platform.python_version(), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "argv": sys.argv[1:] if argv is None else argv}
    for name in IN_ALL if args.section == "all" else (args.section,):
        module = benchmark(name)
        data[name] = module.run(args, say)
        print(module.report(data[name]) + "\n", flush=True)
    out = args.out or ROOT / "bench-results" / f"bench-{time.strftime('%Y%m%dT%H%M%S')}.json"
    print(f"wrote {write_json(data, out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
