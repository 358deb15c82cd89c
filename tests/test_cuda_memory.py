"""GPU readiness on a machine without one (CPU only; `torch.cuda`/`torch.mps` mocked): the device memory budget,
the CUDA estimate's headroom, the device cache handed back between runs and chain stages, out-of-memory during a
step (salvaged) or while loading (one line, no folder), and a GPU the installed torch has no kernels for."""

from __future__ import annotations

import gc
import json
import weakref
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from vqclip.pipeline.request import Inputs
from vqclip import engine
from vqclip.engine import device as devices
from vqclip.pipeline import budget, memory, execute as pipeline
from vqclip.pipeline import oom as oom_handling
from vqclip.cli import app
from vqclip.config import build_config
from vqclip.engine import loop
from vqclip.errors import VqclipError
from clihelp import tiny_args as _tiny_args

runner = CliRunner()
tiny_args = partial(_tiny_args, cutn=2, steps=2, save_every=0, seed=5, quiet=True)
GiB = 2**30
OOM_TEXT = "CUDA out of memory. Tried to allocate 20.00 GiB"
CUDA_IS_AVAILABLE = torch.cuda.is_available  # the real one, before any test mocks it


def oom() -> BaseException:
    kind = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    return kind(OOM_TEXT)


def tiny_config(t: dict, **extra: object):
    values = {"prompt": "a blue sky", "model": str(t["vqgan_yaml"]), "clip_model": str(t["clip_json"]),
              "clip_pretrained": str(t["clip_ckpt"]), "size": "32x32", "cutn": 2, "steps": 4, "save_every": 0,
              "seed": 5, **extra}
    return build_config(None, values)


def run_folders(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if p.is_dir()) if out.exists() else []


class Notes(pipeline.Reporter):
    def __init__(self) -> None:
        self.notes: list[str] = []

    def note(self, message: str) -> None:
        self.notes.append(message)


@pytest.fixture
def no_budget_env(monkeypatch):
    monkeypatch.delenv(budget.BUDGET_ENV, raising=False)


# ------------------------------------------------------------------------------------------------ budget
@pytest.mark.parametrize("free, reserved, allocated, expected", [
    (10 * GiB, 0, 0, 10 * GiB),  # first run in the process: nothing cached yet
    (6 * GiB, 4 * GiB, 0, 10 * GiB),  # a previous run's tensors freed but cached: ours to reuse
    (6 * GiB, 4 * GiB, 1 * GiB, 9 * GiB),  # live tensors belong to no part of this run: not available
    (6 * GiB, 4 * GiB, 4 * GiB, 6 * GiB),  # everything reserved is in use
])
def test_cuda_budget_is_free_plus_the_allocators_cache(monkeypatch, no_budget_env, free, reserved, allocated,
                                                        expected):
    seen = []
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d=None: (seen.append(d), (free, 80 * GiB))[1])
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda d=None: reserved)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda d=None: allocated)
    assert budget.memory_budget("cuda:0") == expected
    assert seen == [torch.device("cuda:0")]


def test_budget_env_wins_over_the_device(monkeypatch):
    monkeypatch.setenv(budget.BUDGET_ENV, "3GiB")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d=None: pytest.fail("the env budget comes first"))
    assert budget.memory_budget("cuda") == 3 * GiB


@pytest.mark.parametrize("recommended, allocated, expected", [
    (16 * GiB, 0, 16 * GiB),
    (16 * GiB, 3 * GiB, 13 * GiB),
    (None, None, 5 * GiB),  # torch without recommended_max_memory: available RAM, as before
])
def test_mps_budget_is_the_recommended_working_set(monkeypatch, no_budget_env, recommended, allocated, expected):
    import psutil

    if recommended is None:
        monkeypatch.delattr(torch.mps, "recommended_max_memory", raising=False)
    else:
        monkeypatch.setattr(torch.mps, "recommended_max_memory", lambda: recommended)
        monkeypatch.setattr(torch.mps, "current_allocated_memory", lambda: allocated)
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=5 * GiB))
    assert budget.memory_budget("mps") == expected


# ---------------------------------------------------------------------------------------------- estimate
def test_cuda_estimate_has_headroom_and_leaves_the_checkpoint_read_to_host_ram(tiny_models):
    spec = engine.read_spec(tiny_models["vqgan_yaml"])
    clip = str(tiny_models["clip_json"])
    args = (spec, clip, 64, 64, 4)
    cuda = memory.estimate(*args, device="cuda")
    assert cuda.runtime == memory.CUDA_LIBRARIES
    device_bytes = cuda.weights + cuda.decoder_activations + cuda.clip_activations + cuda.scratch + cuda.workspace
    assert cuda.slack == int(memory.CUDA_SLACK * device_bytes) > 0
    assert cuda.step_phase == memory.CUDA_LIBRARIES + device_bytes + cuda.slack
    assert cuda.total >= memory.CUDA_LIBRARIES + int((1 + memory.CUDA_SLACK) * device_bytes)
    # a first load reads the whole checkpoint: into host RAM, so it is charged on the CPU but not on the GPU
    big = 8 * GiB
    assert memory.estimate(*args, device="cuda", first_load_bytes=big) == cuda
    cpu = memory.estimate(*args, device="cpu")
    assert cpu.slack == 0
    assert memory.estimate(*args, device="cpu", first_load_bytes=big).load_phase == cpu.load_phase + big


