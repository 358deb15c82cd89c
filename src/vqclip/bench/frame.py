"""`frame`: what one animation frame transition costs against one optimiser step, per device, in this process.

As `vqclip animate` makes frames (`pipeline/animate.py`; a run loaded with the encoder, the text tower released,
weights as loaded), `--warmup` + `--steps` rounds of: one step (`session.run(1)`, until the step has reported),
decode (the `session.image()` that ends `run`, whose image animate warps), warp on the device (FRAME_MOVE),
re-encode (`models.vqgan.encode`), `restart_from` (untimed). Steps and transitions interleave, so a busy machine
slows both alike; medians over the rounds after `--warmup`. Plus the memory estimate of an animation at that
size with and without the encoder kept through the steps (`memory.estimate(keep_encoder=)`). The dispatcher
turns on transparent huge pages before torch is imported, as `vqclip` does.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from vqclip.bench.common import CLIP, MODEL, Say, format_table, load_random, loadavg, machine, quiet

FRAME_SIZE = (384, 256)  # width, height
FRAME_MOVE = {"zoom": 1.02, "angle": 1.0, "tx": 1.5, "ty": -2.0, "border": "wrap"}


def devices(device: str) -> list[Any]:
    """`--device auto`: the CPU, and CUDA too when there is one; otherwise the device asked for."""
    import torch

    from vqclip.engine import pick_device

    if device != "auto":
        return [pick_device(device)]
    return [torch.device("cpu"), *([pick_device("cuda")] if torch.cuda.is_available() else [])]


def frame_row(args: argparse.Namespace, device: Any, spec: Any) -> dict[str, Any]:
    """One device's row (see the module's docstring)."""
    import torch

    from vqclip import engine
    from vqclip.engine.precision import choose_precision
    from vqclip.engine.warp import warp
    from vqclip.pipeline import memory
    from vqclip.engines.animation import _encode

    w, h = FRAME_SIZE

    def timed(fn: Any, *a: Any) -> tuple[Any, float]:
        t = time.perf_counter()
        out = fn(*a)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return out, 1000 * (time.perf_counter() - t)

    def move(image: Any) -> Any:  # as animate: the decoded image (on the CPU) to the device, warped there
        return warp(image[None].to(device, torch.float32), **FRAME_MOVE)[0]

    run = load_random(device, w, h, args.cutn, weights=getattr(args, "weights", None), precision=args.precision,
                      with_encoder=True)
    models = run.models
    session = engine.start_session(models, run.settings, run.prompts)
    models.clip.release_text_tower()  # the encoder stays: every frame is re-encoded
    parts: dict[str, list[float]] = {"step": [], "decode": [], "warp": [], "encode": []}
    reported: list[float] = []  # the step ends when it reports (its numbers on the host); run then decodes
    for i in range(args.warmup + args.steps):  # as animate's frames (of one step here), steps and transitions
        t0 = time.perf_counter()
        image = session.run(1, lambda _: reported.append(time.perf_counter())).image
        t_step, t_dec = 1000 * (reported[-1] - t0), 1000 * (time.perf_counter() - reported[-1])
        moved, t_warp = timed(move, image)
        z, t_enc = timed(_encode, models, moved.clamp(0, 1))
        session.restart_from(z, keep_optimizer=True)
        if i >= args.warmup:
            for times, ms in zip(parts.values(), (t_step, t_dec, t_warp, t_enc)):
                times.append(round(ms, 2))
    med = {f"{k}_ms": round(statistics.median(v), 2) for k, v in parts.items()}
    step = med.pop("step_ms")
    transition = sum(med.values())
    encoder = [models.vqgan.encoder, models.vqgan.quant_conv]
    prec = choose_precision(args.precision, device)

    def estimate(with_encoder: bool) -> dict[str, float]:
        e = memory.estimate(spec, CLIP, w, h, args.cutn, device, prec, run.plan.low_memory,
                            with_encoder=with_encoder, keep_encoder=with_encoder)
        return {k: round(v / 2**20, 1) for k, v in (("total_mb", e.total), ("step_phase_mb", e.step_phase),
                                                     ("load_phase_mb", e.load_phase))}

    return {"device": str(device), "precision": run.precision.describe(), "low_memory": run.plan.low_memory,
            **med, "transition_ms": round(transition, 2), "step_ms": round(step, 2),
            "ratio": round(transition / step, 4), "times_ms": parts,
            "encoder_weights_mb": round(sum(p.nbytes for m in encoder for p in m.parameters()) / 2**20, 1),
            "estimate_without_encoder": estimate(False), "estimate_with_encoder": estimate(True)}


def run(args: argparse.Namespace, say: Say = quiet) -> dict[str, Any]:
    from vqclip import hugepages

    huge = hugepages.enable()  # in effect when the dispatcher turned it on before torch was imported
    import torch

    from vqclip import engine
    from vqclip.weights.registry import packaged_yaml

    torch.set_num_threads(args.threads)
    spec, (w, h) = engine.read_spec(packaged_yaml(MODEL)), FRAME_SIZE
    rows, load = [], loadavg()
    for device in devices(args.device):
        say(f"frame transition {w}x{h} cutn {args.cutn} on {device}…")
        rows.append(frame_row(args, device, spec))
    return {"size": [w, h], "cutn": args.cutn, "move": FRAME_MOVE, "warmup": args.warmup, "repeats": args.steps,
            "huge_pages": huge, "rows": rows, "loadavg_start": load, "loadavg_end": loadavg(), "machine": machine()}


def report(data: dict[str, Any]) -> str:
    from vqclip.animation import Animation
    from vqclip.pipeline.memory import MiB, fmt

    w, h = data["size"]
    rows = [[r["device"], r["precision"],
             *(f"{r[k]:.1f}" for k in ("decode_ms", "warp_ms", "encode_ms", "transition_ms", "step_ms")),
             f"{r['ratio']:.2f}×", fmt(r["estimate_without_encoder"]["total_mb"] * MiB),
             fmt(r["estimate_with_encoder"]["total_mb"] * MiB)] for r in data["rows"]]
    out = [f"Animation frame transition vs one step: {w}x{h}, cutn {data['cutn']}, {data['move']} (medians of "
           f"{data['repeats']}; {data.get('machine') or machine()}; load avg {data['loadavg_start']} → "
           f"{data['loadavg_end']})",
           format_table(["device", "precision", "decode ms", "warp ms", "encode ms", "sum ms", "step ms",
                         "sum/step", "estimate", "+encoder"], rows, right=tuple(range(2, 10)))]
    n = Animation.model_fields["steps_per_frame"].default
    for r in data["rows"]:
        no, yes = r["estimate_without_encoder"], r["estimate_with_encoder"]
        out.append(f"{r['device']}: a transition costs {r['ratio']:.2f} steps, so a frame of --steps-per-frame N "
                   f"costs N + {r['ratio']:.2f} steps (+{100 * r['ratio'] / n:.0f}% at the default {n}); "
                   f"estimate step / load phase {no['step_phase_mb']:.0f} / {no['load_phase_mb']:.0f} MiB, "
                   f"with the encoder ({r['encoder_weights_mb']:.0f} MiB of weights) "
                   f"{yes['step_phase_mb']:.0f} / {yes['load_phase_mb']:.0f} MiB")
    return "\n".join(out)
