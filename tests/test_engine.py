"""Engine on tiny random models: loading both layouts, cutouts, losses, and the loop's behaviour."""

from __future__ import annotations

from types import SimpleNamespace as NS

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vqclip.engine import build_prompts, generate, load_models, pick_device
from vqclip.engine.cutouts import Cutouts, homography
from vqclip.engine.losses import Prompt, init_weight_at, spherical_dist, tv_loss
from vqclip.config import RunConfig, build_config
from vqclip.engine.loop import LoopSettings
from vqclip.engine.ops import clamp_with_grad
from vqclip.engine.vqgan import load_vqgan, nearest_codes
from vqclip.errors import VqclipError
from vqclip.pipeline.settings import DERIVED, KNOBS, settings_from_config

CPU = torch.device("cpu")
NO_STOP = float("-inf")


@pytest.fixture(scope="module")
def models(tiny_models):
    return load_models(tiny_models["vqgan_yaml"], tiny_models["vqgan_ckpt"], str(tiny_models["clip_json"]),
                       str(tiny_models["clip_ckpt"]), CPU, with_encoder=True)


def loop_settings(width: int, height: int, seed: int, **knobs: object) -> LoopSettings:
    """The loop's settings for a tiny run: the packaged defaults, no progress frames, `knobs` on top."""
    cfg = build_config(None, {"prompt": "x", "save_every": 0, **knobs})
    return settings_from_config(cfg, width=width, height=height, seed=seed)


def noise_image(seed: int = 0, size: int = 64) -> Image.Image:
    return Image.fromarray((np.random.RandomState(seed).rand(size, size, 3) * 255).astype("uint8"))


@pytest.mark.parametrize("layout", ["vqgan", "gumbel"])
def test_load_both_layouts_decode_and_encode(tiny_models, layout):
    vq = load_vqgan(tiny_models[f"{layout}_yaml"], tiny_models[f"{layout}_ckpt"], with_encoder=True)
    assert vq.factor == 2
    assert vq.spec.gumbel == (layout == "gumbel")
    z = vq.random_latent(8, 6, torch.Generator().manual_seed(0))
    assert z.shape == (1, vq.spec.embed_dim, 6, 8)
    x = vq.decode(vq.quantize(z))
    assert x.shape == (1, 3, 12, 16) and torch.isfinite(x).all()
    z2 = vq.encode(x.clamp(-1, 1))
    assert z2.shape == z.shape
    # encoded latents are codebook rows
    assert torch.allclose(nearest_codes(z2, vq.codebook), z2)


def test_decoder_only_load_keeps_no_encoder(tiny_models):
    vq = load_vqgan(tiny_models["vqgan_yaml"], tiny_models["vqgan_ckpt"])
    assert vq.encoder is None and vq.quant_conv is None
    assert not any(k.startswith(("encoder.", "loss.")) for k in vq.state_dict())


def test_mismatched_yaml_and_ckpt_is_one_line_error(tiny_models):
    with pytest.raises(VqclipError, match="do not belong together"):
        load_vqgan(tiny_models["gumbel_yaml"], tiny_models["vqgan_ckpt"])


def test_cutouts_shape_determinism_and_gradient():
    img = torch.rand(1, 3, 48, 80, requires_grad=True)
    cut = Cutouts(32, 6, cut_pow=1.0, augment=True, noise_fac=0.1)
    a = cut(img, torch.Generator().manual_seed(3))
    b = cut(img, torch.Generator().manual_seed(3))
    assert a.shape == (6, 3, 32, 32) and torch.equal(a, b)
    a.sum().backward()
    assert img.grad is not None and img.grad.abs().sum() > 0


def test_cutout_without_augment_is_the_crop():
    """With cut_pow huge every box is the minimum size (= cut size): the cutout is exactly a crop."""
    img = torch.rand(1, 3, 40, 40)
    cut = Cutouts(16, 4, cut_pow=1e9, augment=False, noise_fac=0.0)
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    out = cut(img, gen)
    gen.set_state(state)
    sizes, ox, oy = cut._boxes(40, 40, gen)
    for i in range(4):
        crop = img[0, :, oy[i]:oy[i] + 16, ox[i]:ox[i] + 16]
        assert torch.allclose(out[i], crop, atol=1e-5)


