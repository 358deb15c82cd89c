"""`vqclip runs show RUN`: one run's details and its lineage. Importing this module adds the command to the
`vqclip runs` group (commands.runs.app); the CLI loads the group through it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from vqclip.commands.common import CONTEXT, err_console, handle_errors, out_console
from vqclip.commands.runs import (AS_JSON, app, OUTPUT_DIR, _batch, _cell, _markup, _short, _size, _steps, _when, dumps,
                                  row)
from vqclip.runfolder.names import DETAILS, IMAGE
from vqclip.runs import RunInfo, find_run, lineage, scan_runs


def _chain_rows(chain: list[RunInfo], current: str) -> Any:
    from rich.table import Table

    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    for name in ("stage", "id", "status", "steps", "size", "prompt"):
        table.add_column(name, no_wrap=name != "prompt")
    for r in chain:
        mark = "[bold]→[/] " if r.id == current else "  "
        table.add_row(str(r.stage), mark + r.id, _cell(_short(r.status, 24)), _cell(_short(_steps(r), 24)),
                      _cell(_size(r)), _cell(_short(r.prompt, 60)))
    return table


def _join(value: Any) -> str | None:
    """A list from details.json as `a, b` (whatever its items are); None when empty or not a list."""
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or None
    return str(value) if value else None


def _loss(losses: list[float | None]) -> str | None:
    """First → last loss (steps whose loss was not finite, recorded as null, left out)."""
    finite = [x for x in losses if x is not None]
    return f"{finite[0]:.4f} → {finite[-1]:.4f}" if finite else None


def _or_q(value: Any) -> Any:
    return "?" if value is None else value


def _score_lines(score: Any) -> list[tuple[str, Any]]:
    """`runs show`: the summary, then one line per text prompt (score, weight, text)."""
    if score is None:
        return []

    def num(v: float | None) -> str:
        return "?" if v is None else f"{v:.2f}"

    how = "weighted mean over the prompts with positive weight of 100·max(cos(image, text), 0)"
    lines: list[tuple[str, Any]] = [("score", f"{num(score.summary)} ({how})")]
    for p in score.prompts:
        w = "?" if p.weight is None else f"{p.weight:g}"
        avoid = ", to avoid" if p.weight is not None and p.weight < 0 else ""
        lines.append(("", f"{num(p.score):>6}  {p.text or ''} (weight {w}{avoid})"))
    return lines


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
        sys.stdout.write(dumps(data) + "\n")
        return
    rec = info.record
    cfg = rec.config or {}
    sha = rec.weights.sha256
    timings = rec.timings
    error = info.shown("error")
    fields: list[tuple[str, Any]] = [
        ("id", info.id),
        ("folder", str(info.path)),
        ("status", info.status + (f" ({error})" if error else "")),
        ("created", _when(info)),
        ("prompt", info.prompt or "—"),
        ("image prompts", _join(cfg.get("image_prompts"))),
        ("noise prompts", _join(cfg.get("noise_prompts"))),
        ("size", _size(info)),
        ("steps", f"{info.shown('steps_done')} of {info.shown('steps_planned')} planned; image total "
                  f"{info.shown('global_step')}"),
        ("seed", info.shown("seed")),
        ("batch", _batch(info) or None),
        ("model", f"{rec.weights.name or cfg.get('model')}" + (f" (sha256 {sha[:12]}…)" if sha else "")),
        ("clip", f"{cfg.get('clip_model')} / {cfg.get('clip_pretrained')}"),
        ("settings", " · ".join(f"{k} {cfg[k]}" for k in ("cutn", "cut_pow", "lr", "optimizer", "init_weight",
                                                            "tv_weight") if k in cfg)),
        ("device", f"{info.shown('device') or '?'} · {info.shown('precision') or '?'}"),
        ("time", f"{_or_q(timings.total_s)} s total, {_or_q(timings.per_step_s)} s/step"
         if timings.total_s is not None or timings.per_step_s is not None else None),
        ("loss", _loss(rec.losses)),
        *_score_lines(rec.score),
        ("files", ", ".join(str(v) for v in rec.files.model_dump(mode="json").values() if v and isinstance(v, str))),
    ]
    cont = rec.continue_
    if cont is not None:
        how = {"state": "its saved state", IMAGE: f"its {IMAGE}, re-encoded",
               "stretch": f"its {IMAGE}, resized and re-encoded"}.get(str(cont.start), cont.start)
        fields.append(("continues", f"{cont.from_} at step {cont.from_step}, from {how}"))
    if info.odd:
        err_console.print(f"[yellow]note:[/] {_markup(info.path / DETAILS)} has fields of the wrong type, shown "
                          f"as found: {_markup(', '.join(sorted(info.odd)))}", highlight=False)
    for key, value in fields:
        if value is not None and value != "":
            label = f"{key + ':':<14}" if key else " " * 14
            out_console.print(f"[bold]{label}[/] {_markup(value)}", highlight=False)
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
