"""The CLIP score of a run's final image (vqclip.pipeline.score): the math against a hand computation on a tiny
CLIP, the clamp and the weighted summary, and where it is recorded: details.json, the PNG's `clip_score` chunk,
`runs list --sort score`, `runs show` and the gallery's cards."""

from __future__ import annotations

import json
import math
import re
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from typer.testing import CliRunner

from vqclip.engine.losses import Prompt
from vqclip.pipeline.score import run_score, score_image, score_text, summary
from vqclip.runfolder.record import RunRecord, Score, tolerant_record
from clihelp import invoke
from clihelp import tiny_args as _tiny_args

runner = CliRunner()
tiny_args = partial(_tiny_args, steps=3, save_every=0, seed=3)


@pytest.fixture(scope="module")
def clip(tiny_models):
    from vqclip.engine.clip import load_clip

    return load_clip(str(tiny_models["clip_json"]), str(tiny_models["clip_ckpt"]), "cpu")


def picture(seed: int = 0, size: tuple[int, int] = (40, 48)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(3, size[1], size[0], generator=g)


def hand_image_embedding(clip, image: torch.Tensor) -> torch.Tensor:
    """The whole image at CLIP's input size, normalised by hand, through the image tower (fp32)."""
    s = clip.input_size
    x = F.interpolate(image[None], size=(s, s), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    mean = torch.tensor(clip.mean).view(1, 3, 1, 1)
    std = torch.tensor(clip.std).view(1, 3, 1, 1)
    with torch.no_grad():
        return clip.encode_image((x - mean) / std).double()[0]


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float(a.dot(b) / (a.norm() * b.norm()))


def prompts_for(clip, pairs: list[tuple[str, float]]) -> list[Prompt]:
    """Text prompts embedded the way a run does it (engine.build_prompts), plus a noise prompt."""
    from vqclip import engine
    from vqclip.prompts import NoisePrompt, TextPrompt

    models = SimpleNamespace(clip=clip, device=torch.device("cpu"))
    settings = SimpleNamespace(cutn=2, cut_pow=1.0, augment=False, noise_fac=0.1, seed=0, width=32, height=32)
    texts = [TextPrompt(t, w) for t, w in pairs]
    return engine.build_prompts(models, settings, texts, [], [NoisePrompt(3, 0.5)])


def test_score_matches_a_hand_computation(clip):
    pairs = [("a red apple", 1.0), ("a green leaf on a table", 2.0), ("fog", -0.5)]
    prompts = prompts_for(clip, pairs)
    assert [p.text for p in prompts] == ["a red apple", "a green leaf on a table", "fog", None]
    assert [p.is_text for p in prompts] == [True, True, True, False]
    image = picture()
    score = score_image(clip, prompts, image)
    assert score is not None and len(score.prompts) == 3  # the noise prompt is not scored
    e = hand_image_embedding(clip, image)
    texts = clip.encode_text([t for t, _ in pairs], torch.device("cpu"))
    expected = [100 * max(cosine(e, t), 0.0) for t in texts]
    for got, (text, weight), want in zip(score.prompts, pairs, expected):
        assert got.text == text and got.weight == weight
        assert got.score == pytest.approx(want, abs=1e-5)
    want_summary = (1.0 * expected[0] + 2.0 * expected[1]) / 3.0  # the negative prompt is left out
    assert score.summary == pytest.approx(want_summary, abs=1e-5)


def _unit_mix(u: torch.Tensor, v: torch.Tensor, cos: float) -> torch.Tensor:
    """A vector at cosine `cos` to the unit vector `u` (v: a unit vector orthogonal to u)."""
    return (cos * u + math.sqrt(1 - cos * cos) * v)[None].float()


def test_clamp_and_weighted_summary(clip):
    image = picture(1)
    e = hand_image_embedding(clip, image)
    u = e / e.norm()
    r = torch.randn(u.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    v = r - r.dot(u) * u
    v = v / v.norm()
    prompts = [Prompt(_unit_mix(u, v, 0.6), 2.0, text="sixty"), Prompt(_unit_mix(u, v, 0.2), 1.0, text="twenty"),
               Prompt(_unit_mix(u, v, 0.9), -1.0, text="avoid"), Prompt(_unit_mix(u, v, -0.7), 1.0, text="opposite"),
               Prompt(-u[None].float(), -3.0, text="anti")]
    score = score_image(clip, prompts, image)
    got = {p.text: p.score for p in score.prompts}
    assert got["sixty"] == pytest.approx(60, abs=1e-4) and got["twenty"] == pytest.approx(20, abs=1e-4)
    assert got["avoid"] == pytest.approx(90, abs=1e-4)
    assert got["opposite"] == 0.0 and got["anti"] == 0.0  # max(cos, 0): a negative cosine scores 0
    # Σ w·s / Σ w over the positive weights: (2·60 + 1·20 + 1·0) / 4
    assert score.summary == pytest.approx(35, abs=1e-4)


def test_summary_definition():
    assert summary([2, 1, -1], [60, 20, 90]) == pytest.approx(140 / 3)
    assert summary([-1, -2], [10, 20]) is None  # only things to avoid: no summary
    assert summary([], []) is None
    assert math.isnan(summary([1, 1], [float("nan"), 3]))


def test_only_negative_prompts_have_no_summary_but_are_reported(clip):
    score = score_image(clip, prompts_for(clip, [("blur", -1.0)]), picture())
    assert score.summary is None and [p.text for p in score.prompts] == ["blur"]


def test_no_text_prompt_no_score(clip):
    noise_only = [p for p in prompts_for(clip, [("x", 1.0)]) if not p.is_text]
    image_prompt = Prompt(torch.randn(4, clip.embed_dim), 1.0, label="image:0")
    assert score_image(clip, [*noise_only, image_prompt], picture()) is None
    assert score_image(clip, [], picture()) is None
    assert score_text(None) is None


def test_scored_in_the_tower_dtype_without_grad(clip, monkeypatch):
    seen = []
    real = clip.encode_image

    def spy(x, dtype=None):
        seen.append((dtype, x.shape, torch.is_grad_enabled()))
        return real(x, dtype)

    monkeypatch.setattr(clip, "encode_image", spy)
    prompts = prompts_for(clip, [("a cat", 1.0)])
    full = score_image(clip, prompts, picture())
    half = score_image(clip, prompts, picture(), torch.bfloat16)
    s = clip.input_size
    assert seen == [(None, (1, 3, s, s), False), (torch.bfloat16, (1, 3, s, s), False)]
    assert half.prompts[0].score == pytest.approx(full.prompts[0].score, abs=3)


def test_a_failure_to_score_is_a_note_not_an_error(clip, monkeypatch):
    def broken(x, dtype=None):
        raise RuntimeError("CUDA out of memory\nmore")

    notes: list[str] = []
    monkeypatch.setattr(clip, "encode_image", broken)
    assert run_score(clip, prompts_for(clip, [("a cat", 1.0)]), picture(), None, notes.append) is None
    assert len(notes) == 1 and "no CLIP score" in notes[0] and "\n" not in notes[0]


def test_record_score_section():
    rec = RunRecord(score=Score(summary=float("nan"), prompts=[{"text": "a", "weight": 1, "score": float("inf")}]))
    d = rec.model_dump(mode="json")
    assert d["score"] == {"summary": None, "prompts": [{"text": "a", "weight": 1.0, "score": None}]}
    assert "score" not in RunRecord().model_dump(mode="json")  # no text prompt: no section at all
    rec, odd = tolerant_record({"status": "finished", "score": "high"})
    assert rec.score is None and odd == {"score": "high"}
    rec, odd = tolerant_record({"score": {"summary": True, "prompts": [{"text": "a", "weight": 1, "score": 5}]}})
    assert rec.score.summary is None and rec.score.prompts[0].score == 5 and "score.summary" in odd


# --- end to end -------------------------------------------------------------------------------------------


def test_generate_records_the_score_in_details_and_png(tiny_models, tmp_path):
    out = tmp_path / "output"
    r = invoke("generate", "a red apple:1 | a green leaf:-0.5", *tiny_args(tiny_models, out, "--noise-prompt", "3:0.2"))
    assert r.exit_code == 0, r.output
    [run] = list(out.iterdir())
    d = json.loads((run / "details.json").read_text())
    score = d["score"]
    assert [(p["text"], p["weight"]) for p in score["prompts"]] == [("a red apple", 1.0), ("a green leaf", -0.5)]
    assert all(0 <= p["score"] <= 100 for p in score["prompts"])
    assert score["summary"] == score["prompts"][0]["score"]  # the one positive prompt
    chunk = json.loads(Image.open(run / "output.png").text["clip_score"])
    assert chunk == score
    shown = invoke("runs", "show", run.name, "-o", str(out), env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert f"score:         {score['summary']:.2f} (weighted mean" in shown.output
    assert f"{score['prompts'][1]['score']:.2f}  a green leaf (weight -0.5, to avoid)" in shown.output


def test_generate_without_a_text_prompt_has_no_score(tiny_models, tmp_path):
    src = tmp_path / "in.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(src)
    out = tmp_path / "output"
    r = invoke("generate", "", "--image-prompt", str(src), *tiny_args(tiny_models, out))
    assert r.exit_code == 0, r.output
    [run] = list(out.iterdir())
    assert "score" not in json.loads((run / "details.json").read_text())
    assert "clip_score" not in Image.open(run / "output.png").text


def test_an_animation_scores_its_last_frame_against_its_last_story_stage(tiny_models, tmp_path):
    out = tmp_path / "output"
    t = tiny_models
    r = invoke("animate", "a forest ^ a desert at dusk", "--frames", "3", "--steps-per-frame", "1", "--pre-steps",
               "1", "--model", str(t["vqgan_yaml"]), "--clip-model", str(t["clip_json"]), "--clip-pretrained",
               str(t["clip_ckpt"]), "--size", "32x32", "--cutn", "2", "--seed", "5", "--output-dir", str(out))
    assert r.exit_code == 0, r.output
    [run] = list(out.iterdir())
    score = json.loads((run / "details.json").read_text())["score"]
    assert [p["text"] for p in score["prompts"]] == ["a desert at dusk"]
    assert json.loads(Image.open(run / "output.png").text["clip_score"]) == score


# --- runs list / gallery ----------------------------------------------------------------------------------


def scored(summary_value: float | None) -> dict | None:
    if summary_value is None:
        return None
    return {"summary": summary_value, "prompts": [{"text": "a lighthouse", "weight": 1.0, "score": summary_value}]}


SCORES = {0: 31.5, 1: None, 2: 78.25, 3: 55.0, 4: 78.25}


@pytest.fixture
def scored_runs(tmp_path):
    from vqclip.gallery.synthetic import make_run

    out = tmp_path / "output"
    for i, value in SCORES.items():
        extra = {"score": scored(value)} if value is not None else {}
        make_run(out, i, **extra)
    return out


def test_runs_list_sort_score(scored_runs):
    from vqclip.gallery.synthetic import run_id

    r = invoke("runs", "list", "--sort", "score", "--json", "-o", str(scored_runs))
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    # best first, ties newest first, the run without a score last
    assert [x["id"] for x in rows] == [run_id(4), run_id(2), run_id(3), run_id(0), run_id(1)]
    assert [x["score"] for x in rows] == [78.25, 78.25, 55.0, 31.5, None]
    r = invoke("runs", "list", "--sort", "score", "-n", "2", "-o", str(scored_runs), env={"COLUMNS": "250"})
    lines = r.output.splitlines()
    assert lines[0].split()[:7] == ["id", "time", "status", "steps", "size", "score", "prompt"]
    assert [ln.split()[0] for ln in lines[1:3]] == [run_id(4), run_id(2)] and " 78.2" in lines[1]
    r = invoke("runs", "list", "--json", "-o", str(scored_runs))  # the default order is unchanged
    assert [x["id"] for x in json.loads(r.stdout)] == [run_id(i) for i in (4, 3, 2, 1, 0)]
    r = invoke("runs", "list", "--sort", "loss", "-o", str(scored_runs))
    assert r.exit_code != 0 and "use time or score" in r.output


def test_gallery_cards_carry_the_score(scored_runs):
    from vqclip.gallery import build_gallery
    from vqclip.gallery.synthetic import run_id

    html = build_gallery(scored_runs).index.read_text(encoding="utf-8")
    m = re.search(r'<script id="gallery-data" type="application/json">(.*?)</script>', html, re.DOTALL)
    cards = {c["id"]: c for c in json.loads(m.group(1))["runs"]}
    assert {i: cards[run_id(i)]["score"] for i in SCORES} == SCORES
    assert '<option value="score">Best score first</option>' in html
    html = build_gallery(scored_runs).index.read_text(encoding="utf-8")  # from the cache: the same cards
    m = re.search(r'<script id="gallery-data" type="application/json">(.*?)</script>', html, re.DOTALL)
    assert {c["id"]: c["score"] for c in json.loads(m.group(1))["runs"]} == {run_id(i): v for i, v in SCORES.items()}


@pytest.mark.browser
def test_gallery_sorts_by_score_in_a_browser(scored_runs):
    """The card shows the score, and "Best score first" reorders the cards (then back to newest first)."""
    import os

    from vqclip.gallery import build_gallery
    from vqclip.gallery.synthetic import run_id

    chromium = Path(os.environ.get("VQCLIP_CHROMIUM", "/usr/bin/chromium"))
    if not chromium.exists():
        pytest.fail(f"Chromium not found at {chromium}: install it (`apt-get install -y chromium`) or set "
                    "VQCLIP_CHROMIUM", pytrace=False)
    from playwright.sync_api import sync_playwright

    index = build_gallery(scored_runs).index
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), headless=True,
                                    args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(index.resolve().as_uri())
            page.wait_for_selector(".card")

            def order() -> list[str]:
                return page.eval_on_selector_all(".card", "cs => cs.map(c => c.id.slice(4))")

            assert order() == [run_id(i) for i in (4, 3, 2, 1, 0)]
            assert page.inner_text(f"#run-{run_id(3)} .facts .score") == "score 55.0"
            assert page.locator(f"#run-{run_id(1)} .facts .score").count() == 0
            page.select_option("#sort", "score")
            assert order() == [run_id(i) for i in (4, 2, 3, 0, 1)]
            page.select_option("#sort", "")
            assert order() == [run_id(i) for i in (4, 3, 2, 1, 0)]
        finally:
            browser.close()
    assert errors == []
