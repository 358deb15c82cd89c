"""`vqclip continue` and `generate --then` on tiny models (issue 4): exact resume, new sizes, stretch, fallbacks,
refusals, an interrupted parent, a 3-stage chain with its combined video."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from vqclip.commands import progress as cli_progress
from vqclip.engines.vqgan_start import fit_grid, grid_change
from clihelp import Frames, details, invoke, made
from vqclip.errors import UsageError
from vqclip.runfolder.record import read_record
from vqclip.runs import RunInfo, find_run

runner = CliRunner()


def tiny(t: dict, out: Path, *extra: str) -> list[str]:
    return ["--model", str(t["vqgan_yaml"]), "--clip-model", str(t["clip_json"]), "--clip-pretrained",
            str(t["clip_ckpt"]), "--size", "32x32", "--cutn", "2", "--save-every", "1", "--seed", "11",
            # an MSE anchor with a stepwise decay: the anchor and the global step must both survive the resume
            "--init-weight", "0.3", "--init-weight-decay", "0.1", "--init-weight-decay-every", "1",
            "--output-dir", str(out), *extra]


@pytest.fixture(scope="module")
def base(tiny_models, tmp_path_factory):
    """One 4-step run (the reference) and one 2-step run (the parent), same seed and settings."""
    out = tmp_path_factory.mktemp("continue") / "output"
    r = invoke("generate", "a red apple", *tiny(tiny_models, out, "--steps", "4"))
    assert r.exit_code == 0, r.output
    full = made(r)
    r = invoke("generate", "a red apple", *tiny(tiny_models, out, "--steps", "2"))
    assert r.exit_code == 0, r.output
    return {"out": out, "full": full, "parent": made(r), "t": tiny_models}


def test_generate_then_continue_gives_the_same_bytes_as_one_run(base):
    out, parent = base["out"], base["parent"]
    r = invoke("continue", parent.name[:20], "--steps", "2", "--output-dir", str(out), "-q")
    assert r.exit_code == 0, r.output
    child = made(r)
    assert (child / "output.png").read_bytes() == (base["full"] / "output.png").read_bytes()
    d = details(child)
    assert d["parent"] == parent.name and d["root"] == parent.name and d["stage"] == 2
    assert d["steps_done"] == 2 and d["global_step"] == 4
    assert d["continue"] == {"from": parent.name, "from_step": 2, "start": "state", "resize": None}
    assert d["config"]["prompt"] == "a red apple" and d["seed"] == 11  # inherited
    assert details(base["full"])["losses"][2:] == d["losses"]
    state = torch.load(child / "state.pt", map_location="cpu", weights_only=True)
    assert state["step"] == 4


def test_interrupted_parent_finishes_exactly_and_the_video_continues(base):
    from vqclip.pipeline.resume import continue_run
    from vqclip.config import build_config
    from vqclip.pipeline.execute import RunRequest, execute
    from vqclip.pipeline.media import to_uint8

    t, out = base["t"], base["out"]
    cfg = build_config(None, {"prompt": "a red apple", "model": str(t["vqgan_yaml"]), "clip_model": str(t["clip_json"]),
                              "clip_pretrained": str(t["clip_ckpt"]), "width": 32, "height": 32, "cutn": 2,
                              "save_every": 1, "seed": 11, "steps": 4, "init_weight": 0.3,
                              "init_weight_decay": 0.1, "init_weight_decay_every": 1})
    calls = iter(range(100))
    parent = execute(RunRequest(config=cfg, output_dir=out, should_stop=lambda: next(calls) >= 3))
    assert parent.status == "interrupted" and parent.steps_done == 3
    rep = Frames()
    child = continue_run(RunInfo.of(parent.path, parent.record), {}, reporter=rep)
    assert any("interrupted after 3 of 4 steps" in n for n in rep.notes)
    assert child.status == "finished" and child.steps_done == 1 and child.global_step == 4
    assert child.path.parent == out  # beside its parent
    assert (child.path / "output.png").read_bytes() == (base["full"] / "output.png").read_bytes()
    # the child's first frame is the parent's last one (its saved image)
    last = np.asarray(Image.open(parent.path / "output.png").convert("RGB"))
    assert np.array_equal(to_uint8(rep.frames[0]), last)


def test_grid_change_table():
    assert grid_change((16, 16), (16, 16), None) == ""
    assert grid_change((16, 16), (12, 16), "crop") == "centre-cropped (height)"
    assert grid_change((16, 16), (16, 20), "pad") == "padded with random tokens (width)"
    assert grid_change((16, 16), (12, 20), None) == "centre-cropped (height) and padded with random tokens (width)"
    with pytest.raises(UsageError, match="crop cannot make the width larger"):
        grid_change((16, 16), (16, 20), "crop")
    with pytest.raises(UsageError, match="pad cannot make the height smaller"):
        grid_change((16, 16), (12, 16), "pad")


def test_fit_grid_centres_the_old_grid():
    z = torch.arange(16.0).view(1, 1, 4, 4)
    fill = torch.full((1, 1, 2, 6), -1.0)
    out = fit_grid(z, fill)
    assert out[0, 0].tolist() == [[-1, 4, 5, 6, 7, -1], [-1, 8, 9, 10, 11, -1]]


def test_new_size_crops_and_pads_tokens_from_the_seed(base):
    """The prepare hook: old tokens centred, new border = the seed's random start, optimizer dropped."""
    from vqclip import engine
    from vqclip.engines.vqgan_start import start_state
    from vqclip.pipeline.resume import plan_continue
    from vqclip.pipeline.execute import Reporter
    from vqclip.pipeline.settings import settings_from_config

    t, parent = base["t"], find_run(str(base["parent"]), base["out"])
    plan = plan_continue(parent, {"width": 40, "height": 24})
    state = plan.resume.state
    assert state["optimizer_state"] is not None
    models = engine.load_models(t["vqgan_yaml"], t["vqgan_ckpt"], str(t["clip_json"]), str(t["clip_ckpt"]),
                                torch.device("cpu"))
    settings = settings_from_config(plan.config, width=40, height=24, seed=11)
    notes = []
    rep = Reporter()
    rep.note = notes.append  # type: ignore[method-assign]
    new = start_state(plan.resume, models, settings, rep.note)
    assert new["z"].shape[-2:] == (12, 20) and new["z_anchor"].shape[-2:] == (12, 20)
    assert torch.equal(new["z"][..., :, 2:18], state["z"][..., 2:14, :])
    seeded = models.vqgan.random_latent(20, 12, torch.Generator().manual_seed(11))
    assert torch.equal(new["z"][..., :, :2], seeded[..., :, :2])
    assert new["optimizer_state"] is None and new["step"] == 2
    assert notes == ["size 32x32 → 40x24: token grid centre-cropped (height) and padded with random tokens "
                     "(width); new tokens from seed 11; the optimizer restarts (its moments belong to the old grid)"]


