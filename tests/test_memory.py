"""Issue 6 on tiny models: no memory growth across runs, the estimate, the up-front refusal, `--dry-run`,
low-memory mode and `--compile`, and the lean decoder/ViT forwards against taming's and open_clip's own."""

from __future__ import annotations

import gc
import json
import warnings
from functools import partial

import psutil
import pytest
import torch
from typer.testing import CliRunner

from vqclip.pipeline.request import Inputs
from vqclip import engine
from vqclip.pipeline import budget, memory
from vqclip.cli import app
from vqclip.config import build_config
from vqclip.pipeline.settings import DERIVED, settings_from_config
from vqclip.engine import loop
from vqclip.engine.heap import trim_heap
from vqclip.engine.precision import choose_precision
from vqclip.weights.registry import packaged_yaml
from clihelp import tiny_args as _tiny_args

runner = CliRunner()
tiny_args = partial(_tiny_args, size=None, steps=2, save_every=0)


def tiny_session(t: dict, **settings: object) -> engine.Session:
    models = engine.load_models(t["vqgan_yaml"], t["vqgan_ckpt"], str(t["clip_json"]), str(t["clip_ckpt"]),
                                torch.device("cpu"))
    derived = {name: settings.pop(name) for name in list(settings) if name in DERIVED}
    cfg = build_config(None, {"prompt": "a red apple:1 | a green leaf:-0.5", "cutn": 4, "save_every": 0, **settings})
    s = settings_from_config(cfg, width=32, height=32, seed=3, **derived)  # type: ignore[arg-type]
    prompts = engine.build_prompts(models, s, cfg.text_prompts, [], [])
    return engine.start_session(models, s, prompts)


def live_tensors() -> int:
    gc.collect()
    with warnings.catch_warnings():  # isinstance on torch.distributed's deprecated aliases warns
        warnings.simplefilter("ignore")
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))


def test_ten_runs_in_one_process_do_not_grow_memory(tiny_models, tmp_path):
    """The original app leaked memory across runs until a restart; here the 10th run ends where the 3rd did."""
    from vqclip.pipeline.execute import RunRequest, execute

    cfg = build_config(None, {"prompt": "a blue sky", "model": str(tiny_models["vqgan_yaml"]),
                              "clip_model": str(tiny_models["clip_json"]),
                              "clip_pretrained": str(tiny_models["clip_ckpt"]), "size": "32x32", "cutn": 4,
                              "steps": 2, "save_every": 0, "seed": 1})
    proc = psutil.Process()
    seen: list[tuple[int, float]] = []
    for i in range(10):
        outcome = execute(RunRequest(config=cfg, output_dir=tmp_path / "out", inputs=Inputs(download=False)))
        assert outcome.status == "finished"
        del outcome
        trim_heap()
        seen.append((live_tensors(), proc.memory_info().rss / 2**20))
    tensors, rss = zip(*seen)
    assert tensors[9] <= tensors[2] + 5, tensors  # nothing retained across runs
    assert rss[9] - rss[2] < 40, rss  # MiB, with allocator slack


def test_estimate_grows_with_size_and_cutn_and_low_memory_is_smaller():
    spec = engine.read_spec(packaged_yaml("vqgan_imagenet_f16_16384"))
    clip = "ViT-B-32-quickgelu"
    by_size = [memory.estimate(spec, clip, s, s, 32, "cpu").total for s in (128, 256, 384, 512, 1024)]
    assert by_size == sorted(by_size) and len(set(by_size)) == len(by_size)
    by_cutn = [memory.estimate(spec, clip, 256, 256, n, "cpu").total for n in (1, 8, 32, 64, 128)]
    assert by_cutn == sorted(by_cutn) and len(set(by_cutn)) == len(by_cutn)
    for s in (256, 1024):
        normal = memory.estimate(spec, clip, s, s, 64, "cpu")
        low = memory.estimate(spec, clip, s, s, 64, "cpu", low_memory=True)
        assert low.decoder_activations < normal.decoder_activations and low.total < normal.total
    wide = memory.estimate(spec, clip, 512, 256, 32, "cpu").total
    assert by_size[1] < wide < by_size[3]


def test_largest_fitting_is_monotonic_in_budget():
    spec = engine.read_spec(packaged_yaml("vqgan_imagenet_f16_16384"))
    sizes = [memory.largest_fitting(spec, "ViT-B-32-quickgelu", 480, 320, 32, b * 2**30, "cpu", None, False)
             for b in (3, 6, 12)]
    assert all(s is not None for s in sizes)
    areas = [w * h for w, h in sizes]  # type: ignore[misc]
    assert areas == sorted(areas) and len(set(areas)) == 3
    for w, h in sizes:  # type: ignore[misc]
        assert w % 16 == 0 and h % 16 == 0 and abs(w / h - 1.5) < 0.1


