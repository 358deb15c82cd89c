"""The per-run overhead of `vqclip batch` (models loaded once per worker) against separate `vqclip generate`
commands (a process, imports and models per run), on the tiny random models, same rows and seeds.

Overhead per run = (wall time − time spent inside the runs, from each run's details.json) / runs. Both ways run
the same N rows, interleaved in one process so a busy machine slows both alike. Used by `scripts/bench.py batch`.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROW_ARGS = ("--size", "32x32", "--cutn", "4", "--steps", "4", "--device", "cpu", "--no-download", "-q")


def _vqclip() -> list[str]:
    beside = Path(sys.executable).with_name("vqclip")
    return [str(beside)] if beside.is_file() else [sys.executable, "-m", "vqclip"]


def _inside(out: Path) -> tuple[int, float]:
    """(runs, seconds spent inside them: load + steps + saving, as each details.json records)."""
    total, n = 0.0, 0
    for details in out.glob("2*/details.json"):
        total += float(json.loads(details.read_text())["timings"]["total_s"])
        n += 1
    return n, total


def bench_batch(rows: int = 6, repeats: int = 2) -> dict[str, Any]:
    from vqclip.testing import make_tiny_clip, make_tiny_vqgan

    exe = _vqclip()
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
                out = root / f"{kind}-{r}"
                t = time.perf_counter()
                if kind == "batch":
                    subprocess.run([*exe, "batch", str(root / "rows.txt"), *models, *ROW_ARGS, "--seed", "1",
                                    "-o", str(out)], check=True, capture_output=True)
                else:
                    for p in prompts:
                        subprocess.run([*exe, "generate", p, *models, *ROW_ARGS, "--seed", "1", "-o", str(out)],
                                       check=True, capture_output=True)
                wall = time.perf_counter() - t
                n, inside = _inside(out)
                assert n == rows, f"{kind}: {n} runs, expected {rows}"
                results[kind].append({"wall_s": wall, "inside_s": inside, "overhead_per_run_s": (wall - inside) / n,
                                      "wall_per_run_s": wall / n})
    summary = {kind: {key: round(statistics.median(x[key] for x in xs), 3) for key in xs[0]}
               for kind, xs in results.items()}
    ratio = summary["separate"]["wall_per_run_s"] / summary["batch"]["wall_per_run_s"]
    return {"rows": rows, "repeats": repeats, "row_args": list(ROW_ARGS), "median": summary,
            "speedup_wall_per_run": round(ratio, 2), "raw": results}
