"""Benchmark `vqclip gallery build` (issue 5): 2,000 synthetic runs from scratch, then the rebuild after 1 new run.

Targets on the 2-core build machine: ≤ 10 s from scratch, ≤ 1 s incremental. `scripts/bench.py` imports
`bench_gallery`; run this file directly for a table and a JSON file:

    python scripts/bench_gallery.py --runs 2000 --json bench-results/gallery.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

try:
    from vqclip.gallery import build_gallery
except ImportError:  # running from a checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from vqclip.gallery import build_gallery

from vqclip.gallery.synthetic import make_run, make_runs

SCRATCH_TARGET_S = 10.0
INCREMENTAL_TARGET_S = 1.0


def bench_gallery(tmpdir: str | Path, n_runs: int = 2000, image_size: int = 64, cli: bool = True) -> dict[str, Any]:
    """Build a gallery of `n_runs` synthetic runs in `tmpdir`; time scratch, +1 run, no-change and CLI rebuilds."""
    out = Path(tmpdir) / f"gallery-bench-{n_runs}"
    t = time.perf_counter()
    make_runs(out, n_runs, size=image_size)
    setup_s = time.perf_counter() - t

    scratch = build_gallery(out)
    make_run(out, n_runs)  # one new run, newer than all others
    incremental = build_gallery(out)
    noop = build_gallery(out)
    result: dict[str, Any] = {
        "n_runs": n_runs,
        "image_size": image_size,
        "cpus": os.cpu_count(),
        "setup_s": round(setup_s, 3),
        "scratch_s": round(scratch.seconds, 3),
        "scratch_thumbs_made": scratch.thumbs_made,
        "incremental_s": round(incremental.seconds, 3),
        "incremental_thumbs_made": incremental.thumbs_made,
        "incremental_details_read": incremental.details_read,
        "noop_s": round(noop.seconds, 3),
        "html_bytes": incremental.index.stat().st_size,
        "targets": {"scratch_s": SCRATCH_TARGET_S, "incremental_s": INCREMENTAL_TARGET_S},
    }
    if cli:  # the whole command as a user runs it: interpreter start, imports, build, summary
        make_run(out, n_runs + 1)
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "vqclip", "gallery", "build", "--output-dir", str(out)],
                       check=True, capture_output=True)
        result["incremental_cli_s"] = round(time.perf_counter() - t, 3)
    result["ok"] = result["scratch_s"] <= SCRATCH_TARGET_S and result["incremental_s"] <= INCREMENTAL_TARGET_S
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--image-size", type=int, default=64, help="side of the synthetic output.png files")
    parser.add_argument("--json", type=Path, default=Path("bench-results/gallery.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vqclip-bench-") as tmp:
        r = bench_gallery(tmp, args.runs, args.image_size)
    rows = [
        ("from scratch", f"{r['scratch_s']:.2f} s", f"≤ {SCRATCH_TARGET_S:g} s", f"{r['scratch_thumbs_made']} thumbs"),
        ("after 1 new run", f"{r['incremental_s']:.2f} s", f"≤ {INCREMENTAL_TARGET_S:g} s",
         f"{r['incremental_thumbs_made']} thumb, {r['incremental_details_read']} details read"),
        ("no change", f"{r['noop_s']:.2f} s", "", ""),
        ("CLI, after 1 new run", f"{r.get('incremental_cli_s', float('nan')):.2f} s", "", "incl. Python start-up"),
    ]
    print(f"gallery build, {r['n_runs']:,} runs of {r['image_size']}² PNGs, {r['cpus']} CPUs, "
          f"page {r['html_bytes'] / 1e6:.1f} MB")
    for row in rows:
        print(f"  {row[0]:<22}{row[1]:>9}   {row[2]:<8}{row[3]}")
    print("  targets met" if r["ok"] else "  TARGETS MISSED")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(r, indent=2) + "\n")
    print(f"  wrote {args.json}")


if __name__ == "__main__":
    main()
