"""CLIP ensembles for the VQGAN-CLIP engine (issue 20, part 4): `--clip` more than once on tiny random CLIPs.

The loss of an ensemble is the weighted sum of each model's loss on the same cutouts (resized for a model of
another input size); a model of weight 0 changes nothing; the chunked (low-memory) path takes the same steps;
a generate records every model; an interrupted ensemble run continues to the same bytes; the memory estimate
counts every model; the model cache keeps an ensemble's other CLIPs."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from clihelp import details, invoke, made, tiny_args
from vqclip import engine
from vqclip.config import build_config
from vqclip.engine.clip import load_clip, quiet_logs
from vqclip.engine.cutouts import Cutouts
from vqclip.engine.ensemble import EnsemblePrompt, Member
from vqclip.pipeline.settings import DERIVED, settings_from_config

CPU = torch.device("cpu")
PROMPT = "a red apple:1 | a green leaf:-0.5"


def _clip_of_size(folder: Path, name: str, image_size: int, seed: int) -> tuple[Path, Path]:
    """A tiny open_clip model like `make_tiny_clip`'s, with another input size (the resize path)."""
    import open_clip

    from vqclip.testing import TINY_CLIP_CONFIG

    config = copy.deepcopy(TINY_CLIP_CONFIG)
    config["vision_cfg"]["image_size"] = image_size
    cfg_path, ckpt_path = folder / f"{name}.json", folder / f"{name}.pt"
    cfg_path.write_text(json.dumps(config))
    open_clip.add_model_config(cfg_path)
    torch.manual_seed(seed)
    with quiet_logs():
        model = open_clip.create_model(name, pretrained=None)
    torch.save({"state_dict": model.state_dict()}, ckpt_path)
    return cfg_path, ckpt_path


@pytest.fixture(scope="module")
def clips(tiny_models):
    """A: the fixture's tiny CLIP; B: another of the same size (other weights); C: one of input size 48."""
    from vqclip.testing import make_tiny_clip

    folder = tiny_models["folder"]
    b = make_tiny_clip(folder, "tiny-clip-b", seed=1)
    c = _clip_of_size(folder, "tiny-clip-c", 48, seed=2)
    models = engine.load_models(tiny_models["vqgan_yaml"], tiny_models["vqgan_ckpt"], str(tiny_models["clip_json"]),
                                str(tiny_models["clip_ckpt"]), CPU)
    return {"models": models, "A": models.clip, "B": load_clip(str(b[0]), str(b[1]), CPU),
            "C": load_clip(str(c[0]), str(c[1]), CPU), "files": {"B": b, "C": c}}


def _session(clips: dict, members: list[tuple[str, float]] | None, **settings: object) -> engine.Session:
    """A session on the tiny VQGAN with one CLIP (`members` of one name at weight 1 is that CLIP alone, the
    plain path) or an ensemble; seed 5, 32x32, cutn 4, two text prompts."""
    base = clips["models"]
    derived = {name: settings.pop(name) for name in list(settings) if name in DERIVED}
    cfg = build_config(None, {"prompt": PROMPT, "cutn": 4, "save_every": 0, **settings})
    s = settings_from_config(cfg, width=32, height=32, seed=5, **derived)  # type: ignore[arg-type]
    first = clips[members[0][0]]
    models = engine.Models(base.vqgan, first, CPU)
    models = engine.with_ensemble(models, [Member(clips[name], w) for name, w in members])
    prompts = engine.build_prompts(models, s, cfg.text_prompts, [], [])
    return engine.start_session(models, s, prompts)


def test_one_clip_of_weight_one_is_the_plain_path(clips):
    plain = _session(clips, [("A", 1.0)])
    assert not plain.ensemble and not isinstance(plain.prompts[0], EnsemblePrompt)
    both = _session(clips, [("A", 1.0), ("B", 0.5)])
    assert both.ensemble and all(len(p.per_model) == 2 for p in both.prompts)
    assert torch.equal(both.prompts[0].embeds, both.prompts[0].per_model[0].embeds)  # what the CLIP score reads
    assert both.clip is clips["A"]


