"""The progress video and its interpolated copy, through imageio-ffmpeg's bundled ffmpeg (libx264, yuv420p).

yuv420p needs even frame sizes; odd frames made peers' libx264 write a 0-byte mp4 without a word, so frames are
cropped to even sizes and the file is checked after closing. ffmpeg's messages never reach the terminal: a
failure becomes one line (`ffmpeg_summary`), and the run goes on without its video.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from vqclip.errors import one_line, shorten


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
    """Append frames as they come; `close()` returns the path, or None if no usable video was written (`error`
    says why, in one line). ffmpeg runs with its messages captured, never on the user's terminal, and in its
    own process group, so a Ctrl-C meant for vqclip does not kill it before the video is closed."""

    def __init__(self, path: Path, fps: int) -> None:
        self.path = path
        self.fps = fps
        self._proc: Any = None
        self._log: Any = None
        self._size: tuple[int, int] | None = None
        self.frames = 0
        self.error: str | None = None

    def append(self, frame: Any) -> None:
        if self.error is not None:
            return
        arr = np.ascontiguousarray(even(to_uint8(frame)))
        h, w = arr.shape[:2]
        if h < 2 or w < 2:
            self.error = f"frame {w}x{h} too small for a video"
            return
        if self._proc is None:
            self._start(w, h)
            if self.error is not None:
                return
        elif (w, h) != self._size:
            self.error = f"frame {w}x{h} differs from the video's {self._size[0]}x{self._size[1]}"
            return
        try:
            self._proc.stdin.write(arr.tobytes())
            self.frames += 1
        except OSError:  # ffmpeg stopped reading: it says why in its log
            self.error = self._ffmpeg_error()

    def _start(self, w: int, h: int) -> None:
        import subprocess
        import tempfile

        exe = ffmpeg_exe()
        if not isinstance(exe, Path):
            self.error = exe
            return
        cmd = [str(exe), "-v", "error", "-nostdin", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}",
               "-r", str(self.fps), "-i", "-", "-an", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "10",
               "-f", "mp4", str(self.path)]  # crf 10: what imageio's quality=8 gave before
        self._log = tempfile.TemporaryFile()
        try:
            self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._log,
                                          **_own_group())
        except OSError as e:
            self.error = f"ffmpeg could not start ({one_line(e, typed=False)})"
        self._size = (w, h)

    def _ffmpeg_error(self, code: int | None = None) -> str:
        text = ""
        if self._log is not None:
            self._log.seek(0)
            text = self._log.read(1 << 16).decode("utf-8", "replace")
        return ffmpeg_summary(text, code)

    def close(self, timeout: float = 600) -> Path | None:
        import subprocess

        if self._proc is not None:
            try:
                self._proc.stdin.close()
            except OSError:
                pass
            try:
                code = self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
                code = None
                self.error = self.error or f"ffmpeg did not finish within {timeout:g} s"
            if code:
                self.error = self.error or self._ffmpeg_error(code)
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.error is None and self.frames and self.path.is_file() and self.path.stat().st_size > 0:
            return self.path
        if self.error is None and self.frames:
            self.error = "ffmpeg wrote an empty file"
        if self.path.exists():
            self.path.unlink()
        return None


def ffmpeg_exe() -> Path | str:
    """imageio-ffmpeg's bundled ffmpeg (or `IMAGEIO_FFMPEG_EXE`), or why there is none, in a few words."""
    try:
        import imageio_ffmpeg

        return Path(imageio_ffmpeg.get_ffmpeg_exe())
    except Exception as e:  # no bundled binary for this platform
        return f"no ffmpeg ({one_line(e, 80)})"


def _own_group() -> dict[str, Any]:
    """Popen arguments that put ffmpeg in its own process group (a Ctrl-C at the terminal reaches vqclip only,
    which then closes the video properly)."""
    if os.name == "nt":
        return {"creationflags": 0x00000200}  # CREATE_NEW_PROCESS_GROUP
    return {"start_new_session": True}


