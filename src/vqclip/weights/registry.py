"""The registry: one typed table of the VQGANs vqclip knows, read by the CLI, `scripts/fetch_weights.py` and the
docs (habit from open_clip `pretrained.py`). Each entry's yaml ships in the package (`model_yamls/NAME.yaml`).

Nothing here touches the disk beyond the package, the network or torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Mapping


@dataclass(frozen=True)
class WeightSpec:
    """One downloadable checkpoint: a VQGAN (its yaml ships in the package when `model_yamls/NAME.yaml` exists)
    unless `family` names a diffusion model."""

    name: str
    description: str  # dataset and the look it gives
    architecture: str
    size: int | None  # exact bytes of the .ckpt, checked after download; None when unknown
    sha256: str | None  # None: trusted on first use (the first download's hash is recorded and enforced)
    url: str  # tried first
    mirrors: tuple[str, ...] = ()  # tried in order after `url`
    yaml_urls: tuple[str, ...] = ()  # only used when no yaml ships in the package
    license: str = ""
    approx_size: int | None = None  # for display when the exact size is unknown
    family: str = "vqgan"  # "vqgan", or "diffusion" / "secondary" (engine.diffusion; no yaml, a plain state dict)
    filename: str | None = None  # the published file name, for the families that keep it (diffusion models)

    @property
    def urls(self) -> tuple[str, ...]:
        return (self.url, *self.mirrors)

    @property
    def display_size(self) -> int | None:
        return self.size if self.size is not None else self.approx_size


# Revision-pinned preservation mirror of the pytti-era checkpoints (files `<key>/<key>.{ckpt,yaml}`); it serves
# Range requests. Its manifest gives the sha256 values below.
SOMNAI = "https://huggingface.co/Somnai/pytti-vqgan-checkpoints/resolve/debc22c8f285c7734980c464ff992d335dde6e9a"
HEIBOX = "https://heibox.uni-heidelberg.de"
_TAMING_LICENSE = "CompVis taming-transformers release (code MIT); research weights, see the taming README"


def _somnai(key: str, ext: str = "ckpt") -> str:
    return f"{SOMNAI}/{key}/{key}.{ext}"


def _heibox_dir(share: str, path: str) -> str:
    return f"{HEIBOX}/d/{share}/files/?p={path.replace('/', '%2F')}&dl=1"


_REGISTRY: tuple[WeightSpec, ...] = (
    WeightSpec(
        name="vqgan_imagenet_f16_16384",
        description="ImageNet: all-round default, detailed textures",
        architecture="VQModel f16, n_embed 16384, embed_dim 256",
        size=980092370,
        sha256="845a68805098cb666420d5db93df53f3a3b6dd443e6dd85c05759c5b998cd663",
        url=_somnai("imagenet"),
        mirrors=(f"{HEIBOX}/f/867b05fc8c4841768640/?dl=1",),
        yaml_urls=(f"{HEIBOX}/f/274fb24ed38341bfa753/?dl=1", _somnai("imagenet", "yaml")),
        license=_TAMING_LICENSE + "; ImageNet terms of access apply",
    ),
    WeightSpec(
        name="vqgan_imagenet_f16_1024",
        description="ImageNet, 1024 codes: coarser, bolder colour",
        architecture="VQModel f16, n_embed 1024, embed_dim 256",
        size=None,
        sha256=None,
        approx_size=958_000_000,
        url=f"{HEIBOX}/f/140747ba53464f49b476/?dl=1",
        mirrors=("https://github.com/Eleiber/VQGAN-Mirrors/releases/download/0.0.1/vqgan_imagenet_f16_1024.ckpt",),
        yaml_urls=(f"{HEIBOX}/f/6ecf2af6c658432c8298/?dl=1",
                   "https://github.com/Eleiber/VQGAN-Mirrors/releases/download/0.0.1/vqgan_imagenet_f16_1024.yaml"),
        license=_TAMING_LICENSE + "; ImageNet terms of access apply",
    ),
    WeightSpec(
        name="vqgan_gumbel_f8_8192",
        description="Open Images, f8: finer detail, 4x the tokens",
        architecture="GumbelVQ f8, n_embed 8192, embed_dim 256",
        size=376581823,
        sha256="5cd6c74810ab97e00e942c25403f73afc081e8b19987b31ec0d9ff5b68e7ab14",
        url=_somnai("openimages"),
        mirrors=(_heibox_dir("2e5662443a6b4307b470", "/ckpts/last.ckpt"),),
        yaml_urls=(_heibox_dir("2e5662443a6b4307b470", "/configs/model.yaml"), _somnai("openimages", "yaml")),
        license=_TAMING_LICENSE + "; Open Images (CC BY 4.0 annotations, images under their own licences)",
    ),
    WeightSpec(
        name="wikiart_16384",
        description="WikiArt: painterly brushwork, canvas texture",
        architecture="VQModel f16, n_embed 16384, embed_dim 256",
        size=1005327541,
        sha256="bd08bb46301f98be1712bb2be9f8868cea30b53137cd985d4d6e8da8b3e02c36",
        url=_somnai("wikiart"),
        mirrors=("https://github.com/pixray/pixray/releases/download/v1.7.1/vqgan_wikiart_16384.ckpt",),
        yaml_urls=("https://github.com/pixray/pixray/releases/download/v1.7.1/vqgan_wikiart_16384.yaml",
                   _somnai("wikiart", "yaml")),
        license="community fine-tune of the ImageNet VQGAN on WikiArt; artworks keep their own rights; research use",
    ),
    WeightSpec(
        name="sflckr",
        description="Flickr landscapes: skies, mountains, water",
        architecture="VQModel f16, n_embed 1024 (first stage of a Net2NetTransformer checkpoint)",
        size=4263525412,
        sha256="8a8adea3da8dab412675772831370dd948e0aa97bb11a9488a2f328b58dbc929",
        # The mirror spells the key "sflickr" (pytti's alias table); "sflckr" is kept as a fallback spelling.
        url=_somnai("sflickr"),
        mirrors=(_heibox_dir("73487ab6e5314cb5adba", "/checkpoints/last.ckpt"), _somnai("sflckr")),
        yaml_urls=(_heibox_dir("73487ab6e5314cb5adba", "/configs/2020-11-09T13-31-51-project.yaml"),),
        license=_TAMING_LICENSE + "; Flickr images under their own licences",
    ),
    WeightSpec(
        name="coco",
        description="COCO scenes: everyday objects and streets",
        architecture="VQModel f16, n_embed 8192, embed_dim 256 (first stage of the COCO scene transformer)",
        size=296030214,
        sha256="106cc20fde571df14afc4349d62218d8213cf47177c682ecaa78a8c28b12f9de",
        url=_somnai("coco"),
        yaml_urls=(_somnai("coco", "yaml"),),
        license=_TAMING_LICENSE + "; COCO images under their own (mostly CC) licences",
    ),
    WeightSpec(
        name="faceshq",
        description="FFHQ + CelebA-HQ faces: portraits, smooth skin",
        architecture="VQModel f16, n_embed 1024 (first stage of a Net2NetTransformer checkpoint)",
        size=None,
        sha256="3274bba51bd565c90990bbcf7bb5dad0b9b95a6a77011980afc4c3cfc4d1cad1",
        url=_somnai("faceshq"),
        yaml_urls=(_somnai("faceshq", "yaml"),),
        license=_TAMING_LICENSE + "; FFHQ (CC BY-NC-SA 4.0) and CelebA-HQ (non-commercial research)",
    ),
)

WEIGHTS: dict[str, WeightSpec] = {spec.name: spec for spec in _REGISTRY}

# CLIP-guided diffusion: OpenAI's ADM U-Nets and Katherine Crowson's secondary model (plain state dicts). Sizes
# are approximate (float32 parameters); rows without a sha256 are trusted on first use like the VQGAN rows.
OPENAI_DIFFUSION = "https://openaipublic.blob.core.windows.net/diffusion/jul-2021"
V_DIFFUSION = "https://v-diffusion.s3.us-west-2.amazonaws.com"
_GUIDED_LICENSE = "OpenAI guided-diffusion release (MIT); trained on ImageNet, whose terms of access apply"
_DIFFUSION: tuple[WeightSpec, ...] = (
    WeightSpec(
        name="256x256_diffusion_uncond",
        description="OpenAI ImageNet 256x256, unconditional: the original app's diffusion model",
        architecture="ADM U-Net, 256 ch, 2 res blocks, attention 32/16/8, learned sigmas (552.8 M params)",
        size=None, approx_size=2_211_300_000,
        sha256="a37c32fffd316cd494cf3f35b339936debdc1576dad13fe57c42399a5dbc78b1",
        url=f"{OPENAI_DIFFUSION}/256x256_diffusion_uncond.pt",
        license=_GUIDED_LICENSE, family="diffusion", filename="256x256_diffusion_uncond.pt",
    ),
    WeightSpec(
        name="512x512_diffusion_uncond_finetune_008100",
        description="ImageNet 512x512, fine-tuned unconditional (Katherine Crowson): Disco Diffusion's model",
        architecture="ADM U-Net at 512, channel mult 0.5-4, no class embedding (558.0 M params)",
        size=None, approx_size=2_231_950_000,
        sha256="9c111ab89e214862b76e1fa6a1b3f1d329b1a88281885943d2cdbe357ad57648",
        url=f"{V_DIFFUSION}/512x512_diffusion_uncond_finetune_008100.pt",
        mirrors=("https://huggingface.co/lowlevelware/512x512_diffusion_unconditional_ImageNet/resolve/main/"
                 "512x512_diffusion_uncond_finetune_008100.pt",
                 "https://the-eye.eu/public/AI/models/512x512_diffusion_unconditional_ImageNet/"
                 "512x512_diffusion_uncond_finetune_008100.pt"),
        license=_GUIDED_LICENSE + "; fine-tune by Katherine Crowson (MIT)", family="diffusion",
        filename="512x512_diffusion_uncond_finetune_008100.pt",
    ),
    WeightSpec(
        name="512x512_diffusion",
        description="OpenAI ImageNet 512x512, class-conditional (a random class each step when unguided by one)",
        architecture="ADM U-Net at 512 with a 1000-class label embedding (559.0 M params)",
        size=None, approx_size=2_236_050_000, sha256=None,
        url=f"{OPENAI_DIFFUSION}/512x512_diffusion.pt",
        license=_GUIDED_LICENSE, family="diffusion", filename="512x512_diffusion.pt",
    ),
    WeightSpec(
        name="secondary_model_imagenet_2",
        description="Katherine Crowson's small v-objective model: cheaper guidance gradients, some loss of quality",
        architecture="SecondaryDiffusionImageNet2, 64 base channels, cosine time (13.8 M params)",
        size=None, approx_size=55_400_000,
        sha256="983e3de6f95c88c81b2ca7ebb2c217933be1973b1ff058776b970f901584613a",
        url=f"{V_DIFFUSION}/secondary_model_imagenet_2.pth",
        mirrors=("https://the-eye.eu/public/AI/models/v-diffusion/secondary_model_imagenet_2.pth",),
        license="v-diffusion (Katherine Crowson, MIT); trained on ImageNet, whose terms of access apply",
        family="secondary", filename="secondary_model_imagenet_2.pth",
    ),
)
DIFFUSION_WEIGHTS: dict[str, WeightSpec] = {spec.name: spec for spec in _DIFFUSION}


def table(registry: Mapping[str, WeightSpec] | None = None) -> Mapping[str, WeightSpec]:
    """`registry` when given, else `WEIGHTS` (read at call time, so a test can swap the table)."""
    return WEIGHTS if registry is None else registry


def packaged_yaml(name: str) -> Path | None:
    """The yaml shipped in the package for registry model `name`, if any."""
    candidate = Path(str(resources.files("vqclip").joinpath("model_yamls", f"{name}.yaml")))
    return candidate if candidate.is_file() else None