def test_the_ensemble_loss_is_the_weighted_sum_of_each_models_loss_on_the_same_cutouts(clips):
    ensemble = _session(clips, [("A", 1.0), ("B", 0.5), ("C", 2.0)])
    single = {name: _session(clips, [(name, 1.0)]) for name in "ABC"}
    with torch.no_grad():
        out = ensemble.synth(ensemble.z)
        cuts = Cutouts(32, 4, 1.0, True, 0.1)(out, torch.Generator().manual_seed(3))  # a fixed generator
        got = ensemble._prompt_losses(cuts)
        a = single["A"]._prompt_losses(clips["A"].normalize(cuts))
        b = single["B"]._prompt_losses(clips["B"].normalize(cuts))
        big = F.interpolate(cuts, size=(48, 48), mode="bilinear", align_corners=False)
        c = single["C"]._prompt_losses(clips["C"].normalize(big))
    assert list(got) == list(a) == ["text:a red apple", "text:a green leaf"]
    for label in got:
        want = a[label] + 0.5 * b[label] + 2.0 * c[label]
        assert torch.allclose(got[label], want, rtol=1e-5, atol=1e-7), (label, got[label], want)
        assert not torch.allclose(got[label], a[label])  # the other models count
    # A step: same seed, same latent, same cutouts (both models take 32 px), so the reported losses add up too.
    pair = _session(clips, [("A", 1.0), ("B", 0.5)])
    alone = {name: _session(clips, [(name, 1.0)]) for name in "AB"}
    r = pair.run(1)
    ra, rb = alone["A"].run(1), alone["B"].run(1)
    assert r.losses[0] == pytest.approx(ra.losses[0] + 0.5 * rb.losses[0], rel=1e-5)


@pytest.mark.parametrize("chunk", [0, 2])
def test_weight_zero_on_one_model_is_the_other_model_alone(clips, chunk):
    off = _session(clips, [("A", 0.0), ("B", 1.0)], clip_chunk=chunk)
    alone = _session(clips, [("B", 1.0)], clip_chunk=chunk)
    r_off, r_alone = off.run(2), alone.run(2)
    assert r_off.losses == r_alone.losses  # exactly: model A costs nothing and draws no random number
    assert torch.equal(off.z, alone.z) and torch.equal(r_off.image, r_alone.image)
    assert off.clip is clips["A"]  # still the first model (the CLIP score's)


def test_the_chunked_low_memory_path_takes_the_same_steps(clips):
    members = [("A", 1.0), ("C", 0.5), ("B", 0.25)]
    whole = _session(clips, members, clip_chunk=0)
    chunked = _session(clips, members, clip_chunk=2)
    r_whole, r_chunked = whole.run(1), chunked.run(1)
    assert r_whole.losses == pytest.approx(r_chunked.losses, rel=1e-5)
    assert torch.allclose(whole.z, chunked.z, atol=1e-5)


def test_compile_wraps_every_models_image_tower(clips, monkeypatch):
    """--compile compiles each model's image-tower call (its own fallback each); the steps are the same."""
    calls: list[int] = []

    def fake_compile(fn, **kw):  # torch.compile's contract without compiling: count the compiled calls
        def run(x):
            calls.append(x.shape[-1])
            return fn(x)
        return run

    monkeypatch.setattr(torch, "compile", fake_compile)
    members = [("A", 1.0), ("C", 0.5)]
    eager, fast = _session(clips, members), _session(clips, members, compile=True)
    r_eager, r_fast = eager.run(1), fast.run(1)
    assert r_fast.losses == r_eager.losses and fast.compile_error is None
    assert 32 in calls and 48 in calls  # both models went through their compiled call (A at 32 px, C at 48)


