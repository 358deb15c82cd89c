"""The ADM U-Net against OpenAI's reference `guided_diffusion.unet.UNetModel` (PyPI guided-diffusion-sdk, a test
dependency only): the published state-dict layouts, outputs and input gradients at random weights; the secondary
model's layout; safe loading and the one-line errors for the wrong file."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from vqclip.engine.diffusion.secondary import SecondaryDiffusionImageNet2, alpha_sigma_to_t, t_to_alpha_sigma
from vqclip.engine.diffusion.unet import PRESETS, UNetConfig, build_unet
from vqclip.errors import UnsafeCheckpoint, VqclipError
from vqclip.testing_diffusion import TINY_UNET, TINY_UNET_CLASSES, make_tiny_secondary, make_tiny_unet
from vqclip.weights.diffusion import check_shapes, load_secondary, load_unet, secondary_shapes, unet_shapes

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    script_util = pytest.importorskip("guided_diffusion.script_util",
                                      reason="the test extra installs guided-diffusion-sdk")


def reference(image_size: int, class_cond: bool, channels: int = 256, head_channels: int = 64,
              device: str = "cpu") -> torch.nn.Module:
    with warnings.catch_warnings(), torch.device(device):
        warnings.simplefilter("ignore")
        return script_util.create_model(
            image_size, channels, 2, learn_sigma=True, class_cond=class_cond, attention_resolutions="32,16,8",
            num_head_channels=head_channels, num_heads=4, resblock_updown=True, use_scale_shift_norm=True,
            use_fp16=False, dropout=0.0)


PRESET_ARGS = {"256x256_diffusion_uncond": (256, False), "512x512_diffusion_uncond_finetune_008100": (512, False),
               "512x512_diffusion": (512, True)}


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_state_dict_layout_is_the_published_one(name: str) -> None:
    ref = {k: tuple(v.shape) for k, v in reference(*PRESET_ARGS[name], device="meta").state_dict().items()}
    assert unet_shapes(PRESETS[name]) == ref
    assert list(unet_shapes(PRESETS[name])) == list(ref)  # same order too


def test_full_256_has_the_published_parameter_count() -> None:
    assert sum(math.prod(s) for s in unet_shapes(PRESETS["256x256_diffusion_uncond"]).values()) == 552_814_086


def randomised(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights everywhere, including the layers the reference starts at zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.02 if p.dim() > 1 else 0.1))
    return model


def compare_with_reference(image_size: int, class_cond: bool, channels: int, heads: int, side: int) -> None:
    """Outputs and input gradients; our weights are frozen, as in guidance (the lean backward path)."""
    ref = randomised(reference(image_size, class_cond, channels, heads)).eval()
    cfg = UNetConfig(image_size=image_size, model_channels=channels, num_head_channels=heads,
                     num_classes=1000 if class_cond else None)
    ours = build_unet(cfg).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    ours.requires_grad_(False)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 3, side, side, generator=g)
    t = torch.tensor([417.0])
    y = torch.tensor([3]) if class_cond else None
    weights = torch.randn(1, 6, side, side, generator=g)
    results = []
    for model in (ref, ours):
        xi = x.clone().requires_grad_()
        out = model(xi, t, y)
        (out * weights).sum().backward()
        results.append((out.detach(), xi.grad))
    (ro, rg), (oo, og) = results
    assert ro.abs().max() > 0.01 and rg.abs().max() > 0
    torch.testing.assert_close(oo, ro, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(og, rg, rtol=1e-4, atol=1e-6)


def test_reduced_256_layout_equals_reference_outputs_and_input_gradients() -> None:
    compare_with_reference(256, False, channels=32, heads=32, side=32)


@pytest.mark.slow
def test_reduced_512_class_conditional_equals_reference() -> None:
    """The 512 layout (7 levels, class embedding) at 64 base channels; its keys are checked by default above."""
    compare_with_reference(512, True, channels=64, heads=32, side=64)


@pytest.mark.slow
def test_full_256_architecture_equals_reference() -> None:
    """The real 552.8 M-parameter architecture at random weights (about a minute on 2 CPU cores)."""
    compare_with_reference(256, False, channels=256, heads=64, side=64)


@pytest.mark.parametrize("frozen", [False, True])
def test_gradient_checkpointing_changes_nothing_but_memory(frozen: bool) -> None:
    torch.manual_seed(0)
    model = randomised(build_unet(TINY_UNET)).requires_grad_(not frozen)
    x = torch.randn(2, 3, 32, 32)
    t = torch.tensor([10.0, 900.0])
    outs = []
    for on in (False, True):
        model.set_gradient_checkpointing(on)
        xi = x.clone().requires_grad_()
        out = model(xi, t)
        out.square().sum().backward()
        outs.append((out.detach(), xi.grad))
    torch.testing.assert_close(outs[0][0], outs[1][0])
    torch.testing.assert_close(outs[0][1], outs[1][1])


def saved_bytes(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor) -> tuple[int, torch.Tensor]:
    """Bytes of the tensors autograd keeps for the backward pass of one forward (weights not counted)."""
    weights = {p.data_ptr() for p in model.parameters()}
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        if tensor.data_ptr() not in weights:
            total += tensor.numel() * tensor.element_size()
        return tensor

    xi = x.clone().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = model(xi, t)
    grad = torch.autograd.grad(out.square().sum(), xi)[0]
    return total, grad


def test_frozen_weights_keep_a_third_of_the_activations_for_the_same_gradient() -> None:
    torch.manual_seed(0)
    model = randomised(build_unet(TINY_UNET))
    x, t = torch.randn(1, 3, 32, 32), torch.tensor([300.0])
    trained, grad_trained = saved_bytes(model, x, t)
    model.requires_grad_(False)
    frozen, grad_frozen = saved_bytes(model, x, t)
    torch.testing.assert_close(grad_frozen, grad_trained)
    assert frozen < 0.45 * trained


def test_bf16_torso_and_autocast_stay_close_to_fp32() -> None:
    torch.manual_seed(0)
    model = randomised(build_unet(TINY_UNET_CLASSES))
    x, t, y = torch.randn(1, 3, 32, 32), torch.tensor([500.0]), torch.tensor([7])
    full = model(x, t, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = model(x, t, y)
    model.set_compute_dtype(torch.bfloat16)
    half = model(x, t, y)
    assert half.dtype == torch.float32 and torch.isfinite(half).all()
    for other in (auto.float(), half):
        assert (other - full).abs().max() < 0.05 * full.abs().max()
    assert model.input_blocks[1][0].in_layers[2].weight.dtype == torch.bfloat16
    assert model.input_blocks[1][0].in_layers[0].weight.dtype == torch.float32  # norms stay fp32


def test_bad_inputs_are_refused() -> None:
    model = build_unet(TINY_UNET)
    with pytest.raises(ValueError, match="multiples of 2"):
        model(torch.zeros(1, 3, 33, 32), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="class labels"):
        model(torch.zeros(1, 3, 32, 32), torch.tensor([1.0]), torch.tensor([1]))


def test_secondary_layout_and_time_conversion() -> None:
    shapes = secondary_shapes(64)
    assert len(shapes) == 49 and shapes["timestep_embed.weight"] == (8, 1)
    assert shapes["net.0.0.weight"] == (64, 19, 3, 3)
    assert shapes["net.2.main.3.main.3.main.3.main.3.main.1.0.weight"] == (512, 256, 3, 3)  # the bottom level
    assert shapes["net.4.weight"] == (3, 64, 3, 3)
    t = torch.linspace(0.01, 0.99, 7)
    alpha, sigma = t_to_alpha_sigma(t)
    torch.testing.assert_close(alpha_sigma_to_t(alpha, sigma), t)
    model = SecondaryDiffusionImageNet2(8)
    x = torch.randn(2, 3, 32, 64)
    out = model(x, torch.tensor([0.3, 0.8]))
    a, s = (v.view(-1, 1, 1, 1) for v in t_to_alpha_sigma(torch.tensor([0.3, 0.8])))
    torch.testing.assert_close(out.pred, x * a - out.v * s)
    torch.testing.assert_close(a * out.pred + s * out.eps, x, rtol=1e-5, atol=1e-5)  # x = alpha·x0 + sigma·eps


# -- loading ------------------------------------------------------------------------------------------------


def test_tiny_checkpoints_load_in_the_real_format(tmp_path) -> None:
    unet_path, cfg = make_tiny_unet(tmp_path)
    sec_path, width = make_tiny_secondary(tmp_path)
    unet = load_unet(unet_path, cfg)
    assert not any(p.requires_grad for p in unet.parameters())
    out = unet(torch.randn(1, 3, 32, 32), torch.tensor([100.0]))
    assert out.shape == (1, 6, 32, 32) and out.abs().max() > 0
    sec = load_secondary(sec_path, width=width)
    assert sec(torch.randn(1, 3, 32, 32), torch.tensor([0.5])).pred.shape == (1, 3, 32, 32)


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_secondary_given_as_unet_and_the_reverse(tmp_path) -> None:
    unet_path, cfg = make_tiny_unet(tmp_path)
    sec_path, _ = make_tiny_secondary(tmp_path, width=64)  # the published layout
    with pytest.raises(VqclipError) as e:
        load_unet(sec_path, cfg)
    assert "is the secondary model (secondary_model_imagenet_2), not a U-Net" in one_line(e)
    with pytest.raises(VqclipError) as e:
        load_secondary(unet_path)
    assert "is a U-Net" in one_line(e) and "not the secondary model" in one_line(e)


def test_wrong_size_model_is_named(tmp_path) -> None:
    path, _ = make_tiny_unet(tmp_path, config=TINY_UNET_CLASSES)
    with pytest.raises(VqclipError) as e:
        load_unet(path, TINY_UNET)
    msg = one_line(e)
    assert "class-conditional guided-diffusion U-Net with 32 base channels" in msg
    other = TINY_UNET.with_(model_channels=64)
    with pytest.raises(VqclipError, match="does not match|looks like"):
        load_unet(path, other)
    with pytest.raises(VqclipError, match="unknown diffusion model"):
        load_unet(path, "1024x1024_diffusion")


def test_presets_are_told_apart_by_shape() -> None:
    cond512 = unet_shapes(PRESETS["512x512_diffusion"])
    with pytest.raises(VqclipError) as e:
        check_shapes(cond512, unet_shapes(PRESETS["256x256_diffusion_uncond"]), "model.pt",
                     "256x256_diffusion_uncond", "U-Net")
    assert one_line(e) == ("model.pt looks like 512x512_diffusion (class-conditional), not 256x256_diffusion_uncond;"
                           " choose the matching model or the right file")
    uncond512 = unet_shapes(PRESETS["512x512_diffusion_uncond_finetune_008100"])
    with pytest.raises(VqclipError, match="looks like 512x512_diffusion_uncond_finetune_008100, not 512x512_diff"):
        check_shapes(uncond512, cond512, "m.pt", "512x512_diffusion (class-conditional)", "U-Net")
    check_shapes(cond512, cond512, "m.pt", "512x512_diffusion", "U-Net")  # a match raises nothing


def test_other_files_are_named_or_refused(tmp_path) -> None:
    vq = tmp_path / "vqgan.pt"
    torch.save({"state_dict": {"decoder.conv_in.weight": torch.zeros(4, 4, 3, 3)}}, vq)
    with pytest.raises(VqclipError, match="looks like a VQGAN checkpoint"):
        load_unet(vq, TINY_UNET)

    class Sneaky:
        def __reduce__(self):
            return (print, ("this would run",))

    evil = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(1), "x": Sneaky()}, evil)
    with pytest.raises(UnsafeCheckpoint, match="could run code"):
        load_unet(evil, TINY_UNET)
    with pytest.raises(VqclipError, match="not found"):
        load_secondary(tmp_path / "missing.pth")


def test_registry_rows_name_the_presets() -> None:
    from vqclip.weights.registry import DIFFUSION_WEIGHTS, WEIGHTS

    assert not set(DIFFUSION_WEIGHTS) & set(WEIGHTS)  # the VQGAN table (and its commands) is unchanged
    unets = {n for n, s in DIFFUSION_WEIGHTS.items() if s.family == "diffusion"}
    assert unets == set(PRESETS)
    sec = DIFFUSION_WEIGHTS["secondary_model_imagenet_2"]
    assert sec.family == "secondary" and sec.sha256 and sec.sha256.startswith("983e3de6")
    assert DIFFUSION_WEIGHTS["256x256_diffusion_uncond"].sha256.endswith("78b1")
    assert DIFFUSION_WEIGHTS["512x512_diffusion"].sha256 is None  # trusted on first use
    assert all(s.filename and s.urls[0].startswith("https://") for s in DIFFUSION_WEIGHTS.values())


def test_only_the_benchmarks_import_the_reference() -> None:
    """OpenAI's code (a test/benchmark dependency, licence field empty) is never needed to run vqclip."""
    from pathlib import Path

    import vqclip

    root = Path(vqclip.__file__).parent
    hits = [str(p.relative_to(root)) for p in root.rglob("*.py")
            if "guided_diffusion" in p.read_text(encoding="utf-8") and p.relative_to(root).parts[0] != "bench"]
    assert not hits