def test_homography_maps_corners():
    src = torch.tensor([[[-1.0, -1], [1, -1], [1, 1], [-1, 1]]], dtype=torch.float64)
    dst = src + torch.tensor([[[0.1, 0.0], [0.0, 0.2], [-0.1, -0.1], [0.05, 0.0]]], dtype=torch.float64)
    h = homography(src, dst)
    pts = torch.cat([src, torch.ones(1, 4, 1, dtype=torch.float64)], -1) @ h.transpose(1, 2)
    assert torch.allclose(pts[..., :2] / pts[..., 2:], dst)


def test_spherical_distance_and_stop():
    a = torch.tensor([[1.0, 0.0]])
    assert spherical_dist(a, a).item() == pytest.approx(0.0, abs=1e-6)
    assert spherical_dist(a, torch.tensor([[-1.0, 0.0]])).item() == pytest.approx(2 * (torch.pi / 2) ** 2, rel=1e-5)
    x = torch.tensor([[1.0, 0.2]], requires_grad=True)
    near = Prompt(torch.tensor([[1.0, 0.0]]), weight=1.0, stop=1.0)  # already closer than stop
    near(x).backward()
    assert x.grad.abs().sum() == 0
    x.grad = None
    Prompt(torch.tensor([[1.0, 0.0]]), weight=-2.0)(x).backward()
    assert x.grad.abs().sum() > 0


def test_clamp_with_grad_passes_only_inward_gradient():
    x = torch.tensor([1.5, -0.5, 0.5], requires_grad=True)
    y = clamp_with_grad(x, 0.0, 1.0)
    assert y.tolist() == [1.0, 0.0, 0.5]
    y.backward(torch.tensor([1.0, 1.0, 1.0]))  # descent moves x down: inward for 1.5, outward for -0.5
    assert x.grad.tolist() == [1.0, 0.0, 1.0]


@pytest.mark.parametrize("step,expected", [(0, 0.5), (49, 0.5), (50, 0.4), (249, 0.1), (250, 0.0), (900, 0.0)])
def test_init_weight_decay_schedule(step, expected):
    assert init_weight_at(step, 0.5, 0.1, 50) == pytest.approx(expected)
    assert init_weight_at(step, 0.5, 0.1, 0) == 0.5


def test_tv_loss_zero_on_flat_image():
    assert tv_loss(torch.ones(1, 3, 8, 8)).item() == 0
    assert tv_loss(torch.rand(1, 3, 8, 8)).item() > 0


def test_loss_falls_toward_an_image_prompt(models):
    s = loop_settings(width=64, height=64, seed=1, cutn=8, augment=False, noise_fac=0.0, lr=0.1)
    prompts = build_prompts(models, s, [], [(noise_image(0), NS(weight=1.0, stop=NO_STOP))], [])
    result, _ = generate(models, s, prompts, 12)
    first, last = np.mean(result.losses[:3]), np.mean(result.losses[-3:])
    assert last < first * 0.9, result.losses
    assert torch.isfinite(result.image).all() and result.image.shape == (3, 64, 64)
    assert 0 <= result.image.min() and result.image.max() <= 1


def _full_image_distance(models, image, target):
    x = F.interpolate(image[None], size=models.clip.input_size, mode="area")
    with torch.no_grad():
        e = models.clip.encode_image(models.clip.normalize(x))
    return spherical_dist(e, target).item()


def test_negative_prompt_moves_away(models):
    target_img = noise_image(5)
    s = loop_settings(width=64, height=64, seed=2, cutn=8, augment=False, noise_fac=0.0, lr=0.2)
    pos = build_prompts(models, s, [], [(target_img, NS(weight=1.0, stop=NO_STOP))], [])
    neg = build_prompts(models, s, [], [(target_img, NS(weight=-1.0, stop=NO_STOP))], [])
    target = pos[0].embeds.mean(0, keepdim=True)
    r_pos, _ = generate(models, s, pos, 10)
    r_neg, _ = generate(models, s, neg, 10)
    assert _full_image_distance(models, r_neg.image, target) > _full_image_distance(models, r_pos.image, target)
    # and the signed loss of the negative prompt rises in distance (its value falls)
    assert np.mean(r_neg.losses[-3:]) < np.mean(r_neg.losses[:3])