def test_run_that_cannot_fit_is_refused_up_front(tiny_models, tmp_path, monkeypatch):
    spec = engine.read_spec(tiny_models["vqgan_yaml"])
    clip = str(tiny_models["clip_json"])
    small = memory.estimate(spec, clip, 64, 64, 4, "cpu", choose_precision("auto", torch.device("cpu")),
                            low_memory=True)
    monkeypatch.setenv(budget.BUDGET_ENV, str(small.total + 2**20))
    out = tmp_path / "out"
    r = runner.invoke(app, ["generate", "a blue sky", *tiny_args(tiny_models, out, "--size", "1024x512")])
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output
    line = r.output.strip()
    assert "\n" not in line, r.output
    assert "1024x512" in line and "largest size that fits is" in line
    w, h = (int(v) for v in line.split("largest size that fits is ")[1].split()[0].split("x"))
    assert 64 <= w < 1024 and abs(2 * h - w) <= 4
    assert not out.exists() or not any(out.iterdir())  # no run folder


def test_low_memory_switches_on_when_the_estimate_says_so(tiny_models, monkeypatch):
    spec = engine.read_spec(tiny_models["vqgan_yaml"])
    cfg = build_config(None, {"prompt": "x", "clip_model": str(tiny_models["clip_json"]), "cutn": 32})
    prec = choose_precision("auto", torch.device("cpu"))
    normal = memory.estimate(spec, cfg.clip_model, 256, 256, 32, "cpu", prec)
    low = memory.estimate(spec, cfg.clip_model, 256, 256, 32, "cpu", prec, low_memory=True)
    monkeypatch.setenv(budget.BUDGET_ENV, str((normal.total + low.total) // 2))
    plan = budget.plan_run(cfg, spec, 256, 256, torch.device("cpu"), prec)
    assert plan.low_memory and plan.note and "low-memory mode on" in plan.note and plan.clip_chunk == 8
    monkeypatch.setenv(budget.BUDGET_ENV, "64GiB")
    plan = budget.plan_run(cfg, spec, 256, 256, torch.device("cpu"), prec)
    assert not plan.low_memory and plan.note is None and plan.clip_chunk == 16


def test_dry_run_prints_the_estimate(tiny_models, tmp_path):
    out = tmp_path / "out"
    r = runner.invoke(app, ["generate", "a blue sky", *tiny_args(tiny_models, out, "--size", "96x64", "--dry-run")])
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "Estimated peak memory" in text and "96x64" in text and "cutn 4" in text
    assert "estimated peak" in text and "GiB" in text or "MiB" in text
    assert "Largest size that fits (normal, cutn 4)" in text
    assert not out.exists()


def test_dry_run_for_the_default_model_needs_no_download(tmp_path):
    r = runner.invoke(app, ["generate", "a blue sky", "--size", "480x480", "--dry-run", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "vqgan_imagenet_f16_16384" in r.output and "Largest size that fits" in r.output


def test_low_memory_gives_the_same_losses(tiny_models):
    normal = tiny_session(tiny_models).run(3)
    low = tiny_session(tiny_models, low_memory=True, clip_chunk=3).run(3)
    assert low.losses == pytest.approx(normal.losses, rel=1e-4, abs=1e-6)
    assert torch.allclose(low.image, normal.image, atol=1e-4)


def test_bf16_stored_weights_stay_close(tiny_models):
    ref = tiny_session(tiny_models)
    s = tiny_session(tiny_models)
    s.vqgan.set_weight_dtype(torch.bfloat16)
    assert s.clip.set_weight_dtype(torch.bfloat16)
    with torch.no_grad():
        a, b = ref.synth(ref.z), s.synth(s.z)
    assert (a - b).abs().max() < 0.05
    assert s.run(2).losses == pytest.approx(ref.run(2).losses, rel=0.05)


def test_compile_works_or_falls_back_cleanly(tiny_models, monkeypatch):
    eager = tiny_session(tiny_models).run(2).losses
    from vqclip.engine import compile as compiling

    monkeypatch.setattr(compiling, "COMPILE_BACKEND", "aot_eager")
    s = tiny_session(tiny_models, compile=True)
    got = s.run(2).losses
    assert got == pytest.approx(eager, rel=1e-4)
    assert s.compile_error is None or isinstance(s.compile_error, str)

    def broken(*a: object, **k: object) -> object:
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    s = tiny_session(tiny_models, compile=True)
    assert s.run(2).losses == pytest.approx(eager, rel=1e-4)
    assert s.compile_error and "no compiler here" in s.compile_error

    def fails_when_called(fn: object, **k: object) -> object:
        def call(*a: object) -> object:
            raise RuntimeError("BackendCompilerFailed: inductor")
        return call

    monkeypatch.setattr(torch, "compile", fails_when_called)
    s = tiny_session(tiny_models, compile=True)
    assert s.run(2).losses == pytest.approx(eager, rel=1e-4)
    assert "inductor" in (s.compile_error or "")


def test_lean_decoder_matches_taming(tiny_models):
    from vqclip.engine import decoder as lean

    vq = engine.load_models(tiny_models["vqgan_yaml"], tiny_models["vqgan_ckpt"], str(tiny_models["clip_json"]),
                            str(tiny_models["clip_ckpt"]), torch.device("cpu")).vqgan
    assert lean.lean_supported(vq.decoder)
    z = torch.randn(1, vq.spec.embed_dim, 12, 10, requires_grad=True)
    z2 = z.detach().clone().requires_grad_(True)
    ref = vq.decoder(vq.post_quant_conv(z2))
    g = torch.randn_like(ref)
    ref.backward(g)
    for low in (False, True):
        z.grad = None
        out = vq.decode(z, low_memory=low)
        out.backward(g)
        assert torch.allclose(out, ref, atol=1e-5)
        assert (z.grad - z2.grad).norm() / z2.grad.norm() < 1e-5


def test_lean_vit_matches_open_clip(tiny_models):
    from vqclip.engine import vit

    clip = engine.load_clip(str(tiny_models["clip_json"]), str(tiny_models["clip_ckpt"]))
    assert clip.lean and vit.lean_supported(clip.model.visual)
    x = torch.rand(3, 3, clip.input_size, clip.input_size, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    ref = clip.model.encode_image(x2)
    out = clip.encode_image(x)
    g = torch.randn_like(ref)
    ref.backward(g)
    out.backward(g)
    assert torch.allclose(out, ref, atol=1e-5)
    assert (x.grad - x2.grad).norm() / x2.grad.norm() < 1e-5


def test_text_tower_released_and_encoder_dropped(tiny_models):
    models = engine.load_models(tiny_models["vqgan_yaml"], tiny_models["vqgan_ckpt"], str(tiny_models["clip_json"]),
                                str(tiny_models["clip_ckpt"]), torch.device("cpu"), with_encoder=True)
    before = sum(p.numel() for p in models.clip.model.parameters())
    budget.release_unused(models)
    assert sum(p.numel() for p in models.clip.model.parameters()) < before
    assert models.vqgan.encoder is None
    with pytest.raises(RuntimeError, match="text tower"):
        models.clip.encode_text(["x"], torch.device("cpu"))


def test_details_record_precision_and_memory_plan(tiny_models, tmp_path, monkeypatch):
    from vqclip.engine import precision

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)  # a CPU without native bf16
    out = tmp_path / "out"
    r = runner.invoke(app, ["generate", "a blue sky", *tiny_args(tiny_models, out, "--size", "32x32")])
    assert r.exit_code == 0, r.output
    [run] = list(out.iterdir())
    d = json.loads((run / "details.json").read_text())
    assert d["low_memory"] is False and d["memory_estimate_mb"] > 0 and "fp32" in d["precision"]


@pytest.mark.slow
def test_real_architectures_lean_paths_match():
    """The f16 ImageNet decoder and ViT-B/32 at random weights: lean forwards equal the originals."""
    import contextlib
    import io

    from taming.modules.diffusionmodules.model import Decoder

    from vqclip.engine import decoder as lean
    from vqclip.engine import vit

    spec = engine.read_spec(packaged_yaml("vqgan_imagenet_f16_16384"))
    with contextlib.redirect_stdout(io.StringIO()):
        dec = Decoder(**spec.ddconfig).eval().requires_grad_(False)
    z = torch.randn(1, 256, 8, 8, requires_grad=True)
    z2 = z.detach().clone().requires_grad_(True)
    ref = dec(z2)
    out = lean.decode(dec, z)
    g = torch.randn_like(ref)
    ref.backward(g)
    out.backward(g)
    assert ((out - ref).norm() / ref.norm()) < 1e-4
    assert ((z.grad - z2.grad).norm() / z2.grad.norm()) < 1e-3
    clip = engine.load_clip("ViT-B-32-quickgelu", "none")
    x = torch.rand(4, 3, 224, 224, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    a, b = clip.model.encode_image(x2), vit.encode_image(clip.model.visual, x)
    a.sum().backward()
    b.sum().backward()
    assert ((a - b).norm() / a.norm()) < 1e-5 and ((x.grad - x2.grad).norm() / x2.grad.norm()) < 1e-4


@pytest.mark.slow
def test_estimate_predicts_measured_peak(tmp_path):
    """One bench worker at 128²/cutn 16 (real architectures, random weights): estimate within 20% of peak RSS."""
    import argparse

    from vqclip.bench.engine import run_one

    args = argparse.Namespace(steps=1, warmup=1, device="cpu", threads=2, weights=str(tmp_path / "weights"))
    r = run_one("ours", 128, 16, args)
    assert "error" not in r, r
    assert abs(r["estimate_mb"] - r["peak_rss_mb"]) / r["peak_rss_mb"] < 0.2, r
