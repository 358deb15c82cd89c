"""`vqclip generate --dry-run`: the memory estimate as a table, and what would fit."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from rich.table import Table

from vqclip.commands.common import out_console

ROWS = (("runtime (torch, libraries)", "runtime"), ("weights", "weights"),
        ("decoder activations", "decoder_activations"), ("CLIP activations", "clip_activations"),
        ("convolution workspace", "workspace"), ("image, cutouts, scratch", "scratch"),
        ("peak while stepping", "step_phase"), ("peak while loading", "load_phase"), ("estimated peak", "total"))


def show_estimate(config: Any, *, weights_dir: Optional[Path] = None) -> None:
    from vqclip.pipeline.budget import dry_run
    from vqclip.pipeline.memory import fmt

    est = dry_run(config, weights_dir=weights_dir, on_note=lambda line: out_console.print(line, markup=False))
    table = Table(title=f"Estimated peak memory: {est.width}x{est.height}, cutn {config.cutn}, {config.model} + "
                        f"{config.clip_model} on {est.device} ({est.precision})", title_justify="left")
    table.add_column("part")
    table.add_column("normal", justify="right")
    table.add_column("low-memory", justify="right")
    for label, attr in ROWS:
        if attr == "step_phase" and est.normal.slack:
            table.add_row("workspaces, fragmentation (CUDA)", fmt(est.normal.slack), fmt(est.low.slack))
        table.add_row(label, fmt(getattr(est.normal, attr)), fmt(getattr(est.low, attr)))
    out_console.print(table)
    mode = "low-memory" if est.low_memory else "normal"
    if est.budget is None:
        out_console.print(f"This run would use {mode} mode; available memory unknown.")
        return
    verdict = "fits" if est.chosen.total <= est.budget else "does NOT fit"
    why = ("low-memory switched on automatically" if est.low_memory and config.low_memory is None
           else "as asked" if config.low_memory is not None else "low-memory not needed")
    out_console.print(f"Available on {est.device}: {fmt(est.budget)} → {mode} mode, {verdict} ({why}).")
    for lm, label in ((False, "normal"), (True, "low-memory")):
        best = est.largest.get(lm)
        shown = f"{best[0]}x{best[1]}" if best else "none"
        out_console.print(f"Largest size that fits ({label}, cutn {config.cutn}): {shown}")


def show_diffusion_estimate(config: Any, *, inputs: Any) -> None:
    """`vqclip diffuse --dry-run`: the estimated peak per mode, and whether it fits; exit 1 when none does."""
    from vqclip.errors import VqclipError
    from vqclip.pipeline.memory import fmt
    from vqclip.pipeline.memory_diffusion import dry_run

    est = dry_run(config, inputs, note=lambda line: out_console.print(line, markup=False))
    w, h = est["size"]
    table = Table(title=f"Estimated peak memory: {w}x{h}, cutn {config.cutn}, {config.model} on {est['device']} "
                        f"({est['precision']})", title_justify="left")
    table.add_column("mode")
    table.add_column("estimated peak", justify="right")
    for label, key in (("guided through the U-Net", "normal"), ("--low-memory (checkpointing)", "low_memory"),
                       ("--secondary (the small model guides)", "secondary")):
        table.add_row(label, fmt(est[key]))
    out_console.print(table)
    budget = est["budget"]
    if budget is None:
        out_console.print("Available memory unknown.")
        return
    chosen = est["secondary"] if config.secondary else est["low_memory"] if config.low_memory else est["normal"]
    verdict = "fits" if chosen <= budget else "does NOT fit"
    out_console.print(f"Available on {est['device']}: {fmt(budget)} → this run {verdict}.")
    if chosen > budget:
        raise VqclipError(f"the run needs about {fmt(chosen)} and {fmt(budget)} is available; pass --low-memory or "
                          "--secondary, or a smaller --size")
