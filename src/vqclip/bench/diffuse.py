"""`diffuse`: one CLIP-guided diffusion step, vqclip against OpenAI's reference code driven by the original app's
guidance function, on the real 256x256 U-Net architecture at random weights (`--size`², `--cutn` cutouts × 2
batches, CLIP ViT-B-16 at random weights): median seconds per step and peak RSS, each mode in a process of its
own (a clean peak), the modes alternating `--repeats` times so that a busy machine slows both alike.

- `reference`: guided_diffusion's `UNetModel` + `GaussianDiffusion.p_sample` with the original app's `cond_fn`
  (Katherine Crowson's notebook): the sampler's forward without gradient, then `cond_fn` runs the U-Net again with
  the gradient on to get x0, cuts it out, and differentiates CLIP's loss + TV + range back to x.
- `ours`: vqclip's U-Net and sampler, guidance on the U-Net's own x0 (one forward with the gradient on serves the
  step and the guidance), what `vqclip diffuse` runs; `ours-lowmem` adds gradient checkpointing.

The reference comes from PyPI `guided-diffusion-sdk` (test extra); without it only vqclip's rows are measured.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from typing import Any

from vqclip.bench.common import Say, child_env, format_table, loadavg, machine, peak_rss_mb

MODES = ("reference", "ours", "ours-lowmem")


def _clip(device: Any) -> Any:
    from vqclip.engine.clip import load_clip

    return load_clip("ViT-B-16-quickgelu", "none", device)


def _prompts(clip: Any, device: Any) -> list[Any]:
    from vqclip.engine.losses import Prompt

    embed = clip.encode_text(["a lighthouse in a storm"], device)
    return [Prompt(embed, 1.0, label="text")]


def _ours(size: int, cutn: int, steps: int, low_memory: bool) -> list[float]:
    import time

    import torch

    from vqclip.engine.diffusion.gaussian import SpacedDiffusion
    from vqclip.engine.diffusion.guidance import ClipGuidance, GuidanceSettings, GuidedClip
    from vqclip.engine.diffusion.samplers import Sampler
    from vqclip.engine.diffusion.unet import build_unet

    device = torch.device("cpu")
    unet = build_unet("256x256_diffusion_uncond").eval().requires_grad_(False)
    unet.set_gradient_checkpointing(low_memory)
    clip = _clip(device)
    diffusion = SpacedDiffusion.create("ddim50")
    guidance = ClipGuidance(diffusion, [GuidedClip(clip, _prompts(clip, device))],
                            GuidanceSettings(cutn=cutn, cutn_batches=2), generator=torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(0)
    sampler = Sampler(diffusion, lambda x, t: unet(x, t), torch.randn(1, 3, size, size, generator=gen),
                      cond_fn=guidance, eta=0.8, generator=torch.Generator().manual_seed(2))
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        sampler.step()
        times.append(time.perf_counter() - t0)
    return times


def _reference(size: int, cutn: int, steps: int) -> list[float]:
    """The original app's loop: guided_diffusion's p_sample with Crowson's cond_fn (cutouts, spherical
    distance, TV, range), as in its notebook."""
    import time

    import torch
    import torch.nn.functional as F
    from guided_diffusion.script_util import create_model_and_diffusion, model_and_diffusion_defaults

    from vqclip.engine.cutouts import Cutouts

    opts = model_and_diffusion_defaults()
    opts.update({"attention_resolutions": "32,16,8", "class_cond": False, "diffusion_steps": 1000,
                 "rescale_timesteps": True, "timestep_respacing": "50", "image_size": 256, "learn_sigma": True,
                 "noise_schedule": "linear", "num_channels": 256, "num_head_channels": 64, "num_res_blocks": 2,
                 "resblock_updown": True, "use_fp16": False, "use_scale_shift_norm": True})
    model, diffusion = create_model_and_diffusion(**opts)
    model.eval().requires_grad_(False)
    device = torch.device("cpu")
    clip = _clip(device)
    target = clip.encode_text(["a lighthouse in a storm"], device)
    cuts = Cutouts(clip.input_size, cutn, 0.5, False, 0.0)
    gen = torch.Generator().manual_seed(1)

    def spherical(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
        return (a - b).norm(dim=-1).div(2).arcsin().pow(2).mul(2)

    current = [0]  # the respaced index of the step (the notebook's cur_t): cond_fn's own t is rescaled

    def cond_fn(x: torch.Tensor, t: torch.Tensor, y: Any = None) -> torch.Tensor:
        with torch.enable_grad():
            x = x.detach().requires_grad_()
            n = x.shape[0]
            my_t = torch.ones([n], device=device, dtype=torch.long) * current[0]
            out = diffusion.p_mean_variance(model, x, my_t, clip_denoised=False, model_kwargs={})
            fac = diffusion.sqrt_one_minus_alphas_cumprod[current[0]]
            x_in = out["pred_xstart"] * fac + x * (1 - fac)
            loss = x_in.new_zeros(())
            for _ in range(2):
                embeds = clip.encode_image(clip.normalize(cuts(x_in.add(1).div(2), gen)))
                loss = loss + spherical(embeds, target).mean() * 1000 / 2
            x_pad = F.pad(x_in, (0, 1, 0, 1), "replicate")
            tv = ((x_pad[..., :-1, 1:] - x_pad[..., :-1, :-1]) ** 2
                  + (x_pad[..., 1:, :-1] - x_pad[..., :-1, :-1]) ** 2).mean()
            rng = (out["pred_xstart"] - out["pred_xstart"].clamp(-1, 1)).pow(2).mean()
            total = loss + tv * 150 + rng * 50
            return -torch.autograd.grad(total, x)[0]

    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    times = []
    for i in range(steps):
        current[0] = diffusion.num_timesteps - 1 - i
        t = torch.tensor([current[0]])
        t0 = time.perf_counter()
        x = diffusion.p_sample(model, x, t, clip_denoised=False, cond_fn=cond_fn, model_kwargs={})["sample"]
        times.append(time.perf_counter() - t0)
    return times


def _worker(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=MODES, required=True)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--cutn", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    times = _reference(a.size, a.cutn, a.steps) if a.mode == "reference" else \
        _ours(a.size, a.cutn, a.steps, a.mode == "ours-lowmem")
    print(json.dumps({"mode": a.mode, "times": times, "peak_rss_mb": peak_rss_mb()}))


def _one(mode: str, args: Any) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "vqclip.bench.diffuse", "--mode", mode, "--size", str(args.size),
           "--cutn", str(args.cutn), "--steps", str(args.steps + args.warmup), "--threads", str(args.threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), timeout=3600)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["failed"])[-1]
        return {"mode": mode, "error": last[:300]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _have_reference() -> bool:
    try:
        import guided_diffusion  # noqa: F401
    except ImportError:
        return False
    return True


def run(args: Any, say: Say) -> dict[str, Any]:
    modes = [m for m in MODES if m != "reference" or _have_reference()]
    samples: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    for r in range(args.repeats):
        for mode in modes:
            say(f"diffuse: {mode} at {args.size}², cutn {args.cutn} x 2 (repeat {r + 1}/{args.repeats})")
            samples[mode].append(_one(mode, args))
    rows = []
    for mode, got in samples.items():
        ok = [g for g in got if "times" in g]
        if not ok:
            rows.append({"mode": mode, "error": got[0].get("error") if got else "not run"})
            continue
        step_s = statistics.median(t for g in ok for t in g["times"][args.warmup:])
        rows.append({"mode": mode, "step_s": round(step_s, 3),
                     "peak_rss_mb": round(statistics.median(g["peak_rss_mb"] for g in ok))})
    ref = next((r for r in rows if r["mode"] == "reference" and "step_s" in r), None)
    for r in rows:
        if ref is not None and "step_s" in r:
            r["time_ratio"] = round(r["step_s"] / ref["step_s"], 3)
            r["memory_ratio"] = round(r["peak_rss_mb"] / ref["peak_rss_mb"], 3)
    return {"machine": machine(), "loadavg": loadavg(), "size": args.size, "cutn": args.cutn, "batches": 2,
            "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats, "rows": rows,
            "goal": {"time_ratio": 0.7, "memory_ratio": 0.6}}


def report(data: dict[str, Any]) -> str:
    headers = ["mode", "s/step", "peak RSS MB", "time vs ref", "memory vs ref"]
    rows = [[r["mode"], r.get("step_s", r.get("error", "")), r.get("peak_rss_mb", ""), r.get("time_ratio", ""),
             r.get("memory_ratio", "")] for r in data["rows"]]
    head = (f"CLIP-guided diffusion step, 256x256 U-Net at random weights, {data['size']}², cutn {data['cutn']} x 2 "
            f"(goal: ≤ {data['goal']['time_ratio']}× the time, ≤ {data['goal']['memory_ratio']}× the memory)")
    return head + "\n" + format_table(headers, rows, right=(1, 2, 3, 4))


if __name__ == "__main__":
    _worker(sys.argv[1:])
