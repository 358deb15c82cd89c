"""`vqclip runs list` and `vqclip runs show RUN`: run folders read back from details.json. Never imports torch."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import typer

from vqclip.cli_common import CONTEXT, err_console, handle_errors, out_console
from vqclip.runs import BadRun, RunInfo, find_run, lineage, scan_runs

app = typer.Typer(help="List and inspect run folders.", context_settings=CONTEXT, no_args_is_help=True,
                  add_completion=False, rich_markup_mode="rich")

OUTPUT_DIR = typer.Option(Path("output"), "--output-dir", "-o", help="Folder holding the run folders.")
AS_JSON = typer.Option(False, "--json", help="Print JSON instead of a table.")


def _when(run: RunInfo) -> str:
    """Local time the run was created ('YYYY-mm-dd HH:MM:SS'), from details.json, else from the id."""
    created = run.details.get("created")
    if isinstance(created, str):
        try:
            return datetime.fromisoformat(created).strftime("%Y-%m-%d %H:%M:%S")
        except ValueError:
            pass
    try:
        return datetime.strptime(run.id[:15], "%Y%m%dT%H%M%S").strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return ""


def _size(run: RunInfo) -> str:
    size = run.details.get("size")
    if isinstance(size, list) and len(size) == 2:
        return f"{size[0]}x{size[1]}"
    cfg = run.details.get("config") or {}
    return f"{cfg.get('width', '?')}x{cfg.get('height', '?')}" if isinstance(cfg, dict) else "?"


def _steps(run: RunInfo) -> str:
    """Global step (the image's total); an interrupted run also shows how far this run got."""
    d = run.details
    total = d.get("global_step", d.get("steps_done"))
    if run.status == "interrupted" and d.get("steps_planned") is not None:
        return f"{total} ({d.get('steps_done')}/{d.get('steps_planned')})"
    return "" if total is None else str(total)


def row(run: RunInfo) -> dict[str, Any]:
    """One run as plain values (the JSON of `runs list`)."""
    d = run.details
    return {"id": run.id, "time": _when(run), "status": run.status, "steps": d.get("global_step"),
            "steps_done": d.get("steps_done"), "steps_planned": d.get("steps_planned"), "size": _size(run),
            "prompt": run.prompt, "parent": run.parent, "root": run.root, "stage": run.stage,
            "seed": d.get("seed"), "path": str(run.path)}


def _skipped(bad: list[BadRun]) -> None:
    if bad:
        err_console.print(f"[yellow]{len(bad)} folder{'s' if len(bad) != 1 else ''} skipped[/] "
                          f"(missing or corrupt details.json), e.g. {bad[0].message}", highlight=False)


def _short(text: str, n: int = 48) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


@app.command("list", context_settings=CONTEXT)
@handle_errors
def list_runs(
    output_dir: Path = OUTPUT_DIR,
    as_json: bool = AS_JSON,
    limit: int = typer.Option(0, "--limit", "-n", min=0, help="Show at most this many (0 = all)."),
) -> None:
    """List runs, newest first: id, time, status, steps, size, prompt, parent.

    Steps is the image's total (a continued run counts its parents' steps too). Runs whose details.json is
    missing or corrupt are skipped and counted on stderr.

    Example:

        vqclip runs list
        vqclip runs list --json | jq '.[0].id'
    """
    runs, bad = scan_runs(output_dir)
    if limit:
        runs = runs[:limit]
    if as_json:
        sys.stdout.write(json.dumps([row(r) for r in runs], indent=2, ensure_ascii=False) + "\n")
        _skipped(bad)
        return
    if not runs:
        out_console.print(f"No runs in {output_dir} yet; make one with `vqclip generate \"a prompt\"`.")
        _skipped(bad)
        return
    table = _runs_table(runs, compact=False)
    from rich.measure import Measurement

    natural = Measurement.get(out_console, out_console.options.update(width=10_000), table).maximum
    if natural <= out_console.width:
        out_console.print(table)
    elif not out_console.is_terminal:  # piped: never squeeze columns into "…"
        from rich.console import Console

        Console(width=natural, highlight=False, soft_wrap=True).print(table)
    else:
        out_console.print(_runs_table(runs, compact=True))
    _skipped(bad)


def _unique_prefix(run_id: str, ids: list[str], at_least: int = 15) -> str:
    """The shortest prefix of `run_id` (at least the timestamp) that no other id starts with."""
    for n in range(at_least, len(run_id)):
        if not any(other != run_id and other.startswith(run_id[:n]) for other in ids):
            return run_id[:n]
    return run_id


def _runs_table(runs: list[RunInfo], compact: bool) -> Any:
    """The `runs list` table; `compact` (narrow terminals) shortens the time and the parent id to a unique
    prefix, which `vqclip continue` and `runs show` accept as well."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False,
                  padding=(0, 1, 0, 0) if compact else (0, 1))
    for name, kw in (("id", {"no_wrap": True, "min_width": 24}), ("time", {"no_wrap": True}),
                     ("status", {"no_wrap": True}), ("steps", {"justify": "right", "no_wrap": True}),
                     ("size", {"no_wrap": True}), ("prompt", {"overflow": "fold", "min_width": 10}),
                     ("parent", {"no_wrap": True})):
        table.add_column(name, **kw)
    style = {"finished": "green", "interrupted": "yellow", "failed": "red"}
    ids = [r.id for r in runs]
    for r in runs:
        st = style.get(r.status)
        when = _when(r)
        parent = r.parent or ""
        if compact:
            when = when[5:16]
            parent = _unique_prefix(parent, ids) if parent else ""
        table.add_row(r.id, when, f"[{st}]{r.status}[/]" if st else escape(r.status), _steps(r), _size(r),
                      escape(_short(r.prompt)), parent)
    return table


def _chain_rows(chain: list[RunInfo], current: str) -> Any:
    from rich.markup import escape
    from rich.table import Table

    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    for name in ("stage", "id", "status", "steps", "size", "prompt"):
        table.add_column(name, no_wrap=name != "prompt")
    for r in chain:
        mark = "[bold]→[/] " if r.id == current else "  "
        table.add_row(str(r.stage), mark + r.id, escape(r.status), _steps(r), _size(r), escape(_short(r.prompt, 60)))
    return table


@app.command("show", context_settings=CONTEXT)
@handle_errors
def show_run(
    run: str = typer.Argument(..., help="Run id, unique id prefix, or run-folder path."),
    output_dir: Path = OUTPUT_DIR,
    as_json: bool = AS_JSON,
) -> None:
    """Show a run's details and its lineage: the chain of runs it continues, and the runs that continue it.

    Example:

        vqclip runs show 20261125T1015
    """
    info = find_run(run, output_dir)
    folder = info.path.parent
    chain = lineage(info, folder)
    children = [r for r in scan_runs(folder)[0] if r.parent == info.id]
    children.sort(key=lambda r: r.id)
    if as_json:
        data = dict(info.details)
        data["path"] = str(info.path)
        data["lineage"] = [row(r) for r in chain]
        data["children"] = [row(r) for r in children]
        sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        return
    d = info.details
    cfg = d.get("config") if isinstance(d.get("config"), dict) else {}
    weights = d.get("weights") if isinstance(d.get("weights"), dict) else {}
    timings = d.get("timings") if isinstance(d.get("timings"), dict) else {}
    losses = d.get("losses") or []
    files = d.get("files") if isinstance(d.get("files"), dict) else {}
    sha = weights.get("sha256")
    fields: list[tuple[str, Any]] = [
        ("id", info.id),
        ("folder", str(info.path)),
        ("status", info.status + (f" ({d['error']})" if d.get("error") else "")),
        ("created", _when(info)),
        ("prompt", info.prompt or "—"),
        ("image prompts", ", ".join(cfg.get("image_prompts") or []) or None),
        ("noise prompts", ", ".join(cfg.get("noise_prompts") or []) or None),
        ("size", _size(info)),
        ("steps", f"{d.get('steps_done')} of {d.get('steps_planned')} planned; image total {d.get('global_step')}"),
        ("seed", d.get("seed")),
        ("model", f"{weights.get('name') or cfg.get('model')}" + (f" (sha256 {sha[:12]}…)" if sha else "")),
        ("clip", f"{cfg.get('clip_model')} / {cfg.get('clip_pretrained')}"),
        ("settings", " · ".join(f"{k} {cfg[k]}" for k in ("cutn", "cut_pow", "lr", "optimizer", "init_weight",
                                                            "tv_weight") if k in cfg)),
        ("device", f"{d.get('device', '?')} · {d.get('precision', '?')}"),
        ("time", f"{timings.get('total_s', '?')} s total, {timings.get('per_step_s', '?')} s/step"
         if timings else None),
        ("loss", f"{losses[0]:.4f} → {losses[-1]:.4f}" if losses and all(isinstance(x, (int, float)) for x in
                                                                            (losses[0], losses[-1])) else None),
        ("files", ", ".join(str(v) for k, v in files.items() if v and isinstance(v, str))),
    ]
    cont = d.get("continue")
    if isinstance(cont, dict):
        how = {"state": "its saved state", "output.png": "its output.png, re-encoded",
               "stretch": "its output.png, resized and re-encoded"}.get(str(cont.get("start")), cont.get("start"))
        fields.append(("continues", f"{cont.get('from')} at step {cont.get('from_step')}, from {how}"))
    from rich.markup import escape

    for key, value in fields:
        if value is not None and value != "":
            out_console.print(f"[bold]{key + ':':<14}[/] {escape(str(value))}", highlight=False)
    if len(chain) > 1 or children or info.parent:
        out_console.print()
        missing = info.parent and chain[0].parent
        title = f"Lineage (root {chain[0].id}" + (f"; parent {chain[0].parent} not found" if missing else "") + ")"
        out_console.print(f"[bold]{title}[/]", highlight=False)
        out_console.print(_chain_rows(chain, info.id))
    if children:
        out_console.print()
        out_console.print("[bold]Continued by[/]")
        out_console.print(_chain_rows(children, ""))


__all__ = ["app", "row"]
