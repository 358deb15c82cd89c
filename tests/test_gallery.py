"""Gallery: the index model (defensive coercion), robust scanning, incremental cache, escaping, CLI, no torch."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from html import unescape
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from vqclip.cli import app
from vqclip.gallery import build_gallery
from vqclip.gallery.build import BAD_DETAILS, BAD_IMAGE, NO_DETAILS, NO_IMAGE, render_page, script_json
from vqclip.gallery.model import as_int, as_text, card_from_run, input_images, lineage_strips, model_name
from vqclip.gallery.synthetic import details, make_run, png_bytes, run_id
from vqclip.runs import RunInfo

HOSTILE = "<script>window.__pwned=1</script> \"quotes' & <b>bold</b> 🎨 שלום עולם </script><!--"


def page_data(html: str) -> dict[str, Any]:
    """The JSON index embedded in a built page, parsed the way the page's script does."""
    m = re.search(r'<script id="gallery-data" type="application/json">(.*?)</script>', html, re.S)
    assert m, "no data block"
    return json.loads(m.group(1))


# --- coercion ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value, expected", [
    (5, 5), (5.0, 5), ("42", 42), (" -3 ", -3), (True, None), (5.5, None), (float("nan"), None),
    (float("inf"), None), ("12abc", None), (None, None), ([1], None), ({"a": 1}, None), ("9" * 40, None),
])
def test_as_int(value: Any, expected: int | None) -> None:
    assert as_int(value) == expected


@pytest.mark.parametrize("value, expected", [
    ("plain", "plain"), (7, "7"), (None, ""), (True, ""), (["a"], ""), ({"a": 1}, ""),
    ("a\x00b\x1bc", "abc"), ("\ud800lone", "?lone"), ("  padded  ", "padded"), ("x" * 200, "x" * 119 + "…"),
])
def test_as_text(value: Any, expected: str) -> None:
    assert as_text(value) == expected


@pytest.mark.parametrize("candidates, expected", [
    (("vqgan_imagenet_f16_16384", "/x/y.yaml"), "vqgan_imagenet_f16_16384"),
    ((None, "/tmp/models/tiny_vqgan.yaml"), "tiny_vqgan"),
    (([1], "C:\\models\\wikiart.ckpt"), "wikiart"), (("<i>a/b</i>",), "<i>a/b</i>"),
    (("", ""), "unknown"), ((None, ["x"]), "unknown"), ((".ckpt",), ".ckpt"),
])
def test_model_name(candidates: tuple[Any, ...], expected: str) -> None:
    assert model_name(*candidates) == expected


def test_card_from_schema_1_details(tmp_path: Path) -> None:
    d = details(3)
    card = card_from_run(RunInfo(tmp_path / run_id(3), d))
    assert card["id"] == run_id(3)
    assert card["prompt"] == d["prompt"]
    assert card["model"] == d["config"]["model"]
    assert (card["w"], card["h"], card["steps"], card["planned"]) == (480, 480, 300, 300)
    assert card["seed"] == "3" and card["status"] == "finished" and card["error"] == ""
    assert card["date"] == "2026-01-01 09:03" and card["stage"] == 1 and card["parent"] is None


FOREIGN: list[dict[str, Any]] = [
    {},
    {"prompt": 5, "config": "not a dict", "size": "big", "stage": "abc", "seed": True, "status": ["x"]},
    {"prompt": None, "config": {"prompt": ["list"], "model": {"x": 1}, "width": "wide", "seed": 2**80}},
    {"size": [float("inf"), None], "steps_done": -5, "timings": {"total_s": float("nan")}, "created": 12},
    {"parent": "../../etc/passwd", "root": 7, "files": {"init_image": "../secret.png", "image_prompts": "x"}},
    {"files": ["a"], "weights": "w", "timings": [1], "error": {"e": 1}, "status": "FAILED"},
    {"prompt": HOSTILE, "config": {"model": HOSTILE}, "status": HOSTILE, "seed": "123456789012345678901"},
]


@pytest.mark.parametrize("junk", FOREIGN)
def test_card_never_crashes_on_foreign_details(tmp_path: Path, junk: dict[str, Any]) -> None:
    card = card_from_run(RunInfo(tmp_path / run_id(1), junk))
    script_json(card)  # JSON-safe: no NaN/inf, only plain types
    assert isinstance(card["prompt"], str) and isinstance(card["model"], str) and card["model"]
    assert card["w"] is None or isinstance(card["w"], int)
    assert card["seed"] is None or card["seed"].lstrip("-").isdigit()
    assert card["parent"] is None and card["root"] == run_id(1)  # no valid ids among the junk
    assert all("/" not in name for name in card["declared"])


