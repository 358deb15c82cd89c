"""`vqclip weights …`: list, download, verify, path, remove. All data comes from `vqclip.weights.registry.WEIGHTS`.

The weights package prints nothing; this module is where its notes and byte counts become Rich output
(`rich_note`, `RichTransfer`, also used by the run reporter). Imports nothing heavy at module level (`vqclip
--help` must not import torch); torch comes in only to build the safetensors cache after a download, open_clip
only for `clip:` names and to name cached CLIP weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, List, Optional

import typer

from vqclip.commands.common import CONTEXT, err_console, handle_errors, out_console
from vqclip.errors import VqclipError
from vqclip.commands import weights_diffusion as diffusion_weights
from vqclip.weights import registry  # registry.WEIGHTS is read at call time (tests swap the table)
from vqclip.weights.clip import ClipWeights, cached_clip_weights, download_clip
from vqclip.weights.download import TIMEOUT, human_size
from vqclip.weights.installed import (BROKEN, ModelStatus, all_status, registry_status, removal_targets,
                                      remove_model, verify_model)
from vqclip.weights.registry import WeightSpec
from vqclip.weights.resolve import install_registry_model, resolve_model
from vqclip.weights.store import CUSTOM, TOFU, VERIFIED, custom_models, manifest_entry
from vqclip.weights.store import weights_dir as weights_folder

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

app = typer.Typer(help="List, download, verify and remove VQGAN weights.", context_settings=CONTEXT,
                  no_args_is_help=True, add_completion=False, rich_markup_mode="rich")

WEIGHTS_DIR = typer.Option(
    None, "--weights-dir", metavar="DIR", show_default=False,
    help="Weights folder (default: $VQCLIP_HOME/weights when VQCLIP_HOME is set, else the user cache folder).")

_STATUS_STYLE = {VERIFIED: "green", TOFU: "yellow", CUSTOM: "cyan", "unverified": "yellow",
                 "partial": "magenta", "missing": "dim", "no checkpoint": "red", BROKEN: "red"}


# ------------------------------------------------------------------------------- notes and progress, in Rich


def rich_note(console: Console) -> Callable[[str], None]:
    """The weights package's one-line notices, printed as plain text (never read as markup)."""

    def note(text: str) -> None:
        console.print(text, markup=False, highlight=False, soft_wrap=True)

    return note


