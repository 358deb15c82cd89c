"""Back large CPU tensors with transparent huge pages (Linux), set up before torch is imported.

torch's CPU allocator takes every tensor straight from malloc, and glibc serves blocks over 32 MiB (a 128-channel
feature map at 256² and up) with a fresh `mmap` that is returned on free. So each step of the decoder faults in
and zeroes its large activations again, 4 KiB at a time: measured on the 2-core build machine, `silu` of a
128×384² map took 42 ms into a fresh tensor against 13 ms into a reused one. With `THP_MEM_ALLOC_ENABLE=1`
(torch ≥ 2.2) torch aligns allocations of 2 MiB and more to 2 MiB and advises huge pages for them, so a fault
brings in 2 MiB at once, while freed memory still goes back to the OS (peak RSS did not grow). Measured with
`scripts/bench.py`: 256²/cutn 32 went from 9.5 to 8.8 s/step, 384² from 13.5 to 10.9 s/step.

torch reads the variable once, at its first allocation, so this must run before `import torch`;
`VQCLIP_HUGE_PAGES=0` turns it off, and an explicit `THP_MEM_ALLOC_ENABLE` is left as it is.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

TORCH_ENV = "THP_MEM_ALLOC_ENABLE"
OPT_OUT_ENV = "VQCLIP_HUGE_PAGES"
_SYSFS = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def kernel_allows() -> bool:
    """Whether the kernel hands out transparent huge pages on request (mode `always` or `madvise`)."""
    try:
        return "[never]" not in _SYSFS.read_text()
    except OSError:  # not Linux, or a kernel built without THP
        return False


def enable() -> bool:
    """Ask torch for huge-page-backed large tensors; returns whether that is in effect for this process."""
    if os.environ.get(TORCH_ENV) is not None:
        return os.environ[TORCH_ENV] == "1"
    if os.environ.get(OPT_OUT_ENV, "1").strip().lower() in ("0", "no", "off", "false"):
        return False
    if "torch" in sys.modules or not sys.platform.startswith("linux") or not kernel_allows():
        return False  # too late (torch has allocated), or nothing to gain
    os.environ[TORCH_ENV] = "1"
    return True
