"""Continuing a run from disk (`vqclip continue`; also every later stage of a chain).

A child run starts from its parent's `state.pt` (z, MSE anchor, optimizer moments, RNG states, step counter),
so `generate --steps N` then `continue --steps M` writes the same output.png bytes as `generate --steps N+M`
with the same seed (CPU). What the child does not set is inherited from the parent's details.json
(defaults < parent's config < --config file < flags); the seed is the parent's resolved seed.

Starts, in order of preference (recorded in the child's details.json under `continue`):
- `state`: the saved state, bit for bit. A new `--size` crops or pads the token grid around its centre (new
  border tokens are random codebook tokens drawn from the run's seed, the same ones a fresh run at that size
  starts from); the optimizer then restarts, since its moments belong to the old grid.
- `output.png`: a parent without a usable state.pt (older, foreign or failed) is re-encoded from its image at its
  own size (then cropped/padded like a state); the optimizer and the random stream restart.
- `stretch` (`--resize stretch`): output.png resized to the new size and re-encoded. This is also the only way to
  switch to a different VQGAN, whose latent space means nothing to the parent's latent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vqclip.config import RunConfig, layered_values, load_config_file
from vqclip.errors import UsageError, VqclipError
from vqclip.pipeline.execute import Reporter, RunOutcome, RunRequest
from vqclip.record import DETAILS, IMAGE, STATE, BadRun, Continued, RunRecord
from vqclip.runs import RunInfo
from vqclip.state import load_state

RESIZE_MODES = ("crop", "pad", "stretch")


# ------------------------------------------------------------------------------------------------ config


def inherit_config(parent: RunInfo, overrides: dict[str, Any] | None = None,
                   config_file: str | Path | None = None) -> tuple[RunConfig, list[str]]:
    """The child's RunConfig: defaults < parent's config < --config file < flags. Also returns notes (keys of an
    older schema that were dropped)."""
    from pydantic import ValidationError

    from vqclip.config import validation_lines

    where = parent.path / DETAILS
    record = parent.checked()
    base = record.config
    if base is None:
        raise BadRun(f"{where} has no config object; fix or remove that run folder, or start anew with "
                     "`vqclip generate`")
    notes = []
    known = {k: v for k, v in base.items() if k in RunConfig.model_fields}
    dropped = sorted(set(base) - set(known))
    if dropped:
        notes.append(f"ignored settings this version does not know in {where}: {', '.join(dropped)}")
    if record.seed is not None:
        known["seed"] = record.seed  # the resolved seed (the config may say null = random)
    merged = layered_values(known, load_config_file(config_file) if config_file is not None else None, overrides)
    try:
        return RunConfig.model_validate(merged), notes
    except ValidationError as e:
        if overrides or config_file:
            raise
        lines = "; ".join(validation_lines(e))
        raise BadRun(f"{where} holds settings that are not valid ({lines}); fix that file or pass the "
                     "setting as a flag") from None


# ------------------------------------------------------------------------------------------------ grid


def grid_change(old: tuple[int, int], new: tuple[int, int], mode: str | None) -> str:
    """Describe how the token grid (rows, cols) changes; refuse an explicit crop/pad that cannot do it alone."""
    shrink = [axis for axis, o, n in (("height", old[0], new[0]), ("width", old[1], new[1])) if n < o]
    grow = [axis for axis, o, n in (("height", old[0], new[0]), ("width", old[1], new[1])) if n > o]
    if mode == "crop" and grow:
        raise UsageError(f"--resize crop cannot make the {' and '.join(grow)} larger; use --resize pad (or leave "
                         "--resize out to crop and pad as needed), or stretch")
    if mode == "pad" and shrink:
        raise UsageError(f"--resize pad cannot make the {' and '.join(shrink)} smaller; use --resize crop (or "
                         "leave --resize out to crop and pad as needed), or stretch")
    parts = []
    if shrink:
        parts.append(f"centre-cropped ({' and '.join(shrink)})")
    if grow:
        parts.append(f"padded with random tokens ({' and '.join(grow)})")
    return " and ".join(parts)


def fit_grid(z: Any, fill: Any) -> Any:
    """`z` centred on a copy of `fill` (a latent of the new grid): cropped where smaller, `fill` shows where
    larger."""
    out = fill.clone()
    oh, ow = z.shape[-2:]
    nh, nw = fill.shape[-2:]
    h, w = min(oh, nh), min(ow, nw)
    sy, sx, dy, dx = (oh - h) // 2, (ow - w) // 2, (nh - h) // 2, (nw - w) // 2
    out[..., dy:dy + h, dx:dx + w] = z[..., sy:sy + h, sx:sx + w].to(out)
    return out


def _fmt_size(grid: tuple[int, int], factor: int) -> str:
    return f"{grid[1] * factor}x{grid[0] * factor}"


# ------------------------------------------------------------------------------------------------ plan


@dataclass
class Plan:
    """What `continue` will do, decided before any model is loaded."""

    parent: RunInfo
    config: RunConfig
    start: str  # "state" | "output.png" | "stretch"
    state: dict[str, Any] | None
    resize: str | None
    notes: list[str] = field(default_factory=list)
    reseed: bool = False

    @property
    def parent_step(self) -> int:
        if self.state is not None:
            return int(self.state["step"])
        return self.record.global_step or self.record.steps_done or 0

    @property
    def record(self) -> RunRecord:
        return self.parent.record


def _same_weights(parent: RunInfo, files: Any) -> bool:
    w = parent.record.weights
    if w.sha256 and files.sha256:
        return w.sha256 == files.sha256
    try:
        return bool(w.path) and Path(w.path).expanduser().resolve() == Path(files.ckpt_path).resolve()
    except OSError:
        return False


def plan_continue(parent: RunInfo, overrides: dict[str, Any] | None = None, *, resize: str | None = None,
                  config_file: str | Path | None = None, weights_dir: Path | None = None,
                  download: bool = True, reporter: Reporter | None = None) -> Plan:
    """Check everything that can be checked without loading models; raise a one-line VqclipError otherwise."""
    if resize is not None and resize not in RESIZE_MODES:
        raise UsageError(f"--resize {resize!r}: use crop, pad or stretch")
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    record = parent.checked()  # a field of the wrong type: one line naming details.json
    done, planned = record.steps_done, record.steps_planned
    finish = (record.status == "interrupted" and "steps" not in overrides and done is not None
              and planned is not None and planned > done)
    if finish:  # an interrupted run without --steps: finish it (same bytes as had it not been interrupted)
        overrides["steps"] = planned - done
    cfg, notes = inherit_config(parent, overrides, config_file)
    plan = Plan(parent, cfg, "state", None, resize, notes)
    if finish:
        plan.notes.append(f"{parent.id} was interrupted after {done} of {planned} steps; doing the {cfg.steps} "
                          "left (pass --steps to choose)")

    if resize == "stretch":
        plan.start = "stretch"
    if parent.has_state:
        try:
            plan.state = load_state(parent.path / STATE)
        except BadRun as e:
            if not parent.image.is_file():
                raise BadRun(f"{e.message}, and there is no {IMAGE} to re-encode; start anew with "
                             "`vqclip generate`") from None
            plan.notes.append(f"{e.message}; continuing from {IMAGE} by re-encoding it (the optimizer and "
                              "random stream restart, so this differs from one long run)")
            plan.start = "output.png" if plan.start == "state" else plan.start
    elif plan.start == "state":
        if not parent.image.is_file():
            raise BadRun(f"{parent.path} has neither {STATE} nor {IMAGE}; nothing to continue from — start anew "
                         "with `vqclip generate`")
        plan.start = "output.png"
        plan.notes.append(f"{parent.id} has no {STATE} (an older, foreign or failed run): continuing from "
                          f"{IMAGE} by re-encoding it; the optimizer and random stream restart")
    if plan.start == "stretch" and not parent.image.is_file():
        raise BadRun(f"{parent.path} has no {IMAGE} to stretch; drop --resize stretch")

    # A different VQGAN: its latent space has nothing to do with the parent's (re-encoding an image is fine).
    parent_model = str((record.config or {}).get("model", ""))
    if cfg.model != parent_model:
        from vqclip.weights.resolve import resolve_model

        rep = reporter or Reporter()
        files = resolve_model(cfg.model, weights_dir=weights_dir, download=download, note=rep.note,
                              progress=rep.transfer())
        if not _same_weights(parent, files):
            if plan.start == "state":
                raise VqclipError(
                    f"{parent.id} was made with VQGAN {parent_model!r}, not {cfg.model!r}: their latent spaces "
                    "differ, so its saved latent means nothing to the new model; leave --model out, or pass "
                    "--resize stretch to re-encode its output.png with the new model")
            plan.notes.append(f"new VQGAN {cfg.model}: re-encoding {parent.id}/{IMAGE} with it")

    parent_seed = record.seed
    if "seed" in overrides and parent_seed is not None and overrides["seed"] != parent_seed:
        plan.reseed = True
        plan.notes.append(f"--seed {cfg.seed}: the random stream restarts from this seed (the parent used "
                          f"{parent_seed})")
    if plan.state is not None and plan.start == "state":
        old_opt = plan.state.get("optimizer")
        if old_opt and old_opt != cfg.optimizer:
            plan.notes.append(f"optimizer {old_opt} → {cfg.optimizer}: it starts fresh")
        # Validate explicit crop/pad early, when the factor is known from the parent (same model).
        if record.size is not None and plan.state["z"].shape[-1]:
            factor = record.size[0] // int(plan.state["z"].shape[-1])
            if factor > 0:
                new = (max(1, cfg.height // factor), max(1, cfg.width // factor))
                grid_change(tuple(plan.state["z"].shape[-2:]), new, resize)  # type: ignore[arg-type]
    return plan


def _encode(models: Any, image: Any, size: tuple[int, int]) -> Any:
    from vqclip.engine import image_to_tensor

    x = image_to_tensor(image, size, models.device)
    return models.vqgan.encode(x * 2 - 1)


def make_prepare(plan: Plan, reporter: Reporter) -> Any:
    """The pipeline hook that turns the plan into the starting state once the models are loaded."""

    def prepare(models: Any, settings: Any, state: dict[str, Any] | None, start_image: Any) -> dict[str, Any]:
        import torch

        f = models.vqgan.factor
        new = (settings.height // f, settings.width // f)
        if plan.start == "state":
            assert state is not None
            state = dict(state)
            if state["z"].shape[1] != models.vqgan.spec.embed_dim:
                raise VqclipError(f"{plan.parent.path / STATE} holds a {state['z'].shape[1]}-channel latent but "
                                  f"this VQGAN has {models.vqgan.spec.embed_dim}; continue with the parent's "
                                  "model, or pass --resize stretch")
        else:
            if plan.start == "stretch":
                size = (new[1] * f, new[0] * f)
                reporter.note(f"stretch: {plan.parent.id}/{IMAGE} resized to {size[0]}x{size[1]} and re-encoded; "
                              "the optimizer restarts")
            else:  # output.png at its own size, then cropped/padded like a state
                size = (max(1, start_image.width // f) * f, max(1, start_image.height // f) * f)
            z = _encode(models, start_image, size).cpu()
            state = {"z": z, "z_anchor": z.clone(), "step": plan.parent_step, "optimizer": None,
                     "optimizer_state": None, "seed": settings.seed}
            if plan.state is not None:  # stretch from a good state: keep the random stream going
                for key in ("rng_cpu", "rng_noise"):
                    if key in plan.state:
                        state[key] = plan.state[key]
        if plan.reseed:
            state.pop("rng_cpu", None)
            state.pop("rng_noise", None)
        old = tuple(state["z"].shape[-2:])
        if old != new:
            how = grid_change(old, new, plan.resize)  # type: ignore[arg-type]
            gen = torch.Generator().manual_seed(settings.seed)
            fill = models.vqgan.random_latent(new[1], new[0], gen).cpu()
            state["z"] = fit_grid(state["z"], fill)
            state["z_anchor"] = fit_grid(state["z_anchor"], fill)
            restarted = state.get("optimizer_state") is not None
            state["optimizer_state"] = None
            reporter.note(f"size {_fmt_size(old, f)} → {_fmt_size(new, f)}: token grid {how}"
                          f"{f'; new tokens from seed {settings.seed}' if 'padded' in how else ''}"
                          f"{'; the optimizer restarts (its moments belong to the old grid)' if restarted else ''}")
        return state

    return prepare


def continue_request(plan: Plan, *, output_dir: Path, weights_dir: Path | None = None, download: bool = True,
                     trusted: list[Path] | None = None, should_stop: Any = None,
                     reporter: Reporter | None = None) -> RunRequest:
    """The pipeline request for a planned continue (lineage fields set)."""
    rep = reporter or Reporter()
    start_image = None
    if plan.start != "state":
        from vqclip.pipeline.media import open_image

        start_image = open_image(str(plan.parent.image), "parent image")[0]
    continued = Continued(from_=plan.parent.id, from_step=plan.parent_step, start=plan.start, resize=plan.resize)
    return RunRequest(config=plan.config, output_dir=output_dir, weights_dir=weights_dir, download=download,
                      trusted=list(trusted or []), should_stop=should_stop, parent=plan.parent.id,
                      root=plan.parent.root, stage=plan.parent.stage + 1,
                      state=plan.state if plan.start == "state" else None, start_image=start_image,
                      continued=continued, prepare_state=make_prepare(plan, rep),
                      inherit_precision=recorded_precision(plan.parent.record))


def recorded_precision(record: Any) -> tuple[str, str] | None:
    """(device type, precision) as a run's details.json recorded them, when it did: a run that continues it on
    the same kind of device computes in the same dtypes."""
    device, precision = record.device, record.precision
    if device and precision is not None:
        return device.split(":")[0], precision
    return None


def continue_run(parent: RunInfo, overrides: dict[str, Any] | None = None, *, resize: str | None = None,
                 config_file: str | Path | None = None, output_dir: Path | None = None,
                 weights_dir: Path | None = None, download: bool = True, trusted: list[Path] | None = None,
                 should_stop: Any = None, reporter: Reporter | None = None) -> RunOutcome:
    """Plan, then run, one continue. The child goes to `output_dir`, by default beside its parent."""
    from vqclip.pipeline.execute import execute

    rep = reporter or Reporter()
    plan = plan_continue(parent, overrides, resize=resize, config_file=config_file, weights_dir=weights_dir,
                         download=download, reporter=rep)
    for note in plan.notes:
        rep.note(note)
    req = continue_request(plan, output_dir=output_dir or parent.path.parent, weights_dir=weights_dir,
                           download=download, trusted=trusted, should_stop=should_stop, reporter=rep)
    return execute(req, rep)