def test_continue_at_a_new_size_says_the_optimizer_restarts(base):
    r = invoke("continue", str(base["parent"]), "--size", "40x24", "--steps", "1", "-q", "-p", "a green apple")
    assert r.exit_code == 0, r.output
    assert "optimizer restarts" in r.output
    child = made(r)
    assert Image.open(child / "output.png").size == (40, 24)
    d = details(child)
    assert d["size"] == [40, 24] and d["prompt"] == "a green apple" and d["global_step"] == 3
    r = invoke("continue", str(base["parent"]), "--size", "40x32", "--resize", "crop", "--steps", "1")
    assert r.exit_code == 2 and "--resize crop cannot make the width larger" in r.output
    r = invoke("continue", str(base["parent"]), "--resize", "squash", "--steps", "1")
    assert r.exit_code == 2 and "use crop, pad or stretch" in r.output


def test_other_model_is_refused_unless_stretch(base):
    t, parent = base["t"], str(base["parent"])
    r = invoke("continue", parent, "--model", str(t["gumbel_yaml"]), "--steps", "1")
    assert r.exit_code == 1 and "latent spaces differ" in r.output and "--resize stretch" in r.output
    r = invoke("continue", parent, "--model", str(t["gumbel_yaml"]), "--resize", "stretch", "--size", "48x48",
               "--steps", "1", "-q")
    assert r.exit_code == 0, r.output
    child = made(r)
    d = details(child)
    assert d["continue"]["start"] == "stretch" and d["size"] == [48, 48] and d["global_step"] == 3
    assert d["weights"]["name"] == "tiny_gumbel"


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_without_a_usable_state_it_reencodes_output_png(base, tmp_path, damage):
    out = tmp_path / "output"
    src = base["parent"]
    copy = out / (src.name[:-8] + damage[:4] + "stat")  # still a valid run id
    shutil.copytree(src, copy)
    if damage == "missing":
        (copy / "state.pt").unlink()
    else:
        (copy / "state.pt").write_bytes(b"not a torch file")
    r = invoke("continue", copy.name, "--output-dir", str(out), "--steps", "1", "-q")
    assert r.exit_code == 0, r.output
    assert ("has no state.pt" if damage == "missing" else "state.pt is unreadable") in r.output
    assert "re-encoding" in r.output
    d = details(made(r))
    assert d["continue"]["start"] == "output.png" and d["global_step"] == 3 and d["parent"] == copy.name


