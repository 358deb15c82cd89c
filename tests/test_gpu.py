"""GPU readiness on CUDA: a tiny-model run at every precision, continuing a run across devices, a `failed` run
folder after an out-of-memory error mid-run, and the memory estimate against the allocator's measured peak (the
real architectures at random weights, through the bench worker, `vqclip.bench.worker`).

Marked `gpu`, so off by default: `pytest -m gpu` runs them (`scripts/gpu_check.py` does, on a GPU machine). They are
collected everywhere and skip inside, through the `cuda` fixture, when torch sees no CUDA device.
"""

from __future__ import annotations

import argparse
import gc
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from vqclip.cli import app
from vqclip.pipeline.execute import Reporter
from clihelp import Frames, details

pytestmark = pytest.mark.gpu
runner = CliRunner()


@pytest.fixture(autouse=True)
def cuda() -> torch.device:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (torch.cuda.is_available() is False)")
    yield torch.device("cuda")
    torch.cuda.set_per_process_memory_fraction(1.0)  # the OOM test squeezes it; never leave it squeezed
    gc.collect()
    torch.cuda.empty_cache()


def tiny_config(t: dict, **values: object):
    from vqclip.config import build_config

    base = {"prompt": "a red apple", "model": str(t["vqgan_yaml"]), "clip_model": str(t["clip_json"]),
            "clip_pretrained": str(t["clip_ckpt"]), "width": 32, "height": 32, "cutn": 4, "steps": 2,
            "save_every": 1, "seed": 11, "precision": "fp32"}
    return build_config(None, {**base, **values})


def expected_auto() -> str:
    cap = torch.cuda.get_device_capability()
    return "bf16" if cap >= (8, 0) else "fp16" if cap >= (5, 3) else "fp32"


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16", "auto"])
def test_tiny_run_on_cuda_at_each_precision(tiny_models, tmp_path, precision):
    if precision == "bf16" and torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("bf16 needs compute capability 8.0 or later")
    t, out = tiny_models, tmp_path / "output"
    r = runner.invoke(app, ["generate", "a red apple", "--model", str(t["vqgan_yaml"]), "--clip-model",
                            str(t["clip_json"]), "--clip-pretrained", str(t["clip_ckpt"]), "--size", "64x48",
                            "--cutn", "4", "--steps", "3", "--save-every", "1", "--seed", "5", "--device", "cuda",
                            "--precision", precision, "--output-dir", str(out), "-q"])
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output
    [run] = list(out.iterdir())
    assert {"output.png", "details.json", "state.pt"} <= {p.name for p in run.iterdir()}
    d = details(run)
    assert d["status"] == "finished" and d["steps_done"] == 3 and d["device"].startswith("cuda"), d
    assert len(d["losses"]) == 3 and all(math.isfinite(x) for x in d["losses"]), d["losses"]
    want = expected_auto() if precision == "auto" else precision
    assert d["precision"].split(",")[0] == want, d["precision"]
    assert Image.open(run / "output.png").size == (64, 48)
    state = torch.load(run / "state.pt", map_location="cpu", weights_only=True)
    assert state["step"] == 3 and torch.isfinite(state["z"]).all()


@pytest.mark.parametrize("first, then", [("cuda", "cpu"), ("cpu", "cuda")])
def test_continue_across_devices(tiny_models, tmp_path, first, then):
    """The latent, the optimizer's moments and the step counter carry over from one device to the other."""
    from vqclip.pipeline.resume import continue_run
    from vqclip.pipeline.execute import RunRequest, execute
    from vqclip.runs import RunInfo
    from vqclip.pipeline.media import to_uint8

    out = tmp_path / "output"
    parent = execute(RunRequest(config=tiny_config(tiny_models, device=first), output_dir=out))
    assert parent.status == "finished" and parent.details["device"].startswith(first)
    rep = Frames()
    child = continue_run(RunInfo(parent.path, parent.details), {"device": then, "steps": 2}, reporter=rep)
    assert child.status == "finished" and child.steps_done == 2 and child.global_step == 4
    d = child.details
    assert d["device"].startswith(then) and d["continue"]["start"] == "state" and d["parent"] == parent.id
    assert all(math.isfinite(x) for x in d["losses"])
    # the child starts from the parent's last latent: its first frame is the parent's image, decoded elsewhere
    first_frame = to_uint8(rep.frames[0]).astype(np.int16)
    last = np.asarray(Image.open(parent.path / "output.png").convert("RGB")).astype(np.int16)
    assert np.abs(first_frame - last).max() <= 2
    saved = torch.load(parent.path / "state.pt", map_location="cpu", weights_only=True)
    state = torch.load(child.path / "state.pt", map_location="cpu", weights_only=True)
    assert state["step"] == 4 and state["z"].shape == saved["z"].shape
    [moments] = state["optimizer_state"]["state"].values()
    assert float(moments["step"]) == 4  # Adam's own count went on from 2: its moments were loaded, not reset


