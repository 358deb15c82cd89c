"""Hostile outputs and values through the installed `vqclip` command (issue 19, items 6, 7, 9 and 10): no output
lands in a run or on anything but a file it may replace, selftest passes for any step count, the interpolated
video keeps the whole animation, non-finite or overflowing schedule values and duplicate config keys are errors,
ffmpeg's errors are one line, piped output is not wrapped, and `continue` of an animation names what it cannot do.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from clihelp import check_output
from vqclip.gallery.synthetic import details, png_bytes, run_id

VQCLIP = shutil.which("vqclip") or str(Path(sys.executable).parent / "vqclip")


def vqclip(*args: str, timeout: float = 120, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run the installed command; (exit code, stdout, stderr), both strictly UTF-8."""
    proc = subprocess.run([VQCLIP, *args], capture_output=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "300", **(env or {})})
    stdout, stderr = proc.stdout.decode("utf-8"), proc.stderr.decode("utf-8")
    assert "Traceback" not in stdout + stderr, stdout + stderr
    return proc.returncode, stdout, stderr


def snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """Everything under `root` (links not followed): kind, mode, mtime and the bytes of every regular file."""
    seen: dict[str, tuple[object, ...]] = {}
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in [*dirs, *files]:
            path = os.path.join(folder, name)
            st = os.lstat(path)
            data = b""
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as fh:
                    data = hashlib.sha256(fh.read()).digest()
            link = os.readlink(path) if os.path.islink(path) else ""
            seen[os.path.relpath(path, root)] = (st.st_mode, st.st_mtime_ns, st.st_size, data, link)
    return seen


def write_run(out: Path, i: int) -> Path:
    import json

    folder = out / run_id(i)
    (folder / "frames").mkdir(parents=True)
    (folder / "details.json").write_text(json.dumps(details(i)))
    (folder / "output.png").write_bytes(png_bytes(i, 16))
    return folder


# --- item 6: no output overwrites a run ------------------------------------------------------------------------

def _gallery_cases() -> list[tuple[str, Callable[[Path, Path, Path], list[str]], str]]:
    """(id, setup(tmp, out, run) → args after `gallery build`, a phrase of the refusal)."""

    def linked(name: str, target: Callable[[Path, Path, Path], Path]) -> Callable[[Path, Path, Path], Path]:
        def make(tmp: Path, out: Path, run: Path) -> Path:
            os.symlink(target(tmp, out, run), tmp / name)
            return tmp / name
        return make

    def copied_run(tmp: Path, out: Path, run: Path) -> Path:
        shutil.copytree(run, tmp / "a copy of a run")
        return tmp / "a copy of a run"

    def temp_run(tmp: Path, out: Path, run: Path) -> Path:
        (out / ".tmp-20990101T000000-abcdefgh").mkdir()
        return out / ".tmp-20990101T000000-abcdefgh"

    def fifo(tmp: Path, out: Path, run: Path) -> Path:
        os.mkfifo(tmp / "page.html")
        return tmp / "page.html"

    def notes(tmp: Path, out: Path, run: Path) -> Path:
        (tmp / "notes.txt").write_text("my notes")
        return tmp / "notes.txt"

    def gallery_cache(tmp: Path, out: Path, run: Path) -> Path:
        (out / ".gallery" / "thumbs").mkdir(parents=True)
        return out / ".gallery" / "thumbs" / "page.html"

    out_at: list[tuple[str, Callable[[Path, Path, Path], Path], str]] = [
        ("--out RUN", lambda t, o, r: r, "is inside the run folder"),
        ("--out RUN/output.png", lambda t, o, r: r / "output.png", "is inside the run folder"),
        ("--out RUN/details.json", lambda t, o, r: r / "details.json", "is inside the run folder"),
        ("--out RUN/new.html", lambda t, o, r: r / "new.html", "is inside the run folder"),
        ("--out RUN/frames", lambda t, o, r: r / "frames", "is inside the run folder"),
        ("--out RUN/sub/new.html", lambda t, o, r: r / "sub" / "new.html", "is inside the run folder"),
        ("--out a link to RUN/output.png", linked("img.html", lambda t, o, r: r / "output.png"), "run folder"),
        ("--out a link to RUN, /x.html", lambda t, o, r: linked("dir", lambda t, o, r: r)(t, o, r) / "x.html",
         "run folder"),
        ("--out a link elsewhere", linked("link.html", lambda t, o, r: t / "elsewhere.html"), "is a symlink"),
        ("--out a copied run folder", copied_run, "is inside the run folder"),
        ("--out a run being written", temp_run, "is inside the run folder"),
        ("--out FIFO", fifo, "is a FIFO (named pipe), not a regular file"),
        ("--out /dev/null", lambda t, o, r: Path(os.devnull), "is a device, not a regular file"),
        ("--out an existing .txt", notes, "is not an .html page"),
        ("--out into .gallery", gallery_cache, "the gallery's own cache"),
    ]
    cases = [(name, (lambda f: lambda t, o, r: ["-o", str(o), "--out", str(f(t, o, r))])(f), says)
             for name, f, says in out_at]
    cases += [
        ("-o RUN", lambda t, o, r: ["-o", str(r)], "--output-dir"),
        ("-o RUN/frames", lambda t, o, r: ["-o", str(r / "frames")], "is inside the run folder"),
        ("-o a link to RUN", lambda t, o, r: ["-o", str(linked("l", lambda t, o, r: r)(t, o, r))], "run folder"),
    ]
    return cases


