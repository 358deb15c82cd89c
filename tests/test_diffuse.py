"""`vqclip diffuse` end to end on tiny models in the real file formats: the run folder, exact resume after a
stop, continuing a finished run from its picture, batch rows, the gallery, and one-line errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from clihelp import details, invoke, made


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny ADM U-Net (32 px, real key layout, its architecture in a .json beside it), the secondary model at
    width 8, and a tiny CLIP."""
    from vqclip.testing import make_tiny_clip
    from vqclip.testing_diffusion import make_tiny_secondary, make_tiny_unet

    folder = tmp_path_factory.mktemp("tiny_diffusion")
    unet, config = make_tiny_unet(folder)
    fields = dataclasses.asdict(config)
    fields.pop("description", None)
    unet.with_suffix(".json").write_text(json.dumps(fields))
    clip_json, clip_ckpt = make_tiny_clip(folder, "tiny-clip-diffusion")
    secondary, _ = make_tiny_secondary(folder)
    return {"unet": unet, "clip_json": clip_json, "clip_ckpt": clip_ckpt, "secondary": secondary,
            "folder": folder}


def args(t: dict[str, Path], out: Path, *extra: str, steps: int = 4) -> list[str]:
    return ["--model", str(t["unet"]), "--clip-model", str(t["clip_json"]), "--clip-pretrained", str(t["clip_ckpt"]),
            "--size", "64x64", "--steps", str(steps), "--cutn", "2", "--cutn-batches", "1", "--seed", "3",
            "--device", "cpu", "--save-every", "1", "-o", str(out), "-q", *extra]


def png(run: Path) -> bytes:
    return (run / "output.png").read_bytes()


def test_diffuse_makes_a_run_folder(tiny, tmp_path):
    r = invoke("diffuse", "a red square:1 | blurry:-0.3", *args(tiny, tmp_path / "out"))
    assert r.exit_code == 0, r.output
    run = made(r)
    d = details(run)
    assert d["engine"] == "diffusion" and d["status"] == "finished" and d["steps_done"] == 4
    assert d["diffusion"]["sampler"] == "ddim" and d["diffusion"]["steps"] == 4 and d["size"] == [64, 64]
    assert d["config"]["guidance_scale"] == 1000.0 and d["score"]["summary"] is not None
    assert {"output.png", "anim.mp4", "state.pt", "details.json"} <= {p.name for p in run.iterdir()}
    from PIL import Image

    with Image.open(run / "output.png") as img:
        assert img.size == (64, 64) and "parameters" in img.text
    import re

    from vqclip.gallery import build_gallery

    build_gallery(tmp_path / "out")  # the gallery's card says which engine made it
    assert re.search(r'"engine":\s*"diffusion"', (tmp_path / "out" / "index.html").read_text())


def test_stop_then_continue_is_exact(tiny, tmp_path):
    """Stop after 2 of 5 steps, `vqclip continue`: the same output.png bytes as one uninterrupted run (CPU)."""
    from vqclip.config import build_config
    from vqclip.pipeline.execute import execute
    from vqclip.pipeline.request import Inputs, RunRequest

    r = invoke("diffuse", "a red square", *args(tiny, tmp_path / "whole", "--sampler", "plms", steps=5))
    assert r.exit_code == 0, r.output
    whole = made(r)
    t = tiny
    cfg = build_config(None, {"engine": "diffusion", "prompt": "a red square", "model": str(t["unet"]),
                              "clip_model": str(t["clip_json"]), "clip_pretrained": str(t["clip_ckpt"]),
                              "width": 64, "height": 64, "steps": 5, "cutn": 2, "cutn_batches": 1, "seed": 3,
                              "device": "cpu", "save_every": 1, "sampler": "plms"})
    calls = iter(range(100))
    part = execute(RunRequest(config=cfg, output_dir=tmp_path / "out", inputs=Inputs(download=False),
                              should_stop=lambda: next(calls) >= 2))
    assert part.status == "interrupted" and part.steps_done == 2
    r = invoke("continue", str(part.path))
    assert r.exit_code == 0, r.output
    child = made(r)
    d = details(child)
    assert d["engine"] == "diffusion" and d["global_step"] == 5 and d["steps_done"] == 3
    assert png(child) == png(whole)


def test_continuing_a_finished_run_starts_from_its_picture(tiny, tmp_path):
    r = invoke("diffuse", "a red square", *args(tiny, tmp_path / "out"))
    assert r.exit_code == 0, r.output
    r = invoke("continue", str(made(r)), "--prompt", "a blue circle", "--skip-steps", "2")
    assert r.exit_code == 0, r.output
    d = details(made(r))
    assert d["continue"]["start"] == "output.png" and d["diffusion"]["skip_steps"] == 2 and d["steps_done"] == 2
    assert "skipping 2 of 4 steps" in r.output