def test_big_seed_kept_exactly_as_text(tmp_path: Path) -> None:
    card = card_from_run(RunInfo(tmp_path / run_id(1), {"seed": 2**63 + 1}))
    assert card["seed"] == str(2**63 + 1)  # JS numbers would round it


def test_input_images_only_real_safe_files() -> None:
    names = {"init.png", "image_prompt_0.png", "image_prompt_1.jpg", "output.png", "details.json", "x.png"}
    links = input_images(["../../etc/passwd", "x.png", "missing.png"], names)
    assert [(l["label"], l["file"]) for l in links] == [
        ("prompt", "x.png"), ("init", "init.png"), ("prompt 1", "image_prompt_0.png"), ("prompt 2", "image_prompt_1.jpg")]


def _card(rid: str, parent: str | None = None, stage: int | None = None) -> dict[str, Any]:
    return {"id": rid, "parent": parent, "stage": stage}


def test_lineage_strips_chain_fork_cycle_and_missing_parent() -> None:
    a, b, c, d = run_id(1), run_id(2), run_id(3), run_id(4)
    strips = lineage_strips([_card(a, None, 1), _card(b, a, 2), _card(c, b, 3), _card(d, b, 3)])
    assert [s["id"] for s in strips[a]] == [a, b, c, d]  # descendants while linear, then the fork's children
    assert [s["id"] for s in strips[b]] == [a, b, c, d]  # ancestors, itself, its children
    assert [(s["id"], s["stage"]) for s in strips[c]] == [(a, 1), (b, 2), (c, 3)]
    loop = lineage_strips([_card(a, b), _card(b, a)])  # corrupt: each the other's parent
    assert {s["id"] for s in loop[a]} == {a, b} and len(loop[a]) == 2
    orphan = lineage_strips([_card(c, "20990101T000000-missing0", 4)])
    assert orphan[c] == [{"id": c, "stage": 4}]
    assert lineage_strips([_card(a), _card(b)]) == {}


# --- scanning and robustness --------------------------------------------------------------------------------


def make_messy_output(out: Path) -> None:
    """Good runs plus every kind of damage the issue lists."""
    for i in range(4):
        make_run(out, i)
    make_run(out, 10, prompt=HOSTILE, weights={"name": "<img src=x onerror=alert(1)>"})
    (make_run(out, 11) / "details.json").unlink()                       # no details.json
    (make_run(out, 12) / "details.json").write_text("{not json")         # corrupt
    (make_run(out, 13) / "details.json").write_text("[1, 2, 3]")         # not an object
    (make_run(out, 14) / "details.json").write_bytes(b"\xff\xfe\x00bad")  # not UTF-8
    (make_run(out, 15) / "output.png").unlink()                          # no image
    (make_run(out, 16) / "output.png").write_bytes(b"not a png at all")  # unreadable image
    (out / ".tmp-20260101T090000-inflight").mkdir()                      # run in progress
    (out / "notes").mkdir()                                              # not a run folder
    (out / "stray.txt").write_text("hi")


def test_build_skips_and_counts_damage(tmp_path: Path) -> None:
    make_messy_output(tmp_path)
    report = build_gallery(tmp_path)
    assert report.runs == 7
    assert report.skipped == {NO_DETAILS: 1, BAD_DETAILS: 3}
    assert report.warnings == {NO_IMAGE: 1, BAD_IMAGE: 1}
    assert report.thumbs_made == 5
    cards = {c["id"]: c for c in page_data(report.index.read_text(encoding="utf-8"))["runs"]}
    assert list(cards) == sorted(cards, reverse=True)  # newest first
    assert cards[run_id(15)]["image"] is False and cards[run_id(16)]["thumb"] is None
    assert cards[run_id(10)]["prompt"] == HOSTILE


def test_hostile_text_is_escaped_in_the_page(tmp_path: Path) -> None:
    make_messy_output(tmp_path)
    html = build_gallery(tmp_path).index.read_text(encoding="utf-8")
    assert html.count("<script") == 2  # our data block and our script, nothing from a run
    assert "window.__pwned" in html and "<script>window.__pwned" not in html
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html  # the model <option>
    assert "<!--" not in html.split("<style>")[1]