def test_out_of_memory_mid_run_leaves_a_failed_run_folder(tiny_models, tmp_path):
    """Step 1 runs free; when it is reported the allocator is capped between what a salvage decode needs and what
    a step needs, so the next step to start runs out of memory (step 2, or step 3 where the loop reports a step once
    the next one is queued: `report_lag`), and the run must still be saved as `failed` with a one-line error."""
    from vqclip import engine
    from vqclip.engine import loop
    from vqclip.errors import VqclipError
    from vqclip.pipeline.execute import RunRequest, execute
    from vqclip.pipeline.settings import settings_from_config

    t, size, dev = tiny_models, 256, torch.device("cuda")  # the tiny decoder attends over all 128² tokens: GiBs
    cfg = tiny_config(t, width=size, height=size, steps=4, save_every=0, device="cuda", low_memory=False)
    # calibrate on the same models and settings: the extra memory of one step and of one no-grad decode
    models = engine.load_models(t["vqgan_yaml"], t["vqgan_ckpt"], str(t["clip_json"]), str(t["clip_ckpt"]), dev)
    settings = settings_from_config(cfg)  # the config's size, seed 11, cutn 4, fp32, no frames
    session = engine.start_session(models, settings, engine.build_prompts(models, settings, cfg.text_prompts, [], []))
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    peaks: list[int] = []
    session.run(1, lambda info: peaks.append(torch.cuda.max_memory_allocated()))
    step_extra = peaks[0] - base
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    session.image()
    image_extra = torch.cuda.max_memory_allocated() - before
    del session, models
    gc.collect()
    torch.cuda.empty_cache()
    assert step_extra > 1.5 * image_extra, (step_extra, image_extra)  # else no cap can tell the two apart
    total = torch.cuda.get_device_properties(dev).total_memory

    class Squeeze(Reporter):
        def step(self, info) -> None:
            if info.index == 1:
                gc.collect()
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
                limit = torch.cuda.memory_allocated() + (step_extra + image_extra) // 2
                torch.cuda.set_per_process_memory_fraction(min(1.0, limit / total))
                torch.cuda.empty_cache()

    out = tmp_path / "output"
    with pytest.raises(VqclipError) as err:
        execute(RunRequest(config=cfg, output_dir=out), Squeeze())
    message = err.value.message
    assert "\n" not in message and "out of memory" in message and "saved as run" in message, message
    [run] = list(out.iterdir())
    d = details(run)
    done = 1 + getattr(loop, "report_lag", lambda device: 0)(dev)  # steps already taken when step 1 is reported
    assert d["status"] == "failed" and d["steps_done"] == done and d["global_step"] == done, d
    assert len(d["losses"]) == done and all(math.isfinite(x) for x in d["losses"])
    assert "\n" not in d["error"] and "memory" in d["error"].lower(), d["error"]
    assert run.name in message
    assert Image.open(run / "output.png").size == (size, size)
    assert torch.load(run / "state.pt", map_location="cpu", weights_only=True)["step"] == done


def _bench():
    from vqclip.bench import engine

    return engine


@pytest.mark.parametrize("precision", ["fp32", "auto"])
def test_memory_estimate_covers_the_measured_peak(precision):
    """f16 ImageNet decoder + ViT-B/32 at random weights, 384² cutn 32, in a fresh process: the estimate a run
    plans with is at least the allocator's peak (`torch.cuda.max_memory_allocated`) and less than twice it."""
    args = argparse.Namespace(steps=1, warmup=1, device="cuda", threads=os.cpu_count() or 1, precision=precision)
    r = _bench().run_one("ours", 384, 32, args, timeout=300)
    assert "error" not in r, r
    measured, est = r["peak_cuda_mb"], r["estimate_mb"]
    assert measured <= est < 2 * measured, (measured, est, r.get("estimate_parts_mb"))
