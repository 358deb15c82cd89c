"""Continuing a run from disk (`vqclip continue`; also every later stage of a chain), for every engine.

A child run starts from its parent's state.pt, so `generate --steps N` then `continue --steps M` writes the same
output.png bytes as `generate --steps N+M` with the same seed (CPU). What the child does not set is inherited
from the parent's details.json (defaults < parent's config < --config file < flags); the seed is the parent's
resolved seed, the engine the parent's.

`plan_continue` checks everything that can be checked before a model loads and returns a `Plan`: the child's
config and a `Resume` (the parent's checked state, or its output.png to re-encode when the state is missing or
unusable, or `stretch`). The parent's engine checks its state (`check_state`) and may add its own checks and
choices (`plan_continue`: a VQGAN refuses another VQGAN's latent; an animation plans its next frames). The
engine carries the plan out when it starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vqclip.config import RunConfig, layered_values, load_config_file
from vqclip.errors import UsageError
from vqclip.pipeline.request import Inputs, Reporter, Resume, RunOutcome, RunRequest
from vqclip.runfolder.names import DETAILS, IMAGE, STATE
from vqclip.runfolder.record import BadRun
from vqclip.runfolder.state import load_state
from vqclip.runs import RunInfo

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


# ------------------------------------------------------------------------------------------------ plan


@dataclass
class Plan:
    """What `continue` will do, decided before any model is loaded."""

    parent: RunInfo
    config: RunConfig
    resume: Resume
    notes: list[str] = field(default_factory=list)
    given: dict[str, Any] = field(default_factory=dict)  # the settings asked for (flags), before inheriting
    options: dict[str, Any] = field(default_factory=dict)  # the engine's options for the child

    @property
    def record(self) -> Any:
        return self.parent.record


def plan_continue(parent: RunInfo, overrides: dict[str, Any] | None = None, *, resize: str | None = None,
                  config_file: str | Path | None = None, inputs: Inputs | None = None,
                  reporter: Reporter | None = None, extra: dict[str, Any] | None = None) -> Plan:
    """Check everything that can be checked without loading models; raise a one-line VqclipError otherwise.
    `extra`: engine-specific asks (an animation's `frames`)."""
    from vqclip.engines import engine_kind
    from vqclip.engines.base import Setup

    if resize is not None and resize not in RESIZE_MODES:
        raise UsageError(f"--resize {resize!r}: use crop, pad or stretch")
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    record = parent.checked()  # a field of the wrong type: one line naming details.json
    engine = record.engine_name
    kind = engine_kind(engine)
    extra = {k: v for k, v in (extra or {}).items() if v is not None}
    takes = getattr(kind, "CONTINUE_OPTIONS", ())
    for name in extra:
        if name not in takes:
            from vqclip.engines import ENGINES

            who = [n for n, row in ENGINES.items() if name in getattr(row.load(), "CONTINUE_OPTIONS", ())]
            raise UsageError(f"--{name} applies to {' and '.join(f'{n} runs' for n in who) or 'no run'}, and "
                             f"{parent.id} is a {engine} run; leave --{name} out")
    inputs = inputs or Inputs()
    rep = reporter or Reporter()
    done, planned = record.steps_done, record.steps_planned
    finish = (record.status == "interrupted" and "steps" not in overrides and done is not None
              and planned is not None and planned > done and getattr(kind, "CONTINUE_ADDS_STEPS", True))
    if finish:  # an interrupted run without --steps: finish it (same bytes as had it not been interrupted)
        overrides["steps"] = planned - done
    given = {**(load_config_file(config_file) if config_file is not None else {}), **overrides}  # all asked
    cfg, notes = inherit_config(parent, overrides, config_file)
    cfg = cfg.model_copy(update={"engine": engine})  # the parent's engine goes on (older records: vqgan)
    resume = Resume(parent, None, "state", resize=resize, extra=extra)
    plan = Plan(parent, cfg, resume, notes, given=given)
    if finish:
        plan.notes.append(f"{parent.id} was interrupted after {done} of {planned} steps; doing the {cfg.steps} "
                          "left (pass --steps to choose)")
    if resize == "stretch":
        resume.start = "stretch"
    if parent.has_state:
        try:
            resume.state = load_state(parent.path / STATE, getattr(kind, "check_state", None))
        except BadRun as e:
            if not parent.has_image:
                raise BadRun(f"{e.message}, and there is no {IMAGE} to re-encode; start anew with "
                             "`vqclip generate`") from None
            plan.notes.append(f"{e.message}; continuing from {IMAGE} by re-encoding it (the optimizer and "
                              "random stream restart, so this differs from one long run)")
            resume.start = IMAGE if resume.start == "state" else resume.start
    elif resume.start == "state":
        if not parent.has_image:
            raise BadRun(f"{parent.path} has neither {STATE} nor {IMAGE}; nothing to continue from — start anew "
                         "with `vqclip generate`")
        resume.start = IMAGE
        plan.notes.append(f"{parent.id} has no {STATE} (an older, foreign or failed run): continuing from "
                          f"{IMAGE} by re-encoding it; the optimizer and random stream restart")
    if resume.start == "stretch" and not parent.has_image:
        raise BadRun(f"{parent.path} has no {IMAGE} to stretch; drop --resize stretch")
    if "seed" in overrides and record.seed is not None and overrides["seed"] != record.seed:
        resume.reseed = True
        plan.notes.append(f"--seed {cfg.seed}: the random stream restarts from this seed (the parent used "
                          f"{record.seed})")
    hook = getattr(kind, "plan_continue", None)
    if hook is not None:
        hook(plan, Setup(config=cfg, inputs=inputs, resume=resume, note=rep.note, transfer=rep.transfer()))
    return plan


def continue_request(plan: Plan, *, output_dir: Path, inputs: Inputs | None = None, should_stop: Any = None,
                     models_cache: Any = None) -> RunRequest:
    """The run request for a planned continue (its image read now when the engine starts from it)."""
    if plan.resume.start != "state" and plan.resume.start_image is None:
        from vqclip.runfolder.folder import read_run_image

        plan.resume.start_image = read_run_image(plan.parent.path, IMAGE)[0]  # never through a symlink
    return RunRequest(config=plan.config, output_dir=output_dir, inputs=inputs or Inputs(), options=plan.options,
                      should_stop=should_stop, resume=plan.resume, models_cache=models_cache)


def continue_run(parent: RunInfo, overrides: dict[str, Any] | None = None, *, resize: str | None = None,
                 config_file: str | Path | None = None, output_dir: Path | None = None,
                 inputs: Inputs | None = None, should_stop: Any = None, reporter: Reporter | None = None,
                 extra: dict[str, Any] | None = None, models_cache: Any = None) -> RunOutcome:
    """Plan, then run, one continue. The child goes to `output_dir`, by default beside its parent."""
    from vqclip.pipeline.execute import execute

    rep = reporter or Reporter()
    plan = plan_continue(parent, overrides, resize=resize, config_file=config_file, inputs=inputs, reporter=rep,
                         extra=extra)
    for note in plan.notes:
        rep.note(note)
    req = continue_request(plan, output_dir=output_dir or parent.path.parent, inputs=inputs,
                           should_stop=should_stop, models_cache=models_cache)
    return execute(req, rep)


__all__ = ["RESIZE_MODES", "Plan", "inherit_config", "plan_continue", "continue_request", "continue_run"]
