"""Reading a batch file into rows: `.txt` (one prompt per line), `.csv` (a header of RunConfig field names, plus
`size`; an empty cell leaves the field unset; `image_prompts`/`noise_prompts` cells hold one prompt or several
separated by `;`), `.jsonl` (one JSON object per line), `.yaml`/`.yml` (a list of mappings, or of prompts).

A `#` starts a comment only at the start of a line (`.txt`, `.jsonl`): in `a red apple # shiny` the `# shiny` is
prompt text (prompts may hold `#`). YAML has its own comments; CSV has none. A key given twice in one row
(JSONL, YAML) or a column named twice (CSV) is an error, never silently merged. Everything is bounded before
it is parsed: the file (MAX_FILE_BYTES), a row (MAX_ROW_CHARS), a value (MAX_VALUE_CHARS), YAML aliases
(MAX_YAML_NODES).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from vqclip.errors import VqclipError, one_line

LIST_FIELDS = ("image_prompts", "noise_prompts")
FORMATS = (".txt", ".csv", ".jsonl", ".yaml", ".yml")
MAX_FILE_BYTES = 32 << 20  # a batch file (100,000 one-line rows of 300 characters fit)
MAX_ROW_CHARS = 64 << 10  # one row: a line of .txt/.jsonl, a CSV record, a YAML item
MAX_VALUE_CHARS = 10_000  # one value of a row (a prompt, a path)
MAX_YAML_NODES = 1_000_000  # a YAML file's nodes with its aliases expanded (a "billion laughs" file is refused)


def fields() -> set[str]:
    """What a row may set: RunConfig's fields, and `size`."""
    from vqclip.config import RunConfig

    return set(RunConfig.model_fields) | {"size"}


def hash_note(rows: list[tuple[int, dict[str, Any]]], name: str) -> str | None:
    """A note when .txt prompts hold ` #` (text, not a comment, in a .txt queue)."""
    lines = [n for n, values in rows if " #" in str(values.get("prompt", ""))]
    if not lines:
        return None
    where = ", ".join(f"{name}:{n}" for n in lines[:3]) + (f" and {len(lines) - 3} more" if len(lines) > 3 else "")
    return (f"{where}: the text after ' #' is part of the prompt (in a .txt queue only a line that starts with "
            "# is a comment)")


def _read_text(path: Path) -> str:
    from vqclip.files import path_problem

    if not path.exists():
        raise VqclipError(f"batch file {path}: not found; check the path")
    problem = path_problem(path)
    if problem is not None:
        raise VqclipError(f"batch file {path}: {problem}; give a .txt, .csv, .jsonl or .yaml file")
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            raise VqclipError(f"batch file {path}: larger than {MAX_FILE_BYTES >> 20} MiB; split it into several "
                              "batches")
        return data.decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise VqclipError(f"batch file {path}: cannot be read ({type(exc).__name__}); use UTF-8 text") from None


def _check_size(name: str, line: int, size: int) -> None:
    if size > MAX_ROW_CHARS:
        raise VqclipError(f"{name}:{line}: the row is {size:,} characters, more than {MAX_ROW_CHARS:,}; "
                          f"shorten it (a value, such as the prompt, is at most {MAX_VALUE_CHARS:,})")


def _check_values(name: str, line: int, values: dict[str, Any]) -> None:
    for key, value in values.items():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str) and len(item) > MAX_VALUE_CHARS:
                raise VqclipError(f"{name}:{line}: {key}: {len(item):,} characters, more than {MAX_VALUE_CHARS:,}; "
                                  "shorten it")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Duplicate(key)
        out[key] = value
    return out