def test_cuda_plan_refuses_what_the_headroom_pushes_past_the_budget(tiny_models, monkeypatch, no_budget_env):
    spec = engine.read_spec(tiny_models["vqgan_yaml"])
    cfg = tiny_config(tiny_models, low_memory=True)
    est = memory.estimate(spec, cfg.clip_model, 32, 32, cfg.cutn, "cuda", low_memory=True)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda d=None: 0)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda d=None: 0)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d=None: (est.total, 80 * GiB))
    assert budget.plan_run(cfg, spec, 32, 32, torch.device("cuda"), None).low_memory
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d=None: (est.total - memory.CUDA_LIBRARIES // 2, 80 * GiB))
    with pytest.raises(budget.WontFit, match="cuda has"):
        budget.plan_run(cfg, spec, 32, 32, torch.device("cuda"), None)


# ----------------------------------------------------------------------------------------- device cache
@pytest.mark.parametrize("device, cuda_calls, mps_calls, collects", [
    ("cpu", 0, 0, 0),
    (None, 0, 0, 0),
    ("cuda", 1, 0, 1),
    ("cuda:1", 1, 0, 1),
    (torch.device("mps"), 0, 1, 1),
])
def test_release_device_cache(monkeypatch, device, cuda_calls, mps_calls, collects):
    calls = {"cuda": 0, "mps": 0, "gc": 0}
    real_collect = gc.collect
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.__setitem__("cuda", calls["cuda"] + 1))
    monkeypatch.setattr(torch.mps, "empty_cache", lambda: calls.__setitem__("mps", calls["mps"] + 1))
    monkeypatch.setattr(gc, "collect", lambda *a: (calls.__setitem__("gc", calls["gc"] + 1), real_collect())[1])
    budget.release_device_cache(device)
    assert calls == {"cuda": cuda_calls, "mps": mps_calls, "gc": collects}


def test_release_device_cache_on_mps_without_empty_cache(monkeypatch):
    monkeypatch.delattr(torch.mps, "empty_cache", raising=False)
    budget.release_device_cache("mps")  # older torch: nothing to call, no error


@pytest.fixture
def released(monkeypatch) -> list:
    seen: list = []
    monkeypatch.setattr(budget, "release_device_cache", lambda device: seen.append(str(device)))
    return seen


def test_device_cache_is_released_after_a_run_and_after_a_failed_one(tiny_models, tmp_path, released,
                                                                     monkeypatch):
    outcome = pipeline.execute(pipeline.RunRequest(config=tiny_config(tiny_models, steps=1),
                                                   output_dir=tmp_path / "out", inputs=Inputs(download=False)))
    assert outcome.status == "finished"
    assert released == ["cpu"]

    def broken(*a, **k):
        raise VqclipError("checkpoint unreadable")

    monkeypatch.setattr(engine, "load_models", broken)
    with pytest.raises(VqclipError, match="unreadable"):
        pipeline.execute(pipeline.RunRequest(config=tiny_config(tiny_models, steps=1),
                                             output_dir=tmp_path / "out", inputs=Inputs(download=False)))
    assert released == ["cpu", "cpu"]


def test_device_cache_is_released_between_chain_stages(tiny_models, tmp_path, released, monkeypatch):
    from vqclip.pipeline import resume as chain

    order: list[str] = []
    real_execute = pipeline.execute

    def execute(req, rep=None):
        order.append("run")
        return real_execute(req, rep)

    monkeypatch.setattr(pipeline, "execute", execute)
    monkeypatch.setattr(budget, "release_device_cache", lambda device: (released.append(str(device)),
                                                                        order.append("release")))
    assert chain.continue_run  # the chain's later stages go through continue_run → pipeline.execute
    r = runner.invoke(app, ["generate", "spring ^ summer ^ autumn", *tiny_args(tiny_models, tmp_path / "out")])
    assert r.exit_code == 0, r.output
    assert len(run_folders(tmp_path / "out")) == 3
    # every run hands its cache back at its end, and the chain once more before each later stage
    assert order == ["run", "release", "release", "run", "release", "release", "run", "release"]
    assert released == ["cpu"] * 5


