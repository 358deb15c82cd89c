"""The Gaussian diffusion arithmetic and the DDIM/PLMS samplers against OpenAI's reference (PyPI
`guided-diffusion-sdk`, Katherine Crowson's fork with PLMS and `skip_timesteps`), and exact resume."""

from __future__ import annotations

import warnings

import pytest
import torch

from vqclip.engine.diffusion.gaussian import SpacedDiffusion, named_betas, space_timesteps
from vqclip.engine.diffusion.samplers import Sampler, sample, start_x

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    gd = pytest.importorskip("guided_diffusion.gaussian_diffusion",
                             reason="the test extra installs guided-diffusion-sdk")
    respace = pytest.importorskip("guided_diffusion.respace")
    script_util = pytest.importorskip("guided_diffusion.script_util")


def reference(respacing: str, schedule: str = "linear"):
    return script_util.create_gaussian_diffusion(
        steps=1000, learn_sigma=True, noise_schedule=schedule, use_kl=False, predict_xstart=False,
        rescale_timesteps=True, rescale_learned_sigmas=False, timestep_respacing=respacing)


def toy_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A smooth stand-in for the U-Net that depends on the timestep it is given (so the mapping is checked)."""
    s = (t.float() / 1000).view(-1, 1, 1, 1)
    return torch.cat([torch.sin(1.3 * x + 3 * s) * 0.8, torch.tanh(0.7 * x - s)], 1)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_betas_equal_reference(schedule: str) -> None:
    ref = torch.from_numpy(gd.get_named_beta_schedule(schedule, 1000))
    assert torch.equal(named_betas(schedule, 1000), ref)


@pytest.mark.parametrize("counts", ["ddim25", "ddim50", "ddim250", "250", "1000", "10,15,20", "27", "3,4"])
def test_space_timesteps_equal_reference(counts: str) -> None:
    assert space_timesteps(1000, counts) == sorted(respace.space_timesteps(1000, counts))


def test_space_timesteps_refuses_what_reference_refuses() -> None:
    with pytest.raises(ValueError):
        respace.space_timesteps(1000, "ddim999")
    with pytest.raises(ValueError):
        space_timesteps(1000, "ddim999")
    with pytest.raises(ValueError):
        space_timesteps(10, "11")


@pytest.mark.parametrize("respacing", ["ddim25", "50", ""])
def test_schedules_equal_reference(respacing: str) -> None:
    ref = reference(respacing)
    ours = SpacedDiffusion.create(respacing or 1000)
    assert ours.num_timesteps == ref.num_timesteps
    for name in ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_recipm1_alphas_cumprod",
                 "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1",
                 "posterior_mean_coef2"):
        torch.testing.assert_close(getattr(ours, name), torch.from_numpy(getattr(ref, name)), rtol=1e-12,
                                   atol=0, msg=name)
    if respacing:
        assert ours.timestep_map.tolist() == ref.timestep_map


def test_p_mean_variance_and_q_sample_equal_reference() -> None:
    ref, ours = reference("ddim25"), SpacedDiffusion.create("ddim25")
    g = torch.Generator().manual_seed(0)
    x, noise = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    i = torch.tensor([24, 3])
    out_ref = ref.p_mean_variance(toy_model, x, i, clip_denoised=False)
    out = ours.p_mean_variance(toy_model(x, ours.model_timesteps(i)), x, i)
    for k in ("mean", "variance", "log_variance", "pred_xstart"):
        torch.testing.assert_close(out[k], out_ref[k], rtol=1e-6, atol=1e-6, msg=k)
    torch.testing.assert_close(ours.q_sample(x, i, noise), ref.q_sample(x, i, noise), rtol=0, atol=0)


def plain_cond(x: torch.Tensor, *_: object) -> torch.Tensor:
    return -0.3 * x + 0.05


def x0_cond(x: torch.Tensor, t: torch.Tensor, out: dict) -> torch.Tensor:
    """Guidance through the model's own x0 (needs the graph from out["pred_xstart"] back to x)."""
    target = torch.linspace(-0.5, 0.5, x.shape[-1])
    return -torch.autograd.grad((out["pred_xstart"] - target).pow(2).sum(), x)[0]


@pytest.mark.parametrize("method,with_grad,skip", [("ddim", False, 0), ("ddim", True, 5), ("plms", True, 0),
                                                    ("plms", False, 7)])
def test_sampler_equals_reference(method: str, with_grad: bool, skip: int) -> None:
    ref = reference("ddim20")
    ours = SpacedDiffusion.create("ddim20")
    g = torch.Generator().manual_seed(1)
    noise, init = torch.randn(1, 3, 8, 8, generator=g), torch.rand(1, 3, 8, 8, generator=g) * 2 - 1
    cond = x0_cond if with_grad else plain_cond
    kwargs = dict(noise=noise.clone(), clip_denoised=False, cond_fn=cond, model_kwargs={}, skip_timesteps=skip,
                  init_image=init if skip else None, cond_fn_with_grad=with_grad, device="cpu")
    torch.manual_seed(7)
    if method == "ddim":
        ref_steps = list(ref.ddim_sample_loop_progressive(toy_model, noise.shape, eta=0.8, **kwargs))
    else:
        ref_steps = list(ref.plms_sample_loop_progressive(toy_model, noise.shape, order=2, **kwargs))
    torch.manual_seed(7)  # our DDIM draws its noise from the same global generator when none is given
    steps: list[dict] = []
    final = sample(toy_model, noise.clone(), ours, method=method, eta=0.8, cond_fn=cond, cond_with_grad=with_grad,
                   skip_steps=skip, init=init if skip else None, callback=steps.append)
    assert len(steps) == len(ref_steps) == 20 - skip
    for a, b in zip(steps, ref_steps):
        torch.testing.assert_close(a["pred_xstart"], b["pred_xstart"], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a["sample"], b["sample"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(final, ref_steps[-1]["sample"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["ddim", "plms"])
def test_resume_is_exact(method: str) -> None:
    """Run k steps, keep the state, continue in a fresh sampler: the same bytes as an uninterrupted run."""
    d = SpacedDiffusion.create(12)
    noise = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(3))

    def make(x: torch.Tensor) -> Sampler:
        return Sampler(d, toy_model, x, method=method, eta=0.5, order=3, cond_fn=x0_cond, skip_steps=2,
                       generator=torch.Generator().manual_seed(11))

    whole = make(start_x(d, noise, 2))
    while not whole.finished:
        whole.step()
    first = make(start_x(d, noise, 2))
    for _ in range(4):
        first.step()
    saved = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in first.state_dict().items()}
    second = make(torch.zeros_like(noise))
    second.load_state_dict(saved)
    while not second.finished:
        second.step()
    assert second.done == whole.done == 10
    assert torch.equal(second.x, whole.x)


def test_state_from_other_settings_is_refused() -> None:
    d = SpacedDiffusion.create(10)
    a = Sampler(d, toy_model, torch.zeros(1, 3, 4, 4), method="plms")
    b = Sampler(d, toy_model, torch.zeros(1, 3, 4, 4), method="ddim")
    with pytest.raises(ValueError, match="method"):
        b.load_state_dict(a.state_dict())
    with pytest.raises(ValueError, match="skip_steps"):
        start_x(d, torch.zeros(1, 3, 4, 4), skip_steps=10)