def fake_run(out: Path, run_id: str, **fields) -> Path:
    folder = out / run_id
    folder.mkdir(parents=True)
    d = {"id": run_id, "status": "finished", "prompt": "x", "config": {"prompt": "x"}, "size": [32, 32],
         "global_step": 1, **fields}
    (folder / "details.json").write_text(json.dumps(d))
    return folder


def test_bad_references(tmp_path):
    out = tmp_path / "output"
    ids = [f"20260101T00000{i}-abcdefg{i}" for i in range(7)]
    for i in ids:
        fake_run(out, i)
    (tmp_path / "plain").mkdir()
    broken = out / "20260102T000000-corrupt0"
    broken.mkdir()
    (broken / "details.json").write_text("{oops")
    cases = [
        ("nosuchrun", "no run 'nosuchrun'", "newest runs: 20260102T000000-corrupt0, " + ", ".join(ids[6:2:-1])),
        ("20260101T00000", "is ambiguous", ", ".join(ids[::-1])),
        ("../output/" + ids[0], "is not a run id or a run folder", ""),
        ("a/../b", "is not a run id", ""),
        (str(tmp_path / "plain"), "is not a run folder (no details.json)", ""),
        ("2026010", "is ambiguous", ""),
        ("20260102T000000", str(broken / "details.json") + " is corrupt", ""),
    ]
    for ref, msg, listed in cases:
        r = invoke("continue", ref, "--output-dir", str(out))
        assert r.exit_code == 1, (ref, r.output)
        assert msg in r.output and listed in r.output, (ref, r.output)
        assert len(r.output.strip().splitlines()) == 1, r.output


def test_interrupted_continue_exits_130(base, monkeypatch):
    monkeypatch.setattr(cli_progress.StopOnInterrupt, "__call__", lambda self: True)
    r = invoke("continue", str(base["parent"]), "--steps", "2", "-q")
    assert r.exit_code == 130, r.output
    assert "interrupted" in r.output and "vqclip continue" in r.output


