"""Images and videos in and out of a run: input images read safely, the PNG with its text chunks, and the
progress video streamed into an mp4 with imageio-ffmpeg's bundled ffmpeg (libx264, yuv420p).

yuv420p needs even frame sizes; odd frames made peers' libx264 write a 0-byte mp4 without a word, so frames are
cropped to even sizes and the file is checked after closing.
"""

from __future__ import annotations

import io
import json
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from vqclip import __version__
from vqclip.errors import VqclipError

MAX_IMAGE_BYTES = 64 * 1024 * 1024


def to_uint8(frame: Any) -> np.ndarray:
    """[3, H, W] float tensor in [0, 1] (or HxWx3 uint8 array) → HxWx3 uint8."""
    if isinstance(frame, np.ndarray) and frame.dtype == np.uint8:
        return frame
    arr = frame.detach().float().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
    return np.ascontiguousarray(arr)


def even(arr: np.ndarray) -> np.ndarray:
    h, w = arr.shape[:2]
    return arr[: h - h % 2, : w - w % 2]


class VideoWriter:
    """Append frames as they come; `close()` returns the path, or None if no usable video was written."""

    def __init__(self, path: Path, fps: int) -> None:
        self.path = path
        self.fps = fps
        self._writer: Any = None
        self.frames = 0
        self.error: str | None = None

    def append(self, frame: Any) -> None:
        if self.error is not None:
            return
        arr = even(to_uint8(frame))
        if arr.shape[0] < 2 or arr.shape[1] < 2:
            self.error = f"frame {arr.shape[1]}x{arr.shape[0]} too small for a video"
            return
        try:
            if self._writer is None:
                import imageio.v2 as imageio

                self._writer = imageio.get_writer(
                    str(self.path), format="FFMPEG", mode="I", fps=self.fps, codec="libx264",
                    pixelformat="yuv420p", macro_block_size=1, quality=8, ffmpeg_log_level="error")
            self._writer.append_data(arr)
            self.frames += 1
        except Exception as e:  # ffmpeg missing or broken: the run goes on without a video
            self.error = f"{type(e).__name__}: {e}".splitlines()[0][:200]

    def close(self) -> Path | None:
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception as e:
                self.error = self.error or f"{type(e).__name__}: {e}".splitlines()[0][:200]
            self._writer = None
        if self.error is None and self.frames and self.path.is_file() and self.path.stat().st_size > 0:
            return self.path
        if self.error is None and self.frames:
            self.error = "ffmpeg wrote an empty file"
        if self.path.exists():
            self.path.unlink()
        return None


def concat_videos(sources: list[Path], dest: Path, fps: int) -> Path | None:
    """Join mp4 files frame by frame into `dest` (used for the combined video of a chain of stages)."""
    import imageio.v2 as imageio

    writer = VideoWriter(dest, fps)
    for src in sources:
        reader = imageio.get_reader(str(src), format="FFMPEG")
        try:
            for frame in reader:
                writer.append(np.asarray(frame, dtype=np.uint8))
        finally:
            reader.close()
    return writer.close()


def open_image(ref: str, what: str) -> tuple[Any, bytes, str]:
    """Read an image file (or http(s) URL) fully; any problem is one line naming the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        if ref.startswith(("http://", "https://")):
            with urllib.request.urlopen(ref, timeout=30) as resp:  # noqa: S310 (user-given URL)
                data = resp.read(MAX_IMAGE_BYTES + 1)
        else:
            path = Path(ref).expanduser()
            if not path.is_file():
                from vqclip.files import path_problem

                problem = path_problem(path)  # a directory, a FIFO (never opened: it would wait), a device…
                problem = "not found" if problem in (None, "does not exist") else problem
                raise VqclipError(f"{what} {ref} {problem}; check the path")
            if path.stat().st_size > MAX_IMAGE_BYTES:  # before reading it all into memory
                raise VqclipError(f"{what} {ref} is larger than 64 MiB; use a smaller image")
            data = path.read_bytes()
        if len(data) > MAX_IMAGE_BYTES:
            raise VqclipError(f"{what} {ref} is larger than 64 MiB; use a smaller image")
        img = Image.open(io.BytesIO(data))
        img.load()
        img = img.convert("RGB")
    except VqclipError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        reason = "not an image Pillow can read" if isinstance(e, UnidentifiedImageError) else str(e)[:120]
        raise VqclipError(f"cannot read {what} {ref} ({reason}); give a PNG, JPEG or WebP file") from None
    suffix = Path(ref.split("?")[0]).suffix.lower()
    return img, data, suffix if suffix in (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff") else ".png"


def png_bytes(image: Any, text: dict[str, str]) -> bytes:
    """Encode the final image as PNG with text chunks carrying the prompt and parameters."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for k, v in text.items():  # a lone surrogate (no UTF-8 for it) goes in as its escape, `\udcff`
        info.add_itxt(k, v.encode("utf-8", "backslashreplace").decode("utf-8"))
    buf = io.BytesIO()
    Image.fromarray(to_uint8(image)).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def image_parameters(config: Any, seed: int, global_step: int, size: tuple[int, int],
                     clip_score: str | None = None) -> dict[str, str]:
    """PNG text chunks. They describe the *image* (total steps, resolved size), not the run, so an image reached
    by a chain of runs carries the same bytes as one reached by a single run with the same settings.
    `clip_score`: the image's CLIP score as JSON (`vqclip.pipeline.score.score_text`), chunk `clip_score`."""
    params = config.model_dump(mode="json")
    params.update({"seed": seed, "steps": global_step, "width": size[0], "height": size[1]})
    for k in ("save_every", "fps", "device", "compile", "low_memory"):
        params.pop(k, None)
    text = {"prompt": config.prompt, "parameters": json.dumps(params, sort_keys=True),
            "Software": f"vqclip {__version__}"}
    if clip_score is not None:
        text["clip_score"] = clip_score
    return text


def interpolate_video(src: Path, dest: Path, factor: int, fps: int, timeout: float = 3600) -> str | None:
    """`src` at `factor` times its frame rate by ffmpeg's motion-compensated interpolation (imageio-ffmpeg's
    bundled binary), written to `dest` whole or not at all. Returns None, or why it could not be made."""
    import subprocess

    try:
        import imageio_ffmpeg

        exe = imageio_ffmpeg.get_ffmpeg_exe()
    except Exception as e:  # no bundled binary for this platform
        return f"no ffmpeg ({type(e).__name__})"
    from vqclip.files import temp_path

    tmp = temp_path(dest)
    cmd = [exe, "-v", "error", "-nostdin", "-y", "-i", str(src), "-vf",
           f"minterpolate=fps={fps * factor}:mi_mode=mci:mc_mode=aobmc:me_mode=bidir:vsbmc=1",
           "-c:v", "libx264", "-pix_fmt", "yuv420p", "-f", "mp4", str(tmp)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0 or not tmp.is_file() or tmp.stat().st_size == 0:
            lines = (done.stderr or "").strip().splitlines()
            return f"ffmpeg failed ({lines[-1][:160] if lines else f'exit {done.returncode}'})"
        tmp.replace(dest)
        return None
    except (OSError, subprocess.SubprocessError) as e:
        return f"ffmpeg failed ({type(e).__name__})"
    finally:
        if tmp.exists():
            tmp.unlink()
