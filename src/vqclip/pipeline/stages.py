"""Chains of stages (`vqclip generate … --then …`, story prompts `a ^ b ^ c`) and their combined video.

Every stage is its own run folder (parent / root / stage in details.json): stage 1 is a generate run, each later
stage continues the previous one with the next prompt, and the models load once for the whole chain. The last
stage made (the last planned, or the one interrupted) writes the combined video of the chain as `chain.mp4` in
its own folder before that folder is committed, and records it in details.json (`files.chain_video`, `chain` =
the stage ids). Each stage's own video already starts from its parent's last frame (a session's first frame is
its starting latent), so the combined video drops that duplicate frame at each joint; stages of different sizes
are centred on a black canvas of the largest width and height, unscaled. Prints nothing: the caller gets a
reporter per stage and the outcomes as they come.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from vqclip.config import RunConfig
from vqclip.errors import UsageError, VqclipError
from vqclip.pipeline.request import Inputs, Reporter, RunOutcome, RunRequest
from vqclip.runfolder.names import CHAIN_VIDEO
from vqclip.runs import RunInfo

@dataclass
class StagePlan:
    """The stages of a chain, every one validated before the first step runs."""

    first: RunConfig
    prompts: list[str]  # the prompts of stages 2…n
    stage_steps: int | None

    @property
    def total(self) -> int:
        return 1 + len(self.prompts)

    def prompt(self, index: int) -> str:
        return self.first.prompt if index == 0 else self.prompts[index - 1]


@dataclass
class StagesResult:
    outcomes: list[RunOutcome]
    total: int
    video: Path | None

    @property
    def interrupted(self) -> bool:
        return self.outcomes[-1].status == "interrupted"


def plan_stages(cfg: RunConfig, then: list[str], stage_steps: int | None) -> StagePlan:
    """Split a story prompt, add the --then prompts, and validate every stage's settings up front: a bad third
    prompt must fail before the first stage spends its steps."""
    from pydantic import ValidationError

    from vqclip.config import validation_lines
    from vqclip.prompts import PromptError, parse_story

    if stage_steps is not None and stage_steps < 1:
        raise UsageError("--stage-steps must be at least 1")
    try:
        story = parse_story(cfg.prompt) if cfg.prompt else [cfg.prompt]
    except PromptError as e:
        raise VqclipError(str(e)) from None
    if len(story) > 1:
        cfg = cfg.model_copy(update={"prompt": story[0]})
    prompts = [*story[1:], *then]
    base = cfg.model_dump()
    for index, prompt in enumerate([cfg.prompt, *prompts], start=1):
        stage = {**base, "prompt": prompt}
        if index > 1 and stage_steps is not None:
            stage["steps"] = stage_steps
        try:
            RunConfig.model_validate(stage)
        except ValidationError as e:
            raise UsageError(f"stage {index} ({prompt!r}): {'; '.join(validation_lines(e))}") from None
    return StagePlan(cfg, prompts, stage_steps)


def run_stages(plan: StagePlan, *, output_dir: Path, inputs: Inputs | None = None,
               should_stop: Callable[[], bool] | None = None,
               reporter_for: Callable[[int, int, str], Reporter] | None = None,
               on_outcome: Callable[[RunOutcome], None] | None = None) -> StagesResult:
    """Run the stages in order, the models loaded once for the whole chain; stop after a stage that was
    interrupted (it is saved, later ones are skipped). The last stage made (the last planned, or the one
    interrupted) also holds the chain video. `reporter_for(index, total, prompt)` gives each stage its reporter;
    `on_outcome` hears of each saved stage."""
    from vqclip.pipeline.budget import release_device_cache
    from vqclip.pipeline.cache import ModelCache
    from vqclip.pipeline.execute import execute
    from vqclip.pipeline.resume import continue_request, plan_continue

    inputs = inputs or Inputs()
    cache = ModelCache()
    outcomes: list[RunOutcome] = []
    try:
        for i in range(plan.total):
            rep = reporter_for(i, plan.total, plan.prompt(i)) if reporter_for else Reporter()
            last = i == plan.total - 1
            if i == 0:
                req = RunRequest(config=plan.first, output_dir=output_dir, inputs=inputs, should_stop=should_stop,
                                 models_cache=cache)
            else:  # the previous stage's tensors are gone: hand its cached device memory back first
                prev = outcomes[-1]
                release_device_cache(prev.record.device)
                overrides: dict[str, Any] = {"prompt": plan.prompts[i - 1]}
                if plan.stage_steps is not None:
                    overrides["steps"] = plan.stage_steps
                stage = plan_continue(RunInfo.of(prev.path, prev.record), overrides, inputs=inputs, reporter=rep)
                for note in stage.notes:
                    rep.note(note)
                req = continue_request(stage, output_dir=output_dir, inputs=inputs, should_stop=should_stop,
                                       models_cache=cache)
                req.chain = list(outcomes)
            req.last_stage = last
            out = execute(req, rep)
            outcomes.append(out)
            if on_outcome is not None:
                on_outcome(out)
            if out.status == "interrupted":
                break
    finally:
        cache.clear()
    last_made = outcomes[-1] if outcomes else None
    video = last_made.path / CHAIN_VIDEO if last_made is not None and last_made.record.files.chain_video else None
    return StagesResult(outcomes, plan.total, video)