def test_three_stage_chain_with_a_combined_video(tiny_models, tmp_path):
    import imageio.v2 as imageio

    out = tmp_path / "output"
    # a story prompt ("a ^ b") and --then make one chain
    r = invoke("generate", "Backyard in spring ^ Backyard in summer", "--then", "Backyard in autumn",
               "--stage-steps", "2", *tiny(tiny_models, out, "--steps", "2", "-q"))
    assert r.exit_code == 0, r.output
    runs = sorted(out.iterdir())
    assert len(runs) == 3
    ds = [details(p) for p in runs]
    assert [d["prompt"] for d in ds] == ["Backyard in spring", "Backyard in summer", "Backyard in autumn"]
    assert [d["stage"] for d in ds] == [1, 2, 3] and {d["root"] for d in ds} == {runs[0].name}
    assert [d["parent"] for d in ds] == [None, runs[0].name, runs[1].name]
    assert [d["global_step"] for d in ds] == [2, 4, 6]
    assert ds[2]["chain"] == [p.name for p in runs] and ds[2]["files"]["chain_video"] == "chain.mp4"
    assert f"Chain video (3 stages): {runs[2] / 'chain.mp4'}" in r.output
    n = sum(1 for _ in imageio.get_reader(str(runs[2] / "chain.mp4"), format="FFMPEG"))
    assert n == 3 + 2 + 2  # each stage: steps 0, 1, final; joints not repeated
    r = invoke("runs", "show", runs[2].name, "--output-dir", str(out))
    assert r.exit_code == 0 and "Lineage" in r.output
    assert all(p.name in r.output for p in runs)


def test_interrupted_chain_stops_and_exits_130(tiny_models, tmp_path, monkeypatch):
    monkeypatch.setattr(cli_progress.StopOnInterrupt, "__call__", lambda self: True)
    out = tmp_path / "output"
    r = invoke("generate", "spring", "--then", "summer", *tiny(tiny_models, out, "--steps", "2", "-q"))
    assert r.exit_code == 130, r.output
    [run] = list(out.iterdir())
    assert read_record(run).status == "interrupted" and "1 later stage(s) skipped" in r.output


def test_combined_video_of_stages_of_different_sizes(tmp_path):
    import imageio.v2 as imageio

    from vqclip.pipeline.chainvideo import combine_videos
    from vqclip.pipeline.media import VideoWriter

    sources = []
    for i, (w, h, n) in enumerate([(32, 32, 3), (48, 24, 4)]):
        writer = VideoWriter(tmp_path / f"s{i}.mp4", 15)
        for k in range(n):
            writer.append(np.full((h, w, 3), 40 * (i + 1) + k, dtype=np.uint8))
        sources.append(writer.close())
    dest = combine_videos(sources, tmp_path / "chain.mp4", 15)
    reader = imageio.get_reader(str(dest), format="FFMPEG")
    frames = [np.asarray(f) for f in reader]
    reader.close()
    assert len(frames) == 3 + 3  # the second stage's first frame repeats the first stage's last
    assert all(f.shape == (32, 48, 3) for f in frames)
    assert frames[0][0, 0].max() < 10 and abs(int(frames[0][16, 24, 0]) - 40) <= 3  # centred, black bars


def test_installed_script_refuses_an_unknown_run(base):
    import subprocess
    import sys

    exe = shutil.which("vqclip") or str(Path(sys.executable).parent / "vqclip")
    bad = subprocess.run([exe, "continue", "nosuchrun", "-o", str(base["out"])], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.startswith(f"Error: no run 'nosuchrun' in {base['out']}; newest runs: ")


@pytest.mark.parametrize("flag, want", [((), "decoder fp32, clip bf16"), (("--precision", "fp32"), "fp32")])
def test_continue_computes_in_the_precision_its_parent_recorded(base, tmp_path, flag, want):
    """The parent says it ran 'decoder fp32, clip bf16' on the CPU: its child does too, whatever this CPU's
    `auto` would pick, unless --precision is given."""
    parent = tmp_path / "output" / base["parent"].name
    shutil.copytree(base["parent"], parent)
    d = details(parent)
    d["precision"] = "decoder fp32, clip bf16"
    (parent / "details.json").write_text(json.dumps(d))
    r = invoke("continue", parent.name, "--steps", "1", "--output-dir", str(parent.parent), *flag)
    assert r.exit_code == 0, r.output
    assert details(made(r))["precision"] == want
