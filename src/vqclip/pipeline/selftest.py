"""`vqclip selftest`: the whole pipeline on tiny random models written in the real file formats, offline.

A newcomer runs it before downloading a gigabyte: it proves torch, taming, open_clip, imageio-ffmpeg and the
run-folder code work together on this machine, and reports device, versions and timings.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from vqclip.runfolder.record import IMAGE, STATE, VIDEO, RunRecord, read_record


@dataclass
class SelftestReport:
    checks: list[tuple[str, bool, str]] = field(default_factory=list)  # (check, passed, detail)
    record: RunRecord = field(default_factory=RunRecord)  # the test run's details.json
    versions: dict[str, str] = field(default_factory=dict)
    build_s: float = 0.0
    folder: Path | None = None  # the kept run folder (with --keep)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(ok for _, ok, _ in self.checks)


SAVE_EVERY = 2


def progress_frames(steps: int, save_every: int) -> int:
    """Frames in the progress video of a run of `steps` steps from step 0: the loop keeps the image before the
    first step and before every step whose number is a multiple of `save_every` (`vqclip.engine.loop`), and
    the run adds its final image (`vqclip.pipeline.execute`), which no such frame shows yet."""
    before = -(-steps // save_every) if save_every > 0 else 1  # steps 0, k, 2k, … below `steps`
    return before + 1


def run_selftest(keep: Path | None = None, steps: int = 6, device: str = "auto") -> SelftestReport:
    import imageio.v2 as imageio
    from PIL import Image

    from vqclip.config import build_config
    from vqclip.pipeline.execute import execute
    from vqclip.pipeline.request import Inputs, Reporter, RunRequest
    from vqclip.pipeline.load import versions
    from vqclip.engines.vqgan_state import check_state
    from vqclip.runfolder.state import load_state
    from vqclip.testing import make_tiny_clip, make_tiny_vqgan

    checks: list[tuple[str, bool, str]] = []
    with tempfile.TemporaryDirectory(prefix="vqclip-selftest-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        yaml_path, _ = make_tiny_vqgan(root / "models", "tiny_vqgan")
        clip_json, clip_ckpt = make_tiny_clip(root / "models", "vqclip-selftest-clip")
        build_s = time.perf_counter() - t0
        cfg = build_config(None, {
            "prompt": "a red square:1 | a blue circle:-0.5", "noise_prompts": ["7:0.3"], "model": str(yaml_path),
            "clip_model": str(clip_json), "clip_pretrained": str(clip_ckpt), "width": 64, "height": 64,
            "steps": steps, "cutn": 8, "save_every": SAVE_EVERY, "seed": 0, "device": device})
        out_dir = (keep or root / "output")
        outcome = execute(RunRequest(config=cfg, output_dir=out_dir, inputs=Inputs(download=False)), Reporter())
        folder = outcome.path
        record = read_record(folder)
        checks.append(("run finished", outcome.status == "finished", outcome.status))
        img = Image.open(folder / IMAGE)
        checks.append((IMAGE, img.size == (64, 64) and "parameters" in img.text, f"{img.size[0]}x{img.size[1]}"))
        state = load_state(folder / STATE, check_state)
        checks.append((STATE, int(state["step"]) == steps, f"step {state['step']}"))
        frames = 0
        if record.files.video:
            reader = imageio.get_reader(str(folder / VIDEO), format="FFMPEG")
            frames = sum(1 for _ in reader)
            reader.close()
        expected = progress_frames(steps, SAVE_EVERY)
        checks.append((VIDEO, frames == expected, f"{frames} frames"))
        losses = record.losses  # a loss that was not finite is recorded as null
        finite = [x for x in losses if x is not None and abs(x) < 1e9]
        bad = len(losses) - len(finite)
        checks.append(("losses finite", bool(losses) and not bad,
                       f"{bad} of {len(losses)} not finite" if bad or not finite
                       else f"{finite[0]:.4f} → {finite[-1]:.4f}"))

        checks += _diffusion_checks(root / "models", clip_json, clip_ckpt, device, out_dir)

    return SelftestReport(checks, record, versions(), build_s, folder if keep else None)


def _diffusion_checks(models: Path, clip_json: Path, clip_ckpt: Path, device: str,
                      out_dir: Path) -> list[tuple[str, bool, str]]:
    """Two steps of CLIP-guided diffusion on a tiny ADM U-Net (the real key layout, its architecture in a .json
    beside it) with the same tiny CLIP."""
    from PIL import Image

    from vqclip.config import build_config
    from vqclip.pipeline.execute import execute
    from vqclip.pipeline.request import Inputs, Reporter, RunRequest
    from vqclip.testing_diffusion import make_tiny_unet
    from vqclip.weights.diffusion_files import write_unet_config

    unet, config = make_tiny_unet(models, "vqclip-selftest-unet")
    write_unet_config(unet, config)
    cfg = build_config(None, {"engine": "diffusion", "prompt": "a red square", "model": str(unet),
                              "clip_model": str(clip_json), "clip_pretrained": str(clip_ckpt), "width": 64,
                              "height": 64, "steps": 2, "cutn": 4, "cutn_batches": 1, "seed": 0, "device": device})
    outcome = execute(RunRequest(config=cfg, output_dir=out_dir, inputs=Inputs(download=False)), Reporter())
    with Image.open(outcome.path / IMAGE) as img:
        size_ok = img.size == (64, 64) and "parameters" in img.text
    return [("diffusion run", outcome.status == "finished" and outcome.record.engine == "diffusion",
             f"{outcome.status}, {outcome.steps_done} steps"),
            (f"diffusion {IMAGE}", size_ok, "64x64")]