# ---------------------------------------------------------------------------------------------- OOM
@pytest.mark.parametrize("low_memory", [True, False])
def test_oom_mid_step_frees_the_step_and_saves_a_failed_run(tiny_models, tmp_path, monkeypatch, low_memory):
    held: list[weakref.ref] = []
    calls = [0]
    real_backward = loop.Session._backward

    def backward(self, out):
        calls[0] += 1
        values = real_backward(self, out)  # z.grad is set, as a real step has it
        if calls[0] == 3:
            activations = torch.zeros(64, 64)  # stands for what the failed step held
            held.append(weakref.ref(activations))
            assert self.z.grad is not None
            raise oom()
        return values

    checked = []
    real_salvage = oom_handling.salvage

    def salvage(session, exc):
        checked.append((all(r() is None for r in held), session.z.grad is None))
        return real_salvage(session, exc)

    monkeypatch.setattr(loop.Session, "_backward", backward)
    monkeypatch.setattr(oom_handling, "salvage", salvage)
    out = tmp_path / "out"
    cfg = tiny_config(tiny_models, low_memory=low_memory, cutn=6)
    with pytest.raises(VqclipError) as info:
        pipeline.execute(pipeline.RunRequest(config=cfg, output_dir=out, inputs=Inputs(download=False)))
    msg = info.value.message
    assert checked == [(True, True)]  # the step's tensors and the gradient were gone before the salvage
    assert "\n" not in msg
    assert "32x32" in msg and "cutn 6" in msg and "lower --cutn (e.g. 3)" in msg
    assert ("--low-memory" in msg) is (not low_memory)
    assert ("in low-memory mode" in msg) is low_memory
    [run] = run_folders(out)
    d = json.loads((run / "details.json").read_text())
    assert d["status"] == "failed" and d["steps_done"] == 2 and d["global_step"] == 2
    assert d["low_memory"] is low_memory
    assert "OutOfMemoryError" in d["error"]
    assert (run / "state.pt").is_file() and (run / "output.png").is_file()
    assert f"vqclip continue {run.name}" in msg and "status failed" in msg


def test_a_failed_oom_run_continues(tiny_models, tmp_path, monkeypatch):
    real_backward = loop.Session._backward
    calls = [0]

    def backward(self, out):
        calls[0] += 1
        if calls[0] == 2:
            raise oom()
        return real_backward(self, out)

    monkeypatch.setattr(loop.Session, "_backward", backward)
    out = tmp_path / "out"
    with pytest.raises(VqclipError):
        pipeline.execute(pipeline.RunRequest(config=tiny_config(tiny_models), output_dir=out, inputs=Inputs(download=False)))
    monkeypatch.setattr(loop.Session, "_backward", real_backward)
    [run] = run_folders(out)
    r = runner.invoke(app, ["continue", run.name, "--steps", "1", "--output-dir", str(out), "-q"])
    assert r.exit_code == 0, r.output
    child = [p for p in run_folders(out) if p != run]
    assert json.loads((child[0] / "details.json").read_text())["global_step"] == 2


