"""The loop's GPU-facing behaviour, proven on the CPU: non-finite steps skipped, loss scaling, portable state,
the compile fallback covering backward, MPS-safe border sampling, one host→device copy per cutout batch."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from vqclip import engine
from vqclip.config import build_config
from vqclip.pipeline.settings import DERIVED, settings_from_config
from vqclip.engine import loop
from vqclip.engine.cutouts import Cutouts, sample_border


def session(t: dict, state: dict | None = None, **settings: object) -> engine.Session:
    models = engine.load_models(t["vqgan_yaml"], t["vqgan_ckpt"], str(t["clip_json"]), str(t["clip_ckpt"]),
                                torch.device("cpu"))
    derived = {name: settings.pop(name) for name in list(settings) if name in DERIVED}
    cfg = build_config(None, {"prompt": "a red apple:1 | a green leaf:-0.5", "cutn": 4, "save_every": 0, **settings})
    s = settings_from_config(cfg, width=32, height=32, seed=5, **derived)  # type: ignore[arg-type]
    prompts = engine.build_prompts(models, s, cfg.text_prompts, [], [])
    return engine.start_session(models, s, prompts, state=state)


def test_a_non_finite_step_is_skipped_not_applied(tiny_models, monkeypatch):
    s = session(tiny_models)
    s.run(1)
    z_before = s.z.detach().clone()
    moments = {k: v.clone() for k, v in s.opt.state[s.z].items() if isinstance(v, torch.Tensor) and v.dim()}
    real = s._prompt_losses

    def overflowing(cuts, share=1.0):
        return {k: v * float("inf") for k, v in real(cuts, share).items()}

    monkeypatch.setattr(s, "_prompt_losses", overflowing)
    infos: list = []
    r = s.run(1, infos.append)
    assert r.skipped_steps == [2] and infos[0].skipped
    assert torch.equal(s.z.detach(), z_before)
    for k, v in moments.items():
        assert torch.equal(s.opt.state[s.z][k], v), k
    monkeypatch.setattr(s, "_prompt_losses", real)
    r = s.run(1, infos.append)  # and the run goes on
    assert r.skipped_steps == [] and not infos[1].skipped and not torch.equal(s.z.detach(), z_before)


@pytest.mark.parametrize("chunk", [0, 2])
def test_loss_scale_gives_the_same_steps(tiny_models, chunk):
    ref = session(tiny_models, clip_chunk=chunk)
    scaled = session(tiny_models, clip_chunk=chunk, loss_scale=1024.0, tv_weight=0.1, init_weight=0.5)
    ref2 = session(tiny_models, clip_chunk=chunk, tv_weight=0.1, init_weight=0.5)
    a, b = ref2.run(3), scaled.run(3)
    assert b.losses == pytest.approx(a.losses, rel=1e-5)
    assert torch.allclose(ref2.z, scaled.z, atol=1e-5)
    assert ref.run(1).losses  # the plain one runs too


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def test_state_is_all_cpu_and_names_its_device(tiny_models):
    s = session(tiny_models)
    s.run(2)
    state = s.state_dict()
    assert state["device_type"] == "cpu"
    assert all(t.device.type == "cpu" for t in _tensors(state))
    assert any(t.shape == s.z.shape for t in _tensors(state["optimizer_state"]))


def test_state_from_another_device_continues_with_a_note(tiny_models):
    """A state saved on CUDA (a device generator state beside the CPU one) continues on the CPU: the latent,
    step and optimizer carry over, the CPU generator is exact, and nothing fails."""
    s = session(tiny_models)
    s.run(2)
    state = s.state_dict()
    state["device_type"] = "cuda"
    state["rng_noise"] = torch.zeros(16, dtype=torch.uint8)  # a CUDA Philox state has 16 bytes
    again = session(tiny_models, state=state)
    assert again.step == 2 and torch.equal(again.z.detach(), s.z.detach())
    assert torch.equal(again.gen.get_state(), s.gen.get_state())
    assert again.run(1).steps_done == 1


def test_a_foreign_noise_state_is_replaced_by_one_from_the_seed(tiny_models):
    s = session(tiny_models)
    s.run(1)
    state = s.state_dict()
    state["device_type"] = "cuda"
    state["rng_noise"] = torch.zeros(16, dtype=torch.uint8)
    target = session(tiny_models)
    target.noise_gen = torch.Generator()  # stands for a device generator (separate from the CPU one)
    target._load_state(state)
    assert target.notes and "from cuda" in target.notes[0] and "derived from the seed" in target.notes[0]
    expect = torch.Generator().manual_seed(loop.derived_seed(5, 1))
    assert torch.equal(target.noise_gen.get_state(), expect.get_state())


@pytest.mark.parametrize("broken", ["rng", "optimizer"])
def test_a_state_that_does_not_fit_is_a_bad_state(tiny_models, broken):
    s = session(tiny_models)
    s.run(1)
    state = s.state_dict()
    if broken == "rng":
        state["rng_cpu"] = torch.zeros(7, dtype=torch.uint8)
    else:
        state["optimizer_state"]["param_groups"] = []
    with pytest.raises(loop.BadState):
        session(tiny_models, state=state)


class _FailsInBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        return x.clone()

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        raise RuntimeError("backward compile failure (as inductor can raise on the first backward)")


def test_compile_fallback_covers_the_backward_pass(tiny_models, monkeypatch):
    eager = session(tiny_models).run(2).losses

    def fake_compile(fn, **kw):
        return lambda x: fn(_FailsInBackward.apply(x))

    monkeypatch.setattr(torch, "compile", fake_compile)
    s = session(tiny_models, compile=True)
    assert s.run(2).losses == pytest.approx(eager, rel=1e-5)
    assert s.compile_error and "backward compile failure" in s.compile_error


def test_compile_fallback_does_not_swallow_out_of_memory(monkeypatch):
    def oom(x):
        raise loop.OutOfMemory("CUDA out of memory")

    monkeypatch.setattr(torch, "compile", lambda fn, **kw: oom)
    f = loop.compiled(lambda x: x * 2)
    with pytest.raises(loop.OutOfMemory):
        f(torch.ones(2, requires_grad=True))


def test_border_by_clamping_equals_border_padding():
    """The MPS form of border sampling: the same values and the same image gradient."""
    torch.manual_seed(0)
    img = torch.rand(1, 3, 13, 17, requires_grad=True)
    grid = torch.rand(1, 40, 40, 2) * 3 - 1.5  # many points outside the image
    a = sample_border(img, grid, clamp=False)
    (ga,) = torch.autograd.grad((a * torch.arange(a.numel()).view_as(a)).sum(), img)
    b = sample_border(img, grid, clamp=True)
    (gb,) = torch.autograd.grad((b * torch.arange(b.numel()).view_as(b)).sum(), img)
    assert torch.allclose(a, b, atol=1e-6) and torch.allclose(ga, gb, atol=1e-3, rtol=1e-5)


class _CountCopiesTo(TorchDispatchMode):
    """Counts copies of CPU tensors onto another device."""

    def __init__(self) -> None:
        super().__init__()
        self.copies = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.__name__
        if name.startswith(("_to_copy", "copy_")):
            src = args[1] if name.startswith("copy_") else args[0]
            dst_dev = args[0].device if name.startswith("copy_") else kwargs.get("device")
            if isinstance(src, torch.Tensor) and src.device.type == "cpu" and dst_dev is not None \
                    and torch.device(dst_dev).type != "cpu":
                self.copies += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("augment", [True, False])
def test_cutouts_copy_to_the_device_once(augment):
    """On a device (the meta device stands in for a GPU), one cutout batch sends its random parameters in a
    single copy and builds the grids there; the result has the right shape."""
    cut = Cutouts(16, 6, augment=augment, noise_fac=0.0)
    img = torch.empty(1, 3, 48, 64, device="meta")
    gen = torch.Generator().manual_seed(1)
    cut(img, gen)  # first call also makes the per-device constants (pixel centres, sharpen kernel)
    with _CountCopiesTo() as counter:
        out = cut(img, gen)
    assert out.shape == (6, 3, 16, 16) and out.device.type == "meta"
    assert counter.copies == 1


def test_cutouts_resume_exactly_from_a_generator_state():
    cut = Cutouts(16, 8)
    img = torch.rand(1, 3, 40, 56)
    g = torch.Generator().manual_seed(3)
    cut(img, g)
    saved = g.get_state()
    a = cut(img, g)
    g2 = torch.Generator()
    g2.set_state(saved)
    assert torch.equal(a, cut(img, g2))


def test_lagged_reports_arrive_in_order_and_survive_a_failing_step(tiny_models, monkeypatch):
    """With the GPU's one-step report lag (forced here), every step is reported once, in order, with the same
    numbers as unlagged; a step that raises keeps the losses of the steps before it."""
    plain = session(tiny_models).run(3)
    monkeypatch.setattr(loop, "report_lag", lambda device: 1)
    seen: list = []
    lagged = session(tiny_models).run(3, seen.append)
    assert [i.index for i in seen] == [1, 2, 3] and lagged.losses == plain.losses
    s = session(tiny_models)
    real, calls = s._backward, []

    def fails_third(out):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return real(out)

    monkeypatch.setattr(s, "_backward", fails_third)
    with pytest.raises(RuntimeError):
        s.run(5)
    assert s.partial.steps_done == 2 and s.partial.losses == plain.losses[:2]
