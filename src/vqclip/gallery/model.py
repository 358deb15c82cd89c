"""The gallery's index model: one plain, JSON-ready card per run, from an untrusted details.json.

Why defensive: a run folder may hold a details.json written by an older/newer vqclip, edited by hand, or not
ours at all. The run's typed record (`vqclip.runfolder.record`, read tolerantly: a field of the wrong type is left at
its default) gives the fields; the coercers below cap and clean them (and the free-form `config`) for the page,
so one odd run can never crash the build or break the page. Run text only ever reaches the page as JSON data
rendered with `textContent`.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Any

from vqclip.runfolder.record import Files
from vqclip.runs import RunInfo

CARD_VERSION = 8  # bump when card fields or coercion change: cached cards are then rebuilt

# Every card has these; a cached card without one of them (a hand-edited cache) is made afresh.
CARD_KEYS = frozenset({"id", "prompt", "model", "clip", "w", "h", "steps", "planned", "seed", "status", "error",
                       "date", "iso", "seconds", "parent", "root", "stage", "declared", "frames", "score",
                       "batch", "engine"})

MAX_PROMPT = 4000  # a pasted novel should not make a 2,000-run page heavy
MAX_LABEL = 120
KNOWN_STATUSES = ("finished", "interrupted", "failed")

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
# A file a card may link to: a plain name inside the run folder (no paths, no schemes, no hidden files).
SAFE_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,120}$")
_PROMPT_IMAGE = re.compile(r"^image_prompt_(\d{1,4})\.(png|jpe?g|webp)$", re.IGNORECASE)
_WEIGHTS_FILE = re.compile(r"\.(ckpt|pt|pth|safetensors|yaml)$", re.IGNORECASE)
_INIT_IMAGE = re.compile(r"^init\.(png|jpe?g|webp)$", re.IGNORECASE)


def as_text(value: Any, limit: int = MAX_LABEL) -> str:
    """A display string: str only (numbers stringified), control chars and lone surrogates removed, capped."""
    if isinstance(value, bool) or value is None:
        return ""
    if isinstance(value, (int, float)):
        value = str(value)
    if not isinstance(value, str):
        return ""
    # Lone surrogates (legal in JSON escapes) cannot be written as UTF-8; replace them rather than crash.
    text = value.encode("utf-8", "replace").decode("utf-8")
    text = _CONTROL.sub("", text).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def as_int(value: Any, lo: int | None = None, hi: int | None = None) -> int | None:
    """An int from an int, an integral finite float, or a decimal string; None otherwise or out of range."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            return None
        value = int(value)
    elif isinstance(value, str) and re.fullmatch(r"\s*-?\d{1,30}\s*", value):
        value = int(value)
    if not isinstance(value, int):
        return None
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        return None
    return value


def _size(size: tuple[int, int] | None, config: dict[str, Any]) -> tuple[int | None, int | None]:
    if size is not None:
        w, h = as_int(size[0], 1, 100_000), as_int(size[1], 1, 100_000)
        if w and h:
            return w, h
    return as_int(config.get("width"), 1, 100_000), as_int(config.get("height"), 1, 100_000)


def model_name(*candidates: Any) -> str:
    """The first usable name: the weights' registry name, else `config.model`; a checkpoint path (allowed by
    `--model`) shows as its file stem, so the filter lists `tiny_vqgan`, not a temp folder."""
    for value in candidates:
        text = as_text(value, 400)
        if _WEIGHTS_FILE.search(text):
            text = _WEIGHTS_FILE.sub("", re.split(r"[\\/]", text)[-1]) or text
        if text:
            return as_text(text)
    return "unknown"


def display_date(created: Any, run_id: str) -> tuple[str, str]:
    """(`2026-11-25 10:15`, ISO) from `created`, else from the run id's timestamp; the run's own clock."""
    if isinstance(created, str):
        try:
            when = datetime.fromisoformat(created.strip())
            return when.strftime("%Y-%m-%d %H:%M"), when.isoformat(timespec="seconds")
        except ValueError:
            pass
    try:
        when = datetime.strptime(run_id[:15], "%Y%m%dT%H%M%S")
        return when.strftime("%Y-%m-%d %H:%M"), when.isoformat(timespec="seconds")
    except ValueError:
        return "", ""


