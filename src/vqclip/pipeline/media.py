"""Progress video: frames streamed into an mp4 with imageio-ffmpeg's bundled ffmpeg (libx264, yuv420p).

yuv420p needs even frame sizes; odd frames made peers' libx264 write a 0-byte mp4 without a word, so frames are
cropped to even sizes and the file is checked after closing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


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