def test_text_and_noise_prompts_embed_once(models):
    s = loop_settings(width=32, height=32, seed=0, cutn=4)
    prompts = build_prompts(models, s, [NS(text="a cat", weight=2.0, stop=NO_STOP)], [],
                            [NS(seed=7, weight=0.5)])
    assert [p.weight for p in prompts] == [2.0, 0.5]
    again = build_prompts(models, s, [], [], [NS(seed=7, weight=0.5)])
    assert torch.equal(prompts[1].embeds, again[0].embeds)


def test_state_round_trip_continues_exactly(models):
    s = loop_settings(width=32, height=32, seed=4, cutn=4)
    prompts = build_prompts(models, s, [NS(text="a dog", weight=1.0, stop=NO_STOP)], [], [])
    full, _ = generate(models, s, prompts, 6)
    first, session = generate(models, s, prompts, 3)
    rest, _ = generate(models, s, prompts, 3, state=session.state_dict())
    assert rest.global_step == 6
    assert torch.equal(full.image, rest.image)
    assert full.losses == first.losses + rest.losses


def test_should_stop_ends_between_steps(models):
    s = loop_settings(width=32, height=32, seed=0, cutn=4)
    prompts = build_prompts(models, s, [NS(text="x", weight=1.0, stop=NO_STOP)], [], [])
    seen = []
    result, _ = generate(models, s, prompts, 50, callback=lambda i: seen.append(i.step),
                         should_stop=lambda: len(seen) >= 3)
    assert result.stopped and result.steps_done == 3 and seen == [1, 2, 3]


def test_pick_device():
    assert pick_device("cpu").type == "cpu"
    assert pick_device("auto").type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(VqclipError, match="no CUDA GPU"):
            pick_device("cuda")


# --- LoopSettings come from RunConfig by field name ----------------------------------------------------------


def test_loop_settings_knobs_are_config_fields_without_engine_defaults():
    """A knob's default lives with RunConfig (and defaults.yaml) only: the engine declares the name, not a value."""
    from dataclasses import MISSING, fields

    by_name = {f.name: f for f in fields(LoopSettings)}
    assert set(KNOBS) <= set(RunConfig.model_fields), set(KNOBS) - set(RunConfig.model_fields)
    assert all(by_name[name].default is MISSING and by_name[name].default_factory is MISSING for name in KNOBS)
    assert {"width", "height", "seed"} | set(KNOBS) | DERIVED == set(by_name)
    assert DERIVED == {"autocast_dtype", "clip_autocast_dtype", "loss_scale", "low_memory", "clip_chunk"}


def test_settings_from_config_copies_every_knob_and_takes_the_derived_ones_from_the_caller():
    cfg = build_config(None, {"prompt": "x", "cutn": 7, "lr": 0.3, "optimizer": "sgd", "tv_weight": 0.2,
                              "compile": True, "low_memory": None, "seed": 9, "size": "64x48"})
    s = settings_from_config(cfg)
    assert {name: getattr(s, name) for name in KNOBS} == {name: getattr(cfg, name) for name in KNOBS}
    assert (s.width, s.height, s.seed, s.low_memory, s.clip_chunk, s.loss_scale) == (64, 48, 9, False, 0, 1.0)
    s = settings_from_config(cfg, width=32, height=16, seed=3, low_memory=True, clip_chunk=4,
                             autocast_dtype=torch.bfloat16, loss_scale=8.0)
    assert (s.width, s.height, s.seed, s.low_memory, s.clip_chunk, s.autocast_dtype, s.loss_scale) == \
        (32, 16, 3, True, 4, torch.bfloat16, 8.0)
    with pytest.raises(TypeError, match="come from the RunConfig"):
        settings_from_config(cfg, cutn=3)
    with pytest.raises(TypeError, match="no setting 'nope'"):
        settings_from_config(cfg, nope=1)
    with pytest.raises(ValueError, match="no seed"):
        settings_from_config(cfg.model_copy(update={"seed": None}))
