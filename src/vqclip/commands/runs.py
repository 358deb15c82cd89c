"""`vqclip runs list`, `runs show RUN` and `runs clean`: run folders read back from details.json. Never imports
torch.

Everything shown comes from files anyone can edit, so every string taken from a run goes through `printable`
(control characters, escape sequences, lone surrogates and bidi overrides are shown escaped, never sent raw)
and reaches Rich as plain `Text` or escaped markup (a prompt's "[bold]" stays literal).
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import typer

from vqclip.commands.common import CONTEXT, err_console, handle_errors, out_console, safe
from vqclip.runs import BadRun, RunInfo, check_output_dir, scan_runs
from vqclip.runfolder.temp import remove_temp, temp_folders

app = typer.Typer(help="List, inspect and clean up run folders.", context_settings=CONTEXT, no_args_is_help=True,
                  add_completion=False, rich_markup_mode="rich")

OUTPUT_DIR = typer.Option(Path("output"), "--output-dir", "-o", help="Folder holding the run folders.")
AS_JSON = typer.Option(False, "--json", help="Print JSON instead of a table.")


# `safe`'s characters without the C0 controls, which json.dumps escapes itself (and whose newlines are the
# JSON's own layout).
_UNSAFE_IN_JSON = re.compile("[\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ufeff\ud800-\udfff]")
printable = safe  # runs print what details.json holds: any string, shown escaped


def _markup(value: Any) -> str:
    """`printable` text for a markup string: Rich tags in it stay literal."""
    from rich.markup import escape

    return escape(printable(value))


def _cell(value: Any) -> Any:
    from rich.text import Text

    return Text(printable(value))


def dumps(obj: Any) -> str:
    """JSON with non-ASCII kept readable but every unsafe character (see `commands.common.safe`) as a `\\u` escape of four
    hex digits, so the output is valid UTF-8 and parses back to the same strings."""
    text = json.dumps(obj, indent=2, ensure_ascii=False)
    return _UNSAFE_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _when(run: RunInfo) -> str:
    """Local time the run was created ('YYYY-mm-dd HH:MM:SS'), from details.json, else from the id."""
    created = run.record.created
    if created is not None:
        try:
            return datetime.fromisoformat(created).strftime("%Y-%m-%d %H:%M:%S")
        except ValueError:
            pass
    try:
        return datetime.strptime(run.id[:15], "%Y%m%dT%H%M%S").strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return ""


def _size(run: RunInfo) -> str:
    """`WxH`; a size of the wrong type is shown as found (escaped later), else the config's."""
    size = run.shown("size")
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return f"{_short(str(size[0]), 12)}x{_short(str(size[1]), 12)}"
    cfg = run.record.config or {}
    return f"{cfg.get('width', '?')}x{cfg.get('height', '?')}"


def _steps(run: RunInfo) -> str:
    """Global step (the image's total); an interrupted run also shows how far this run got."""
    total = run.shown("global_step")
    if total is None:
        total = run.shown("steps_done")
    if run.status == "interrupted" and run.shown("steps_planned") is not None:
        return f"{total} ({run.shown('steps_done')}/{run.shown('steps_planned')})"
    return "" if total is None else str(total)


def _score(run: RunInfo) -> float | None:
    """The run's CLIP score summary (vqclip.pipeline.score); None when it has none."""
    score = run.record.score
    return score.summary if score is not None else None


def _score_cell(run: RunInfo) -> str:
    value = _score(run)
    return "" if value is None else f"{value:.1f}"


SORTS = ("time", "score")


def sort_runs(runs: list[RunInfo], by: str) -> list[RunInfo]:
    """`time`: newest first (as scanned); `score`: best CLIP score first, runs without one last, ties newest first."""
    if by == "score":
        return sorted(runs, key=lambda r: (_score(r) is None, -(_score(r) or 0.0)))
    return list(runs)


def row(run: RunInfo) -> dict[str, Any]:
    """One run as plain values (the JSON of `runs list`); a field of the wrong type is null here."""
    r = run.record
    return {"id": run.id, "time": _when(run), "status": run.status, "steps": r.global_step,
            "steps_done": r.steps_done, "steps_planned": r.steps_planned, "size": _size(run),
            "prompt": run.prompt, "parent": run.parent, "root": run.root, "stage": run.stage,
            "seed": r.seed, "score": _score(run), "batch": _batch(run) or None, "path": str(run.path)}