@pytest.mark.parametrize("text", ["</script><script>alert(1)</script>", "<!--<script>", "\u2028\u2029", "\ud83c"])
def test_script_json_cannot_break_out(text: str) -> None:
    encoded = script_json({"t": text})
    assert "<" not in encoded and ">" not in encoded and encoded.isascii()
    assert json.loads(encoded)["t"] == text


def test_empty_output_gives_a_friendly_page(tmp_path: Path) -> None:
    report = build_gallery(tmp_path)
    assert report.runs == 0
    assert "No runs here yet" in report.index.read_text(encoding="utf-8")


def test_links_are_relative_when_the_page_lives_elsewhere(tmp_path: Path) -> None:
    out = tmp_path / "my runs"
    make_run(out, 1)
    report = build_gallery(out, tmp_path / "site" / "gallery.html")
    html = report.index.read_text(encoding="utf-8")
    assert page_data(html)["base"] == "../my%20runs/"
    assert str(tmp_path) not in html
    assert page_data(build_gallery(out).index.read_text(encoding="utf-8"))["base"] == ""


def test_page_has_csp_allowing_only_our_script(tmp_path: Path) -> None:
    make_run(tmp_path, 1)
    html = build_gallery(tmp_path).index.read_text(encoding="utf-8")
    csp = unescape(re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', html).group(1))  # type: ignore
    assert re.search(r"script-src 'sha256-[A-Za-z0-9+/=]+';", csp) and "unsafe-inline" not in csp
    assert "http" not in html.replace("http-equiv", "")  # no CDN, no remote URL at all


def test_render_page_escapes_filter_labels() -> None:
    card = {"id": run_id(1), "model": "<b>m</b>", "status": "<i>s</i>", "prompt": "p"}
    html = render_page([card])
    assert "<b>m</b>" not in html.split('<script id="gallery-data"')[0]
    assert "&lt;b&gt;m&lt;/b&gt;" in html and "&lt;i&gt;s&lt;/i&gt;" in html


# --- incremental build ----------------------------------------------------------------------------------------


def test_thumbnails_are_cached_and_remade_only_on_change(tmp_path: Path) -> None:
    for i in range(3):
        make_run(tmp_path, i)
    first = build_gallery(tmp_path)
    assert (first.thumbs_made, first.thumbs_reused, first.details_read) == (3, 0, 3)
    thumbs = tmp_path / ".gallery" / "thumbs"
    stamp = {p.name: p.stat().st_mtime_ns for p in thumbs.iterdir()}

    again = build_gallery(tmp_path)
    assert (again.thumbs_made, again.thumbs_reused, again.details_read, again.details_cached) == (0, 3, 0, 3)
    assert {p.name: p.stat().st_mtime_ns for p in thumbs.iterdir()} == stamp

    changed = tmp_path / run_id(1) / "output.png"
    changed.write_bytes(png_bytes(99, 80))  # a new image: size and mtime change
    make_run(tmp_path, 5)
    third = build_gallery(tmp_path)
    assert (third.thumbs_made, third.thumbs_reused, third.details_read) == (2, 2, 1)

    (thumbs / f"{run_id(0)}.jpg").unlink()  # a lost thumbnail is remade
    shutil.rmtree(tmp_path / run_id(2))     # a deleted run's thumbnail is removed
    fourth = build_gallery(tmp_path)
    assert (fourth.runs, fourth.thumbs_made, fourth.thumbs_removed) == (3, 1, 1)
    assert not (thumbs / f"{run_id(2)}.jpg").exists()


def test_changed_details_are_reread(tmp_path: Path) -> None:
    folder = make_run(tmp_path, 1)
    build_gallery(tmp_path)
    (folder / "details.json").write_text(json.dumps(details(1, prompt="a brand new prompt")))
    report = build_gallery(tmp_path)
    assert report.details_read == 1
    assert page_data(report.index.read_text(encoding="utf-8"))["runs"][0]["prompt"] == "a brand new prompt"


def test_details_that_became_corrupt_are_skipped_not_served_from_cache(tmp_path: Path) -> None:
    folder = make_run(tmp_path, 1)
    build_gallery(tmp_path)
    (folder / "details.json").write_text("{broken")
    assert build_gallery(tmp_path).skipped == {BAD_DETAILS: 1}


@pytest.mark.parametrize("junk", [b"", b"{nope", b"[]", b'{"format": 1, "runs": {"x": 5, "y": {"card": 1}}}',
                                  b'{"format": 1, "card_version": 999, "runs": {}}'])
def test_corrupt_cache_is_ignored(tmp_path: Path, junk: bytes) -> None:
    make_run(tmp_path, 1)
    build_gallery(tmp_path)
    (tmp_path / ".gallery" / "cache.json").write_bytes(junk)
    report = build_gallery(tmp_path)
    assert report.runs == 1 and report.thumbs_made + report.thumbs_reused == 1


def test_video_and_input_images_are_linked(tmp_path: Path) -> None:
    folder = make_run(tmp_path, 1, files={"init_image": "init.png", "image_prompts": ["image_prompt_0.png"]})
    for name in ("anim.mp4", "init.png", "image_prompt_0.png"):
        (folder / name).write_bytes(png_bytes(2, 16))
    card = page_data(build_gallery(tmp_path).index.read_text(encoding="utf-8"))["runs"][0]
    assert card["video"] is True
    assert card["inputs"] == [{"label": "init", "file": "init.png"}, {"label": "prompt 1", "file": "image_prompt_0.png"}]


def test_transparent_and_large_images_thumbnail(tmp_path: Path) -> None:
    from PIL import Image

    big = make_run(tmp_path, 1) / "output.png"
    Image.new("RGB", (1200, 600), (200, 30, 30)).save(big)
    alpha = make_run(tmp_path, 2) / "output.png"
    Image.new("RGBA", (40, 30), (0, 0, 0, 0)).save(alpha)
    cards = {c["id"]: c for c in page_data(build_gallery(tmp_path).index.read_text(encoding="utf-8"))["runs"]}
    assert cards[run_id(1)]["thumb"] == [512, 256] and cards[run_id(2)]["thumb"] == [40, 30]


# --- CLI ----------------------------------------------------------------------------------------------------


def test_cli_build_prints_a_summary(tmp_path: Path) -> None:
    make_messy_output(tmp_path)
    result = CliRunner().invoke(app, ["gallery", "build", "--output-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "7 runs" in out and "4 skipped" in out
    assert "skipped 3 × corrupt details.json" in out and "skipped 1 × no details.json" in out
    assert "no thumbnail 1 × no output.png" in out and "no thumbnail 1 × unreadable output.png" in out
    assert "5 made, 0 reused" in out and "file://" in out and "index.html" in out


def test_cli_kiosk_and_out(tmp_path: Path) -> None:
    make_run(tmp_path / "o", 1)
    page = tmp_path / "k.html"
    result = CliRunner().invoke(app, ["gallery", "build", "-o", str(tmp_path / "o"), "--out", str(page), "--kiosk"])
    assert result.exit_code == 0, result.output
    assert page_data(page.read_text(encoding="utf-8"))["kiosk"] is True


@pytest.mark.parametrize("make", ["missing", "file"])
def test_cli_bad_output_dir_is_one_line_exit_1(tmp_path: Path, make: str) -> None:
    target = tmp_path / "out"
    if make == "file":
        target.write_text("x")
    result = CliRunner().invoke(app, ["gallery", "build", "--output-dir", str(target)])
    assert result.exit_code == 1
    assert "vqclip generate" in result.output and "--output-dir" in result.output
    assert "Traceback" not in result.output


def test_cli_help() -> None:
    result = CliRunner().invoke(app, ["gallery", "build", "-h"])
    assert result.exit_code == 0 and "--kiosk" in result.output and "Example" in result.output


def test_installed_script_builds_without_importing_torch(tmp_path: Path) -> None:
    make_run(tmp_path, 1)
    code = ("import sys; from vqclip.cli import app; "
            f"app(['gallery', 'build', '--output-dir', {str(tmp_path)!r}], standalone_mode=False); "
            "assert 'torch' not in sys.modules, 'gallery build imported torch'")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=60)
    code = "import vqclip.commands.gallery, vqclip.gallery, sys; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    script = Path(sys.executable).with_name("vqclip")
    exe = [str(script)] if script.exists() else [sys.executable, "-m", "vqclip"]
    done = subprocess.run([*exe, "gallery", "build", "--output-dir", str(tmp_path)], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    assert "1 run" in done.stdout and "0 made, 1 reused" in done.stdout


def test_cli_open_opens_the_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[str] = []
    monkeypatch.setattr("webbrowser.open", lambda url: opened.append(url))
    make_run(tmp_path, 1)
    result = CliRunner().invoke(app, ["gallery", "build", "-o", str(tmp_path), "--open"])
    assert result.exit_code == 0, result.output
    assert opened == [(tmp_path / "index.html").resolve().as_uri()]
