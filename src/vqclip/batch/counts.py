"""Counting a batch before building it: `--seeds` as ranges (never listed to be counted), each `--sweep`'s
values, `--repeat`, times the file's rows; more than the limit (`MAX_ROWS`, or `--max-rows`) is a usage error
giving the count. Light on purpose: the command counts before pydantic, torch or any row is loaded.
"""

from __future__ import annotations

from vqclip.errors import UsageError

MAX_ROWS = 100_000  # runs in one batch, unless --max-rows says otherwise
MAX_OPTION_CHARS = 10_000  # --seeds, one --sweep


def seed_spans(text: str) -> list[tuple[int, int]]:
    """`--seeds` as inclusive ranges, nothing expanded: `1-4,9` → [(1, 4), (9, 9)]."""
    if len(text) > MAX_OPTION_CHARS:
        raise UsageError(f"--seeds is {len(text):,} characters long; write a range A-B (e.g. 1-8)")
    spans: list[tuple[int, int]] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if len(part) > 50:
                raise ValueError
            if "-" in part[1:]:
                cut = part.index("-", 1)
                lo, hi = int(part[:cut]), int(part[cut + 1:])
                if hi < lo:
                    raise ValueError
            else:
                lo = hi = int(part)
            spans.append((lo, hi))
    except ValueError:
        raise UsageError(f"--seeds {text[:80]!r}: write a range A-B (e.g. 1-8) or a list (e.g. 3,7,9)") from None
    if any(lo < 0 or hi >= 2**63 for lo, hi in spans):
        raise UsageError(f"--seeds {text[:80]!r}: seeds are from 0 to {2**63 - 1}")
    return spans


def count_seeds(text: str | None) -> int:
    """How many seeds `--seeds` gives (1 without it), counted, not listed."""
    return 1 if text is None else sum(hi - lo + 1 for lo, hi in seed_spans(text))


def count_runs(rows: int, seeds: int = 1, repeat: int = 1, sweeps: list[int] | None = None) -> int:
    """rows × each sweep's count of values × seeds × repeat: the batch's size, before any list is built."""
    total = rows * seeds * max(1, repeat)
    for n in sweeps or []:
        total *= n
    return total


def sweep_sizes(sweeps: list[str] | None) -> list[int]:
    """How many values each `--sweep KEY=V1,V2` gives, counted before anything is parsed (bounded in length)."""
    sizes = []
    for text in sweeps or []:
        if len(text) > MAX_OPTION_CHARS:
            raise UsageError(f"--sweep {text[:40]!r}… is {len(text):,} characters long; sweep fewer values")
        sizes.append(len([v for v in text.partition("=")[2].split(",") if v.strip()]))
    return sizes


def check_count(total: int, limit: int = MAX_ROWS, rows: int | None = None) -> None:
    """More runs than `limit` is a usage error giving the count."""
    if total > limit:
        what = f" from {rows:,} row{'s' if rows != 1 else ''}" if rows is not None else ""
        raise UsageError(f"the batch would be {total:,} runs{what}, more than the limit of {limit:,}; run fewer "
                         "(fewer seeds, sweep values or --repeat), or raise the limit with --max-rows")


__all__ = ["MAX_ROWS", "MAX_OPTION_CHARS", "seed_spans", "count_seeds", "count_runs", "sweep_sizes", "check_count"]
