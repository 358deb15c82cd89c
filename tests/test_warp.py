"""The frame-to-frame warp of `vqclip animate`, checked against exact references."""

from __future__ import annotations

import pytest
import torch

from vqclip.engine.warp import BORDERS, warp


@pytest.fixture()
def image():
    return torch.rand(2, 3, 12, 20, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("border", BORDERS)
def test_identity(image, border):
    assert torch.equal(warp(image, 1.0, 0.0, 0.0, 0.0, border), image)
    assert torch.equal(warp(image, 1.0, 360.0, 0.0, 0.0, border), image)


@pytest.mark.parametrize("tx,ty", [(3, 0), (0, -2), (5, 7), (-20, 13), (41, -25)])
def test_integer_shift_with_wrap_is_roll(image, tx, ty):
    out = warp(image, tx=float(tx), ty=float(ty), border="wrap")
    torch.testing.assert_close(out, torch.roll(image, shifts=(ty, tx), dims=(2, 3)), atol=1e-6, rtol=0)


@pytest.mark.parametrize("angle,k", [(90, 1), (-90, -1), (180, 2), (270, 3)])
@pytest.mark.parametrize("border", BORDERS)
def test_quarter_turns_of_a_square_image_are_rot90(angle, k, border):
    square = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    out = warp(square, angle=float(angle), border=border)
    torch.testing.assert_close(out, torch.rot90(square, k, dims=(2, 3)), atol=1e-6, rtol=0)


def test_integer_shift_with_black_border_fills_zeros(image):
    out = warp(image, tx=4.0, border="black")
    torch.testing.assert_close(out[..., 4:], image[..., :-4], atol=1e-6, rtol=0)
    assert out[..., :4].abs().max() < 1e-6


def test_smear_repeats_the_edge(image):
    out = warp(image, tx=3.0, border="smear")
    for col in range(3):
        torch.testing.assert_close(out[..., col], image[..., 0], atol=1e-6, rtol=0)


def test_reflect_mirrors(image):
    out = warp(image, tx=2.0, border="reflect")
    torch.testing.assert_close(out[..., 0], image[..., 1], atol=1e-6, rtol=0)
    torch.testing.assert_close(out[..., 1], image[..., 0], atol=1e-6, rtol=0)


def test_zoom_in_magnifies_the_centre():
    x = torch.zeros(1, 1, 8, 8)
    x[..., 3:5, 3:5] = 1.0  # a 2x2 square in the middle
    out = warp(x, zoom=2.0, border="black")
    assert torch.all(out[..., 3:5, 3:5] == 1.0) and out[..., 2:6, 2:6].mean() > 0.7  # now about 4x4
    assert out.sum() > 3 * x.sum()
    assert out[..., :1, :].abs().max() == 0


def test_zoom_out_then_in_keeps_the_centre():
    ys, xs = torch.meshgrid(torch.linspace(0, 1, 16), torch.linspace(0, 1, 16), indexing="ij")
    x = torch.stack((xs, ys, xs * ys))[None]  # smooth, so resampling changes little
    back = warp(warp(x, zoom=0.5, border="black"), zoom=2.0, border="black")
    assert (back - x)[..., 4:12, 4:12].abs().max() < 0.05  # the centre comes back where it was


def test_bad_arguments():
    x = torch.rand(1, 3, 4, 4)
    with pytest.raises(ValueError, match="border"):
        warp(x, border="mirror")
    with pytest.raises(ValueError, match="zoom"):
        warp(x, zoom=0.0)


def test_keeps_dtype_and_gradient():
    x = torch.rand(1, 3, 8, 8, requires_grad=True)
    out = warp(x, zoom=1.1, angle=5.0, tx=0.5)
    out.sum().backward()
    assert x.grad is not None and out.dtype == x.dtype
