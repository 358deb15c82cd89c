"""`fit`: the largest square size per GPU memory size, from the memory model (`vqclip.pipeline.memory`), not a
measurement (no GPU needed): CUDA, bf16 (as `precision=auto` picks on bf16 cards), cutn `--cutn`, the f16
ImageNet decoder + ViT-B/32. `scripts/gpu_check.py` measures the same on a card."""

from __future__ import annotations

import argparse
from typing import Any

from vqclip.bench.common import CLIP, MODEL, Say, format_table, quiet

CUDA_CONTEXT = 600 * 2**20  # what the CUDA context and kernels take outside torch's allocator (typical)
GPUS_GIB = (8, 12, 24)


def run(args: argparse.Namespace, say: Say = quiet) -> dict[str, Any]:
    import torch

    from vqclip import engine
    from vqclip.engine.precision import Precision
    from vqclip.pipeline import memory
    from vqclip.weights.registry import packaged_yaml

    spec = engine.read_spec(packaged_yaml(MODEL))
    bf16 = Precision(torch.bfloat16, torch.bfloat16, torch.bfloat16)
    cuda = torch.device("cuda")
    rows = []
    need480 = memory.estimate(spec, CLIP, 480, 480, args.cutn, cuda, bf16).total
    for gib in GPUS_GIB:
        budget = gib * memory.GiB - CUDA_CONTEXT
        best = {low: memory.largest_fitting(spec, CLIP, 1024, 1024, args.cutn, budget, cuda, bf16, low)
                for low in (False, True)}
        rows.append({"gpu_gib": gib, "budget_bytes": budget, "normal": best[False], "low_memory": best[True]})
    return {"rows": rows, "need_480_bytes": need480, "cuda_context_bytes": CUDA_CONTEXT, "measured": False,
            "cutn": args.cutn}


def report(data: dict[str, Any]) -> str:
    from vqclip.pipeline.memory import fmt

    def size(b: Any) -> str:
        return f"{b[0]}x{b[1]}" if b else "none"

    rows = [[f"{r['gpu_gib']} GiB", size(r["normal"]), size(r["low_memory"]), fmt(data["need_480_bytes"])]
            for r in data["rows"]]
    return (f"Estimated largest square image on a GPU (CUDA, bf16, cutn {data.get('cutn', '?')}; the memory model, "
            f"not measured on a GPU)\n"
            + format_table(["GPU memory", "normal", "--low-memory", "480² needs"], rows, right=(0, 1, 2, 3))
            + f"\nbudget = card memory − {fmt(data['cuda_context_bytes'])} for the CUDA context and libraries; "
              "the CUDA factors of the model are the CPU-calibrated ones")