class _Duplicate(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


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
            _check_size(name, n, len(line))
            line = line.strip()
            if line and not line.startswith("#"):
                out.append((n, {"prompt": line}))
    elif kind == ".csv":
        out = _read_csv(name, text)
    elif kind == ".jsonl":
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            _check_size(name, n, len(line))
            try:
                data = json.loads(line, object_pairs_hook=_no_duplicates)
            except _Duplicate as e:
                raise VqclipError(f"{name}:{n}: {e.key!r} is given twice in this row; give each setting once") from None
            except (ValueError, RecursionError) as e:
                raise VqclipError(f"{name}:{n}: not JSON ({one_line(e, 80, typed=False)})") from None
            if not isinstance(data, dict):
                raise VqclipError(f"{name}:{n}: not a JSON object; write one {{\"prompt\": …}} per line")
            out.append((n, data))
    else:
        out = _read_yaml(name, text)
    if not out:
        raise VqclipError(f"batch file {path}: no rows; write one prompt (or one row) per line")
    for n, values in out:
        _check_values(name, n, values)
    return out


def _read_csv(name: str, text: str) -> list[tuple[int, dict[str, Any]]]:
    out: list[tuple[int, dict[str, Any]]] = []
    reader = csv.DictReader(io.StringIO(text))
    try:
        header = [h.strip() for h in (reader.fieldnames or [])]
        unknown = [h for h in header if h not in fields()]
        if unknown:
            raise VqclipError(f"{name}:1: {unknown[0]}: not a setting; the header names RunConfig fields "
                              "(prompt, seed, steps, lr, size, …)")
        twice = sorted({h for h in header if header.count(h) > 1})
        if twice:
            raise VqclipError(f"{name}:1: the column {twice[0]} is named twice; give each setting one column")
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
            _check_size(name, reader.line_num, sum(len(str(v)) for v in record.values() if v is not None))
            if values:
                out.append((reader.line_num, values))
    except csv.Error as e:  # a cell over the csv module's field limit, a NUL byte, …
        line = reader.line_num + 1  # the record being read when it failed
        if "field limit" in str(e):
            raise VqclipError(f"{name}:{line}: a cell is longer than {csv.field_size_limit():,} characters (the CSV "
                              "reader's limit); shorten it") from None
        raise VqclipError(f"{name}:{line}: not a CSV row this reader accepts ({e})") from None
    return out


def _read_yaml(name: str, text: str) -> list[tuple[int, dict[str, Any]]]:
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        node = yaml.compose(text, Loader=loader)
        _check_yaml(name, node)
        data = yaml.load(text, Loader=loader)  # noqa: S506 - a safe loader
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        raise VqclipError(f"{name}:{line}: YAML syntax error: {getattr(e, 'problem', None) or e}") from None
    except RecursionError:
        raise VqclipError(f"{name}: nested too deeply to be a list of rows; write `- prompt: …` items") from None
    if data is None:
        return []
    if not isinstance(data, list) or node is None:
        raise VqclipError(f"{name}:1: the top level is not a list; write `- prompt: …` items")
    out = []
    for item, item_node in zip(data, node.value):
        line = item_node.start_mark.line + 1
        _check_size(name, line, item_node.end_mark.index - item_node.start_mark.index)
        if isinstance(item, str):
            item = {"prompt": item}
        if not isinstance(item, dict):
            raise VqclipError(f"{name}:{line}: not a mapping; write `- prompt: …` items")
        out.append((line, item))
    return out


def _check_yaml(name: str, root: Any) -> None:
    """Refuse a key given twice in one mapping, and a file whose aliases expand past MAX_YAML_NODES nodes
    (counted without expanding: each node's expanded size once, shared nodes reused)."""
    import yaml

    if root is None:
        return
    size: dict[int, int] = {}
    order: list[Any] = []
    stack: list[tuple[Any, bool]] = [(root, False)]
    visiting: set[int] = set()
    while stack:  # post-order without recursion: children's sizes before their parent's
        node, expanded = stack.pop()
        if id(node) in size:
            continue
        if not expanded and id(node) in visiting:
            raise VqclipError(f"{name}:{node.start_mark.line + 1}: an alias refers to a value that holds it; "
                              "write the rows out")
        visiting.add(id(node))
        if expanded:
            children = _children(node)
            size[id(node)] = min(1 + sum(size[id(c)] for c in children), MAX_YAML_NODES + 1)
            order.append(node)
            continue
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in size)
    if size[id(root)] > MAX_YAML_NODES:
        raise VqclipError(f"{name}: its aliases expand to more than {MAX_YAML_NODES:,} values; write the rows out")
    for node in order:
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key, _ in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value != "<<":
                    if key.value in seen:
                        raise VqclipError(f"{name}:{key.start_mark.line + 1}: {key.value!r} is given twice in this "
                                          "row; give each setting once")
                    seen.add(key.value)


def _children(node: Any) -> list[Any]:
    import yaml

    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


__all__ = ["read_rows", "fields", "hash_note", "FORMATS", "LIST_FIELDS", "MAX_FILE_BYTES", "MAX_ROW_CHARS",
           "MAX_VALUE_CHARS", "MAX_YAML_NODES"]
