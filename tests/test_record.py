"""The run record (details.json as one typed model, `vqclip.runfolder.record`) and the state file (`vqclip.runfolder.state`): round
trip, unknown keys, one-line refusals naming the file, non-finite results kept as null, a damaged or hostile
state.pt, and a full disk mid-write (nothing half-written left)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
from typer.testing import CliRunner

from vqclip.errors import one_line
from vqclip.gallery.synthetic import details, run_id
from vqclip.runfolder.record import BadRun, Continued, RunRecord, parse_record, read_record, tolerant_record, write_record
from clihelp import invoke, made

runner = CliRunner()


def write_run(out: Path, i: int, **overrides: Any) -> Path:
    """A run folder whose details.json may hold anything (ensure_ascii: lone surrogates survive as escapes)."""
    folder = out / run_id(i)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "details.json").write_text(json.dumps(details(i, **overrides), ensure_ascii=True))
    return folder


def no_nan_literals(text: str) -> Any:
    def refuse(name: str) -> None:
        raise AssertionError(f"{name} written into details.json")

    return json.loads(text, parse_constant=refuse)


# --- the model (no torch) ------------------------------------------------------------------------------------


def test_round_trip_keeps_every_key_and_value(tmp_path: Path) -> None:
    d = details(3)
    record = parse_record(d, tmp_path / "details.json")
    assert record.model_dump(mode="json") == d and list(record.model_dump(mode="json")) == list(d)
    write_record(tmp_path / "details.json", record)
    assert no_nan_literals((tmp_path / "details.json").read_text()) == d
    assert read_record(tmp_path) == record
    assert record.schema_ == 1 and record.size == (480, 480) and record.weights.sha256 == "0" * 64


def test_continue_and_chain_are_written_only_when_set() -> None:
    plain = RunRecord().model_dump(mode="json")
    assert "continue" not in plain and "chain" not in plain and "chain_video" not in plain["files"]
    record = RunRecord(continue_=Continued(from_=run_id(1), from_step=2, start="state"), chain=[run_id(1), run_id(2)])
    record.files.chain_video = "chain.mp4"
    out = record.model_dump(mode="json")
    assert out["continue"] == {"from": run_id(1), "from_step": 2, "start": "state", "resize": None}
    assert out["chain"] == [run_id(1), run_id(2)] and out["files"]["chain_video"] == "chain.mp4"
    assert RunRecord.model_validate(out) == record


def test_unknown_keys_of_other_versions_are_kept(tmp_path: Path) -> None:
    d = details(1, schema=2, sampler={"name": "ddim"}, timings={"total_s": 1.5, "gpu_s": 0.5},
                files={"image": "output.png", "mask": "mask.png"}, continue_hint="\ud800 \x1b[2J")
    record = parse_record(d, tmp_path / "details.json")
    assert record.schema_ == 2 and record.timings.total_s == 1.5 and record.files.image_prompts == []
    out = record.model_dump(mode="json")
    assert out["sampler"] == {"name": "ddim"} and out["timings"]["gpu_s"] == 0.5
    assert out["files"]["mask"] == "mask.png" and out["continue_hint"] == "\ud800 \x1b[2J"
    write_record(tmp_path / "details.json", record)  # a lone surrogate is written as its escape, read back as is
    assert read_record(tmp_path).model_dump(mode="json")["continue_hint"] == "\ud800 \x1b[2J"


def test_missing_fields_take_their_defaults() -> None:
    record = parse_record({}, Path("x/details.json"))
    assert (record.status, record.stage, record.losses, record.seed, record.config) == ("unknown", 1, [], None, None)
    assert record.files.image_prompts == [] and record.timings.total_s is None and record.continue_ is None


BAD_TYPES = [
    ({"size": ["[b]1", 2]}, "field 'size' is not [width, height]"),
    ({"size": [480]}, "field 'size' is not [width, height]"),
    ({"seed": "\x1b[31mseven"}, "field 'seed' is not a whole number"),
    ({"seed": True}, "field 'seed' is true or false, not a number"),
    ({"stage": 0}, "field 'stage' is not a stage number (1 or more)"),
    ({"weights": {"name": "x", "sha256": 5}}, "field 'weights.sha256' is not text"),
    ({"timings": [1, 2]}, "field 'timings' is not an object"),
    ({"continue": {"from": ["x"]}}, "field 'continue.from' is not text"),
    ({"losses": {"0": 1.0}}, "field 'losses' is not a list of numbers"),
    ({"config": "not a dict"}, "field 'config' is not an object"),
    ({"status": None, "global_step": "many"}, "field 'status' is not text (and 1 more field)"),
]


@pytest.mark.parametrize("override, says", BAD_TYPES, ids=[s.split("'")[1] + str(i) for i, (_, s) in
                                                           enumerate(BAD_TYPES)])
def test_a_wrong_type_is_one_line_naming_the_file_and_field(tmp_path: Path, override: dict, says: str) -> None:
    path = tmp_path / "details.json"
    with pytest.raises(BadRun) as e:
        parse_record(details(1, **override), path)
    assert e.value.message == f"{path}: {says}; fix or remove that run folder"
    record, odd = tolerant_record(details(1, **override))  # for display: set aside as found, the rest typed
    name = says.split("'")[1]
    assert name in odd and record.id == run_id(1)


@pytest.mark.parametrize("override, says", BAD_TYPES[:6])
def test_continue_refuses_a_mistyped_run_in_one_line(tmp_path: Path, override: dict, says: str) -> None:
    out = tmp_path / "output"
    folder = write_run(out, 1, **override)
    r = invoke("continue", run_id(1), "-o", str(out))
    assert r.exit_code == 1
    assert r.output.strip().splitlines() == [f"Error: {folder / 'details.json'}: {says}; fix or remove that run folder"]


def test_runs_show_and_list_show_mistyped_fields_as_found(tmp_path: Path) -> None:
    out = tmp_path / "output"
    write_run(out, 1, seed="[bold]7", size=["wide", 2], global_step="\x1b[31m9")
    r = invoke("runs", "show", run_id(1), "-o", str(out))
    assert r.exit_code == 0 and "seed:          [bold]7" in r.output and "wide" in r.output
    assert "fields of the wrong type, shown as found: global_step, seed, size" in r.output
    assert "\x1b" not in r.output and "\\x1b[31m9" in r.output
    rows = json.loads(invoke("runs", "list", "--json", "-o", str(out)).stdout)
    assert rows[0]["seed"] is None and rows[0]["steps"] is None and rows[0]["size"] == "widex2"


def test_non_finite_results_are_read_and_written_as_null(tmp_path: Path) -> None:
    folder = tmp_path / run_id(1)
    folder.mkdir()
    d = details(1, losses=[0.5, float("nan"), float("inf")], timings={"total_s": 2.0, "per_step_s": float("-inf")})
    (folder / "details.json").write_text(json.dumps(d))  # NaN / Infinity literals, as Python's json writes them
    record = read_record(folder)
    assert record.losses == [0.5, None, None] and record.timings.per_step_s is None
    write_record(folder / "details.json", record)
    written = no_nan_literals((folder / "details.json").read_text())
    assert written["losses"] == [0.5, None, None] and written["timings"]["per_step_s"] is None
    assert RunRecord(losses=[float("nan")]).losses == [None]


def test_one_line_cuts_at_a_word_boundary() -> None:
    line = one_line(RuntimeError("\n\nPytorchStreamReader failed reading zip archive: " + "central directory " * 20))
    assert line.startswith("RuntimeError: PytorchStreamReader failed") and line.endswith("…")
    assert line[:-1].rsplit(" ", 1)[1] in ("central", "directory") and len(line) <= len("RuntimeError: ") + 160
    assert one_line(ValueError("short")) == "ValueError: short"


def test_record_runs_and_state_modules_import_no_torch() -> None:
    code = ("import sys, vqclip.runfolder.record, vqclip.runs, vqclip.runfolder.temp, vqclip.runfolder.state, vqclip.gallery.model; "
            "print('torch' in sys.modules)")
    probe = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "False"


# --- through the pipeline (tiny models) ---------------------------------------------------------------------


def tiny(t: dict, out: Path, *extra: str) -> list[str]:
    return ["--model", str(t["vqgan_yaml"]), "--clip-model", str(t["clip_json"]), "--clip-pretrained",
            str(t["clip_ckpt"]), "--size", "32x32", "--cutn", "2", "--save-every", "1", "--seed", "11",
            "--output-dir", str(out), *extra]


def test_an_overflowing_prompt_weight_keeps_the_run_with_null_losses(tiny_models: dict, tmp_path: Path) -> None:
    out = tmp_path / "output"
    r = invoke("generate", "a cat:1e308", *tiny(tiny_models, out, "--steps", "2", "-q"))
    assert r.exit_code == 0, r.output
    run = made(r)
    d = no_nan_literals((run / "details.json").read_text())
    assert d["status"] == "finished" and d["losses"] == [None, None] and d["skipped_steps"] == [1, 2]
    assert read_record(run).losses == [None, None]
    assert invoke("runs", "show", run.name, "-o", str(out)).exit_code == 0
    r = invoke("continue", run.name, "-o", str(out), "--steps", "1", "-q")
    assert r.exit_code == 0, r.output


@pytest.fixture(scope="module")
def parent(tiny_models: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("record") / "output"
    r = invoke("generate", "a red apple", *tiny(tiny_models, out, "--steps", "2", "-q"))
    assert r.exit_code == 0, r.output
    return made(r)


class RunsCode:
    """Pickles as a call of os.system: loading it with weights_only=False would create `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return os.system, (f"touch {self.marker}",)


def _edit(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        import torch

        state = torch.load(path, weights_only=True)
        change(state)
        torch.save(state, path)
    return damage


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _pickle_running_code(legacy: bool) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        import torch

        torch.save({"z": RunsCode(path.parent / "RAN"), "step": 2}, path, _use_new_zipfile_serialization=not legacy)
    return damage


def _groups(state: dict) -> None:
    groups = state["optimizer_state"]["param_groups"]
    groups.append(dict(groups[0], params=[1]))


def _moments(state: dict) -> None:
    import torch

    for per_param in state["optimizer_state"]["state"].values():
        per_param["exp_avg"] = torch.zeros(3)


def _rng(state: dict) -> None:
    import torch

    state["rng_cpu"] = torch.zeros(10, dtype=torch.uint8)


@dataclass
class StateCase:
    id: str
    damage: Callable[[Path], None]
    rc: int
    says: str  # in the output, whole
    start: str | None = None  # the child's `continue.start` (rc 0)


FALLBACK = "; continuing from output.png by re-encoding it (the optimizer and random stream restart"
STATE_CASES = [
    StateCase("newer version", _edit(lambda s: s.update(version=99)), 1,
              "state.pt was made by a newer vqclip (state version 99; this one reads up to 1); upgrade vqclip to "
              "continue this run"),
    StateCase("no version (older)", _edit(lambda s: s.pop("version")), 0, "", "state"),
    StateCase("truncated zip", _truncate, 0,
              "state.pt is damaged (an incomplete zip archive, cut short while it was written or copied)" + FALLBACK,
              "output.png"),
    StateCase("wrong RNG size", _edit(_rng), 0,
              "state.pt holds a random state that is not a CPU generator's (RuntimeError: Expected a "
              "CPUGeneratorImplState of size 5056 but found the input RNG state size to be 10)" + FALLBACK,
              "output.png"),
    StateCase("optimizer groups do not match", _edit(_groups), 0,
              "state.pt holds an optimizer state that does not fit its latent (ValueError: loaded state dict has a "
              "different number of parameter groups)" + FALLBACK, "output.png"),
    StateCase("optimizer moments of another shape", _edit(_moments), 0,
              "state.pt holds an optimizer state that does not fit its latent (its exp_avg is (3,), the latent",
              "output.png"),
    StateCase("pickle that runs code", _pickle_running_code(False), 0,
              "state.pt would run code when loaded (it names `os.system`); refusing it" + FALLBACK, "output.png"),
    StateCase("legacy pickle that runs code", _pickle_running_code(True), 0,
              "state.pt would run code when loaded (it names `os.system`); refusing it" + FALLBACK, "output.png"),
]


@pytest.mark.parametrize("case", STATE_CASES, ids=[c.id for c in STATE_CASES])
def test_state_file_problems_through_continue(parent: Path, tmp_path: Path, case: StateCase) -> None:
    out = tmp_path / "output"
    copy = out / (parent.name[:-8] + "stcase00")
    shutil.copytree(parent, copy)
    case.damage(copy / "state.pt")
    r = invoke("continue", copy.name, "-o", str(out), "--steps", "1", "-q")
    assert r.exit_code == case.rc, r.output
    assert not (copy / "RAN").exists()  # nothing in the pickle ran
    lines = r.stderr.strip().splitlines()
    if case.rc:
        assert lines[-1] == f"Error: {copy / 'state.pt'}" + case.says[len("state.pt"):]
        assert [ln for ln in lines if ln.startswith("Error:")] == [lines[-1]]
        return
    if case.says:  # one whole line: the path, why, and what happens instead
        [note] = [ln for ln in lines if "state.pt" in ln]
        assert note.startswith(f"• {copy / 'state.pt'}" + case.says[len("state.pt"):]), note
        assert note.endswith(", so this differs from one long run)"), note
    child = json.loads((made(r) / "details.json").read_text())
    assert child["continue"]["start"] == case.start and child["global_step"] == 3


# --- a full disk while writing the run --------------------------------------------------------------------------


@pytest.mark.parametrize("victim", ["init.png", "output.png", "state.pt", "details.json"])
def test_full_disk_leaves_no_run_and_says_so_in_one_line(tiny_models: dict, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch, victim: str) -> None:
    from PIL import Image

    from vqclip import files

    real = files.atomic_write_bytes

    def full(path: Path, data: bytes) -> None:
        if Path(path).name == victim:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, data)

    monkeypatch.setattr(files, "atomic_write_bytes", full)
    Image.new("RGB", (32, 32), (200, 30, 30)).save(tmp_path / "init.png")
    out = tmp_path / "output"
    r = invoke("generate", "a cat", *tiny(tiny_models, out, "--steps", "1", "--init-image", str(tmp_path / "init.png"),
                                          "-q"))
    assert r.exit_code == 1, r.output
    [line] = r.stderr.strip().splitlines()
    assert line.startswith("Error: could not write run ") and line.endswith(
        f" in {out}: No space left on device; free some disk space and run it again"), line
    assert sorted(p.name for p in out.iterdir()) == []  # no run folder, no .tmp-* folder


def test_a_chain_video_that_cannot_be_made_keeps_the_last_stage(tiny_models: dict, tmp_path: Path) -> None:
    """The last stage of a chain makes the chain video inside its folder before the folder is committed (no
    committed run is rewritten); when an earlier stage's video is unreadable the stage is still saved whole,
    without a chain video, and says so."""
    from vqclip.config import build_config
    from vqclip.pipeline.execute import RunOutcome, execute
    from vqclip.pipeline.request import Inputs, Reporter, RunRequest

    earlier = tmp_path / run_id(1)
    earlier.mkdir()
    (earlier / "anim.mp4").write_bytes(b"not a video at all")
    record = RunRecord.model_validate(details(1))
    write_record(earlier / "details.json", record)
    cfg = build_config(None, {"prompt": "winter", "model": str(tiny_models["vqgan_yaml"]),
                              "clip_model": str(tiny_models["clip_json"]),
                              "clip_pretrained": str(tiny_models["clip_ckpt"]), "width": 32, "height": 32,
                              "cutn": 2, "steps": 1, "seed": 1, "device": "cpu"})
    notes: list[str] = []
    rep = Reporter()
    rep.note = notes.append  # type: ignore[method-assign]
    out = execute(RunRequest(config=cfg, output_dir=tmp_path / "out", inputs=Inputs(download=False),
                             chain=[RunOutcome(run_id(1), earlier, "finished", 2, 2, record)]), rep)
    assert out.status == "finished" and out.record.chain is None and out.record.files.chain_video is None
    assert not (out.path / "chain.mp4").exists() and not list((tmp_path / "out").glob(".tmp-*"))
    assert any(n.startswith("no chain video") for n in notes), notes