_FFMPEG_PREFIX = re.compile(r"^\[[^\]]* @ (?:0x)?[0-9a-fA-F]+\]\s*")  # "[vost#0:0 @ 0x55e3…] "
_FFMPEG_WHY = re.compile(r"error|invalid|unknown|not found|no such|cannot|could not|unable|fail|denied|"
                         r"unsupported|not supported|too (?:large|small|big)|incorrect|no space", re.I)
_FFMPEG_LAST = re.compile(r"^Error (?:opening|while|initializing) [^:]*: (.+)$")  # "… output files: Invalid argument"


def ffmpeg_summary(stderr: str, code: int | None = None) -> str:
    """ffmpeg's messages as one line: its first complaint (the cause; the lines after it repeat it in general
    terms), with the final general reason added when it says more, cut at a word boundary."""
    lines = [_FFMPEG_PREFIX.sub("", line).strip() for line in stderr.splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        return "ffmpeg failed" + (f" (exit code {code})" if code is not None else "")
    first = next((line for line in lines if _FFMPEG_WHY.search(line)), lines[-1])
    last = _FFMPEG_LAST.match(lines[-1])
    if last and last.group(1).lower() not in first.lower():
        first = f"{first.rstrip('.')} ({last.group(1).rstrip('.')})"
    return "ffmpeg: " + shorten(first, 200)


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


def interpolate_video(src: Path, dest: Path, factor: int, fps: int, timeout: float = 3600) -> str | None:
    """`src` at `factor` times its frame rate by ffmpeg's motion-compensated interpolation (imageio-ffmpeg's
    bundled binary), written to `dest` whole or not at all. Returns None, or why it could not be made (one line).

    The whole animation, for as long: N frames give N·factor, the last shown as long as in `src`. minterpolate
    alone stops short (it needs a frame after each one it interpolates from: 5 frames × 2 gave 7), so the last
    frame is repeated twice before it (`tpad`), and the result is trimmed to N·factor frames."""
    import subprocess

    from vqclip.files import temp_path

    exe = ffmpeg_exe()
    if not isinstance(exe, Path):
        return exe
    frames = count_frames(exe, src, timeout)
    if isinstance(frames, str):
        return frames
    tmp = temp_path(dest)
    cmd = [str(exe), "-v", "error", "-nostdin", "-y", "-i", str(src), "-vf",
           f"tpad=stop_mode=clone:stop=2,minterpolate=fps={fps * factor}:mi_mode=mci:mc_mode=aobmc:me_mode=bidir"
           f":vsbmc=1,trim=end_frame={frames * factor}",
           "-c:v", "libx264", "-pix_fmt", "yuv420p", "-f", "mp4", str(tmp)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=timeout)
        if done.returncode != 0 or not tmp.is_file() or tmp.stat().st_size == 0:
            return ffmpeg_summary(done.stderr or "", done.returncode)
        tmp.replace(dest)
        return None
    except subprocess.TimeoutExpired:
        return f"ffmpeg did not finish within {timeout:g} s"
    except (OSError, subprocess.SubprocessError) as e:
        return f"ffmpeg failed ({one_line(e)})"
    finally:
        if tmp.exists():
            tmp.unlink()


def count_frames(exe: Path, video: Path, timeout: float = 600) -> int | str:
    """The frames in `video` (ffmpeg decodes it to nothing and counts), or why they could not be counted."""
    import subprocess

    cmd = [str(exe), "-nostdin", "-i", str(video), "-map", "0:v:0", "-c", "copy", "-f", "null", "-"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"ffmpeg did not finish within {timeout:g} s"
    except (OSError, subprocess.SubprocessError) as e:
        return f"ffmpeg failed ({one_line(e)})"
    counts = re.findall(r"frame=\s*(\d+)", done.stderr or "")
    if done.returncode != 0 or not counts or int(counts[-1]) < 1:
        return ffmpeg_summary(done.stderr if done.returncode else "", done.returncode or None)
    return int(counts[-1])
