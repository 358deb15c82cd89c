"""`vqclip animate` on tiny models: the run folder, the video, the record, resume exactness, a stop between frames,
bad schedules, a story spread over the frames, and the gallery card."""

from __future__ import annotations

from pathlib import Path

import imageio.v2 as imageio
import pytest
from typer.testing import CliRunner

from clihelp import details, invoke, made

runner = CliRunner()


def tiny(t: dict, out: Path, *extra: str) -> list[str]:
    return ["--model", str(t["vqgan_yaml"]), "--clip-model", str(t["clip_json"]), "--clip-pretrained",
            str(t["clip_ckpt"]), "--size", "48x32", "--cutn", "2", "--seed", "5", "--device", "cpu",
            "--output-dir", str(out), "--steps-per-frame", "2", "--zoom", "0:(1.0), 4:(1.08)", "--angle", "4",
            "--translate-x", "1.5", "--translate-y", "0:(0), 6:(-2)", *extra]


def frame_bytes(run: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted((run / "frames").glob("frame_*.png"))]


def video_frames(path: Path) -> int:
    reader = imageio.get_reader(str(path), format="FFMPEG")
    try:
        return sum(1 for _ in reader)
    finally:
        reader.close()


@pytest.fixture(scope="module")
def one_go(tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("animate") / "output"
    r = invoke("animate", "a forest", "--frames", "5", "--fps", "4", "--interpolate", "2",
               *tiny(tiny_models, out))
    assert r.exit_code == 0, r.output
    return {"out": out, "run": made(r), "t": tiny_models}


def test_animation_run_folder(one_go):
    run = one_go["run"]
    names = [p.name for p in sorted((run / "frames").iterdir())]
    assert names == [f"frame_{i:05d}.png" for i in range(5)]
    assert video_frames(run / "anim.mp4") == 5
    assert (run / "anim_x2.mp4").stat().st_size > 0
    assert (run / "output.png").is_file() and (run / "state.pt").is_file()
    d = details(run)
    a = d["animation"]
    assert a["frames"] == 5 and a["frames_done"] == 5 and a["steps_per_frame"] == 2
    assert a["zoom"] == "0:(1.0), 4:(1.08)" and a["angle"] == "4" and a["border"] == "wrap"
    assert [f["frame"] for f in a["per_frame"]] == [0, 1, 2, 3, 4]
    assert [f["step"] for f in a["per_frame"]] == [2, 4, 6, 8, 10]  # pre-steps default to --steps-per-frame
    assert all(f["seconds"] > 0 for f in a["per_frame"])
    assert d["files"]["frames"] == "frames" and d["files"]["video"] == "anim.mp4"
    assert d["files"]["video_interpolated"] == "anim_x2.mp4"
    assert d["status"] == "finished" and d["global_step"] == 10 and d["steps_done"] == 10
    assert len(d["losses"]) == 10


def test_frames_move(one_go):
    """Consecutive frames differ (the camera moved and the latent was iterated)."""
    frames = frame_bytes(one_go["run"])
    assert len(set(frames)) == len(frames)


def test_continue_with_more_frames_is_byte_exact(one_go, tmp_path):
    out = tmp_path / "output"
    r = invoke("animate", "a forest", "--frames", "3", "--fps", "4", "--interpolate", "2",
               *tiny(one_go["t"], out))
    assert r.exit_code == 0, r.output
    r = invoke("continue", str(made(r)), "--frames", "2")
    assert r.exit_code == 0, r.output
    child = made(r)
    assert frame_bytes(child) == frame_bytes(one_go["run"])
    assert (child / "output.png").read_bytes() == (one_go["run"] / "output.png").read_bytes()
    d = details(child)
    assert d["animation"]["frames_done"] == 5 and d["global_step"] == 10 and d["steps_done"] == 4
    assert video_frames(child / "anim.mp4") == 5  # the whole animation, the parent's frames too


def test_keep_optimizer_resume_is_byte_exact(tiny_models, tmp_path):
    out = tmp_path / "output"
    r = invoke("animate", "a lake", "--frames", "4", "--keep-optimizer", "--pre-steps", "3",
               *tiny(tiny_models, out))
    assert r.exit_code == 0, r.output
    whole = made(r)
    r = invoke("animate", "a lake", "--frames", "2", "--keep-optimizer", "--pre-steps", "3",
               *tiny(tiny_models, out))
    r = invoke("continue", str(made(r)), "--frames", "2")
    assert r.exit_code == 0, r.output
    assert frame_bytes(made(r)) == frame_bytes(whole)
    assert details(whole)["animation"]["per_frame"][0]["step"] == 3


def test_stop_between_frames_then_finish(one_go, tmp_path):
    """A stop request finishes the current frame and saves an interrupted run; `continue` without --frames
    makes the rest, and the frames are those of one uninterrupted run."""
    from vqclip.animation import Animation
    from vqclip.config import build_config
    from vqclip.pipeline.animate import animate
    from vqclip.pipeline.request import Inputs

    t = one_go["t"]
    cfg = build_config(None, {"prompt": "a forest", "model": str(t["vqgan_yaml"]),
                              "clip_model": str(t["clip_json"]), "clip_pretrained": str(t["clip_ckpt"]),
                              "width": 48, "height": 32, "cutn": 2, "seed": 5, "device": "cpu", "steps": 2,
                              "fps": 4})
    anim = Animation(frames=5, steps_per_frame=2, zoom="0:(1.0), 4:(1.08)", angle="4", translate_x="1.5",
                     translate_y="0:(0), 6:(-2)", interpolate=2)
    calls = []

    def stop_after_two_frames() -> bool:  # asked before each frame after the first
        calls.append(1)
        return len(calls) >= 2

    out = tmp_path / "output"
    outcome = animate(cfg, anim, output_dir=out, inputs=Inputs(download=False), should_stop=stop_after_two_frames)
    assert outcome.status == "interrupted"
    assert outcome.record.animation["frames_done"] == 2 and len(frame_bytes(outcome.path)) == 2
    r = invoke("continue", str(outcome.path))
    assert r.exit_code == 0, r.output
    assert "making the 3 left" in r.output
    assert frame_bytes(made(r)) == frame_bytes(one_go["run"])


def test_story_spreads_over_the_frames(tiny_models, tmp_path):
    out = tmp_path / "output"
    r = invoke("animate", "a forest ^ a desert at dusk", "--frames", "4", *tiny(tiny_models, out))
    assert r.exit_code == 0, r.output
    d = details(made(r))
    assert d["prompt"] == "a forest ^ a desert at dusk" and d["animation"]["frames_done"] == 4


BAD = [
    (["--zoom", "0:(1.0), 50:(x)"], 2, "keyframe 2: 'x' is not a number"),
    (["--zoom", "0"], 2, "must be above 0"),
    (["--zoom", "0:(1.0), 10:(-1)"], 2, "keyframe 2: -1 must be above 0"),
    (["--angle", "10:(1), 5:(2)"], 2, "keyframe 2: frame 5 does not come after frame 10"),
    (["--translate-x", "abc"], 2, "'abc' is not a number"),
    (["--translate-y", "0:(inf)"], 2, "not a finite number"),
    (["--border", "mirror"], 2, "border"),
    (["--frames", "0"], 2, "--frames"),
    (["--interpolate", "99"], 2, "--interpolate"),
    (["--steps-per-frame", "0"], 2, "--steps-per-frame"),
]


@pytest.mark.parametrize("extra,code,says", BAD, ids=[" ".join(b[0]) for b in BAD])
def test_bad_animation_settings_are_one_line(tiny_models, tmp_path, extra, code, says):
    out = tmp_path / "output"
    r = invoke("animate", "a forest", *tiny(tiny_models, out), *extra)
    assert r.exit_code == code, r.output
    assert says in r.output
    assert not out.exists() or not any(out.iterdir())


def test_continue_frames_needs_an_animation(one_go, tmp_path):
    out = tmp_path / "output"
    t = one_go["t"]
    r = invoke("generate", "a cat", "--model", str(t["vqgan_yaml"]), "--clip-model", str(t["clip_json"]),
               "--clip-pretrained", str(t["clip_ckpt"]), "--size", "32x32", "--cutn", "2", "--steps", "1",
               "--output-dir", str(out))
    assert r.exit_code == 0, r.output
    r = invoke("continue", str(made(r)), "--frames", "2")
    assert r.exit_code == 2 and "--frames" in r.output and "animation" in r.output


def test_animation_settings_carry_over(one_go):
    r = invoke("continue", str(one_go["run"]), "--frames", "1", "--lr", "0.5", "--size", "64x64")
    assert r.exit_code == 2 and "--lr, --size cannot change" in r.output


def test_finished_animation_needs_frames(one_go):
    r = invoke("continue", str(one_go["run"]))
    assert r.exit_code == 2 and "--frames M" in r.output


def test_gallery_shows_the_animation(one_go):
    from vqclip.gallery import build_gallery

    build_gallery(one_go["out"])
    import re

    page = (one_go["out"] / "index.html").read_text()
    assert re.search(r'"frames":\s*5\b', page) and re.search(r'"video":\s*true', page)
    assert " frames" in page and "Play the animation" in page  # the page's script labels animation cards


def test_sigterm_finishes_the_frame_and_saves(one_go, tmp_path):
    """The installed command, a real SIGTERM after a few frames: exit 143, an interrupted run with its frames,
    video and state, and `continue` makes the frames left."""
    import os
    import shutil
    import signal
    import subprocess
    import sys
    import time

    exe = shutil.which("vqclip") or str(Path(sys.executable).with_name("vqclip"))
    out = tmp_path / "output"
    args = [exe, "animate", "a cave", "--frames", "60", "--fps", "4", "-q", *tiny(one_go["t"], out)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ})
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and len(list(out.glob(".tmp-*/frames/*.png"))) < 2:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=90)
    text = stdout.decode() + stderr.decode()
    assert proc.returncode == 143, text
    assert "Traceback" not in text and "finishing this frame" in text
    run = Path(stdout.decode().strip().splitlines()[-1]).parent
    d = details(run)
    done = d["animation"]["frames_done"]
    assert d["status"] == "interrupted" and 2 <= done < 60 and len(frame_bytes(run)) == done
    assert video_frames(run / "anim.mp4") == done and (run / "state.pt").is_file()
    assert not list(out.glob(".tmp-*"))