GALLERY_CASES = _gallery_cases()


@pytest.mark.parametrize("case", GALLERY_CASES, ids=[c[0] for c in GALLERY_CASES])
def test_gallery_never_writes_into_a_run(case, tmp_path: Path) -> None:
    _, setup, says = case
    out = tmp_path / "output"
    run = write_run(out, 1)
    (tmp_path / "elsewhere.html").write_text("<p>kept</p>")
    args = setup(tmp_path, out, run)
    before = snapshot(tmp_path)
    rc, stdout, stderr = vqclip("gallery", "build", *args)
    assert rc == 1, stdout + stderr
    check_output(stdout + stderr, stderr, rc, (says,), ())
    assert snapshot(tmp_path) == before  # nothing changed: no page, no .gallery, no temp file


def test_gallery_replaces_its_own_page(tmp_path: Path) -> None:
    out = tmp_path / "output"
    write_run(out, 1)
    page = tmp_path / "pages" / "gallery.html"
    page.parent.mkdir()
    page.write_text("old page")
    rc, stdout, stderr = vqclip("gallery", "build", "-o", str(out), "--out", str(page))
    assert rc == 0, stdout + stderr
    assert "1 run" in stdout and page.read_text(encoding="utf-8").lower().startswith("<!doctype html>")


OUTPUT_DIR_CASES = [  # every command whose --output-dir (or --keep) receives new run folders or removes some
    ("generate -o RUN", ["generate", "a cat", "--steps", "1", "-o", "RUN"]),
    ("animate -o RUN/frames", ["animate", "a cat", "--frames", "2", "-o", "RUN/frames"]),
    ("batch -o RUN --dry-run", ["batch", "ROWS", "--dry-run", "-o", "RUN"]),
    ("continue -o RUN", ["continue", "RUN", "--steps", "1", "-o", "RUN"]),
    ("runs clean -o RUN", ["runs", "clean", "-o", "RUN"]),
    ("selftest --keep RUN", ["selftest", "--keep", "RUN"]),
    ("selftest --keep a link to RUN", ["selftest", "--keep", "LINK"]),
]


@pytest.mark.parametrize("case", OUTPUT_DIR_CASES, ids=[c[0] for c in OUTPUT_DIR_CASES])
def test_no_run_goes_into_a_run(case, tmp_path: Path) -> None:
    _, args = case
    run = write_run(tmp_path / "output", 1)
    (run / ".tmp-20990101T000000-abcdefgh").mkdir()  # what `runs clean` would remove, were it allowed
    (tmp_path / "rows.txt").write_text("a cat\n")
    os.symlink(run, tmp_path / "link")
    args = [a.replace("RUN", str(run)).replace("ROWS", str(tmp_path / "rows.txt"))
            .replace("LINK", str(tmp_path / "link")) for a in args]
    before = snapshot(tmp_path)
    rc, stdout, stderr = vqclip(*args)
    assert rc == 1, stdout + stderr
    check_output(stdout + stderr, stderr, rc, ("the run folder", "outside every run folder"), ())
    assert snapshot(tmp_path) == before


