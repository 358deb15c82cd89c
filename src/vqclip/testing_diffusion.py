"""Tiny random-weight diffusion models saved in the published file formats (plain state dicts in `.pt`/`.pth`),
for tests and `vqclip selftest`: an ADM U-Net in the real key layout at 32 px with two levels, and the secondary
model at width 8. The layers the reference initialises to zero get small random weights, so the tiny models
predict something that depends on their input. Nothing here touches the network.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vqclip.engine.diffusion.secondary import SecondaryDiffusionImageNet2
from vqclip.engine.diffusion.unet import UNetConfig, build_unet

TINY_UNET = UNetConfig(image_size=32, model_channels=32, num_res_blocks=1, attention_resolutions=(16,),
                       channel_mult=(1, 2), num_head_channels=16, description="tiny test U-Net")
TINY_UNET_CLASSES = TINY_UNET.with_(num_classes=10, description="tiny class-conditional test U-Net")
TINY_SECONDARY_WIDTH = 8


def _wake_zero_layers(model: torch.nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)


def make_tiny_unet(folder: str | Path, name: str = "tiny_unet", config: UNetConfig = TINY_UNET,
                   seed: int = 0) -> tuple[Path, UNetConfig]:
    """Write `<name>.pt` (a plain state dict, as OpenAI's files) for `config`; return its path and the config."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = build_unet(config)
    _wake_zero_layers(model, gen)
    path = folder / f"{name}.pt"
    torch.save(model.state_dict(), path)
    return path, config


def make_tiny_secondary(folder: str | Path, name: str = "tiny_secondary", width: int = TINY_SECONDARY_WIDTH,
                        seed: int = 0) -> tuple[Path, int]:
    """Write `<name>.pth` (a plain state dict, as the published secondary model); return its path and width."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = SecondaryDiffusionImageNet2(width)
    path = folder / f"{name}.pth"
    torch.save(model.state_dict(), path)
    return path, width