class RichTransfer:
    """The weights package's `download.Progress` as a Rich bar: label, bar, bytes, rate, ETA. One bar at a time;
    each `start` begins a new one (a download, then a hash)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._bar: Any = None
        self._task: Any = None

    def start(self, label: str, done: int, total: int | None) -> None:
        from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                                   TransferSpeedColumn)

        self.stop()
        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                             TimeRemainingColumn(), console=self.console, transient=False)
        self._task = self._bar.add_task(label, total=total, completed=done)
        self._bar.start()

    def advance(self, n: int) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, n)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


# ---------------------------------------------------------------------------------------------------- list


@app.command("list", context_settings=CONTEXT)
@handle_errors
def list_weights(
    weights_dir: Optional[Path] = WEIGHTS_DIR,
    as_json: bool = typer.Option(False, "--json", help="Print JSON (one object per model) instead of a table."),
    clip: bool = typer.Option(True, "--clip/--no-clip", help="Also list CLIP weights in the Hugging Face cache."),
) -> None:
    """List the registry's VQGAN models, custom ones in the weights folder, and cached CLIP weights.

    Drop NAME.yaml + NAME.ckpt into the weights folder and NAME shows up here as custom (and works by name).

    Nothing is hashed here: the Check column comes from the manifest written when a file was last checked.

    Example:

        vqclip weights list
        vqclip weights list --json
    """
    folder = weights_folder(weights_dir)
    rows = all_status(folder)
    clips = cached_clip_weights() if clip else []
    if as_json:
        data = [r.as_json() for r in rows] + [
            {"name": c.name, "kind": "clip", "installed": True, "status": "hf-cache", "size": c.size,
             "path": str(c.path), "repo": c.repo} for c in clips]
        out_console.print_json(json.dumps(data))
        return
    out_console.print(_models_table(rows, folder))
    out_console.print(diffusion_weights.table(folder))
    if clips:
        out_console.print(_clip_table(clips))
    installed = sum(r.installed for r in rows)
    files = "" if out_console.width >= 100 else "; files are NAME.ckpt there"
    out_console.print(f"Weights folder: {folder} ({installed} installed{files})", markup=False, highlight=False)
    if not any(r.installed for r in rows if r.kind == "registry"):
        out_console.print("Get the default model with: vqclip weights download vqgan_imagenet_f16_16384",
                          markup=False, highlight=False)


def _models_table(rows: list[ModelStatus], folder: Path) -> Table:
    from rich import box
    from rich.table import Table

    table = Table(title="VQGAN weights", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False,
                  pad_edge=False, collapse_padding=True)
    table.add_column("Name", style="bold", no_wrap=True)
    table.add_column("Description", min_width=12)
    table.add_column("Size", justify="right", no_wrap=True)
    table.add_column("Status")
    show_files = any(r.installed for r in rows) and out_console.width >= 100  # narrow: the footer names the folder
    if show_files:
        table.add_column("File", min_width=8, overflow="fold")
    for r in rows:
        cells = [r.name, r.description, _size_cell(r), _status_cell(r)]
        if show_files:
            cells.append(_file_cell(r, folder) if r.installed or r.kind == "custom" else "")
        table.add_row(*cells)
    return table


def _size_cell(r: ModelStatus) -> str:
    if r.size is None:
        return "?"
    spec = registry.WEIGHTS.get(r.name)
    approx = r.kind == "registry" and not r.installed and spec is not None and spec.size is None
    return ("≈" if approx else "") + human_size(r.size)


def _status_cell(r: ModelStatus) -> str:
    """Installed or not, and how the file was checked (the manifest's status, spelled with spaces)."""
    if r.status == "missing":
        return "[dim]not downloaded[/]"
    if r.status == "partial":
        done = f"{100 * r.partial_bytes // r.size}%" if r.size else human_size(r.partial_bytes)
        return f"[magenta]partial {done}[/]"
    if r.status == BROKEN:
        from rich.markup import escape

        return f"[red]broken[/]: {escape(r.problem or 'cannot load')}"
    style = _STATUS_STYLE.get(r.status, "")
    label = r.status.replace("-", " ")
    return f"[{style}]{label}[/]" if style else label


def _file_cell(r: ModelStatus, folder: Path) -> str:
    path = r.ckpt_path if r.installed else (r.yaml_path or r.ckpt_path)
    try:
        return str(path.relative_to(folder))
    except ValueError:
        return str(path)


def _clip_table(clips: list[ClipWeights]) -> Table:
    from rich import box
    from rich.table import Table

    table = Table(title="CLIP weights in the Hugging Face cache", title_justify="left", box=box.SIMPLE_HEAD,
                  show_edge=False, pad_edge=False)
    table.add_column("Name", style="bold", no_wrap=True)
    table.add_column("Repo")
    table.add_column("Size", justify="right", no_wrap=True)
    table.add_column("Path", overflow="fold")
    for c in clips:
        table.add_row(c.name, c.repo, human_size(c.size), str(c.path))
    return table


# ------------------------------------------------------------------------------------------------ download


@app.command("download", context_settings=CONTEXT)
@handle_errors
def download(
    names: Optional[List[str]] = typer.Argument(
        None, metavar="NAME", show_default=False,
        help="Registry names (see `vqclip weights list`) or CLIP weights as clip:MODEL/TAG."),
    all_: bool = typer.Option(False, "--all", help="Download every registry model (several GB)."),
    weights_dir: Optional[Path] = WEIGHTS_DIR,
    cache: bool = typer.Option(True, "--cache/--no-cache",
                               help="After the download, cache the VQGAN tensors as safetensors (faster loads)."),
    timeout: Optional[float] = typer.Option(
        None, "--timeout", min=0.1, max=3600, show_default=False,
        help=f"Seconds to wait for each answer from a server before giving up (default: $VQCLIP_TIMEOUT, else "
             f"{TIMEOUT:g})."),
) -> None:
    """Download VQGAN checkpoints (verified, resumable) or pre-fetch CLIP weights.

    Each file streams into NAME.ckpt.part, resumes after an interruption and takes its name once verified.

    Mirrors are tried in order; a model that is already present and verified is not downloaded again.

    Example:

        vqclip weights download vqgan_imagenet_f16_16384
        vqclip weights download clip:ViT-B-32/openai
    """
    wanted = list(names or [])
    if all_:
        wanted += [n for n in registry.WEIGHTS if n not in wanted]
    if not wanted:
        raise VqclipError("name a model to download (see `vqclip weights list`), or pass --all")
    folder = weights_folder(weights_dir)
    _check_names(wanted, folder)
    for name in wanted:
        if name.startswith("clip:"):
            path = download_clip(name, timeout=timeout, note=rich_note(err_console),  # says when it downloads
                                 progress=RichTransfer(err_console))
            out_console.print(f"✓ {name}: {path}", markup=False, highlight=False)
            continue
        if diffusion_weights.is_diffusion(name):
            diffusion_weights.download(name, folder, rich_note(err_console), RichTransfer(err_console))
            continue
        _download_one(registry.WEIGHTS[name], folder, cache=cache, timeout=timeout)


def _check_names(names: list[str], folder: Path) -> None:
    for name in names:
        if name.startswith("clip:") or name in registry.WEIGHTS or diffusion_weights.is_diffusion(name):
            continue
        if name in custom_models(folder):
            raise VqclipError(f"{name} is a custom model in {folder}; there is nothing to download")
        raise VqclipError(f"unknown model {name!r}; registry names: {', '.join(registry.WEIGHTS)} "
                          "(CLIP weights: clip:MODEL/TAG, e.g. clip:ViT-B-32/openai)")


def _download_one(spec: WeightSpec, folder: Path, *, cache: bool, timeout: float | None) -> None:
    files = install_registry_model(spec, folder, download=True, note=rich_note(err_console),
                                   progress=RichTransfer(err_console), timeout=timeout)
    entry = manifest_entry(folder, files.ckpt_path) or {}
    how = "trusted on first use" if entry.get("status") == TOFU else "verified"
    out_console.print(f"✓ {spec.name} {how} (sha256 {(files.sha256 or '?')[:16]}…): {files.ckpt_path}",
                      markup=False, highlight=False)
    if cache:
        _build_cache(files.ckpt_path)


def _build_cache(ckpt: Path) -> None:
    from vqclip.weights.checkpoint import VQGAN_KEYS, load_vqgan_state, read_cache

    if read_cache(ckpt, VQGAN_KEYS) is not None:
        return
    err_console.print(f"Caching the VQGAN tensors of {ckpt.name} as safetensors…", markup=False)
    try:
        load_vqgan_state(ckpt)
    except VqclipError as e:
        err_console.print(f"[yellow]![/] no safetensors cache: {e.message}", markup=True, highlight=False)


# -------------------------------------------------------------------------------------------------- verify


@app.command("verify", context_settings=CONTEXT)
@handle_errors
def verify(
    names: Optional[List[str]] = typer.Argument(None, metavar="NAME", show_default=False,
                                                help="Models to check (default: every installed one)."),
    weights_dir: Optional[Path] = WEIGHTS_DIR,
) -> None:
    """Re-hash installed checkpoints and compare them with the registry (or the hash recorded on first use).

    Custom models get their sha256 recorded, so run records can name them. Exits 1 if a file is bad.

    Example:

        vqclip weights verify
        vqclip weights verify vqgan_imagenet_f16_16384
    """
    from rich import box
    from rich.table import Table
    from rich.text import Text

    folder = weights_folder(weights_dir)
    targets = list(names or [r.name for r in all_status(folder) if r.installed])
    if not targets:
        out_console.print(f"Nothing installed in {folder}; nothing to verify.", markup=False, highlight=False)
        return
    results = [verify_model(name, folder, progress=RichTransfer(err_console)) for name in targets]
    table = Table(title="Verification", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    table.add_column("Name", style="bold", no_wrap=True)
    table.add_column("Result", no_wrap=True)
    table.add_column("Detail")
    for r in results:
        table.add_row(r.name, "[green]ok[/]" if r.ok else "[red]bad[/]", Text(r.detail))
    out_console.print(table)
    bad = [r.name for r in results if not r.ok]
    if bad:
        fix = (f"run `vqclip weights download {bad[0]}` to replace a bad or missing file" if bad[0] in registry.WEIGHTS
               else f"fix or replace {bad[0]}.yaml / {bad[0]}.ckpt in {folder} (the Detail column says why)")
        raise VqclipError(f"{len(bad)} model(s) failed: {', '.join(bad)}; {fix}")


# ---------------------------------------------------------------------------------------------------- path


@app.command("path", context_settings=CONTEXT)
@handle_errors
def path(
    name: Optional[str] = typer.Argument(None, metavar="[NAME]", show_default=False,
                                         help="A model name; without it, print the weights folder."),
    yaml: bool = typer.Option(False, "--yaml", help="Print the model's .yaml instead of its .ckpt."),
    weights_dir: Optional[Path] = WEIGHTS_DIR,
) -> None:
    """Print the weights folder, or where a model's checkpoint (or yaml) is, for scripts.

    A registry model that is not downloaded yet prints the path it will have (and says so on stderr).

    Example:

        vqclip weights path
        vqclip weights path vqgan_imagenet_f16_16384 --yaml
    """
    folder = weights_folder(weights_dir)
    if name is None:
        out_console.print(str(folder), markup=False, highlight=False, soft_wrap=True)
        return
    if name in registry.WEIGHTS:
        status = registry_status(registry.WEIGHTS[name], folder)
        target = status.yaml_path if yaml else status.ckpt_path
        if not status.installed and not yaml:
            err_console.print(f"({name} is not downloaded yet: `vqclip weights download {name}`)", markup=False)
    else:
        files = resolve_model(name, weights_dir=folder, download=False)
        target = files.yaml_path if yaml else files.ckpt_path
    out_console.print(str(target), markup=False, highlight=False, soft_wrap=True)


# -------------------------------------------------------------------------------------------------- remove


@app.command("remove", context_settings=CONTEXT)
@handle_errors
def remove(
    name: str = typer.Argument(..., metavar="NAME", help="The model to delete (registry or custom)."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    weights_dir: Optional[Path] = WEIGHTS_DIR,
) -> None:
    """Delete a model's checkpoint, partial download, safetensors cache and manifest record.

    A custom model's .yaml goes too. Forgetting the record also resets trust on first use.

    Example:

        vqclip weights remove vqgan_imagenet_f16_1024 --yes
    """
    folder = weights_folder(weights_dir)
    if name.startswith("clip:"):
        raise VqclipError("CLIP weights live in the Hugging Face cache; remove them with `hf cache delete` "
                          "(or `huggingface-cli delete-cache`)")
    targets = removal_targets(name, folder)
    if targets and not yes:
        size = sum(p.stat().st_size for p in targets)
        typer.confirm(f"Remove {name} ({human_size(size)}: {', '.join(p.name for p in targets)}) from {folder}?",
                      abort=True, err=True)
    removed = remove_model(name, folder)
    for p in removed:
        out_console.print(f"removed {p}", markup=False, highlight=False)
    if not removed:
        out_console.print(f"forgot the recorded hash of {name}", markup=False, highlight=False)