def _batch(run: RunInfo) -> str:
    """`<batch id> row <n>` for a run made by `vqclip batch`, else ""."""
    tag = run.record.batch
    row_ = tag.get("row") if isinstance(tag, dict) else None
    return f"{tag.get('id')} row {row_}" if isinstance(row_, int) and not isinstance(row_, bool) else ""


_WHY = {"missing": "no details.json", "corrupt": "corrupt details.json", "symlink": "symlink, not followed",
        "not-file": "details.json not a regular file"}


def _skipped(bad: list[BadRun]) -> None:
    if bad:
        counts = Counter(_WHY.get(b.reason, b.reason) for b in bad)
        why = ", ".join(f"{n} {w}" if len(counts) > 1 else w for w, n in counts.most_common())
        err_console.print(f"[yellow]{len(bad)} folder{'s' if len(bad) != 1 else ''} skipped[/] "
                          f"({why}), e.g. {_markup(bad[0].message)}", highlight=False)


def _leftovers(output_dir: Path) -> None:
    """One line about `.tmp-*` folders whose writer was killed (runs in progress are not counted)."""
    stale = [t for t in temp_folders(output_dir) if t.stale]
    if stale:
        n = len(stale)
        err_console.print(f"[yellow]{n} unfinished run folder{'s' if n != 1 else ''}[/] ({_markup(stale[0].path.name)}"
                          f"{' …' if n > 1 else ''}) left by a killed process; remove "
                          f"{'them' if n != 1 else 'it'} with `vqclip runs clean -o {_markup(output_dir)}`",
                          highlight=False)


def _short(text: str, n: int = 48) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


@app.command("list", context_settings=CONTEXT)
@handle_errors
def list_runs(
    output_dir: Path = OUTPUT_DIR,
    as_json: bool = AS_JSON,
    limit: int = typer.Option(0, "--limit", "-n", min=0, help="Show at most this many (0 = all)."),
    sort: str = typer.Option("time", "--sort", metavar="time|score",
                             help="time = newest first; score = best CLIP score first (runs without one last)."),
) -> None:
    """List runs, newest first: id, time, status, steps, size, score, prompt, parent.

    Steps is the image's total (a continued run counts its parents' steps too). Score is the final image's CLIP
    score (the weighted mean over the prompts with positive weight of 100·max(cos, 0)); the column shows when a
    listed run has one. Runs whose details.json is missing or corrupt are skipped and counted on stderr.

    Example:

        vqclip runs list
        vqclip runs list --sort score -n 10
        vqclip runs list --json | jq '.[0].id'
    """
    from vqclip.errors import UsageError

    by = sort.strip().lower()
    if by not in SORTS:
        raise UsageError(f"--sort {printable(sort)!r}: use time or score")
    check_output_dir(output_dir)
    runs, bad = scan_runs(output_dir)
    runs = sort_runs(runs, by)
    if limit:
        runs = runs[:limit]
    if as_json:
        sys.stdout.write(dumps([row(r) for r in runs]) + "\n")
        _skipped(bad)
        _leftovers(output_dir)
        return
    if not runs:
        out_console.print(f"No runs in {_markup(output_dir)} yet; make one with `vqclip generate \"a prompt\"`.")
        _skipped(bad)
        _leftovers(output_dir)
        return
    table = _runs_table(runs, compact=False, scores=by == "score")
    from rich.measure import Measurement

    natural = Measurement.get(out_console, out_console.options.update(width=10_000), table).maximum
    if natural <= out_console.width:
        out_console.print(table)
    elif not out_console.is_terminal:  # piped: never squeeze columns into "…"
        from rich.console import Console

        Console(width=natural, highlight=False, soft_wrap=True).print(table)
    else:
        out_console.print(_runs_table(runs, compact=True, scores=by == "score"))
    _skipped(bad)
    _leftovers(output_dir)


