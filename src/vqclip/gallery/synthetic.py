"""Synthetic run folders for the gallery's tests and benchmark: tiny real PNGs and details.json (a RunRecord).

Why here and not in tests/: `vqclip.bench.gallery` and the tests share it, and it needs only Pillow (and pydantic).
"""

from __future__ import annotations

import io
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from vqclip.runfolder.record import DETAILS, IMAGE, STATE, Files, RunRecord, Timings, Weights

MODELS = ("vqgan_imagenet_f16_16384", "vqgan_gumbel_f8_8192", "wikiart_16384")
SUBJECTS = ("A sunny countryside with a Collie", "Backyard in winter", "A lighthouse at dusk, oil painting",
            "Cyberpunk market in the rain", "Cathedral made of coral", "Fox in a birch forest, ukiyo-e")
EPOCH = datetime(2026, 1, 1, 9, 0, 0, tzinfo=timezone.utc)


def png_bytes(seed: int, size: int = 64) -> bytes:
    """A small, colourful, deterministic PNG: a Mandelbrot detail tinted by two seed-dependent colours."""
    from PIL import Image, ImageOps

    cx, cy = -0.7435 + (seed % 7) * 0.0004, 0.1314 + (seed % 5) * 0.0004
    r = 0.004 + (seed % 4) * 0.003
    grey = Image.effect_mandelbrot((size, size), (cx - r, cy - r, cx + r, cy + r), 200)
    hue = (seed * 47) % 256
    def rgb(h: int, s: int, v: int) -> tuple[int, ...]:
        return tuple(Image.new("HSV", (1, 1), (h, s, v)).convert("RGB").getpixel((0, 0)))  # type: ignore[arg-type]

    im = ImageOps.colorize(ImageOps.autocontrast(grey), rgb(hue, 200, 70), rgb((hue + 70) % 256, 120, 255),
                           mid=(20, 20, 28))
    buf = io.BytesIO()
    im.save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def run_id(i: int) -> str:
    """Sortable ids: run i is i minutes after EPOCH (so a larger i is newer)."""
    when = EPOCH + timedelta(minutes=i)
    return when.strftime("%Y%m%dT%H%M%S") + "-" + f"syn{i:05d}"[-8:].rjust(8, "x")


def details(i: int, **overrides: Any) -> dict[str, Any]:
    """details.json of synthetic run `i` as written (a RunRecord), then `overrides` applied as given: tests
    put values of any type there, as a hand-edited or foreign file would hold."""
    rid = run_id(i)
    created = EPOCH + timedelta(minutes=i)
    prompt = f"{SUBJECTS[i % len(SUBJECTS)]}:100 | wild flowers:30 | roses:-30"
    model = MODELS[i % len(MODELS)]
    steps = 300
    record = RunRecord(
        id=rid, created=created.isoformat(), finished=(created + timedelta(seconds=100)).isoformat(),
        status="finished", prompt=prompt,
        config={"prompt": prompt, "width": 480, "height": 480, "steps": steps, "seed": i, "model": model,
                "clip_model": "ViT-B-32-quickgelu", "cutn": 32, "image_prompts": [], "init_image": None},
        seed=i, size=(480, 480), steps_done=steps, steps_planned=steps, global_step=steps,
        losses=[round(1.0 - k / (steps * 1.5), 6) for k in range(steps)],
        timings=Timings(total_s=100.2, per_step_s=0.31), device="cuda",
        versions={"vqclip": "0.1.0", "torch": "2.4.0", "open_clip": "2.26.1"},
        weights=Weights(name=model, sha256="0" * 64), root=rid, stage=1,
        files=Files(image=IMAGE, state=STATE))
    d = record.model_dump(mode="json")
    d.update(overrides)
    return d


def make_run(output_dir: Path, i: int, image: bytes | None = None, **overrides: Any) -> Path:
    """Write run folder number `i` (details.json + output.png); returns its path."""
    d = details(i, **overrides)
    folder = Path(output_dir) / run_id(i)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / DETAILS).write_text(json.dumps(d, indent=2, ensure_ascii=False), encoding="utf-8")
    (folder / IMAGE).write_bytes(image if image is not None else png_bytes(i))
    return folder


def make_runs(output_dir: Path, n: int, size: int = 64, distinct: int = 32, **overrides: Any) -> list[Path]:
    """`n` runs; images cycle through `distinct` generated PNGs (generating 2,000 would dominate a benchmark)."""
    images = [png_bytes(k, size) for k in range(min(n, distinct))]
    return [make_run(output_dir, i, images[i % len(images)], **overrides) for i in range(n)]
