"""`vqclip batch`: a queue of runs from a file (.txt/.csv/.jsonl/.yaml), multiplied by --seeds/--repeat/--sweep,
that survives crashes (a journal in the batch folder), one worker per device, or a Ray cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer

from vqclip.commands import options as O
from vqclip.commands.common import err_console, handle_errors, safe


@handle_errors
@O.run_options(diffusion=True)
def batch(
    file: Optional[Path] = typer.Argument(None, help="Rows: .txt (a prompt per line), .csv, .jsonl or .yaml."),
    seeds: Optional[str] = typer.Option(None, "--seeds", metavar="A-B", help="Run every row with each seed (1-8, or 3,7,9)."),
    repeat: int = typer.Option(1, "--repeat", min=1, max=10_000, help="Run every row N times."),
    sweep: Optional[List[str]] = typer.Option(None, "--sweep", metavar="KEY=V1,V2",
                                              help="Every row with each value (repeatable: the product)."),
    max_rows: int = typer.Option(100_000, "--max-rows", min=1, metavar="N",
                                 help="Refuse a batch of more runs than this (counted before anything is built)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the expanded rows and an estimated time; run nothing."),
    resume_ref: Optional[str] = typer.Option(None, "--resume", metavar="BATCH",
                                             help="Finish a batch (its folder or id): only what is left."),
    new: bool = typer.Option(False, "--new", help="Start a new batch even if an unfinished one has the same rows."),
    devices: Optional[str] = typer.Option(None, "--devices", metavar="cuda:0,cuda:1",
                                          help="One worker per device (default: every CUDA GPU, else cpu)."),
    ray: Optional[str] = typer.Option(None, "--ray", metavar="ADDRESS",
                                      help="Run on a Ray cluster: auto, local, HOST:PORT or ray://HOST:PORT."),
    ray_workers: Optional[int] = typer.Option(None, "--ray-workers", min=1, max=10_000,
                                              help="Actors on a CPU-only Ray cluster (default: its CPUs)."),
    ray_timeout: float = typer.Option(30.0, "--ray-timeout", min=0.1, max=86_400, metavar="SECONDS",
                                      envvar="VQCLIP_RAY_TIMEOUT", help="Give up joining the Ray cluster after this."),
    output_dir: Path = O.OUTPUT_DIR,
    *,
    flags: O.RunFlags,
) -> None:
    """Run many prompts, seeds or settings as one queue that survives crashes.

    Rows take their settings from the file; options given here set what rows leave unset (defaults.yaml <
    --config < options < row < --sweep < --seeds). Running the same command again (or --resume BATCH) does only
    what is left; two commands on the same batch share its queue and never run a row twice. In a .txt file only
    a line that starts with # is a comment (a ' # …' later in a line is prompt text).

        vqclip batch prompts.txt --seeds 1-4 --steps 200
        vqclip batch runs.csv --sweep lr=0.05,0.1 --sweep cutn=16,32 --dry-run
    """
    from vqclip.batch import counts
    from vqclip.batch.rowfile import hash_note, read_rows
    from vqclip.errors import UsageError
    from vqclip.runs import check_output_dir

    check_output_dir(output_dir)
    if ray is not None:
        from vqclip.batch.ray_backend import check_address, probe, require_ray

        check_address(ray)
        require_ray()
        probe(ray, ray_timeout)
    if resume_ref is None and file is not None:  # counted before pydantic, torch or any row is loaded
        read = read_rows(file)
        counts.check_count(counts.count_runs(len(read), counts.count_seeds(seeds), repeat, counts.sweep_sizes(sweep)),
                           max_rows, len(read))
    from vqclip.batch import rows as R
    from vqclip.batch import start

    if resume_ref is not None:
        folder = start.resume(resume_ref, output_dir)
        settings = start.settings_of(folder)
        settings.output_dir = str(output_dir)
        if devices is not None or ray is not None:
            settings.devices, settings.ray, settings.ray_workers = _devices(devices, ray, flags.given.get("device")), ray, ray_workers
            settings.ray_timeout = ray_timeout
        _preflight([(r.get("source", f"row {r.get('row')}"), r["config"]) for r in folder.info()["rows"]], settings)
        backend = _join_ray(settings) if settings.ray is not None else None
        resumed = True
    else:
        if file is None:
            raise UsageError("give a batch file (.txt, .csv, .jsonl or .yaml), or --resume BATCH")
        sweeps = R.parse_sweeps(sweep)
        workers = _devices(devices, ray, flags.given.get("device"))
        if file.suffix.lower() == ".txt" and (note := hash_note(read, file.name)):
            err_console.print(f"Note: {safe(note)}", markup=False)
        rows = R.expand(file, config_file=flags.config, seeds=R.parse_seeds(seeds, max_rows), repeat=repeat,
                        sweeps=sweeps, overrides=flags.overrides(), read=read, max_rows=max_rows)
        if dry_run:
            _show_table(rows, output_dir)
            return
        _check_images(rows)
        inputs = flags.inputs
        settings = start.Settings(output_dir=str(output_dir),
                                  weights_dir=str(inputs.weights_dir) if inputs.weights_dir else None,
                                  download=inputs.download, trusted=[str(p) for p in inputs.trusted],
                                  devices=workers, ray=ray,
                                  ray_workers=ray_workers, ray_timeout=ray_timeout)
        _preflight([(r.source, r.config) for r in rows], settings)
        backend = _join_ray(settings) if settings.ray is not None else None
        try:
            folder, resumed = start.open_batch(rows, str(file), settings, new=new)
        except BaseException:
            if backend is not None:
                backend.close()
            raise
    _run(folder, settings, resumed, flags.quiet, retry_failed=resume_ref is not None, backend=backend)


def _join_ray(settings: Any) -> Any:
    """The Ray backend, joined before the batch folder is made (a cluster that does not answer leaves nothing)."""
    from vqclip.batch.start import make_backend

    return make_backend(settings)


def _preflight(rows: list[tuple[str, Any]], settings: Any) -> None:
    """Every row's model, CLIP, device and size checked before the first run (not on a Ray cluster, whose
    files and devices are its own)."""
    from vqclip.batch.preflight import check_rows
    from vqclip.batch.workers import default_devices

    if settings.ray is None:
        check_rows(rows, settings.devices or default_devices(), weights_dir=settings.weights_dir,
                   download=settings.download)


def _devices(devices: Optional[str], ray: Optional[str], device: Optional[str]) -> Optional[list[str]]:
    from vqclip.batch.workers import parse_devices

    if ray is not None:
        return None
    if devices is None and device not in (None, "auto"):
        return [str(device).lower()]
    if devices is None:
        return None
    from vqclip.errors import UsageError

    if len(devices) > 2000:
        raise UsageError(f"--devices is {len(devices):,} characters long; name at most {MAX_WORKERS} devices")
    listed = parse_devices(devices)
    if len(listed) > MAX_WORKERS:
        raise UsageError(f"--devices names {len(listed)} workers; at most {MAX_WORKERS} (one worker process each)")
    return listed


MAX_WORKERS = 64  # worker processes on this machine (--devices)


def _check_images(rows: list[Any]) -> None:
    """Local input images read once now (a missing one fails before the first run, naming its row)."""
    from vqclip.errors import VqclipError
    from vqclip.pipeline.media import open_image

    seen: set[str] = set()
    for row in rows:
        refs = ([("init image", row.config.init_image)] if row.config.init_image else []) + \
            [("image prompt", s.path) for s in row.config.image_prompt_specs]
        for what, ref in refs:
            if ref in seen or ref.startswith(("http://", "https://")):
                continue
            seen.add(ref)
            try:
                open_image(ref, what)
            except VqclipError as e:
                raise VqclipError(f"{row.source}: {e.message}") from None


TABLE_ROWS = 200  # a dry run on a terminal shows this many rows; piped, every row


def _show_table(rows: list[Any], output_dir: Path) -> None:
    """The expanded rows: a table on a terminal; piped to a file or a program, one tab-separated line per row
    (never wrapped), the count and estimate on stderr."""
    from vqclip.batch.rows import estimate_seconds
    from vqclip.commands.common import out_console

    columns = ("#", "from", "prompt", "seed", "size", "steps", "cutn", "lr", "model")
    cells = ([str(r.index), r.source, safe(r.config.prompt), "random" if r.config.seed is None else str(r.config.seed),
              f"{r.config.width}x{r.config.height}", str(r.config.steps), str(r.config.cutn), f"{r.config.lr:g}",
              safe(r.config.model)] for r in rows)
    title = f"{len(rows)} run{'s' if len(rows) != 1 else ''}"
    if out_console.is_terminal:
        _table(title, columns, cells, len(rows))
        say = out_console
    else:
        _lines(columns, cells)
        err_console.print(title, markup=False)
        say = err_console
    per_step, basis = _per_step(output_dir)
    total = estimate_seconds(rows, per_step)
    say.print(f"Estimated time: about {_duration(total)} in all, {sum(r.config.steps for r in rows)} steps "
              f"(an estimate: {basis})", markup=False)


def _table(title: str, columns: tuple[str, ...], cells: Any, count: int) -> None:
    """A Rich table of at most TABLE_ROWS rows (cells are text, never markup)."""
    import itertools

    from rich.table import Table
    from rich.text import Text

    from vqclip.commands.common import out_console

    table = Table(title=title, show_lines=False)
    for name in columns:
        table.add_column(name, overflow="fold")
    for row in itertools.islice(cells, TABLE_ROWS):
        table.add_row(*(Text(c) for c in row))
    out_console.print(table)
    if count > TABLE_ROWS:
        out_console.print(f"… and {count - TABLE_ROWS:,} more rows (pipe the output to a file to see them all)",
                          markup=False)


def _lines(columns: tuple[str, ...], cells: Any) -> None:
    """Tab-separated lines, a header first: for files and other programs (no wrapping, no box drawing)."""
    import sys

    write = sys.stdout.write
    try:
        write("\t".join(columns) + "\n")
        for row in cells:
            write("\t".join(row) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:  # `… --dry-run | head`: the reader has what it wanted
        import os

        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        except (OSError, ValueError):
            pass


def _per_step(output_dir: Path) -> tuple[float, str]:
    """Seconds per step at 480x480, cutn 32: from the runs already in the output folder, else a rough guess."""
    from vqclip.runs import scan_runs

    rates = []
    for run in scan_runs(output_dir)[0][:50]:
        rec, cfg = run.record, run.record.config or {}
        if rec.timings.per_step_s and rec.size and cfg.get("cutn"):
            rates.append(rec.timings.per_step_s * 480 * 480 * 32 / (rec.size[0] * rec.size[1] * cfg["cutn"]))
    if rates:
        rates.sort()
        return rates[len(rates) // 2], f"scaled from {len(rates)} earlier run(s) in {output_dir}"
    return 0.5, "a rough guess of 0.5 s per step at 480x480 with cutn 32; earlier runs make it better"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    h, rest = divmod(seconds, 3600)
    return f"{h} h {rest // 60} min" if h else f"{rest // 60} min {rest % 60} s"


def _run(folder: Any, settings: Any, resumed: bool, quiet: bool, retry_failed: bool, backend: Any = None) -> None:
    try:
        _drive(folder, settings, resumed, quiet, retry_failed, backend)
    finally:
        if backend is not None:
            backend.close()


def _drive(folder: Any, settings: Any, resumed: bool, quiet: bool, retry_failed: bool, backend: Any) -> None:
    from rich.markup import escape

    from vqclip.batch import start
    from vqclip.batch.sheet import SHEET, contact_sheet
    from vqclip.commands.batch_progress import BatchProgress
    from vqclip.commands.common import err_console, out_console, safe
    from vqclip.commands.progress import StopOnInterrupt

    output_dir = Path(settings.output_dir)
    found = start.recover(folder, output_dir, retry_failed=retry_failed)
    if folder.rebuilt:
        err_console.print(f"Note: {folder.path.name}'s journal was missing and has been rebuilt from batch.json; the "
                          f"{found} finished run{'s' if found != 1 else ''} found on disk count as done", markup=False)
    counts = folder.journal.counts()
    total = sum(counts.values())
    elsewhere = _elsewhere(folder.journal.held_elsewhere())
    if elsewhere:
        err_console.print(f"Batch {folder.id}: {elsewhere}; this command takes only the rows left", markup=False)
    if resumed and not counts["pending"] and not counts["running"]:
        err_console.print(f"Batch {folder.id} is already done ({counts['done']} runs, {counts['failed']} failed): "
                          "nothing left to do; pass --new to run its rows again", markup=False)
    elif resumed:
        err_console.print(f"Resuming batch {folder.id}: {counts['done']} of {total} done"
                          f"{f' ({found} found on disk)' if found else ''}, {counts['pending']} to go", markup=False)
    else:
        err_console.print(f"Batch {folder.id}: {total} runs ({folder.path})", markup=False)
    import vqclip.engine  # noqa: F401  torch loads here, where a Ctrl-C simply ends the command

    with StopOnInterrupt() as stop:
        progress = BatchProgress(total, counts["done"], counts["failed"], quiet=quiet, stop=stop)
        try:
            counts = start.run(folder, settings, progress, should_stop=stop, backend=backend)
        finally:
            progress.close()
    ranked = start.ranked(folder, output_dir)
    if ranked:
        sheet = contact_sheet(ranked, folder.path / SHEET)
        _print_ranked(ranked)
        if sheet is not None:
            out_console.print(f"Contact sheet: {escape(safe(sheet))}")
    failed = [e for e in folder.journal.entries() if e["status"] == "failed"]
    for e in failed:
        err_console.print(f"row {e['row']} failed after {e['attempts']} attempts: {safe(e['error'])}", markup=False)
    elsewhere = _elsewhere(folder.journal.held_elsewhere())
    out_console.print(f"Batch {folder.id}: {counts['done']} done, {counts['failed']} failed, "
                      f"{counts['pending'] + counts['running']} left{f' ({elsewhere})' if elsewhere else ''}",
                      markup=False)
    folder.close()
    if stop.requested:
        from vqclip.commands.progress import report_interrupted

        report_interrupted(stop, f"finished runs are kept; `vqclip batch --resume {folder.id}` does the rest.")
    if failed:
        raise typer.Exit(1)


def _elsewhere(held: dict[int, Any]) -> str:
    """'rows 3, 4 are being run by process 123' for the rows other live processes hold ("" for none)."""
    if not held:
        return ""
    by: dict[str, list[int]] = {}
    for row, owner in sorted(held.items()):
        by.setdefault(owner.describe(), []).append(row)
    parts = [f"row{'s' if len(rows) > 1 else ''} {', '.join(map(str, rows[:5]))}{'…' if len(rows) > 5 else ''} "
             f"{'are' if len(rows) > 1 else 'is'} being run by {who}" for who, rows in by.items()]
    return "; ".join(parts)


def _print_ranked(ranked: list[dict[str, Any]]) -> None:
    from vqclip.commands.common import out_console

    scored = any(r["score"] is not None for r in ranked)
    columns = ("#", "run", "prompt", "seed", "score")
    cells = ([str(r["row"]), r["run_id"], safe(r["prompt"]), str(r["seed"]),
              "" if r["score"] is None else f"{r['score']:.2f}"] for r in ranked)
    if out_console.is_terminal:
        _table("Runs, best first by CLIP score" if scored else "Runs", columns, cells, len(ranked))
    else:
        _lines(columns, cells)
