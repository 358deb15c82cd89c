"""`gallery`: `vqclip gallery build` (issue 5) on `--runs` synthetic runs (2,000 by default) from scratch, then
the rebuild after 1 new run, with no change, and the whole command after 1 more run.

Targets on the 2-core build machine: ≤ 10 s from scratch, ≤ 1 s incremental.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from vqclip.bench.common import Say, child_env, format_table, quiet

SCRATCH_TARGET_S = 10.0
INCREMENTAL_TARGET_S = 1.0


def bench_gallery(tmpdir: str | Path, n_runs: int = 2000, image_size: int = 64, cli: bool = True) -> dict[str, Any]:
    """Build a gallery of `n_runs` synthetic runs in `tmpdir`; time scratch, +1 run, no-change and CLI rebuilds."""
    from vqclip.gallery import build_gallery
    from vqclip.gallery.synthetic import make_run, make_runs

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
                       check=True, capture_output=True, env=child_env())
        result["incremental_cli_s"] = round(time.perf_counter() - t, 3)
    result["ok"] = result["scratch_s"] <= SCRATCH_TARGET_S and result["incremental_s"] <= INCREMENTAL_TARGET_S
    return result


def run(args: argparse.Namespace, say: Say = quiet) -> dict[str, Any]:
    say(f"gallery of {args.runs} synthetic runs of {args.image_size}² PNGs…")
    with tempfile.TemporaryDirectory(prefix="vqclip-bench-") as tmp:
        return bench_gallery(tmp, args.runs, args.image_size)


def report(r: dict[str, Any]) -> str:
    rows = [
        ["from scratch", f"{r['scratch_s']:.2f} s", f"≤ {SCRATCH_TARGET_S:g} s", f"{r['scratch_thumbs_made']} thumbs"],
        ["after 1 new run", f"{r['incremental_s']:.2f} s", f"≤ {INCREMENTAL_TARGET_S:g} s",
         f"{r['incremental_thumbs_made']} thumb, {r['incremental_details_read']} details read"],
        ["no change", f"{r['noop_s']:.2f} s", "", ""],
        ["CLI, after 1 new run", f"{r.get('incremental_cli_s', float('nan')):.2f} s", "", "incl. Python start-up"],
    ]
    return (f"gallery build, {r['n_runs']:,} runs of {r['image_size']}² PNGs, {r['cpus']} CPUs, "
            f"page {r['html_bytes'] / 1e6:.1f} MB\n"
            + format_table(["", "time", "target", ""], rows, right=(1,))
            + ("\ntargets met" if r["ok"] else "\nTARGETS MISSED"))