def test_the_memory_estimate_counts_every_model(tiny_models, clips):
    from vqclip.pipeline import memory

    spec = engine.read_spec(tiny_models["vqgan_yaml"])
    a, b, c = str(tiny_models["clip_json"]), str(clips["files"]["B"][0]), str(clips["files"]["C"][0])
    one = memory.estimate(spec, a, 32, 32, 32, "cpu", low_memory=False)
    assert memory.estimate(spec, [a], 32, 32, 32, "cpu") == one
    visual_b = memory._arch(spec, b).clip_visual_weights
    visual_c = memory._arch(spec, c).clip_visual_weights
    three = memory.estimate(spec, [a, b, c], 32, 32, 32, "cpu", low_memory=False)
    assert three.weights == one.weights + visual_b + visual_c
    # CPU, cutn 32: chunks of 16, each model in turn: the largest model's chunk, not the sum
    saved = [memory._clip_saved(memory._arch(spec, n), 16, torch.float32) for n in (a, b, c)]
    assert three.clip_activations == int(memory.CLIP_FACTOR * max(saved))
    assert three.scratch > one.scratch and three.load_phase > one.load_phase and three.total > one.total
    # cutn 8 on the CPU: one batch, one backward: every model's activations at once
    whole = memory.estimate(spec, [a, b, c], 32, 32, 8, "cpu")
    saved8 = [memory._clip_saved(memory._arch(spec, n), 8, torch.float32) for n in (a, b, c)]
    assert whole.clip_activations == int(memory.CLIP_FACTOR * sum(saved8))
    twice = memory.estimate(spec, [a, a], 32, 32, 8, "cpu")  # a model named twice is loaded once
    assert twice.weights == memory.estimate(spec, a, 32, 32, 8, "cpu").weights


def test_the_model_cache_keeps_an_ensembles_other_clips(tiny_models, clips):
    from vqclip.config_knobs import ClipSpec
    from vqclip.pipeline.cache import ModelCache
    from vqclip.pipeline.load import load_ensemble

    b_json, b_ckpt = (str(p) for p in clips["files"]["B"])
    specs = [ClipSpec(str(tiny_models["clip_json"]), str(tiny_models["clip_ckpt"]), 1.0), ClipSpec(b_json, b_ckpt, 0.5),
             ClipSpec(b_json, b_ckpt, 0.25)]
    cache = ModelCache()
    first = load_ensemble(specs, clips["models"], cache)
    again = load_ensemble(specs, clips["models"], cache)
    assert cache.loads == 1  # B once, for both runs and both of its mentions
    assert first[1].clip is first[2].clip is again[1].clip and first[0].clip is clips["models"].clip
    assert [m.weight for m in again] == [1.0, 0.5, 0.25]
    assert cache.keep(("other", 1), lambda: "kept") == "kept" and cache.keep(("other", 1), lambda: "new") == "kept"
    alone = load_ensemble(specs[:2], clips["models"])  # no cache: loaded for this run
    assert alone[1].clip is not first[1].clip


# ------------------------------------------------------------------------------------- through the command
@pytest.fixture()
def in_models(tiny_models, clips, monkeypatch):
    """Run from the models' folder: `--clip CONFIG.json/CHECKPOINT` with the paths relative to it."""
    monkeypatch.chdir(tiny_models["folder"])
    return ["--clip", "tiny-clip.json/tiny-clip.pt", "--clip", "tiny-clip-b.json/tiny-clip-b.pt:0.5"]


def test_generate_with_two_clips_runs_and_records_both(tiny_models, in_models, tmp_path):
    r = invoke("generate", "a red apple", *tiny_args(tiny_models, tmp_path / "out", *in_models, seed=3, steps=2,
                                                      quiet=True))
    assert r.exit_code == 0, r.output
    run = made(r)
    d = details(run)
    assert d["config"]["clips"] == ["tiny-clip.json/tiny-clip.pt", "tiny-clip-b.json/tiny-clip-b.pt:0.5"]
    assert d["clip"]["model"] == "tiny-clip" and d["clip"]["pretrained"] == "tiny-clip.pt"
    assert d["clip"]["ensemble"] == [
        {"model": "tiny-clip.json", "pretrained": "tiny-clip.pt", "weight": 1.0},
        {"model": "tiny-clip-b.json", "pretrained": "tiny-clip-b.pt", "weight": 0.5}]
    assert d["score"]["prompts"][0]["text"] == "a red apple"  # by the first model
    assert d["status"] == "finished" and len(d["losses"]) == 2
    # a run of the first model alone loses less: the second model's part of the loss is not there
    r = invoke("generate", "a red apple", *tiny_args(tiny_models, tmp_path / "out", seed=3, steps=1, quiet=True))
    single = details(made(r))
    assert "ensemble" not in single["clip"] and single["losses"][0] < d["losses"][0]
    assert single["memory_estimate_mb"] <= d["memory_estimate_mb"]


