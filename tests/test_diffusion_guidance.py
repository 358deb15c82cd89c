"""CLIP guidance on the predicted x0 with tiny random models (tiny open_clip, tiny U-Net, tiny secondary model):
finite and clamped gradients that lower the loss, ensembles and their weights, the one-line refusals, and an
exactly resumable guided run on the CPU."""

from __future__ import annotations

import pytest
import torch

from vqclip.engine.clip import load_clip
from vqclip.engine.diffusion.gaussian import SpacedDiffusion
from vqclip.engine.diffusion.guidance import (ClipGuidance, GuidanceReport, GuidanceSettings, GuidedClip,
                                              clamp_grad, overview_cuts)
from vqclip.engine.diffusion.samplers import Sampler, start_x
from vqclip.engine.losses import Prompt
from vqclip.errors import VqclipError
from vqclip.testing import make_tiny_clip
from vqclip.testing_diffusion import make_tiny_secondary, make_tiny_unet
from vqclip.weights.diffusion import load_secondary, load_unet

QUIET = dict(tv_scale=0.0, range_scale=0.0, sat_scale=0.0, clamp_max=0.0, cutn=4, cutn_batches=1, cut_pow=1.0)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("diffusion_models")
    clips = []
    for k in range(2):
        cfg, ckpt = make_tiny_clip(folder, f"tiny-clip-d{k}", seed=k)
        clips.append(load_clip(str(cfg), str(ckpt)))
    unet_path, cfg = make_tiny_unet(folder)
    sec_path, width = make_tiny_secondary(folder)
    return {"clips": clips, "unet": load_unet(unet_path, cfg), "secondary": load_secondary(sec_path, width=width)}


def target_prompt(clip, weight: float = 1.0) -> Prompt:
    """An easy target: the embedding of a fixed colourful image."""
    img = torch.linspace(0, 1, 3 * 32 * 32).view(1, 3, 32, 32).roll(300)
    with torch.no_grad():
        return Prompt(clip.encode_image(clip.normalize(img)), weight, label="target")


def clip_loss(g: ClipGuidance, x_in: torch.Tensor, seed: int) -> float:
    g.generator.manual_seed(seed)
    with torch.no_grad():
        return float(sum(c.weight * g.clip_loss(c, x_in) for c in g.clips))


def test_secondary_guidance_gradient_is_finite_and_lowers_the_clip_loss(models) -> None:
    d = SpacedDiffusion.create(10)
    clip = models["clips"][0]
    g = ClipGuidance(d, [GuidedClip(clip, [target_prompt(clip)])], GuidanceSettings(**QUIET),
                     secondary=models["secondary"])
    assert not g.needs_model_grad
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    i = d.batch_index(6, x)
    g.generator.manual_seed(5)
    grad = g(x, i, {})
    assert grad.shape == x.shape and torch.isfinite(grad).all() and grad.abs().max() > 0

    def loss_at(xt: torch.Tensor) -> float:
        with torch.no_grad():
            x0 = g.predict_x0(xt, i, {})
            fac = d.extract(d.sqrt_one_minus_alphas_cumprod, i, xt)
            return clip_loss(g, x0 * fac + xt * (1 - fac), seed=5)

    step = 1e-3 / grad.square().mean().sqrt()
    assert loss_at(x + step * grad) < loss_at(x)  # the gradient is −∇loss: following it lowers the loss
    report = GuidanceReport.of(g)
    assert set(report.losses) == {"clip0"} and not report.nonfinite


def test_unet_guidance_runs_through_the_models_x0_and_is_clamped(models) -> None:
    d = SpacedDiffusion.create(10)
    unet, clip = models["unet"], models["clips"][0]
    settings = GuidanceSettings(**{**QUIET, "clamp_max": 0.01, "tv_scale": 5.0, "range_scale": 5.0,
                                   "sat_scale": 1.0, "overview": 2})
    g = ClipGuidance(d, [GuidedClip(clip, [target_prompt(clip)])], settings)
    assert g.needs_model_grad
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)).requires_grad_()
    i = d.batch_index(8, x)
    out = d.p_mean_variance(unet(x, d.model_timesteps(i)), x, i)
    grad = g(x, i, out)
    rms = grad.square().mean().sqrt()
    assert torch.isfinite(grad).all() and 0 < rms <= 0.01 + 1e-7
    assert {"clip0", "tv", "range", "sat"} <= set(g.last)


def test_range_and_init_losses_reach_x_t(models) -> None:
    """The range loss acts on x_t (in Disco Diffusion it did not), and the init MSE pulls x_in to the init."""
    d = SpacedDiffusion.create(10)
    clip = models["clips"][0]
    init = torch.full((1, 3, 32, 32), 0.25)
    only_range = GuidanceSettings(**{**QUIET, "clip_guidance_scale": 0.0, "range_scale": 10.0})
    g = ClipGuidance(d, [GuidedClip(clip, [target_prompt(clip)])], only_range, secondary=models["secondary"])
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 3
    i = d.batch_index(5, x)
    grad = g(x, i, {})
    assert float(g.last["range"]) > 0 and grad.abs().max() > 0
    only_init = GuidanceSettings(**{**QUIET, "clip_guidance_scale": 0.0, "init_scale": 100.0})
    g = ClipGuidance(d, [GuidedClip(clip, [target_prompt(clip)])], only_init, secondary=models["secondary"],
                     init=init)
    grad = g(x, i, {})

    def mse(xt: torch.Tensor) -> float:
        with torch.no_grad():
            x0 = g.predict_x0(xt, i, {})
            fac = d.extract(d.sqrt_one_minus_alphas_cumprod, i, xt)
            return float((x0 * fac + xt * (1 - fac) - init).pow(2).mean())

    assert mse(x + 1e-3 * grad / grad.square().mean().sqrt()) < mse(x)


