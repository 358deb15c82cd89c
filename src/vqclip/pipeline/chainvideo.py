"""The video of a whole chain of stages: each stage's progress video in turn, as one file. Each stage's own
video already starts from its parent's last frame (a session's first frame is its starting latent), so the
first frame of every later stage is dropped; stages of different sizes are centred on a black canvas of the
largest width and height, unscaled."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vqclip.errors import one_line


def _frames(path: Path) -> Any:
    import imageio.v2 as imageio
    import numpy as np

    reader = imageio.get_reader(str(path), format="FFMPEG")
    try:
        for frame in reader:
            yield np.asarray(frame, dtype=np.uint8)
    finally:
        reader.close()


def combine_videos(sources: list[Path], dest: Path, fps: int) -> Path | None:
    """The chain's videos as one: the first frame of every later stage is dropped (it repeats the previous
    stage's last frame); frames of other sizes are centred on a black canvas of the largest size."""
    import imageio.v2 as imageio
    import numpy as np

    from vqclip.pipeline.media import VideoWriter, concat_videos

    sizes = []
    for src in sources:
        meta = imageio.get_reader(str(src), format="FFMPEG")
        try:
            sizes.append(tuple(meta.get_meta_data()["size"]))  # (w, h)
        finally:
            meta.close()
    if len(set(sizes)) == 1 and len(sources) == 1:
        return concat_videos(sources, dest, fps)
    cw, ch = max(s[0] for s in sizes), max(s[1] for s in sizes)
    cw, ch = cw - cw % 2, ch - ch % 2
    writer = VideoWriter(dest, fps)
    try:
        for i, src in enumerate(sources):
            for j, frame in enumerate(_frames(src)):
                if i > 0 and j == 0:
                    continue
                h, w = frame.shape[:2]
                if (w, h) != (cw, ch):
                    canvas = np.zeros((ch, cw, 3), dtype=np.uint8)
                    y, x = (ch - h) // 2, (cw - w) // 2
                    canvas[y:y + h, x:x + w] = frame[:ch, :cw]
                    frame = canvas
                writer.append(frame)
    except Exception as e:  # a broken stage video must not lose the runs themselves
        writer.error = writer.error or one_line(e, 200)
    return writer.close()


__all__ = ["combine_videos"]