@pytest.mark.parametrize("where, expected", [
    ("load_models", "while loading"),
    ("build_prompts", "while loading"),
    ("start_session", "at 32x32 with cutn 2"),
])
def test_oom_before_the_first_step_is_one_line_and_leaves_no_folder(tiny_models, tmp_path, monkeypatch, where,
                                                                     expected):
    def fails(*a, **k):
        raise oom()

    monkeypatch.setattr(engine, where, fails)
    out = tmp_path / "out"
    r = runner.invoke(app, ["generate", "a blue sky", *tiny_args(tiny_models, out)])
    assert r.exit_code == 1
    assert "Traceback" not in r.output
    lines = [line for line in r.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "ran out of memory" in lines[0] and expected in lines[0], r.output
    assert run_folders(out) == []


@pytest.mark.parametrize("size, cutn, low, says, never", [
    ((512, 512), 32, False, ["512x512 with cutn 32;", "--low-memory", "--size 432x432", "--cutn (e.g. 16)"], []),
    ((512, 384), 32, True, ["in low-memory mode", "--size 432x320", "--cutn (e.g. 16)"], ["--low-memory"]),
    ((16, 16), 8, True, ["--cutn (e.g. 4)"], ["--size", "--low-memory"]),
    ((16, 16), 1, True, ["--device cpu"], ["--size", "--cutn", "--low-memory"]),
])
def test_oom_message_names_what_to_lower(size, cutn, low, says, never):
    msg = oom_handling.oom_message(torch.device("cuda"), *size, cutn, low, 16)
    assert all(s in msg for s in says), msg
    assert not any(s in msg for s in never), msg


@pytest.mark.parametrize("exc, is_oom", [
    (oom(), True),
    (torch.cuda.OutOfMemoryError(OOM_TEXT), True),
    (RuntimeError("MPS backend out of memory (MPS allocated: 17.00 GB)"), True),
    (RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"), True),
    (RuntimeError("DefaultCPUAllocator: can't allocate memory"), False),
    (ValueError("CUDA out of memory"), False),
])
def test_is_out_of_memory(exc, is_oom):
    assert oom_handling.is_out_of_memory(exc) is is_oom


# ------------------------------------------------------------------------------------- no kernel image
NO_KERNEL = "CUDA error: no kernel image is available for execution on the device\nCUDA kernel errors might be..."


@pytest.fixture
def old_gpu(monkeypatch):
    """A visible CUDA GPU (compute capability 3.5) whose every op fails like an old card on a new wheel."""
    probes: list[torch.device] = []

    def probe(device):
        probes.append(device)
        raise RuntimeError(NO_KERNEL)

    monkeypatch.setattr(devices, "_PROBED", {})
    monkeypatch.setattr(devices, "_probe_op", probe)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (3, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "Tesla K40m")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    return probes


def test_probe_runs_a_tiny_op_and_is_cached(monkeypatch):
    monkeypatch.setattr(devices, "_PROBED", {})
    assert devices._probe_op(torch.device("cpu")) == 8.0
    assert devices.probe_device(torch.device("cpu")) is None
    calls = []
    monkeypatch.setattr(devices, "_probe_op", lambda d: (calls.append(d), 8.0)[1])
    assert devices.probe_device(torch.device("cuda")) is None
    assert devices.probe_device(torch.device("cuda")) is None
    assert calls == [torch.device("cuda")]  # once per device


def test_auto_falls_back_to_the_cpu_with_a_note(old_gpu):
    notes: list[str] = []
    assert engine.pick_device("auto", on_fallback=notes.append) == torch.device("cpu")
    assert engine.pick_device("auto", on_fallback=notes.append) == torch.device("cpu")
    assert len(old_gpu) == 1  # the probe is cached
    assert len(notes) == 2
    note = notes[0]
    assert "using the CPU" in note and "Tesla K40m" in note and "compute capability 3.5" in note
    assert "no kernel image" in note and "\n" not in note
    assert engine.pick_device("auto") == torch.device("cpu")  # without a callback: still no error


def test_auto_uses_a_gpu_that_passes_the_probe(monkeypatch):
    monkeypatch.setattr(devices, "_PROBED", {})
    monkeypatch.setattr(devices, "_probe_op", lambda d: 8.0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    notes: list[str] = []
    assert engine.pick_device("auto", on_fallback=notes.append) == torch.device("cuda")
    assert notes == []


@pytest.mark.parametrize("reason, fix", [
    (NO_KERNEL, "install a torch build with kernels for compute capability 3.5"),
    ("CUDA error: sm_35 is not compatible with the current PyTorch installation", "install a torch build"),
    ("CUDA error: unknown error", "nvidia-smi"),
])
def test_explicit_cuda_on_an_unusable_gpu_is_one_line(old_gpu, monkeypatch, reason, fix):
    monkeypatch.setattr(devices, "_probe_op", lambda d: (_ for _ in ()).throw(RuntimeError(reason)))
    for name in ("cuda", "cuda:0"):
        with pytest.raises(VqclipError) as info:
            engine.pick_device(name)
        msg = info.value.message
        assert msg.startswith(f"--device {name}: ") and fix in msg and "--device cpu" in msg and "\n" not in msg


def test_pipeline_notes_the_fallback(tiny_models, tmp_path, old_gpu, released, monkeypatch):
    real_pick = devices.pick_device

    def pick(*a, **k):  # the GPU is seen while choosing; the run itself (Adam asks too) then sees none
        try:
            return real_pick(*a, **k)
        finally:
            monkeypatch.setattr(torch.cuda, "is_available", CUDA_IS_AVAILABLE)

    monkeypatch.setattr(devices, "pick_device", pick)
    rep = Notes()
    outcome = pipeline.execute(pipeline.RunRequest(config=tiny_config(tiny_models, steps=1, device="auto"),
                                                   output_dir=tmp_path / "out", inputs=Inputs(download=False)), rep)
    assert outcome.details["device"] == "cpu"
    assert any("using the CPU" in n and "compute capability 3.5" in n for n in rep.notes), rep.notes
    assert released == ["cpu"]


def test_cli_explicit_cuda_on_an_old_gpu(tiny_models, tmp_path, old_gpu):
    r = runner.invoke(app, ["generate", "a blue sky", *tiny_args(tiny_models, tmp_path / "out", "--device", "cuda")])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "compute capability 3.5" in r.output and "--device cpu" in r.output
    assert run_folders(tmp_path / "out") == []
