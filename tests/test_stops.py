"""A stop never loses a finished product and never lies: SIGHUP saves a run like SIGTERM (exit 129), and a stop
request that comes during a run's final steps (the interpolated video, the chain video) keeps what was made and
records the run as interrupted with what is missing."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from clihelp import details, tiny_args
from vqclip.pipeline.request import Inputs, Reporter


class StopAtTheEnd(Reporter):
    """A stop request that comes right after the last step, while the run is finishing."""

    def __init__(self) -> None:
        self.stopping = False
        self.notes: list[str] = []

    def note(self, message: str) -> None:
        self.notes.append(message)

    def end(self) -> None:
        self.stopping = True


def test_a_stop_during_the_interpolation_keeps_the_run_and_names_what_is_missing(tiny_models, tmp_path):
    from vqclip.animation import Animation
    from vqclip.config import build_config
    from vqclip.pipeline.animate import animate

    t = tiny_models
    cfg = build_config(None, {"prompt": "a forest", "model": str(t["vqgan_yaml"]), "clip_model": str(t["clip_json"]),
                              "clip_pretrained": str(t["clip_ckpt"]), "width": 32, "height": 32, "cutn": 2,
                              "seed": 5, "device": "cpu", "steps": 1, "fps": 4})
    rep = StopAtTheEnd()
    outcome = animate(cfg, Animation(frames=3, steps_per_frame=1, zoom="1.05", interpolate=2),
                      output_dir=tmp_path / "out", inputs=Inputs(download=False), should_stop=lambda: rep.stopping,
                      reporter=rep)
    d = details(outcome.path)
    assert outcome.status == "interrupted" and d["status"] == "interrupted"
    assert d["missing"] == ["anim_x2.mp4"] and d["animation"]["frames_done"] == 3
    assert (outcome.path / "anim.mp4").is_file() and not (outcome.path / "anim_x2.mp4").exists()
    assert len(list((outcome.path / "frames").iterdir())) == 3 and (outcome.path / "state.pt").is_file()


def test_a_run_that_finishes_its_steps_untroubled_misses_nothing(tiny_models, tmp_path):
    from vqclip.config import build_config
    from vqclip.pipeline.execute import execute
    from vqclip.pipeline.request import RunRequest

    t = tiny_models
    cfg = build_config(None, {"prompt": "a forest", "model": str(t["vqgan_yaml"]), "clip_model": str(t["clip_json"]),
                              "clip_pretrained": str(t["clip_ckpt"]), "width": 32, "height": 32, "cutn": 2,
                              "seed": 5, "device": "cpu", "steps": 2})
    outcome = execute(RunRequest(config=cfg, output_dir=tmp_path, inputs=Inputs(download=False),
                                 should_stop=lambda: False))
    assert outcome.status == "finished" and "missing" not in details(outcome.path)


def test_sighup_saves_the_run_and_exits_129(tiny_models, tmp_path):
    """The installed command, a real SIGHUP (a closed terminal) mid-run: exit 129, an interrupted run."""
    exe = shutil.which("vqclip") or str(Path(sys.executable).with_name("vqclip"))
    out = tmp_path / "output"
    args = [exe, "generate", "a cave", *tiny_args(tiny_models, out, steps=2000, save_every=1, quiet=True)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ})
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not list(out.glob(".tmp-*/anim.mp4")):  # steps are being taken
        time.sleep(0.2)
    time.sleep(1)
    proc.send_signal(signal.SIGHUP)
    stdout, stderr = proc.communicate(timeout=120)
    text = stdout.decode() + stderr.decode()
    assert proc.returncode == 129, text
    assert "Traceback" not in text and "Hung up" in text
    run = Path(stdout.decode().strip().splitlines()[-1]).parent
    d: dict[str, Any] = details(run)
    assert d["status"] == "interrupted" and 0 < d["steps_done"] < 2000 and (run / "state.pt").is_file()
    assert not list(out.glob(".tmp-*"))