# --- item 7: selftest passes for every step count it accepts ----------------------------------------------------

@pytest.mark.parametrize("steps,frames", [(1, 2), (2, 2), (3, 3), (4, 3), (6, 4), (9, 6), (10_000, 5001)])
def test_progress_frames_counts_what_the_loop_saves(steps: int, frames: int) -> None:
    from vqclip.pipeline.selftest import progress_frames

    assert progress_frames(steps, 2) == frames
    assert progress_frames(steps, 0) == 2  # the first image and the final one


@pytest.mark.parametrize("steps", [1, 2, 9])
def test_selftest_passes_for_any_steps(steps: int, tmp_path: Path) -> None:
    rc, stdout, stderr = vqclip("selftest", "--steps", str(steps), "--device", "cpu", "--keep", str(tmp_path),
                                timeout=300)
    assert rc == 0 and "selftest passed" in stdout, stdout + stderr
    assert "FAILED" not in stdout
    from vqclip.pipeline.selftest import progress_frames

    assert f"{progress_frames(steps, 2)} frames" in stdout


# --- items 9 and 10: the animation's videos, and what `continue` cannot honour ----------------------------------

def tiny_args(t: dict, out: Path) -> list[str]:
    return ["--model", str(t["vqgan_yaml"]), "--clip-model", str(t["clip_json"]), "--clip-pretrained",
            str(t["clip_ckpt"]), "--size", "32x32", "--cutn", "2", "--seed", "3", "--device", "cpu",
            "--output-dir", str(out), "--steps-per-frame", "1", "--zoom", "1.05", "--angle", "3"]


def video_facts(path: Path) -> tuple[int, float]:
    """(frames decoded, duration in seconds as the container states it)."""
    import imageio.v2 as imageio

    reader = imageio.get_reader(str(path), format="FFMPEG")
    try:
        return sum(1 for _ in reader), float(reader.get_meta_data()["duration"])
    finally:
        reader.close()


def made_run(stdout: str) -> Path:
    return Path([line for line in stdout.splitlines() if line.endswith("output.png")][-1]).parent


