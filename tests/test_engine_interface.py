"""The engine interface, proven by a toy engine defined here and nowhere else: it paints a solid colour that
changes every step, and runs end to end through the run skeleton (`execute`), `vqclip continue` and
`vqclip batch` without any module of vqclip knowing it exists. Also: a chain loads its models once."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from clihelp import details, invoke, made, tiny_args
from vqclip.engines import ENGINES, EngineRow, register
from vqclip.engines.base import Engine
from vqclip.runfolder.record import BadRun
from vqclip.steps import Result, StepInfo

NAME = "paint"


class PaintEngine(Engine):
    """A solid colour per step, a function of the seed and the global step: exact resume is easy to check."""

    name = NAME

    def __init__(self, setup: Any) -> None:
        cfg = setup.config
        self.setup, self.planned = setup, cfg.steps
        self.seed = cfg.seed if cfg.seed is not None else 0
        self.size = (cfg.width, cfg.height)
        self.step = 0

    def start(self) -> list[str]:
        resume = self.setup.resume
        if resume is not None and resume.state is not None:
            self.step = int(resume.state["step"])
            return [f"painting on from step {self.step}"]
        return []

    def image(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1000 + self.step)
        colour = torch.rand(3, generator=g)
        return colour[:, None, None].expand(3, self.size[1], self.size[0]).clone()

    def run(self, out: Any, should_stop: Any) -> Result:
        losses: list[float] = []
        stopped = False
        for index in range(1, self.planned + 1):
            if should_stop is not None and should_stop():
                stopped = True
                break
            before = self.image()
            self.step += 1
            losses.append(float(self.image().mean()))
            out.step(StepInfo(self.step, index, self.planned, losses[-1], {"paint": losses[-1]}, 0.001,
                              frame=before, frame_step=self.step - 1))
        return Result(self.image(), len(losses), self.step, losses, [0.001] * len(losses), stopped)

    def state(self) -> dict[str, Any]:
        return {"step": self.step, "colour": self.image()[:, 0, 0].clone()}

    def record(self) -> dict[str, Any]:
        return {"seed": self.seed, "size": self.size, "device": "cpu", "precision": "fp32"}


def build(setup: Any) -> PaintEngine:
    return PaintEngine(setup)


def check_state(path: Path, state: dict[str, Any]) -> None:
    if not isinstance(state.get("step"), int):
        raise BadRun(f"{path} is not a paint state (no step)")


@pytest.fixture(autouse=True)
def paint_engine():
    """The toy engine's registry row, for this file's tests only."""
    register(EngineRow(NAME, "a solid colour per step (a test engine)", lambda: sys.modules[__name__]))
    yield
    ENGINES.pop(NAME, None)


def pixels(run: Path) -> np.ndarray:
    with Image.open(run / "output.png") as img:
        return np.asarray(img.convert("RGB"))


def paint_config(**kw: Any) -> Any:
    from vqclip.config import RunConfig

    return RunConfig(**{"engine": NAME, "prompt": "a colour", "width": 16, "height": 8, "steps": 5, "seed": 3,
                        "save_every": 1, **kw})


def test_toy_engine_runs_through_the_skeleton(tmp_path):
    from vqclip.pipeline.execute import execute
    from vqclip.pipeline.request import RunRequest

    outcome = execute(RunRequest(config=paint_config(), output_dir=tmp_path))
    d = details(outcome.path)
    assert outcome.status == "finished" and d["engine"] == NAME and d["steps_done"] == 5 and d["global_step"] == 5
    assert d["size"] == [16, 8] and d["seed"] == 3 and len(d["losses"]) == 5
    assert sorted(p.name for p in outcome.path.iterdir()) == ["anim.mp4", "details.json", "output.png", "state.pt"]
    assert pixels(outcome.path).shape == (8, 16, 3) and len(np.unique(pixels(outcome.path).reshape(-1, 3), axis=0)) == 1
    assert not list(tmp_path.glob(".tmp-*"))


def test_toy_engine_stops_and_continues_exactly(tmp_path):
    """Stop after 2 of 5 steps, then `vqclip continue` (the installed CLI's code, in-process): the same
    picture as 5 uninterrupted steps; the child records its engine and lineage."""
    from vqclip.pipeline.execute import execute
    from vqclip.pipeline.request import RunRequest

    whole = execute(RunRequest(config=paint_config(), output_dir=tmp_path / "whole"))
    calls = iter(range(100))
    part = execute(RunRequest(config=paint_config(), output_dir=tmp_path / "out",
                              should_stop=lambda: next(calls) >= 2))
    assert part.status == "interrupted" and part.steps_done == 2
    r = invoke("continue", str(part.path))
    assert r.exit_code == 0, r.output
    child = made(r)
    d = details(child)
    assert d["engine"] == NAME and d["parent"] == part.id and d["global_step"] == 5 and d["steps_done"] == 3
    assert d["continue"]["start"] == "state" and "doing the 3 left" in r.output
    assert np.array_equal(pixels(child), pixels(whole.path))


def test_toy_engine_runs_in_a_batch(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("\n".join(json.dumps({"prompt": p, "engine": NAME, "size": "16x8", "steps": 2})
                              for p in ("red", "blue")) + "\n")
    out = tmp_path / "output"
    r = invoke("batch", str(rows), "--seeds", "1-2", "--output-dir", str(out), "--devices", "cpu")
    assert r.exit_code == 0, r.output
    runs = [p for p in out.iterdir() if (p / "details.json").is_file()]
    assert len(runs) == 4
    assert {details(p)["engine"] for p in runs} == {NAME}
    assert sorted(details(p)["seed"] for p in runs) == [1, 1, 2, 2]


def test_a_four_stage_chain_loads_its_models_once(tiny_models, tmp_path, monkeypatch):
    from vqclip import engine

    loads = []
    real = engine.load_models

    def counting(*args: Any, **kw: Any) -> Any:
        loads.append(args[:2])
        return real(*args, **kw)

    monkeypatch.setattr(engine, "load_models", counting)
    out = tmp_path / "output"
    r = invoke("generate", "spring ^ summer ^ autumn ^ winter", *tiny_args(tiny_models, out, steps=1, seed=4))
    assert r.exit_code == 0, r.output
    stages = sorted(p for p in out.iterdir() if (p / "details.json").is_file())
    assert len(stages) == 4 and len(loads) == 1
    last = details(stages[-1])
    assert last["chain"] == [p.name for p in stages] and (stages[-1] / "chain.mp4").is_file()
