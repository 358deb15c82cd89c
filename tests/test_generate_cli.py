"""`vqclip generate` end to end on tiny models: CliRunner for the cases, the installed script in a subprocess
for the real thing (including Ctrl-C), and every user error of issue 2 that can be made on a CPU."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from clihelp import invoke, tiny_args

runner = CliRunner()
VQCLIP = shutil.which("vqclip") or str(Path(sys.executable).parent / "vqclip")


def run_dirs(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir()) if out.exists() else []


def test_generate_writes_a_complete_run_folder(tiny_models, tmp_path):
    out = tmp_path / "output"
    r = invoke("generate", "a red apple:1 | a green leaf:-0.5", *tiny_args(tiny_models, out, "--seed", "5",
               "--noise-prompt", "3:0.2", "--steps", "5"))
    assert r.exit_code == 0, r.output
    [run] = run_dirs(out)
    assert f"Run {run.name} finished" in r.output and str(run / "output.png") in r.output
    assert {p.name for p in run.iterdir()} == {"output.png", "anim.mp4", "details.json", "state.pt"}
    d = json.loads((run / "details.json").read_text())
    assert d["status"] == "finished" and d["steps_done"] == 5 and d["steps_planned"] == 5
    assert d["seed"] == 5 and d["size"] == [32, 32] and len(d["losses"]) == 5
    assert d["config"]["noise_prompts"] == ["3:0.2"] and d["root"] == run.name and d["stage"] == 1
    assert d["versions"]["torch"] == torch.__version__ and d["device"] == "cpu"
    img = Image.open(run / "output.png")
    assert img.size == (32, 32)
    assert img.text["prompt"] == "a red apple:1 | a green leaf:-0.5"
    params = json.loads(img.text["parameters"])
    assert params["seed"] == 5 and params["steps"] == 5
    state = torch.load(run / "state.pt", map_location="cpu", weights_only=True)
    assert state["step"] == 5 and state["z"].shape[-2:] == (16, 16)
    import imageio.v2 as imageio

    frames = [f for f in imageio.get_reader(str(run / "anim.mp4"), format="FFMPEG")]
    assert len(frames) == 4  # steps 0, 2, 4 and the final step 5, which is always saved
    assert (run / "anim.mp4").stat().st_size > 0


def test_same_seed_same_bytes_and_random_seed_recorded(tiny_models, tmp_path):
    outs = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert invoke("generate", "a blue sky", *tiny_args(tiny_models, out, "--seed", "42")).exit_code == 0
        outs.append((run_dirs(out)[0] / "output.png").read_bytes())
    assert outs[0] == outs[1]
    out = tmp_path / "random"
    assert invoke("generate", "a blue sky", *tiny_args(tiny_models, out)).exit_code == 0
    seed = json.loads((run_dirs(out)[0] / "details.json").read_text())["seed"]
    assert isinstance(seed, int) and seed >= 0


def test_image_prompt_init_image_and_copies(tiny_models, tmp_path):
    src = tmp_path / "in.jpg"
    Image.new("RGB", (50, 40), (200, 30, 30)).save(src)
    out = tmp_path / "output"
    r = invoke("generate", "", "--image-prompt", f"{src}:2", "--init-image", str(src),
               *tiny_args(tiny_models, out, "--init-weight", "0.5"))
    assert r.exit_code == 0, r.output
    [run] = run_dirs(out)
    d = json.loads((run / "details.json").read_text())
    assert d["files"]["init_image"] == "init.jpg" and d["files"]["image_prompts"] == ["image_prompt_0.jpg"]
    assert (run / "init.jpg").read_bytes() == src.read_bytes()


def test_size_is_floored_with_a_note(tiny_models, tmp_path):
    out = tmp_path / "output"
    r = invoke("generate", "x", *tiny_args(tiny_models, out, "--size", "33x35"))
    assert r.exit_code == 0, r.output
    assert "floored to 32x34" in r.output


def test_config_file_layers_under_flags(tiny_models, tmp_path):
    cfg = tmp_path / "my.yaml"
    cfg.write_text("cutn: 3\nlr: 0.2\nsize: 30x30\n")
    out = tmp_path / "output"
    r = invoke("generate", "x", "--config", str(cfg), *tiny_args(tiny_models, out))
    assert r.exit_code == 0, r.output
    d = json.loads((run_dirs(out)[0] / "details.json").read_text())
    assert d["config"]["cutn"] == 4 and d["config"]["lr"] == 0.2 and d["size"] == [32, 32]


@pytest.mark.parametrize("args,code,needle", [
    (["a:0"], 1, "weight 0"),
    (["a || b"], 1, "piece 2"),
    (["a", "--size", "axb"], 2, "--size"),
    (["a", "--steps", "0"], 1, "steps"),
    (["a", "--lr", "nan"], 1, "lr"),
    (["a", "--optimizer", "lion"], 1, "optimizer"),
    (["a", "--image-prompt", "{tmp}/missing.png"], 1, "missing.png"),
    (["a", "--init-image", "{tmp}/not-an-image.png"], 1, "not-an-image.png"),
    (["a", "--config", "{tmp}/nope.yaml"], 1, "nope.yaml"),
    (["a", "--config", "{tmp}/bad.yaml"], 1, "colour"),
    (["a", "--device", "cuda:0"], 1, "cuda"),
    (["a", "--model", "not-a-model"], 1, "vqgan_imagenet_f16_16384"),
    (["a", "--model", "{tmp}/lonely.yaml"], 1, "lonely.ckpt"),
    (["a", "--clip-model", "ViT-Q-99"], 1, "unknown CLIP model"),
    ([], 1, "give a text prompt"),
])
def test_user_errors_are_one_line_and_leave_nothing(tiny_models, tmp_path, args, code, needle):
    (tmp_path / "not-an-image.png").write_text("hello")
    (tmp_path / "bad.yaml").write_text("colour: red\n")
    shutil.copy(tiny_models["vqgan_yaml"], tmp_path / "lonely.yaml")
    if "cuda:0" in args and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    out = tmp_path / "output"
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    base = tiny_args(tiny_models, out)
    if "--model" in args:
        i = base.index("--model")
        del base[i:i + 2]
    r = invoke("generate", *base, *args)
    assert r.exit_code == code, r.output
    assert needle in r.output
    errors = [ln for ln in r.output.splitlines() if ln.startswith("Error")]
    assert len(errors) >= 1 and all(len(ln) < 400 for ln in errors)
    assert run_dirs(out) == []


def test_out_of_memory_names_size_and_cutn(tiny_models, tmp_path, monkeypatch):
    from vqclip.engine import loop

    def boom(self, *a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(loop.Session, "run", boom)
    out = tmp_path / "output"
    r = invoke("generate", "x", *tiny_args(tiny_models, out))
    assert r.exit_code == 1
    assert "32x32" in r.output and "cutn 4" in r.output and "--size" in r.output
    assert run_dirs(out) == []


def test_selftest_passes():
    r = invoke("selftest", "--steps", "4")
    assert r.exit_code == 0, r.output
    assert "selftest passed" in r.output and "s/step" in r.output


def test_help_does_not_import_torch():
    code = ("import sys; from vqclip.cli import app; from typer.testing import CliRunner; "
            "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0; "
            "r = CliRunner().invoke(app, ['generate', '-h']); assert r.exit_code == 0, r.output; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def test_installed_script_end_to_end(tiny_models, tmp_path):
    out = tmp_path / "output"
    proc = subprocess.run([VQCLIP, "generate", "a castle", *tiny_args(tiny_models, out, "--seed", "1")],
                          capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode == 0, proc.stderr
    [run] = run_dirs(out)
    assert proc.stdout.strip().splitlines()[-1] == str(run / "output.png")
    assert json.loads((run / "details.json").read_text())["status"] == "finished"


def test_sigint_leaves_a_valid_interrupted_run(tiny_models, tmp_path):
    out = tmp_path / "output"
    args = tiny_args(tiny_models, out, "--seed", "2")
    args[args.index("--steps") + 1] = "100000"
    proc = subprocess.Popen([VQCLIP, "generate", "a slow river", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env())
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:  # wait until the run folder exists and a frame was written
        tmp = [p for p in run_dirs(out) if p.name.startswith(".tmp-")]
        if tmp and (tmp[0] / "anim.mp4").exists():
            break
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    [run] = run_dirs(out)
    d = json.loads((run / "details.json").read_text())
    assert d["status"] == "interrupted" and 0 < d["steps_done"] < 100000
    assert d["files"]["video"] == "anim.mp4" and (run / "anim.mp4").stat().st_size > 0
    state = torch.load(run / "state.pt", map_location="cpu", weights_only=True)
    assert state["step"] == d["steps_done"]
    Image.open(run / "output.png").verify()


def test_story_prompt_makes_stages_and_stage_steps_sets_the_first(tiny_models, tmp_path):
    out = tmp_path / "output"
    args = tiny_args(tiny_models, out)
    del args[args.index("--steps"):args.index("--steps") + 2]
    r = invoke("generate", "spring ^ summer ^ autumn", *args, "--stage-steps", "2")
    assert r.exit_code == 0, r.output
    runs = [json.loads((p / "details.json").read_text()) for p in run_dirs(out)]
    by_stage = sorted(runs, key=lambda d: d["stage"])
    assert [d["prompt"] for d in by_stage] == ["spring", "summer", "autumn"]
    assert [d["global_step"] for d in by_stage] == [2, 4, 6]
    assert by_stage[2]["parent"] == by_stage[1]["id"] and by_stage[2]["root"] == by_stage[0]["id"]


@pytest.mark.parametrize("error", [torch.cuda.OutOfMemoryError("CUDA out of memory"), RuntimeError("NaN in z")])
def test_failure_mid_run_keeps_the_steps_done_as_a_failed_run(tiny_models, tmp_path, monkeypatch, error):
    from vqclip.engine import loop

    real = loop.Session._other_losses

    def flaky(self, out):
        if self.step == 2:
            raise error
        return real(self, out)

    monkeypatch.setattr(loop.Session, "_other_losses", flaky)
    out = tmp_path / "output"
    r = invoke("generate", "x", *tiny_args(tiny_models, out))
    assert r.exit_code == 1
    [run] = run_dirs(out)
    assert f"vqclip continue {run.name}" in r.output
    if isinstance(error, torch.cuda.OutOfMemoryError):
        assert "32x32" in r.output and "cutn 4" in r.output
    d = json.loads((run / "details.json").read_text())
    assert d["status"] == "failed" and d["steps_done"] == 2 and str(error) in d["error"]
    assert torch.load(run / "state.pt", weights_only=True)["step"] == 2
    Image.open(run / "output.png").verify()
