"""The diffusion models in `vqclip weights list` and `vqclip weights download` (registry:
`vqclip.weights.registry.DIFFUSION_WEIGHTS`; files under their published names in the weights folder)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from vqclip.commands.common import out_console
from vqclip.weights.download import human_size
from vqclip.weights.registry import DIFFUSION_WEIGHTS


def is_diffusion(name: str) -> bool:
    return name in DIFFUSION_WEIGHTS


def rows(folder: Path) -> list[dict[str, Any]]:
    """One row per registry diffusion model: name, kind, installed, size, path."""
    out = []
    for spec in DIFFUSION_WEIGHTS.values():
        path = folder / (spec.filename or f"{spec.name}.pt")
        out.append({"name": spec.name, "kind": spec.family, "installed": path.is_file(),
                    "size": spec.display_size, "path": str(path), "description": spec.description})
    return out


def table(folder: Path) -> Any:
    from rich import box
    from rich.table import Table

    t = Table(title="Diffusion weights (vqclip diffuse)", title_justify="left", box=box.SIMPLE_HEAD,
              show_edge=False)
    for col in ("name", "kind", "size", "installed", "what"):
        t.add_column(col)
    for r in rows(folder):
        t.add_row(r["name"], "U-Net" if r["kind"] == "diffusion" else "secondary", human_size(r["size"]),
                  "yes" if r["installed"] else "no", r["description"])
    return t


def download(name: str, folder: Path, note: Callable[[str], None], progress: Any) -> None:
    """Fetch (or check) a registry diffusion model into `folder` and say where it is."""
    from vqclip.weights.diffusion_files import resolve_diffusion

    spec = DIFFUSION_WEIGHTS[name]
    files = resolve_diffusion(name, spec.family, weights_dir=folder, download=True, note=note, progress=progress)
    out_console.print(f"✓ {name} (sha256 {(files.sha256 or '?')[:16]}…): {files.path}", markup=False,
                      highlight=False)


__all__ = ["is_diffusion", "rows", "table", "download"]
