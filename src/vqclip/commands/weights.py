"""`vqclip weights …`: list, download, verify, path, remove. All data comes from `vqclip.weights.WEIGHTS`.

Imports nothing heavy at module level (`vqclip --help` must not import torch); torch comes in only to build the
safetensors cache after a download, open_clip only for `clip:` names and to name cached CLIP weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

import typer

from vqclip import downloads
from vqclip import weights as W
from vqclip.commands.common import CONTEXT, err_console, handle_errors, out_console
from vqclip.errors import VqclipError

if TYPE_CHECKING:
    from rich.table import Table

app = typer.Typer(help="List, download, verify and remove VQGAN weights.", context_settings=CONTEXT,
                  no_args_is_help=True, add_completion=False, rich_markup_mode="rich")

WEIGHTS_DIR = typer.Option(
    None, "--weights-dir", metavar="DIR", show_default=False,
    help="Weights folder (default: $VQCLIP_HOME/weights when VQCLIP_HOME is set, else the user cache folder).")

_STATUS_STYLE = {W.VERIFIED: "green", W.TOFU: "yellow", W.CUSTOM: "cyan", "unverified": "yellow",
                 "partial": "magenta", "missing": "dim", "no checkpoint": "red", W.BROKEN: "red"}


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
    folder = W.weights_dir(weights_dir)
    rows = W.all_status(folder)
    clips = W.cached_clip_weights() if clip else []
    if as_json:
        data = [r.as_json() for r in rows] + [
            {"name": c.name, "kind": "clip", "installed": True, "status": "hf-cache", "size": c.size,
             "path": str(c.path), "repo": c.repo} for c in clips]
        out_console.print_json(json.dumps(data))
        return
    out_console.print(_models_table(rows, folder))
    if clips:
        out_console.print(_clip_table(clips))
    installed = sum(r.installed for r in rows)
    files = "" if out_console.width >= 100 else "; files are NAME.ckpt there"
    out_console.print(f"Weights folder: {folder} ({installed} installed{files})", markup=False, highlight=False)
    if not any(r.installed for r in rows if r.kind == "registry"):
        out_console.print("Get the default model with: vqclip weights download vqgan_imagenet_f16_16384",
                          markup=False, highlight=False)


def _models_table(rows: list[W.ModelStatus], folder: Path) -> Table:
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


def _size_cell(r: W.ModelStatus) -> str:
    if r.size is None:
        return "?"
    spec = W.WEIGHTS.get(r.name)
    approx = r.kind == "registry" and not r.installed and spec is not None and spec.size is None
    return ("≈" if approx else "") + W.human_size(r.size)


def _status_cell(r: W.ModelStatus) -> str:
    """Installed or not, and how the file was checked (the manifest's status, spelled with spaces)."""
    if r.status == "missing":
        return "[dim]not downloaded[/]"
    if r.status == "partial":
        done = f"{100 * r.partial_bytes // r.size}%" if r.size else W.human_size(r.partial_bytes)
        return f"[magenta]partial {done}[/]"
    if r.status == W.BROKEN:
        from rich.markup import escape

        return f"[red]broken[/]: {escape(r.problem or 'cannot load')}"
    style = _STATUS_STYLE.get(r.status, "")
    label = r.status.replace("-", " ")
    return f"[{style}]{label}[/]" if style else label


def _file_cell(r: W.ModelStatus, folder: Path) -> str:
    path = r.ckpt_path if r.installed else (r.yaml_path or r.ckpt_path)
    try:
        return str(path.relative_to(folder))
    except ValueError:
        return str(path)


def _clip_table(clips: list[W.ClipWeights]) -> Table:
    from rich.table import Table

    from rich import box

    table = Table(title="CLIP weights in the Hugging Face cache", title_justify="left", box=box.SIMPLE_HEAD,
                  show_edge=False, pad_edge=False)
    table.add_column("Name", style="bold", no_wrap=True)
    table.add_column("Repo")
    table.add_column("Size", justify="right", no_wrap=True)
    table.add_column("Path", overflow="fold")
    for c in clips:
        table.add_row(c.name, c.repo, W.human_size(c.size), str(c.path))
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
    timeout: float = typer.Option(downloads.TIMEOUT, "--timeout", help="Seconds to wait for a server before giving up."),
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
        wanted += [n for n in W.WEIGHTS if n not in wanted]
    if not wanted:
        raise VqclipError("name a model to download (see `vqclip weights list`), or pass --all")
    folder = W.weights_dir(weights_dir)
    _check_names(wanted, folder)
    for name in wanted:
        if name.startswith("clip:"):
            err_console.print(f"Fetching CLIP weights {name} into the Hugging Face cache…", markup=False)
            path = W.download_clip(name)
            out_console.print(f"✓ {name}: {path}", markup=False, highlight=False)
            continue
        _download_one(W.WEIGHTS[name], folder, cache=cache, timeout=timeout)


def _check_names(names: list[str], folder: Path) -> None:
    for name in names:
        if name.startswith("clip:") or name in W.WEIGHTS:
            continue
        if name in W.custom_models(folder):
            raise VqclipError(f"{name} is a custom model in {folder}; there is nothing to download")
        raise VqclipError(f"unknown model {name!r}; registry names: {', '.join(W.WEIGHTS)} "
                          "(CLIP weights: clip:MODEL/TAG, e.g. clip:ViT-B-32/openai)")


def _download_one(spec: W.WeightSpec, folder: Path, *, cache: bool, timeout: float) -> None:
    files = W.install_registry_model(spec, folder, download=True, console=err_console, timeout=timeout)
    entry = W.manifest_entry(folder, files.ckpt_path) or {}
    how = "trusted on first use" if entry.get("status") == W.TOFU else "verified"
    out_console.print(f"✓ {spec.name} {how} (sha256 {(files.sha256 or '?')[:16]}…): {files.ckpt_path}",
                      markup=False, highlight=False)
    if cache:
        _build_cache(files.ckpt_path)


def _build_cache(ckpt: Path) -> None:
    from vqclip import checkpoints

    if checkpoints.read_cache(ckpt, checkpoints.VQGAN_KEYS) is not None:
        return
    err_console.print(f"Caching the VQGAN tensors of {ckpt.name} as safetensors…", markup=False)
    try:
        checkpoints.load_vqgan_state(ckpt)
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
    from rich.table import Table

    folder = W.weights_dir(weights_dir)
    targets = list(names or [r.name for r in W.all_status(folder) if r.installed])
    if not targets:
        out_console.print(f"Nothing installed in {folder}; nothing to verify.", markup=False, highlight=False)
        return
    results = [W.verify_model(name, folder, console=err_console) for name in targets]
    from rich import box

    table = Table(title="Verification", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    table.add_column("Name", style="bold", no_wrap=True)
    table.add_column("Result", no_wrap=True)
    table.add_column("Detail")
    from rich.text import Text

    for r in results:
        table.add_row(r.name, "[green]ok[/]" if r.ok else "[red]bad[/]", Text(r.detail))
    out_console.print(table)
    bad = [r.name for r in results if not r.ok]
    if bad:
        fix = (f"run `vqclip weights download {bad[0]}` to replace a bad or missing file" if bad[0] in W.WEIGHTS
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
    folder = W.weights_dir(weights_dir)
    if name is None:
        out_console.print(str(folder), markup=False, highlight=False, soft_wrap=True)
        return
    if name in W.WEIGHTS:
        status = W.registry_status(W.WEIGHTS[name], folder)
        target = status.yaml_path if yaml else status.ckpt_path
        if not status.installed and not yaml:
            err_console.print(f"({name} is not downloaded yet: `vqclip weights download {name}`)", markup=False)
    else:
        files = W.resolve_model(name, weights_dir=folder, download=False)
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
    folder = W.weights_dir(weights_dir)
    if name.startswith("clip:"):
        raise VqclipError("CLIP weights live in the Hugging Face cache; remove them with `hf cache delete` "
                          "(or `huggingface-cli delete-cache`)")
    targets = W.removal_targets(name, folder)
    if targets and not yes:
        size = sum(p.stat().st_size for p in targets)
        typer.confirm(f"Remove {name} ({W.human_size(size)}: {', '.join(p.name for p in targets)}) from {folder}?",
                      abort=True, err=True)
    removed = W.remove_model(name, folder)
    for p in removed:
        out_console.print(f"removed {p}", markup=False, highlight=False)
    if not removed:
        out_console.print(f"forgot the recorded hash of {name}", markup=False, highlight=False)
