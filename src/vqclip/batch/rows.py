"""The rows of a batch: read from a file, multiplied by --seeds/--repeat/--sweep, each validated as a RunConfig
before the first run starts.

Formats: `.txt` (one prompt per line; blank lines and lines starting with `#` skipped), `.csv` (a header of
RunConfig field names, plus `size`; an empty cell leaves the field unset), `.jsonl` (one JSON object per line;
blank and `#` lines skipped), `.yaml`/`.yml` (a list of mappings). In a CSV, `image_prompts`/`noise_prompts`
cells hold one prompt, or several separated by `;`.

Layering, lowest first: the packaged defaults.yaml < `--config FILE` < command-line flags < the row's own values
< `--sweep` < `--seeds`. Command-line options thus set what rows leave unset; a sweep or --seeds multiplies
every row and so wins over it. `--repeat N` runs each row N times; a row with a fixed seed gets seed, seed+1, …
so that its repeats differ.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vqclip.config import RunConfig, layered_values, load_config_file, validation_lines
from vqclip.errors import UsageError, VqclipError

LIST_FIELDS = ("image_prompts", "noise_prompts")
FORMATS = (".txt", ".csv", ".jsonl", ".yaml", ".yml")


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


def _fields() -> set[str]:
    return set(RunConfig.model_fields) | {"size"}


def _read_text(path: Path) -> str:
    from vqclip.files import path_problem

    if not path.exists():
        raise VqclipError(f"batch file {path}: not found; check the path")
    problem = path_problem(path)
    if problem is not None:
        raise VqclipError(f"batch file {path}: {problem}; give a .txt, .csv, .jsonl or .yaml file")
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise VqclipError(f"batch file {path}: cannot be read ({type(exc).__name__}); use UTF-8 text") from None


def read_rows(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, values) for every row of the file; a malformed line is one VqclipError `file:line: …`."""
    path = Path(path)
    kind = path.suffix.lower()
    if kind not in FORMATS:
        raise VqclipError(f"batch file {path}: unknown format {kind or '(no suffix)'}; "
                          "use .txt, .csv, .jsonl or .yaml")
    text = _read_text(path)
    name = path.name
    out: list[tuple[int, dict[str, Any]]] = []
    if kind == ".txt":
        for n, line in enumerate(text.splitlines(), start=1):
            line = line.strip()
            if line and not line.startswith("#"):
                out.append((n, {"prompt": line}))
    elif kind == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        header = [h.strip() for h in (reader.fieldnames or [])]
        unknown = [h for h in header if h not in _fields()]
        if unknown:
            raise VqclipError(f"{name}:1: {unknown[0]}: not a setting; the header names RunConfig fields "
                              "(prompt, seed, steps, lr, size, …)")
        reader.fieldnames = header
        for record in reader:
            values: dict[str, Any] = {}
            for key, cell in record.items():
                if key is None:
                    raise VqclipError(f"{name}:{reader.line_num}: more cells than the header has names")
                if cell is None or not str(cell).strip():
                    continue
                cell = str(cell).strip()
                values[key] = [p.strip() for p in cell.split(";") if p.strip()] if key in LIST_FIELDS else cell
            if values:
                out.append((reader.line_num, values))
    elif kind == ".jsonl":
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                data = json.loads(line)
            except (ValueError, RecursionError) as e:
                raise VqclipError(f"{name}:{n}: not JSON ({str(e).splitlines()[0][:80]})") from None
            if not isinstance(data, dict):
                raise VqclipError(f"{name}:{n}: not a JSON object; write one {{\"prompt\": …}} per line")
            out.append((n, data))
    else:
        out = _read_yaml(name, text)
    if not out:
        raise VqclipError(f"batch file {path}: no rows; write one prompt (or one row) per line")
    return out


def _read_yaml(name: str, text: str) -> list[tuple[int, dict[str, Any]]]:
    import yaml

    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        raise VqclipError(f"{name}:{line}: YAML syntax error: {getattr(e, 'problem', None) or e}") from None
    if data is None:
        return []
    if not isinstance(data, list) or node is None:
        raise VqclipError(f"{name}:1: the top level is not a list; write `- prompt: …` items")
    out = []
    for item, item_node in zip(data, node.value):
        line = item_node.start_mark.line + 1
        if isinstance(item, str):
            item = {"prompt": item}
        if not isinstance(item, dict):
            raise VqclipError(f"{name}:{line}: not a mapping; write `- prompt: …` items")
        out.append((line, item))
    return out


def parse_seeds(text: str | None) -> list[int] | None:
    """`--seeds 1-4` → [1, 2, 3, 4]; `--seeds 3,7,9` → [3, 7, 9]."""
    if text is None:
        return None
    seeds: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part[1:]:
                a, b = part.split("-", 1)
                lo, hi = int(a), int(b)
                if hi < lo or hi - lo > 100_000:
                    raise ValueError
                seeds.extend(range(lo, hi + 1))
            else:
                seeds.append(int(part))
    except ValueError:
        raise UsageError(f"--seeds {text!r}: write a range A-B (e.g. 1-8) or a list (e.g. 3,7,9)") from None
    if any(s < 0 or s >= 2**63 for s in seeds):
        raise UsageError(f"--seeds {text!r}: seeds are from 0 to {2**63 - 1}")
    return seeds


def parse_sweeps(sweeps: list[str] | None) -> list[tuple[str, list[str]]]:
    """`--sweep lr=0.05,0.1` (repeatable) → [("lr", ["0.05", "0.1"])]; values are typed by RunConfig."""
    out: list[tuple[str, list[str]]] = []
    for text in sweeps or []:
        key, sep, values = text.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not values.strip():
            raise UsageError(f"--sweep {text!r}: write KEY=V1,V2 (e.g. lr=0.05,0.1)")
        if key not in _fields():
            raise UsageError(f"--sweep {text!r}: {key} is not a setting (e.g. lr, cutn, steps, size)")
        if any(k == key for k, _ in out):
            raise UsageError(f"--sweep {key} is given twice; list all its values in one --sweep")
        out.append((key, [v.strip() for v in values.split(",") if v.strip()]))
    return out


def expand(path: str | Path, *, config_file: str | Path | None = None, overrides: dict[str, Any] | None = None,
           seeds: list[int] | None = None, repeat: int = 1, sweeps: list[tuple[str, list[str]]] | None = None,
           read: list[tuple[int, dict[str, Any]]] | None = None) -> list[Row]:
    """Every run of the batch, validated; the first bad one is a VqclipError `runs.csv:4: lr: …` (exit 1)."""
    path = Path(path)
    user = load_config_file(config_file) if config_file is not None else None
    base = read if read is not None else read_rows(path)
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


__all__ = ["Row", "read_rows", "expand", "parse_seeds", "parse_sweeps", "fingerprint", "estimate_seconds"]
