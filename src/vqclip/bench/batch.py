"""`batch`: the per-run overhead of `vqclip batch` (models loaded once per worker) against separate
`vqclip generate` commands (a process, imports and models per run), on the tiny random models of
`vqclip.testing`, same rows and seeds.

Overhead per run = (wall time − time spent inside the runs, from each run's details.json) / runs. Both ways run
the same N rows, interleaved, so a busy machine slows both alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from vqclip.bench.common import Say, child_env, format_table, quiet

ROW_ARGS = ("--size", "32x32", "--cutn", "4", "--steps", "4", "--device", "cpu", "--no-download", "-q")


def vqclip_command() -> list[str]:
    beside = Path(sys.executable).with_name("vqclip")
    return [str(beside)] if beside.is_file() else [sys.executable, "-m", "vqclip"]


def inside(out: Path) -> tuple[int, float]:
    """(runs, seconds spent inside them: load + steps + saving, as each details.json records)."""
    total, n = 0.0, 0
    for details in out.glob("2*/details.json"):
        total += float(json.loads(details.read_text())["timings"]["total_s"])
        n += 1
    return n, total


def bench_batch(rows: int = 6, repeats: int = 2, say: Say = quiet) -> dict[str, Any]:
    from vqclip.testing import make_tiny_clip, make_tiny_vqgan

    exe, env = vqclip_command(), child_env()
    results: dict[str, list[dict[str, float]]] = {"batch": [], "separate": []}
    with tempfile.TemporaryDirectory(prefix="vqclip-bench-batch-") as tmp:
        root = Path(tmp)
        yaml_path, _ = make_tiny_vqgan(root / "models", "tiny_vq")
        clip_json, clip_ckpt = make_tiny_clip(root / "models", "tiny-clip")
        models = ("--model", str(yaml_path), "--clip-model", str(clip_json), "--clip-pretrained", str(clip_ckpt))
        prompts = [f"a painting number {i}" for i in range(rows)]
        (root / "rows.txt").write_text("\n".join(prompts) + "\n")
        for r in range(repeats):
            for kind in ("batch", "separate"):
                say(f"{kind}: {rows} rows (repeat {r + 1}/{repeats})…")
                out = root / f"{kind}-{r}"
                t = time.perf_counter()
                if kind == "batch":
                    subprocess.run([*exe, "batch", str(root / "rows.txt"), *models, *ROW_ARGS, "--seed", "1",
                                    "-o", str(out)], check=True, capture_output=True, env=env)
                else:
                    for p in prompts:
                        subprocess.run([*exe, "generate", p, *models, *ROW_ARGS, "--seed", "1", "-o", str(out)],
                                       check=True, capture_output=True, env=env)
                wall = time.perf_counter() - t
                n, spent = inside(out)
                if n != rows:
                    raise RuntimeError(f"{kind}: {n} runs, expected {rows}")
                results[kind].append({"wall_s": wall, "inside_s": spent, "overhead_per_run_s": (wall - spent) / n,
                                      "wall_per_run_s": wall / n})
    summary = {kind: {key: round(statistics.median(x[key] for x in xs), 3) for key in xs[0]}
               for kind, xs in results.items()}
    ratio = summary["separate"]["wall_per_run_s"] / summary["batch"]["wall_per_run_s"]
    return {"rows": rows, "repeats": repeats, "row_args": list(ROW_ARGS), "median": summary,
            "speedup_wall_per_run": round(ratio, 2), "raw": results}


def run(args: argparse.Namespace, say: Say = quiet) -> dict[str, Any]:
    return bench_batch(rows=args.batch_rows, repeats=max(1, args.repeats), say=say)


def report(result: dict[str, Any]) -> str:
    rows = []
    for way, label in (("batch", "vqclip batch (models kept)"), ("separate", "separate vqclip generate")):
        m = result["median"][way]
        rows.append([label, f"{m['wall_s']:.1f}", f"{m['inside_s']:.1f}", f"{m['overhead_per_run_s']:.2f}",
                     f"{m['wall_per_run_s']:.2f}"])
    return (f"Per-run overhead: {result['rows']} tiny-model runs ({' '.join(result['row_args'])}), "
            f"medians of {result['repeats']}\n"
            + format_table(["way", "wall s", "inside runs s", "overhead per run s", "wall per run s"], rows,
                           right=(1, 2, 3, 4))
            + f"\nbatch is {result['speedup_wall_per_run']:.2f}× faster per run (wall)")
