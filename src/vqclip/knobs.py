"""What each knob of a run does, in one line: the help text of RunConfig's fields and of their CLI flags.

Plain strings and no imports, so that `vqclip --help` can show them without loading pydantic (RunConfig's
`Field(description=...)` reads them from here too, which keeps one wording for both). A new RunConfig field
needs a line here; tests/test_config.py checks that every field has one and no line is left over.
"""

from __future__ import annotations

__all__ = ["HELP", "field_help"]

HELP: dict[str, str] = {
    "engine": "Engine that makes the picture: vqgan (VQGAN-CLIP) or animation (`vqclip animate`).",
    "prompt": 'Text prompts, "text[:weight[:stop]] | …"; negative weights push away.',
    "image_prompts": 'Image prompts, each "PATH[:weight[:stop]]" (a file or URL).',
    "noise_prompts": 'Noise prompts, each "SEED[:weight]": a seeded random CLIP target.',
    "init_image": "Start from this image instead of random tokens.",
    "width": "Width in pixels (floored to a multiple of the VQGAN factor).",
    "height": "Height in pixels (floored like the width).",
    "steps": "Optimisation steps.",
    "seed": "Random seed; empty = pick one and record it.",
    "model": "VQGAN: a registry name or a path to a taming .yaml.",
    "clip_model": "CLIP: an open_clip model name or a path to a model-config JSON.",
    "clip_pretrained": 'CLIP weights: an open_clip tag or a checkpoint path; "none" = random weights.',
    "cutn": "Cutouts scored by CLIP per step (more = steadier, slower).",
    "cut_pow": "Cutout size power; higher = smaller cutouts, more detail.",
    "augment": "Random flips/affine/perspective/colour jitter on the cutouts.",
    "noise_fac": "Per-cutout noise amplitude (0 = none).",
    "optimizer": "Optimiser for the latent z.",
    "lr": "Learning rate (step size) of the optimiser.",
    "init_weight": "Weight of the MSE of z to the initial z (keeps the init image).",
    "init_weight_decay": "Subtracted from init_weight every init_weight_decay_every steps (floored at 0).",
    "init_weight_decay_every": "Steps between init_weight decays (0 = no decay).",
    "tv_weight": "Total-variation weight on the pixels (smooths noise).",
    "save_every": "Save a progress frame every N steps (0 = final frame only).",
    "fps": "Frames per second of the progress video.",
    "device": "Device: auto, cpu, cuda, cuda:N or mps.",
    "precision": "Numeric precision of the models.",
    "low_memory": "Trade speed for memory; empty = decide from the estimate.",
    "compile": "torch.compile the models (slow first step, faster after).",
    "clips": "CLIP ensemble, repeatable: MODEL/TAG:WEIGHT, tag and weight optional (ViT-B-16/openai, RN50/openai:0.5).",
    "sampler": "Diffusion sampler: ddim (with --eta) or plms.",
    "eta": "DDIM noise: 0 = deterministic, 1 = DDPM-like; Disco Diffusion uses 0.8.",
    "guidance_scale": "How hard CLIP pulls the picture towards the prompts (diffusion).",
    "tv_scale": "Smoothness: total-variation penalty on the predicted image (diffusion).",
    "range_scale": "Penalty on pixels outside the valid range (diffusion).",
    "sat_scale": "Saturation penalty (diffusion).",
    "init_scale": "Pull towards the init image, MSE (diffusion).",
    "clamp_max": "Cap on the guidance gradient's RMS per step; 0 = no cap (diffusion).",
    "cutn_batches": "Batches of cutouts per step; each adds --cutn cutouts (diffusion).",
    "overview_cuts": "Cutouts of the whole image, padded square, per batch (diffusion).",
    "skip_steps": "Steps of the schedule an init image skips: more keeps more of it (diffusion).",
    "secondary": "Guide through the small secondary model: faster, less memory, some quality lost (diffusion).",
    "class_label": "ImageNet class (0-999) for the class-conditional 512x512_diffusion model; empty = random.",
}


def field_help(name: str) -> str:
    """The help text of RunConfig field `name` (KeyError for a name that is not a field)."""
    try:
        return HELP[name]
    except KeyError:
        raise KeyError(f"RunConfig has no field {name!r}") from None
