"""The names of everything in a run folder, and of run folders themselves. The only module that spells them.

```
output/                                   the output folder (--output-dir)
  <YYYYmmddTHHMMSS>-<8 chars>/            a run (run id: creation time to the millisecond + random suffix)
    details.json                          the run record (runfolder.record.RunRecord)
    output.png                            the final image, its settings in PNG text chunks
    anim.mp4                              the progress video (an animation: its frames at --fps)
    anim_xN.mp4                           an animation interpolated N times (--interpolate N)
    chain.mp4                             the last stage of a chain: the whole chain's video
    state.pt                              the engine state `continue` starts from (runfolder.state)
    frames/frame_NNNNN.png                an animation's frames
    init.<ext>, image_prompt_<i>.<ext>    copies of the input images
  .tmp-<id>/                              a run being written (renamed into place when complete)
    .owner                                the writer's pid and host, locked while it lives
```
"""

from __future__ import annotations

import re
import secrets
import string
from datetime import datetime, timedelta

DETAILS = "details.json"
IMAGE = "output.png"
VIDEO = "anim.mp4"
STATE = "state.pt"
FRAMES = "frames"
CHAIN_VIDEO = "chain.mp4"
TMP_PREFIX = ".tmp-"
OWNER = ".owner"

RUN_ID_RE = re.compile(r"^\d{8}T\d{6}-[A-Za-z0-9_-]{8}$")
_ALPHABET = string.ascii_letters + string.digits + "-_"
_last_id_time: datetime | None = None  # the newest id this process made


def frame_name(index: int) -> str:
    """An animation frame's file name inside `FRAMES`."""
    return f"frame_{index:05d}.png"


def frame_path(index: int) -> str:
    """An animation frame's path relative to the run folder."""
    return f"{FRAMES}/{frame_name(index)}"


def interpolated_video(times: int) -> str:
    return f"anim_x{times}.mp4"


def init_image(suffix: str) -> str:
    return f"init{suffix}"


def image_prompt(index: int, suffix: str) -> str:
    return f"image_prompt_{index}{suffix}"


def new_run_id(now: datetime | None = None) -> str:
    """`20261125T101500-042k3J9a`: the time to the millisecond (the suffix's three digits), then 30 random bits.
    Names sort in creation order, also for the stages of a chain made within one second: a process never hands
    out the same or an earlier millisecond twice."""
    global _last_id_time
    if now is None:
        now = datetime.now()
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)
        if _last_id_time is not None and now <= _last_id_time:
            now = _last_id_time + timedelta(milliseconds=1)
        _last_id_time = now
    ms = f"{now.microsecond // 1000:03d}"
    return now.strftime("%Y%m%dT%H%M%S") + "-" + ms + "".join(secrets.choice(_ALPHABET) for _ in range(5))


def is_run_id(text: str) -> bool:
    return bool(RUN_ID_RE.match(text))