def test_secondary_model_guides(tiny, tmp_path, monkeypatch):
    """--secondary: the registry's secondary model (its real width, random weights, under its published name;
    no published hash here, so it is trusted on first use)."""
    import torch

    from vqclip.engine.diffusion.secondary import SecondaryDiffusionImageNet2
    from vqclip.weights import registry

    home = tmp_path / "weights"
    home.mkdir()
    spec = registry.DIFFUSION_WEIGHTS["secondary_model_imagenet_2"]
    torch.save(SecondaryDiffusionImageNet2(64).state_dict(), home / spec.filename)
    monkeypatch.setitem(registry.DIFFUSION_WEIGHTS, spec.name, dataclasses.replace(spec, sha256=None))
    r = invoke("diffuse", "a red square", *args(tiny, tmp_path / "out", "--secondary", "--weights-dir", str(home),
                                                 "--no-download"))
    assert r.exit_code == 0, r.output
    d = details(made(r))
    assert d["diffusion"]["secondary"] is True and d["status"] == "finished"


BAD = [
    (["--size", "100x64"], 2, "multiple of 64"),
    (["--size", "256x64"], 2, "too large for this 32x32 model"),
    (["--skip-steps", "4"], 1, "skip_steps"),
    (["--clip", "x/y:0"], 1, "weight 0"),
    (["--sampler", "euler"], 1, "sampler"),
    (["--eta", "2"], 1, "eta"),
]


@pytest.mark.parametrize("extra,code,says", BAD, ids=[" ".join(b[0]) for b in BAD])
def test_bad_diffusion_settings_are_one_line(tiny, tmp_path, extra, code, says):
    out = tmp_path / "out"
    r = invoke("diffuse", "a red square", *args(tiny, out), *extra)
    assert r.exit_code == code, r.output
    assert says in r.output and r.output.count("\n") <= 2
    assert not out.exists() or not [p for p in out.iterdir() if not p.name.startswith(".")]


def test_the_wrong_checkpoint_is_named(tiny, tmp_path):
    r = invoke("diffuse", "a red square", *args(tiny, tmp_path / "out"), "--model", str(tiny["secondary"]))
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "secondary model" in r.output


def test_dry_run_estimates_without_running(tiny, tmp_path):
    out = tmp_path / "out"
    r = invoke("diffuse", "a red square", *args(tiny, out), "--dry-run", "--model", "256x256_diffusion_uncond",
               "--size", "256x256")
    assert r.exit_code in (0, 1), r.output
    assert "guided through the U-Net" in r.output and "--secondary" in r.output and not out.exists()


def test_batch_rows_of_diffusion(tiny, tmp_path):
    rows = tmp_path / "rows.jsonl"
    t = tiny
    base: dict[str, Any] = {"engine": "diffusion", "model": str(t["unet"]), "clip_model": str(t["clip_json"]),
                            "clip_pretrained": str(t["clip_ckpt"]), "size": "64x64", "steps": 2, "cutn": 2,
                            "cutn_batches": 1, "device": "cpu"}
    rows.write_text("\n".join(json.dumps({**base, "prompt": p, "guidance_scale": g})
                              for p, g in (("red", 500), ("blue", 2000))) + "\n")
    out = tmp_path / "output"
    r = invoke("batch", str(rows), "--output-dir", str(out), "--devices", "cpu")
    assert r.exit_code == 0, r.output
    runs = [p for p in out.iterdir() if (p / "details.json").is_file()]
    assert len(runs) == 2 and {details(p)["engine"] for p in runs} == {"diffusion"}
    assert sorted(details(p)["config"]["guidance_scale"] for p in runs) == [500, 2000]


def test_weights_download_of_a_diffusion_model_is_verified(tmp_path, monkeypatch):
    """`vqclip weights download secondary_model_imagenet_2` from a loopback server: the right bytes land under
    the published name; wrong bytes are refused and leave nothing."""
    import hashlib
    import http.server
    import threading

    from vqclip.weights import registry

    good = b"a diffusion checkpoint" * 1000
    served = {"body": good}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = served["body"]
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        spec = registry.DIFFUSION_WEIGHTS["secondary_model_imagenet_2"]
        url = f"http://127.0.0.1:{server.server_address[1]}/{spec.filename}"
        monkeypatch.setitem(registry.DIFFUSION_WEIGHTS, spec.name, dataclasses.replace(
            spec, url=url, mirrors=(), sha256=hashlib.sha256(good).hexdigest(), size=len(good)))
        folder = tmp_path / "weights"
        r = invoke("weights", "download", spec.name, "--weights-dir", str(folder))
        assert r.exit_code == 0, r.output
        assert (folder / spec.filename).read_bytes() == good
        (folder / spec.filename).unlink()
        served["body"] = b"x" * len(good)
        r = invoke("weights", "download", spec.name, "--weights-dir", str(folder))
        assert r.exit_code == 1 and "Traceback" not in r.output
        assert not (folder / spec.filename).exists()
    finally:
        server.shutdown()
