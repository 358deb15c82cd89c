"""The benchmarks behind `scripts/bench.py NAME` (one module each, none imported by the library, the pipeline or
the CLI) and the probes behind `scripts/gpu_check.py`. Every benchmark module has `run(args, say) -> dict` (the
JSON section; `say` gets progress lines) and `report(dict) -> str` (a plain-text table); none prints.

The models they time are the real architectures at random weights, loaded the way a run loads them
(`vqclip.bench.common`). Importing this package imports nothing heavy (a worker turns on huge pages before torch).
"""

from __future__ import annotations

import importlib
from types import ModuleType

BENCHMARKS = ("engine", "fit", "gallery", "startup", "frame", "batch", "cache", "precision", "serve", "diffuse")
IN_ALL = ("engine", "fit", "gallery", "startup", "frame", "batch")  # cache writes ~1 GB; precision needs minutes


def benchmark(name: str) -> ModuleType:
    """The module of benchmark `name` (one of BENCHMARKS)."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; use {', '.join(BENCHMARKS)}")
    return importlib.import_module(f"vqclip.bench.{name}")


__all__ = ["BENCHMARKS", "IN_ALL", "benchmark"]