def _unique_prefix(run_id: str, ids: list[str], at_least: int = 15) -> str:
    """The shortest prefix of `run_id` (at least the timestamp) that no other id starts with."""
    for n in range(at_least, len(run_id)):
        if not any(other != run_id and other.startswith(run_id[:n]) for other in ids):
            return run_id[:n]
    return run_id


def _runs_table(runs: list[RunInfo], compact: bool, scores: bool = False) -> Any:
    """The `runs list` table; `compact` (narrow terminals) shortens the time and the parent id to a unique
    prefix, which `vqclip continue` and `runs show` accept as well. The score column shows when `scores` or
    when a listed run has a score."""
    from rich.table import Table
    from rich.text import Text

    scores = scores or any(_score(r) is not None for r in runs)
    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False,
                  padding=(0, 1, 0, 0) if compact else (0, 1))
    for name, kw in (("id", {"no_wrap": True, "min_width": 24}), ("time", {"no_wrap": True}),
                     ("status", {"no_wrap": True}), ("steps", {"justify": "right", "no_wrap": True}),
                     ("size", {"no_wrap": True}), ("score", {"justify": "right", "no_wrap": True}),
                     ("prompt", {"overflow": "fold", "min_width": 10}), ("parent", {"no_wrap": True})):
        if name != "score" or scores:
            table.add_column(name, **kw)
    batches = any(_batch(r) for r in runs)
    if batches:
        table.add_column("batch", no_wrap=True)
    style = {"finished": "green", "interrupted": "yellow", "failed": "red"}
    ids = [r.id for r in runs]
    for r in runs:
        st = style.get(r.status)
        when = _when(r)
        parent = r.parent or ""
        if compact:
            when = when[5:16]
            parent = _unique_prefix(parent, ids) if parent else ""
        status = Text(r.status, style=st) if st else _cell(_short(r.status, 24))
        cells = [r.id, when, status, _cell(_short(_steps(r), 24)), _cell(_size(r))]
        table.add_row(*cells, *([_score_cell(r)] if scores else []), _cell(_short(r.prompt)), parent,
                      *([_cell(_batch(r))] if batches else []))
    return table


@app.command("clean", context_settings=CONTEXT)
@handle_errors
def clean_runs(
    output_dir: Path = OUTPUT_DIR,
    dry_run: bool = typer.Option(False, "--dry-run", "-n", help="Only list what would be removed."),
) -> None:
    """Remove the unfinished `.tmp-*` run folders that a killed or crashed process left in the output folder.

    A temp folder is removed only when its writer is gone: its lock is free or its process has exited (or, for
    one without an owner record, nothing in it was written for 10 minutes). Runs in progress are kept.

    Example:

        vqclip runs clean --dry-run
        vqclip runs clean -o output
    """
    check_output_dir(output_dir)
    temps = temp_folders(output_dir)
    stale = [t for t in temps if t.stale]
    busy = len(temps) - len(stale)
    kept = f"; {busy} in progress kept" if busy else ""
    if not stale:
        out_console.print(f"Nothing to clean in {_markup(output_dir)}{kept}.", highlight=False)
        return
    failed: list[str] = []
    for t in stale:
        if dry_run:
            out_console.print(f"would remove {_markup(t.path)} ({_markup(t.why)})", highlight=False)
            continue
        try:
            remove_temp(t)
        except OSError as e:
            failed.append(f"{t.path.name} ({e.strerror or type(e).__name__})")
            continue
        out_console.print(f"removed {_markup(t.path)} ({_markup(t.why)})", highlight=False)
    n = len(stale) - len(failed)
    if dry_run:
        out_console.print(f"{len(stale)} folder{'s' if len(stale) != 1 else ''} would be removed{kept}; run "
                          f"without --dry-run to remove {'them' if len(stale) != 1 else 'it'}.", highlight=False)
    else:
        out_console.print(f"Removed {n} unfinished run folder{'s' if n != 1 else ''}{kept}.", highlight=False)
    if failed:
        from vqclip.errors import VqclipError

        raise VqclipError(f"could not remove {', '.join(printable(f) for f in failed)}; check the permissions "
                          f"of {printable(output_dir)}")


__all__ = ["app", "dumps", "printable", "row"]