def card_from_run(run: RunInfo) -> dict[str, Any]:
    """The card for one run, from its record only (file facts are added per build by `add_files`)."""
    r = run.record
    config = r.config or {}
    prompt = as_text(r.prompt, MAX_PROMPT) or as_text(config.get("prompt"), MAX_PROMPT)
    width, height = _size(r.size, config)
    status = as_text(r.status, 40).lower() or "unknown"
    date, iso = display_date(r.created, run.id)
    seed = r.seed if r.seed is not None else as_int(config.get("seed"))
    seconds = r.timings.total_s
    return {
        "id": run.id,
        "prompt": prompt,
        "model": model_name(r.weights.name, config.get("model")),
        "clip": as_text(config.get("clip_model")),
        "w": width,
        "h": height,
        "steps": r.steps_done,
        "planned": r.steps_planned or as_int(config.get("steps"), 0),
        # Seeds are strings: JS numbers lose precision above 2**53.
        "seed": None if seed is None else str(seed),
        "status": status,
        "error": as_text(r.error, 300) if status == "failed" else "",
        "date": date,
        "iso": iso,
        "seconds": round(seconds, 1) if seconds is not None and seconds >= 0 else None,
        "parent": run.parent if run.parent != run.id else None,
        "root": run.root,
        "stage": r.stage if "stage" in r.model_fields_set and r.stage <= 100_000 else None,  # None: unknown
        "declared": _declared_files(r.files),
        "frames": _frames_done(r.animation),
        "score": _score(r.score),
        "batch": _batch(r.batch),
        "engine": as_text(r.engine_name, 40),  # vqgan | animation | diffusion | …: the card's badge
    }


def _batch(tag: Any) -> str | None:
    """`<batch id> row <n>` for a run of `vqclip batch` (details.json "batch"); None otherwise or when odd."""
    if not isinstance(tag, dict) or not isinstance(tag.get("row"), int) or isinstance(tag.get("row"), bool):
        return None
    bid = as_text(tag.get("id"), 60)
    return f"{bid} row {tag['row']}" if bid else None


def _score(score: Any) -> float | None:
    """The CLIP score summary (0–100; vqclip.pipeline.score) rounded for the card; None when absent or odd."""
    value = getattr(score, "summary", None)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return round(value, 2) if -1000 <= value <= 1000 else None


def _frames_done(animation: Any) -> int | None:
    """An animation's frame count (None for other runs, or a count that is not a sensible number)."""
    done = animation.get("frames_done") if isinstance(animation, dict) else None
    return done if isinstance(done, int) and not isinstance(done, bool) and 0 <= done <= 10_000_000 else None


def _declared_files(files: Files) -> list[str]:
    """Input-image names that details.json's `files` names; validated later against the folder listing."""
    names = [files.init_image, *files.image_prompts[:50]]
    return [n for n in names if isinstance(n, str) and SAFE_FILE.match(n)]


def input_images(declared: list[str], names: set[str]) -> list[dict[str, str]]:
    """Links to the init image and image prompts that really exist in the folder (declared or by name)."""
    found = [n for n in declared if n in names]
    found += sorted((n for n in names if _INIT_IMAGE.match(n) and n not in found), key=str.lower)
    found += sorted((n for n in names if _PROMPT_IMAGE.match(n) and n not in found),
                    key=lambda n: int(_PROMPT_IMAGE.match(n).group(1)))  # type: ignore[union-attr]
    links = []
    for name in found:
        if _INIT_IMAGE.match(name) or "init" in name.lower():
            label = "init"
        else:
            m = _PROMPT_IMAGE.match(name)
            label = f"prompt {int(m.group(1)) + 1}" if m else "prompt"
        links.append({"label": label, "file": name})
    return links


def lineage_strips(cards: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """For each run in a `continue` chain: ancestors (via `parent`, as runs.lineage walks) → run → descendants
    (followed while the chain is linear; where it forks, all children are listed and the walk stops).

    Walks the in-memory index instead of calling `runs.lineage`, which re-reads each ancestor's details.json
    from disk: at 2,000 runs that would undo the incremental cache. Missing or looping parents end the walk.
    """
    by_id = {c["id"]: c for c in cards}
    children: dict[str, list[str]] = {}
    for c in cards:
        if c["parent"] in by_id:
            children.setdefault(c["parent"], []).append(c["id"])
    for kids in children.values():
        kids.sort()
    strips: dict[str, list[dict[str, Any]]] = {}
    for c in cards:
        if not c["parent"] and c["id"] not in children:
            continue
        chain = [c]
        seen = {c["id"]}
        while chain[0]["parent"] in by_id and chain[0]["parent"] not in seen:
            chain.insert(0, by_id[chain[0]["parent"]])
            seen.add(chain[0]["id"])
        missing_parent = bool(chain[0]["parent"]) and chain[0]["parent"] not in by_id
        offset = (chain[0]["stage"] or 1) - 1 if missing_parent else 0
        strip = [{"id": r["id"], "stage": r["stage"] or i + 1 + offset} for i, r in enumerate(chain)]
        kids = [k for k in children.get(c["id"], []) if k not in seen]
        while kids:
            stage = strip[-1]["stage"]
            strip += [{"id": k, "stage": by_id[k]["stage"] or stage + 1} for k in kids]
            seen.update(kids)
            kids = [k for k in children.get(kids[0], []) if k not in seen] if len(kids) == 1 else []
        strips[c["id"]] = strip
    return strips
