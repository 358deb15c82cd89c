"""The rows of a batch: read from a file (`rowfile`), multiplied by --seeds/--repeat/--sweep, each validated as a
RunConfig before the first run starts.

The runs are counted before any list is built (`count_runs`): more than `MAX_ROWS` (or `--max-rows`) is a usage
error giving the count. `--seeds` and `--sweep` are bounded in length before they are parsed.

Layering, lowest first: the packaged defaults.yaml < `--config FILE` < command-line flags < the row's own values
< `--sweep` < `--seeds`. Command-line options thus set what rows leave unset; a sweep or --seeds multiplies
every row and so wins over it. `--repeat N` runs each row N times; a row with a fixed seed gets seed, seed+1, …
so that its repeats differ.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vqclip.batch.counts import (MAX_OPTION_CHARS, MAX_ROWS, check_count, count_runs, count_seeds, seed_spans,
                                 sweep_sizes)
from vqclip.batch.rowfile import fields, read_rows
from vqclip.config import RunConfig, layered_values, load_config_file, validation_lines
from vqclip.errors import UsageError, VqclipError



@dataclass
class Row:
    """One run of the batch: where it came from (`runs.csv:4`), the row's own values, the validated config."""

    index: int
    source: str
    values: dict[str, Any]
    config: RunConfig
    extra: dict[str, Any] = field(default_factory=dict)  # what --sweep/--seeds/--repeat added

    def to_json(self) -> dict[str, Any]:
        return {"row": self.index, "source": self.source, "values": self.values, "extra": self.extra,
                "config": self.config.model_dump(mode="json")}


def parse_seeds(text: str | None, limit: int = MAX_ROWS) -> list[int] | None:
    """`--seeds 1-4` → [1, 2, 3, 4]; `--seeds 3,7,9` → [3, 7, 9]; more than `limit` seeds is a usage error."""
    if text is None:
        return None
    count = count_seeds(text)
    if count > limit:
        raise UsageError(f"--seeds {text[:80]!r} gives {count:,} seeds, more than the limit of {limit:,} runs; "
                         "give fewer, or raise the limit with --max-rows")
    return [seed for lo, hi in seed_spans(text) for seed in range(lo, hi + 1)]


def parse_sweeps(sweeps: list[str] | None) -> list[tuple[str, list[str]]]:
    """`--sweep lr=0.05,0.1` (repeatable) → [("lr", ["0.05", "0.1"])]; values are typed by RunConfig."""
    out: list[tuple[str, list[str]]] = []
    sweep_sizes(sweeps)  # bounded in length first
    for text in sweeps or []:
        key, sep, values = text.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not values.strip():
            raise UsageError(f"--sweep {text!r}: write KEY=V1,V2 (e.g. lr=0.05,0.1)")
        if key not in fields():
            raise UsageError(f"--sweep {text!r}: {key} is not a setting (e.g. lr, cutn, steps, size)")
        if any(k == key for k, _ in out):
            raise UsageError(f"--sweep {key} is given twice; list all its values in one --sweep")
        out.append((key, [v.strip() for v in values.split(",") if v.strip()]))
    return out


def expand(path: str | Path, *, config_file: str | Path | None = None, overrides: dict[str, Any] | None = None,
           seeds: list[int] | None = None, repeat: int = 1, sweeps: list[tuple[str, list[str]]] | None = None,
           read: list[tuple[int, dict[str, Any]]] | None = None, max_rows: int = MAX_ROWS) -> list[Row]:
    """Every run of the batch, validated; the first bad one is a VqclipError `runs.csv:4: lr: …` (exit 1).
    More than `max_rows` runs is a UsageError, said before any row is built."""
    path = Path(path)
    user = load_config_file(config_file) if config_file is not None else None
    base = read if read is not None else read_rows(path)
    check_count(count_runs(len(base), len(seeds) if seeds else 1, repeat, [len(v) for _, v in sweeps or []]),
                max_rows, len(base))
    keys = [k for k, _ in sweeps or []]
    combos = list(itertools.product(*[v for _, v in sweeps or []])) or [()]
    rows: list[Row] = []
    for line, values in base:
        for combo in combos:
            for seed in (seeds or [None]):
                for rep in range(max(1, repeat)):
                    extra: dict[str, Any] = dict(zip(keys, combo))
                    if seed is not None:
                        extra["seed"] = seed
                    merged = layered_values(user, overrides, values, extra)
                    if repeat > 1:
                        if merged.get("seed") is not None:
                            extra["seed"] = merged["seed"] = int(merged["seed"]) + rep
                        extra["repeat"] = rep + 1
                    merged.pop("repeat", None)
                    rows.append(Row(len(rows), f"{path.name}:{line}", dict(values), _validate(merged, path.name,
                                                                                              line), extra))
    return rows


def _validate(values: dict[str, Any], name: str, line: int) -> RunConfig:
    from pydantic import ValidationError

    try:
        return RunConfig.model_validate(values)
    except ValidationError as e:
        lines = validation_lines(e)
        raise VqclipError(f"{name}:{line}: {lines[0] if lines else e}") from None
    except ValueError as e:  # a prompt that does not parse, raised outside pydantic
        raise VqclipError(f"{name}:{line}: {e}") from None


def fingerprint(rows: list[Row]) -> str:
    """What makes two command lines the same batch: the expanded rows' configs (seeds unset stay unset)."""
    import hashlib

    data = json.dumps([r.config.model_dump(mode="json") for r in rows], sort_keys=True)
    return hashlib.sha256(data.encode()).hexdigest()[:32]


def estimate_seconds(rows: list[Row], per_step_s: float) -> float:
    """steps × a per-step time scaled by pixels × cutouts (relative to 480x480, cutn 32): an estimate."""
    return sum(r.config.steps * per_step_s * (r.config.width * r.config.height * r.config.cutn)
               / (480 * 480 * 32) for r in rows)


__all__ = ["Row", "read_rows", "expand", "parse_seeds", "count_seeds", "seed_spans", "parse_sweeps", "sweep_sizes",
           "count_runs", "check_count", "fingerprint", "estimate_seconds", "MAX_ROWS", "MAX_OPTION_CHARS"]
