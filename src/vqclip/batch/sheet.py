"""The contact sheet of a batch: `sheet.png` in the batch folder, a grid of thumbnails (best first when the runs
are scored) each labelled with its prompt, seed and score (Pillow only)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

SHEET = "sheet.png"


def _label(run: dict[str, Any], width: int, font: Any, draw: Any) -> list[str]:
    prompt = str(run.get("prompt") or "")
    score = run.get("score")
    tail = f"seed {run.get('seed')}" + (f" · score {score:.1f}" if isinstance(score, (int, float)) else "")
    text = prompt
    while text and draw.textlength(text, font=font) > width - 8:
        text = text[:-2]
    if text != prompt:
        text = text[:-1] + "…" if len(text) > 1 else "…"
    return [text, tail]


def contact_sheet(runs: list[dict[str, Any]], dest: Path, thumb: int = 160, columns: int | None = None) -> Path | None:
    """Write the sheet for `runs` (as `start.ranked` gives them) to `dest`; None when there is no image."""
    from PIL import Image, ImageDraw, ImageFont

    from vqclip import files
    from vqclip.runfolder.record import IMAGE

    images = []
    for run in runs:
        try:
            with Image.open(Path(run["path"]) / IMAGE) as img:
                img = img.convert("RGB")
                scale = thumb / max(img.width, img.height)  # small images grow to the cell too
                size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
                images.append((run, img.resize(size, Image.NEAREST if scale > 2 else Image.LANCZOS)))
        except (OSError, ValueError):
            continue
    if not images:
        return None
    cols = columns or min(len(images), max(1, math.ceil(math.sqrt(len(images)))))
    rows = math.ceil(len(images) / cols)
    font = ImageFont.load_default()
    label_h = 30
    cell_w, cell_h = thumb + 8, thumb + label_h + 8
    sheet = Image.new("RGB", (cols * cell_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (run, img) in enumerate(images):
        x, y = (i % cols) * cell_w + 4, (i // cols) * cell_h + 4
        sheet.paste(img, (x + (thumb - img.width) // 2, y + (thumb - img.height) // 2))
        for j, line in enumerate(_label(run, cell_w, font, draw)):
            draw.text((x, y + thumb + 2 + j * 13), line, fill="black", font=font)
    import io

    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    files.atomic_write_bytes(dest, buf.getvalue())
    return dest


__all__ = ["SHEET", "contact_sheet"]