def test_ensemble_weights(models) -> None:
    d = SpacedDiffusion.create(10)
    a, b = models["clips"]
    settings = GuidanceSettings(**QUIET)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    i = d.batch_index(4, x)

    def grad_of(entries: list[GuidedClip]) -> torch.Tensor:
        g = ClipGuidance(d, entries, settings, secondary=models["secondary"],
                         generator=torch.Generator().manual_seed(9))
        return g(x, i, {})

    alone = grad_of([GuidedClip(a, [target_prompt(a)], 1.0)])
    with_zero = grad_of([GuidedClip(a, [target_prompt(a)], 1.0), GuidedClip(b, [target_prompt(b)], 0.0)])
    torch.testing.assert_close(with_zero, alone)
    both = grad_of([GuidedClip(a, [target_prompt(a)], 1.0), GuidedClip(b, [target_prompt(b)], 0.5)])
    assert not torch.allclose(both, alone)
    doubled = grad_of([GuidedClip(a, [target_prompt(a)], 2.0)])
    torch.testing.assert_close(doubled, 2 * alone)  # no clamp: the weight scales the gradient
    with pytest.raises(VqclipError, match="every CLIP model has weight 0") as e:
        grad_of([GuidedClip(a, [target_prompt(a)], 0.0), GuidedClip(b, [target_prompt(b)], 0.0)])
    assert "\n" not in str(e.value)
    with pytest.raises(VqclipError, match="add up to 0"):
        grad_of([GuidedClip(a, [target_prompt(a, 1.0), target_prompt(a, -1.0)])])


def test_nonfinite_gradient_becomes_zero(models) -> None:
    d = SpacedDiffusion.create(10)
    clip = models["clips"][0]
    g = ClipGuidance(d, [GuidedClip(clip, [target_prompt(clip)])], GuidanceSettings(**QUIET),
                     secondary=models["secondary"])
    x = torch.full((1, 3, 32, 32), float("nan"))
    grad = g(x, d.batch_index(3, x), {})
    assert torch.equal(grad, torch.zeros_like(x)) and g.last["nonfinite"] is True


def test_clamp_and_overview_cuts() -> None:
    grad = torch.randn(1, 3, 8, 8) * 10
    clamped = clamp_grad(grad, 0.05)
    torch.testing.assert_close(clamped.square().mean().sqrt(), torch.tensor(0.05))
    torch.testing.assert_close(clamped / clamped.norm(), grad / grad.norm())
    assert torch.equal(clamp_grad(torch.zeros(2, 2), 0.05), torch.zeros(2, 2))
    img = torch.rand(1, 3, 16, 32)
    cuts = overview_cuts(img, 8, 4)
    assert cuts.shape == (4, 3, 8, 8)
    torch.testing.assert_close(cuts[2], cuts[0].flip(-1))
    assert torch.allclose(cuts[1][0], cuts[1][1]) and torch.allclose(cuts[3], cuts[1].flip(-1))
    assert cuts[0, :, 0].abs().max() == 0  # black padding above the wide image
    assert overview_cuts(img, 8, 6).shape == (6, 3, 8, 8) and overview_cuts(img, 8, 0).shape[0] == 0


@pytest.mark.parametrize("method,use_secondary", [("ddim", False), ("plms", True)])
def test_guided_run_resumes_exactly(models, method: str, use_secondary: bool) -> None:
    """Stop a guided run after k steps, keep (sampler state, guidance RNG), continue with fresh objects: the
    same bytes as an uninterrupted run, on the CPU."""
    d = SpacedDiffusion.create(5)
    unet, clip = models["unet"], models["clips"][0]
    settings = GuidanceSettings(**{**QUIET, "tv_scale": 10.0, "range_scale": 10.0, "clamp_max": 0.05,
                                   "overview": 1, "cutn": 2, "cutn_batches": 2})

    def fresh(x: torch.Tensor) -> tuple[Sampler, ClipGuidance]:
        g = ClipGuidance(d, [GuidedClip(clip, [target_prompt(clip)])], settings,
                         secondary=models["secondary"] if use_secondary else None,
                         generator=torch.Generator().manual_seed(21))
        s = Sampler(d, lambda xt, t: unet(xt, t), x, method=method, eta=0.8, cond_fn=g, skip_steps=1,
                    generator=torch.Generator().manual_seed(22))
        return s, g

    noise = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    init = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(5)) * 2 - 1
    whole, _ = fresh(start_x(d, noise, 1, init))
    while not whole.finished:
        whole.step()
    first, g1 = fresh(start_x(d, noise, 1, init))
    first.step()
    first.step()
    saved = {"sampler": first.state_dict(), "guidance_rng": g1.generator.get_state()}
    second, g2 = fresh(torch.zeros_like(noise))
    second.load_state_dict(saved["sampler"])
    g2.generator.set_state(saved["guidance_rng"])
    while not second.finished:
        second.step()
    assert second.done == 4 and torch.isfinite(second.x).all()
    assert torch.equal(second.x, whole.x)