def test_an_interrupted_ensemble_run_continues_to_the_same_bytes(tiny_models, in_models, tmp_path):
    out = tmp_path / "out"
    r = invoke("generate", "a red apple", *tiny_args(tiny_models, out, *in_models, seed=4, steps=3, quiet=True))
    full = made(r)
    r = invoke("generate", "a red apple", *tiny_args(tiny_models, out, *in_models, seed=4, steps=2, quiet=True))
    parent = made(r)
    r = invoke("continue", parent.name, "--steps", "1", "--output-dir", str(out), "-q")
    assert r.exit_code == 0, r.output
    child = made(r)
    assert (child / "output.png").read_bytes() == (full / "output.png").read_bytes()
    assert details(child)["losses"] == details(full)["losses"][2:]
    assert details(child)["clip"]["ensemble"] == details(full)["clip"]["ensemble"]


def test_runs_that_share_a_model_cache_give_the_bytes_of_a_run_alone(tiny_models, in_models, tmp_path):
    """As `vqclip batch` and the web UI run them: the second run of the same ensemble loads nothing."""
    from vqclip.pipeline.cache import ModelCache
    from vqclip.pipeline.execute import RunRequest, execute

    cfg = build_config(None, {"prompt": "a red apple", "model": str(tiny_models["vqgan_yaml"]), "width": 32,
                              "height": 32, "cutn": 2, "steps": 2, "save_every": 0, "seed": 8,
                              "clips": [in_models[1], in_models[3]]})
    alone = execute(RunRequest(config=cfg, output_dir=tmp_path / "alone"))
    cache = ModelCache()
    first = execute(RunRequest(config=cfg, output_dir=tmp_path / "cached", models_cache=cache))
    loads = cache.loads
    second = execute(RunRequest(config=cfg, output_dir=tmp_path / "cached", models_cache=cache))
    assert loads == 2 and cache.loads == 2  # the VQGAN with the first CLIP, and the second CLIP
    image = (alone.path / "output.png").read_bytes()
    assert (first.path / "output.png").read_bytes() == image == (second.path / "output.png").read_bytes()
    assert first.record.losses == alone.record.losses == second.record.losses


def test_animate_with_two_clips_every_story_stage_embedded_by_both(tiny_models, in_models, tmp_path):
    r = invoke("animate", "a forest ^ a lake", "--frames", "2", "--steps-per-frame", "1", "--fps", "2",
               "--model", str(tiny_models["vqgan_yaml"]), "--size", "32x32", "--cutn", "2", "--seed", "6",
               "--output-dir", str(tmp_path / "out"), "-q", *in_models)
    assert r.exit_code == 0, r.output
    d = details(made(r))
    assert d["status"] == "finished" and d["animation"]["frames_done"] == 2
    assert [m["weight"] for m in d["clip"]["ensemble"]] == [1.0, 0.5]


def test_weight_zero_for_every_model_is_refused_in_one_line(tiny_models, in_models, tmp_path):
    r = invoke("generate", "a red apple", *tiny_args(tiny_models, tmp_path / "out", "--clip", "tiny-clip.json:0",
                                                      "--clip", "tiny-clip-b.json/tiny-clip-b.pt:0"))
    assert r.exit_code in (1, 2)
    lines = [line for line in r.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "weight 0" in lines[0], r.output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_records_without_an_ensemble_still_read_and_a_bad_one_is_one_line(tmp_path):
    from vqclip.runfolder.record import BadRun, ClipMember, parse_record

    old = parse_record({"clip": {"model": "ViT-B-32-quickgelu", "pretrained": "openai"}}, tmp_path / "details.json")
    assert old.clip.ensemble is None and "ensemble" not in old.model_dump(mode="json")["clip"]
    new = parse_record({"clip": {"model": "a", "ensemble": [{"model": "a", "pretrained": "x", "weight": 2}]}},
                       tmp_path / "details.json")
    assert new.clip.ensemble == [ClipMember(model="a", pretrained="x", weight=2.0)]
    with pytest.raises(BadRun, match="field 'clip.ensemble' is not a list of CLIP models"):
        parse_record({"clip": {"ensemble": "ViT-B-16"}}, tmp_path / "details.json")