@pytest.fixture(scope="module")
def animation(tiny_models, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("anim") / "output"
    rc, stdout, stderr = vqclip("animate", "a lighthouse", "--frames", "5", "--fps", "4", "--interpolate", "2",
                                *tiny_args(tiny_models, out), timeout=300)
    assert rc == 0, stdout + stderr
    return made_run(stdout)


def test_interpolated_video_keeps_the_whole_animation(animation: Path) -> None:
    frames, duration = video_facts(animation / "anim.mp4")
    assert frames == 5
    more, more_duration = video_facts(animation / "anim_x2.mp4")
    assert more >= 2 * (frames - 1) + 1  # was 7: the end of the animation was lost
    assert more == 2 * frames  # every frame shown as long as in anim.mp4, the last one too
    assert more_duration == pytest.approx(duration, abs=0.5 / 8)


@pytest.mark.parametrize("frames,times,fps", [(1, 2, 10), (2, 3, 12), (3, 4, 5), (7, 2, 8)])
def test_interpolation_counts(frames: int, times: int, fps: int, tmp_path: Path) -> None:
    """interpolate_video on its own (no models): N frames × k give N·k frames lasting as long."""
    import numpy as np

    from vqclip.pipeline.video import VideoWriter, interpolate_video

    writer = VideoWriter(tmp_path / "anim.mp4", fps)
    for i in range(frames):
        frame = np.zeros((32, 48, 3), np.uint8)
        frame[:, : 6 * (i + 1), 0] = 200  # a bar that grows: motion to interpolate
        writer.append(frame)
    assert writer.close() is not None, writer.error
    assert interpolate_video(tmp_path / "anim.mp4", tmp_path / "anim_xk.mp4", times, fps) is None
    n, duration = video_facts(tmp_path / "anim.mp4")
    more, more_duration = video_facts(tmp_path / "anim_xk.mp4")
    assert (n, more) == (frames, frames * times)
    assert more_duration == pytest.approx(duration, abs=0.5 / (fps * times))


@pytest.mark.parametrize("flags,names", [
    (["--resize", "stretch"], "--resize"),
    (["--size", "64x64"], "--size"),
    (["--size", "64x64", "--resize", "crop", "--lr", "0.2"], "--size, --lr, --resize"),
])
def test_continue_of_an_animation_names_what_it_cannot_honour(animation: Path, flags: list[str], names: str) -> None:
    before = snapshot(animation.parent)
    rc, stdout, stderr = vqclip("continue", str(animation), "--frames", "1", *flags)
    assert rc == 2, stdout + stderr
    check_output(stdout + stderr, stderr, rc, ("cannot change", "is an animation", *names.split(", ")), ())
    said = stderr.split(" so ", 1)[1].split(" cannot change")[0]
    assert sorted(said.split(", ")) == sorted(names.split(", ")), stderr  # each named, nothing else
    assert snapshot(animation.parent) == before


# --- item 10: ffmpeg's errors in one line, schedules, duplicate keys, long messages, piped output ---------------

def fake_ffmpeg(tmp: Path, old: str, new: str) -> dict[str, str]:
    """An ffmpeg that is the real one with one argument rewritten (so its own errors come out), for
    imageio-ffmpeg to find through IMAGEIO_FFMPEG_EXE."""
    import imageio_ffmpeg

    real = imageio_ffmpeg.get_ffmpeg_exe()
    script = tmp / "ffmpeg"
    script.write_text(f'#!/bin/sh\nfor a in "$@"; do shift; set -- "$@" "$(printf %s "$a" | sed "s/{old}/{new}/")"; '
                      f'done\nexec "{real}" "$@"\n')
    script.chmod(0o755)
    return {"IMAGEIO_FFMPEG_EXE": str(script)}


def one_ffmpeg_line(stderr: str, phrase: str) -> None:
    lines = [line for line in stderr.splitlines() if "ffmpeg" in line.lower() or "@ 0x" in line]
    assert len(lines) == 1 and phrase in lines[0], stderr
    assert not any(line.startswith(("[", "Error opening")) for line in stderr.splitlines()), stderr


def test_video_encoder_failure_is_one_line(tiny_models, tmp_path: Path) -> None:
    args = tiny_args(tiny_models, tmp_path / "output")
    args = [a for a in args[: args.index("--steps-per-frame")]]
    rc, stdout, stderr = vqclip("generate", "a lighthouse", "--steps", "2", "--save-every", "1", *args,
                                env=fake_ffmpeg(tmp_path, "libx264", "libnope"), timeout=300)
    assert rc == 0, stdout + stderr
    one_ffmpeg_line(stderr, "no progress video (ffmpeg: Unknown encoder 'libnope'")
    assert not (made_run(stdout) / "anim.mp4").exists()


def test_interpolation_failure_is_one_line(tiny_models, tmp_path: Path) -> None:
    rc, stdout, stderr = vqclip("animate", "a lighthouse", "--frames", "2", "--interpolate", "2",
                                *tiny_args(tiny_models, tmp_path / "output"),
                                env=fake_ffmpeg(tmp_path, "minterpolate=", "nosuchfilter="), timeout=300)
    assert rc == 0, stdout + stderr
    one_ffmpeg_line(stderr, "no interpolated video (ffmpeg: No such filter: 'nosuchfilter'")
    run = made_run(stdout)
    assert (run / "anim.mp4").is_file() and not (run / "anim_x2.mp4").exists()


@pytest.mark.parametrize("flag,value,where", [
    ("--zoom", "1e-300", "value: 1e-300 is too close to 0"),
    ("--zoom", "0:(1), 10:(1e-300)", "keyframe 2: 1e-300 is too close to 0"),
    ("--zoom", "1e300", "value: 1e300 is too large"),
    ("--angle", "inf", "value: 'inf' is not a finite number"),
    ("--angle", "0:(0), 5:(nan)", "keyframe 2: 'nan' is not a finite number"),
    ("--translate-x", "0:(0), 5:(1e308), 9:(-1e308)", "keyframe 2: 1e308 is too large"),
    ("--translate-y", "1e999", "value: '1e999' is not a finite number"),
])
def test_schedule_values_that_overflow_are_usage_errors(flag: str, value: str, where: str, tiny_models,
                                                         tmp_path: Path) -> None:
    args = tiny_args(tiny_models, tmp_path / "output")
    args = [a for i, a in enumerate(args) if a not in ("--zoom", "--angle") and args[i - 1] not in ("--zoom", "--angle")]
    rc, stdout, stderr = vqclip("animate", "a lighthouse", "--frames", "3", *args, flag, value)
    assert rc == 2, stdout + stderr
    check_output(stdout + stderr, stderr, rc, (flag, where), ())
    assert not (tmp_path / "output").exists()


def test_config_file_with_a_key_twice_is_an_error(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("steps: 300\ncutn: 8\nsteps: 3\n")
    rc, stdout, stderr = vqclip("generate", "a cat", "--config", str(config), "--dry-run")
    assert rc == 1, stdout + stderr
    check_output(stdout + stderr, stderr, rc, (str(config), "key 'steps' appears twice (lines 1 and 3)"), ())
    config.write_text("base: &b {cutn: 8}\n")  # a merge key may be overridden: not a duplicate
    from vqclip.config import load_config_file
    from vqclip.strict_yaml import load

    assert load("a: &a {x: 1}\nb:\n  <<: *a\n  x: 2\n") == {"a": {"x": 1}, "b": {"x": 2}}
    with pytest.raises(Exception, match="key 'x' appears twice"):
        load("- {p: 1, x: 1, x: 2}")
    config.write_text("noise_prompts: ['1:1']\nlr: 0.1\n")
    assert load_config_file(config) == {"noise_prompts": ["1:1"], "lr": 0.1}


def test_long_usage_message_is_cut_at_a_word(tmp_path: Path) -> None:
    words = " ".join(f"w{i:03d}x" for i in range(120))  # 720 characters of whole words
    rc, stdout, stderr = vqclip("runs", "list", "-o", str(tmp_path), *words.split())
    assert rc == 2, stdout + stderr
    import re

    line = stderr.strip()
    assert "…" in line and re.search(r"w\d{3}x…", line), line  # the cut falls between words
    assert len(line) < 400


def test_piped_output_is_not_wrapped(tmp_path: Path) -> None:
    rows = tmp_path / "rows.txt"
    prompts = [f"prompt {i}: a lighthouse on a cliff at dusk, oil painting, dramatic light, long exposure, "
               "trending on artstation" for i in range(3)]
    rows.write_text("\n".join(prompts) + "\n")
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    proc = subprocess.run([VQCLIP, "batch", str(rows), "--dry-run", "-o", str(tmp_path / "out")],
                          capture_output=True, timeout=120, env=env)
    stdout = proc.stdout.decode("utf-8")
    assert proc.returncode == 0, stdout + proc.stderr.decode()
    for prompt in prompts:  # each prompt whole on one line of the table, not split over several
        assert any(prompt in line for line in stdout.splitlines()), stdout
    assert max(len(line) for line in stdout.splitlines()) > 120


def test_no_library_message_is_sliced_mid_word() -> None:
    """A library's error text quoted in a message goes through `vqclip.errors.one_line`/`shorten` (cut at a word,
    with "…"), never a bare slice such as `str(e)[:120]` or `….splitlines()[0][:200]`."""
    import re

    sliced = re.compile(r"(str\(e\w*\)|splitlines\(\)(?: or \[[^\]]*\])?\)?\[-?\d\]|lines\[-?\d\])\[:\d+\]")
    src = Path(__file__).resolve().parents[1] / "src" / "vqclip"
    found = [f"{p.relative_to(src)}:{n}: {line.strip()}" for p in sorted(src.rglob("*.py"))
             for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1) if sliced.search(line)]
    assert not found, "\n".join(found)
    from vqclip.errors import shorten

    assert shorten("alpha bravo charlie delta", 16) == "alpha bravo…"


def test_piped_table_is_not_wrapped(tmp_path: Path) -> None:
    """A Rich table piped to a program keeps one line per row (it was laid out for 80 columns)."""
    from vqclip.weights import registry

    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    proc = subprocess.run([VQCLIP, "weights", "list"], capture_output=True, timeout=120, env=env)
    stdout = proc.stdout.decode("utf-8")
    assert proc.returncode == 0, stdout + proc.stderr.decode()
    assert registry.WEIGHTS
    for spec in registry.WEIGHTS.values():  # name and description on one line: the row was not wrapped
        assert any(spec.name in line and spec.description in line for line in stdout.splitlines()), stdout
