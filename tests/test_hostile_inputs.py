"""Hostile inputs through the installed `vqclip` command: numbers that are not finite or overflow, integers out
of range, chains with a bad later stage, signals while starting and while running, files where something else
belongs, and text a terminal would act on. One table; each row builds its inputs, runs one command in a
subprocess (tiny random models, 32x32, cutn 2, 1-2 steps) and checks the exit code, the one `Error:` line, what
the output must and must not say, and what is left on disk: no traceback, no `.tmp-*` folder, no run folder
after an error, and a complete run folder when odd but valid input must keep working.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
from clihelp import check_output

VQCLIP = shutil.which("vqclip") or str(Path(sys.executable).parent / "vqclip")
BIG = "99999999999999999999999"
MAX_SEED = str(2**63 - 1)
RED = "\x1b[31m"


@dataclass
class Env:
    tmp: Path
    tiny: dict[str, Path]

    @property
    def out(self) -> Path:
        return self.tmp / "output"

    def gen(self, *extra: str, prompt: str = "a lighthouse", steps: int | None = 1) -> list[str]:
        """`vqclip generate` on the tiny models; later flags win over these (`--steps 0` in `extra`)."""
        t = self.tiny
        return ["generate", prompt, "--model", str(t["vqgan_yaml"]), "--clip-model", str(t["clip_json"]),
                "--clip-pretrained", str(t["clip_ckpt"]), "--size", "32x32", "--cutn", "2",
                *(["--steps", str(steps)] if steps is not None else []), "--save-every", "1", "--device", "cpu",
                "-q", "-o", str(self.out), *extra]

    def file(self, name: str, data: bytes | str = b"") -> Path:
        path = self.tmp / name
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return path

    def image(self, name: str = "ok.png") -> Path:
        from PIL import Image

        path = self.tmp / name
        Image.new("RGB", (8, 8), (200, 30, 30)).save(path)
        return path

    def folder(self, name: str = "a-folder") -> Path:
        path = self.tmp / name
        path.mkdir()
        return path

    def fifo(self, name: str = "a-fifo") -> Path:
        path = self.tmp / name
        os.mkfifo(path)  # opening it for reading would wait for a writer forever
        return path

    def runs(self) -> list[Path]:
        return sorted(self.out.iterdir()) if self.out.exists() else []


@dataclass
class Case:
    id: str
    setup: Callable[[Env], list[str]]  # → the command's arguments
    rc: int = 1
    says: tuple[str, ...] = ()  # in stdout + stderr
    never: tuple[str, ...] = ()  # nowhere in stdout + stderr
    runs: int = 0  # run folders left in the output folder
    after: Callable[[Env, str], None] | None = None  # (env, output) → more checks
    signal: tuple[int, str] | None = None  # (signal, "startup" | "running"): sent to the command
    cls: int = 0  # which class of the brief (for the count in the report)


def g(*extra: str, **kw: Any) -> Callable[[Env], list[str]]:
    """A setup that runs `generate` with these extra arguments ("{tmp}" is the test's folder)."""
    return lambda e: e.gen(*[a.replace("{tmp}", str(e.tmp)) for a in extra], **kw)


def with_config(text: str, *extra: str, **kw: Any) -> Callable[[Env], list[str]]:
    return lambda e: e.gen("--config", str(e.file("run.yaml", text)), *extra, **kw)


def strict_json(path: Path) -> dict[str, Any]:
    def refuse(token: str) -> Any:
        raise AssertionError(f"{path} holds {token}: not valid JSON")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


def saved(status: str = "finished", steps: int | None = None) -> Callable[[Env, str], None]:
    """The one run folder is complete: details.json is strict JSON with the status and steps, losses finite or
    null (an overflow is recorded, not lost), the image and state are there."""

    def check(e: Env, output: str) -> None:
        [run] = e.runs()
        d = strict_json(run / "details.json")
        assert d["status"] == status, d
        if steps is not None:
            assert d["steps_done"] == steps == d["steps_planned"] and len(d["losses"]) == steps, d
        assert all(x is None or math.isfinite(x) for x in d["losses"]), d["losses"]
        assert (run / "output.png").stat().st_size > 0 and (run / "state.pt").stat().st_size > 0

    return check


def chain_of_markup(e: Env, output: str) -> None:
    runs = sorted((strict_json(p / "details.json") for p in e.runs()), key=lambda d: d["stage"])
    assert [d["prompt"] for d in runs] == ["[bold]spring[/]", f"{RED}summer"]
    assert all(d["status"] == "finished" for d in runs)
    assert runs[0]["seed"] == 2**63 - 1 and runs[0]["config"]["noise_prompts"] == [f"{MAX_SEED}:0.5"]


# --- signals --------------------------------------------------------------------------------------------------


def _catches_sigterm(pid: int) -> bool:
    """True once the process has its own SIGTERM handler: `vqclip.cli.main()` is running (Linux /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    for line in status.splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return True


def run_with_signal(case: Case, e: Env, args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    sig, when = case.signal  # type: ignore[misc]
    proc = subprocess.Popen([VQCLIP, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        t0 = time.monotonic()
        if when == "startup":  # in main(), still importing (Typer, pydantic, torch): about 0.3 s after launch
            while not _catches_sigterm(proc.pid) and time.monotonic() - t0 < 30 and proc.poll() is None:
                time.sleep(0.01)
            time.sleep(max(0.0, 0.3 - (time.monotonic() - t0)))
        else:  # stepping: the first frame of the run is written, so a step was taken
            deadline = t0 + 90
            while time.monotonic() < deadline and proc.poll() is None:
                if any(p.name.startswith(".tmp-") and (p / "anim.mp4").exists() for p in e.runs()):
                    break
                time.sleep(0.05)
            time.sleep(0.5)
        assert proc.poll() is None, "the command ended before the signal"
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, stdout.decode("utf-8"), stderr.decode("utf-8")


def interrupted_and_continued(e: Env, output: str) -> None:
    [run] = e.runs()
    d = strict_json(run / "details.json")
    assert d["status"] == "interrupted" and 0 < d["steps_done"] < 400, d
    assert "vqclip continue" in output
    proc = subprocess.run([VQCLIP, "continue", run.name, "--steps", "1", "-q", "-o", str(e.out)],
                          capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    child = [p for p in e.runs() if p != run]
    assert len(child) == 1
    c = strict_json(child[0] / "details.json")
    assert c["parent"] == run.name and c["status"] == "finished" and c["global_step"] == d["steps_done"] + 1


def interrupted(e: Env, output: str) -> None:
    [run] = e.runs()
    d = strict_json(run / "details.json")
    assert d["status"] == "interrupted" and 0 < d["steps_done"] < 400, d


# --- the table ------------------------------------------------------------------------------------------------

CASES = [
    # 1. numbers that are not finite (refused up front, naming the field) or that overflow during the run (kept)
    Case("text weight inf", g(prompt="a cat:inf"), 1, ("prompt piece 1", "weight inf", "finite"), cls=1),
    Case("text weight nan", g(prompt="a cat:nan"), 1, ("weight nan", "finite"), cls=1),
    Case("text weight 1e999 (parses to inf)", g(prompt="a cat:1e999"), 1, ("weight inf",), cls=1),
    Case("text stop -inf", g(prompt="a cat:1:-inf"), 1, ("stop -inf",), cls=1),
    Case("--lr inf", g("--lr", "inf"), 1, ("lr: ", "finite", "greater than 0"), cls=1),
    Case("--lr nan", g("--lr", "nan"), 1, ("lr: ", "finite"), cls=1),
    Case("--tv-weight 1e999", g("--tv-weight", "1e999"), 1, ("tv_weight: ", "finite"), cls=1),
    Case("--noise-fac inf", g("--noise-fac", "inf"), 1, ("noise_fac: ", "finite"), cls=1),
    Case("--cut-pow nan", g("--cut-pow", "nan"), 1, ("cut_pow: ", "finite"), cls=1),
    Case("--noise-prompt 3:inf", g("--noise-prompt", "3:inf"), 1, ("noise prompt", "weight inf"), cls=1),
    Case("--image-prompt PATH:nan", lambda e: e.gen("--image-prompt", f"{e.image()}:nan"), 1,
         ("image prompt", "weight nan"), cls=1),
    Case("weights download --timeout nan", lambda e: ["weights", "download", "vqgan_imagenet_f16_1024", "--timeout",
         "nan"], 2, ("--timeout", "0.1 to 3600"), cls=1),
    Case("config lr: .inf", with_config("lr: .inf\n"), 1, ("lr: ", "finite"), cls=1),
    Case("config tv_weight: .nan", with_config("tv_weight: .nan\n"), 1, ("tv_weight: ", "finite"), cls=1),
    Case("config steps: .inf (an int field)", with_config("steps: .inf\n", steps=None), 1, ("steps",),
         cls=1),
    Case("config noise_prompts: ['3:-.inf']", with_config("noise_prompts: ['3:-.inf']\n"), 1,
         ("noise prompt", "weight must be a number"), cls=1),
    # finite but huge: every loss overflows; one run for the three (each costs seconds of imports and loading)
    Case('"a cat:1e308", --tv-weight 1e308, --noise-fac 1e308: the run is kept',
         g("--tv-weight", "1e308", "--noise-fac", "1e308", prompt="a cat:1e308", steps=2), 0, runs=1,
         after=saved("finished", 2), cls=1),
    # 2. integers out of range: refused with the range, never an OverflowError
    Case("--noise-prompt huge seed", g("--noise-prompt", BIG), 1, ("noise prompt", f"0 to {MAX_SEED}"),
         ("OverflowError",), cls=2),
    Case("--noise-prompt 2**63", g("--noise-prompt", str(2**63)), 1, (f"0 to {MAX_SEED}",), cls=2),
    Case("--noise-prompt -1", g("--noise-prompt", "-1"), 1, ("non-negative integer",), cls=2),
    Case("--noise-prompt of 5,000 digits", g("--noise-prompt", "9" * 5000), 1, ("too large",),
         ("Exceeds the limit",), cls=2),
    Case("--seed huge", g("--seed", BIG), 1, ("seed: ", f"from 0 to {MAX_SEED}"), cls=2),
    Case("--seed -5", g("--seed", "-5"), 1, ("seed: ", f"from 0 to {MAX_SEED}"), cls=2),
    Case("--seed of 5,000 digits", g("--seed", "9" * 5000), 2, ("--seed",), ("Exceeds the limit",), cls=2),
    Case("--steps 0", g("--steps", "0"), 1, ("steps: ", "from 1 to 1000000"), cls=2),
    Case("--steps huge", g("--steps", "99999999999999999999"), 1, ("steps: ", "from 1 to 1000000"), cls=2),
    Case("--cutn 0", g("--cutn", "0"), 1, ("cutn: ", "from 1 to 1024"), cls=2),
    Case("--cutn 100000", g("--cutn", "100000"), 1, ("cutn: ", "from 1 to 1024"), cls=2),
    Case("--fps 0", g("--fps", "0"), 1, ("fps: ", "from 1 to 120"), cls=2),
    Case("--save-every -1", g("--save-every", "-1"), 1, ("save_every: ", "from 0 to 1000000"), cls=2),
    Case("--size 0x0", g("--size", "0x0"), 2, ("--size", "positive"), cls=2),
    Case("--size 99999999999x5", g("--size", "99999999999x5"), 2, ("--size", "1 to 8192"), cls=2),
    Case("--size 64x", g("--size", "64x"), 2, ("--size", "WIDTHxHEIGHT"), cls=2),
    Case("--init-weight-decay-every huge", g("--init-weight-decay-every", BIG), 1,
         ("init_weight_decay_every: ", "from 0 to 1000000"), cls=2),
    Case("--stage-steps 0", g("--then", "b", "--stage-steps", "0"), 2, ("--stage-steps", "from 1 to 1000000"),
         ("╭", "Usage:"), cls=2),
    Case("selftest --steps 0", lambda e: ["selftest", "--steps", "0"], 2, ("--steps", "from 1 to 10000"),
         ("╭",), cls=2),
    Case("runs list --limit -1", lambda e: ["runs", "list", "--limit", "-1", "-o", str(e.out)], 2,
         ("--limit", "0 or more"), cls=2),
    Case("runs list --limit huge (valid)", lambda e: ["runs", "list", "--limit", BIG, "-o", str(e.out)], 0,
         ("No runs",), cls=2),
    Case("weights download --timeout -1", lambda e: ["weights", "download", "vqgan_imagenet_f16_1024", "--timeout",
         "-1"], 2, ("--timeout", "0.1 to 3600"), cls=2),
    Case("config seed of 5,000 digits", with_config("seed: " + "9" * 5000 + "\n"), 1, ("config file",), cls=2),
    # 3. chains: every stage checked before the first step, no run folder at all
    Case('story "a ^ b:0"', g(prompt="a ^ b:0"), 1, ("story stage 2", "weight 0"), cls=3),
    Case('story "a ^ b:nan"', g(prompt="a ^ b:nan"), 1, ("story stage 2", "weight nan"), cls=3),
    Case('story "a ^ ^ b"', g(prompt="a ^ ^ b"), 1, ("story stage 2", "is empty"), cls=3),
    Case('--then "b:nan"', g("--then", "b:nan", prompt="a"), 2, ("stage 2", "weight nan"), cls=3),
    Case('--then ""', g("--then", "", prompt="a"), 2, ("stage 2",), cls=3),
    Case('third stage "c:inf"', g("--then", "b", "--then", "c:inf", prompt="a"), 2, ("stage 3", "weight inf"),
         cls=3),
    # 4. signals: while running the partial run is saved (143 / 130); while starting, nothing is left
    Case("SIGTERM while running", g(steps=400), 143, ("Terminated", "vqclip continue"), runs=1,
         after=interrupted_and_continued, signal=(signal.SIGTERM, "running"), cls=4),
    Case("SIGINT while running", g(steps=400), 130, ("Stopping", "vqclip continue"), runs=1, after=interrupted,
         signal=(signal.SIGINT, "running"), cls=4),
    Case("SIGTERM while starting", g(steps=400), 143, ("Terminated.",), signal=(signal.SIGTERM, "startup"), cls=4),
    Case("SIGINT while starting", g(steps=400), 130, ("Interrupted.",), signal=(signal.SIGINT, "startup"), cls=4),
    # 5. files where something else belongs
    Case("--init-image DIR", lambda e: e.gen("--init-image", str(e.folder())), 1, ("is a directory",),
         ("not found",), cls=5),
    Case("--init-image FIFO", lambda e: e.gen("--init-image", str(e.fifo())), 1, ("is a FIFO",), cls=5),
    Case("--init-image empty file", lambda e: e.gen("--init-image", str(e.file("empty.png"))), 1,
         ("cannot read init image", "empty.png"), cls=5),
    Case("--image-prompt binary non-image", lambda e: e.gen("--image-prompt", str(e.file("x.png", os.urandom(999)))),
         1, ("cannot read image prompt",), cls=5),
    Case("--image-prompt DIR", lambda e: e.gen("--image-prompt", str(e.folder())), 1, ("is a directory",), cls=5),
    Case("--image-prompt FIFO", lambda e: e.gen("--image-prompt", str(e.fifo())), 1, ("is a FIFO",), cls=5),
    Case("--config DIR", lambda e: e.gen("--config", str(e.folder())), 1, ("config file", "is a directory"), cls=5),
    Case("--config FIFO", lambda e: e.gen("--config", str(e.fifo())), 1, ("config file", "is a FIFO"), cls=5),
    Case("--config binary", lambda e: e.gen("--config", str(e.file("x.yaml", b"\xff\xfe\x00\x81"))), 1,
         ("config file", "cannot be read"), cls=5),
    Case("--config empty file (valid: no settings)", lambda e: e.gen("--config", str(e.file("e.yaml")), prompt="a:0"),
         1, ("weight 0",), ("config file",), cls=5),
    Case("--init-image with a newline", g("--init-image", "{tmp}/new\nline.png"), 1, ("new\\nline.png", "not found"),
         cls=5),
    Case("--image-prompt with ESC", lambda e: e.gen("--image-prompt", str(e.file(f"esc{RED}.png", "text")) + ":2"),
         1, ("cannot read image prompt", "esc\\x1b[31m.png"), cls=5),
    Case("--config with ESC", g("--config", f"{{tmp}}/esc{RED}.yaml"), 1, ("esc\\x1b[31m.yaml", "not found"), cls=5),
    Case("--output-dir FILE", lambda e: e.gen("-o", str(e.file("a-file", "x"))), 1, ("is a file, not a folder",),
         cls=5),
    # 6. terminal safety: markup and escapes shown literally, never acted on
    Case("markup and ESC in a bad prompt", g(prompt=f"[bold]loud[/] {RED}red:0"), 1,
         ("[bold]loud[/] \\u001b[31mred:0", "weight 0"), cls=6),
    Case("markup in an error message", g("--config", "{tmp}/[red]x[/].yaml"), 1, ("[red]x[/].yaml: not found",), cls=6),
    Case("markup in an unknown option", g("--[bold]x"), 2, ("No such option: --[bold]x",), cls=6),
    # (with the largest seeds, which torch.Generator.manual_seed must take: the runtime check of class 2)
    Case("markup and ESC in a valid chain, seeds 2**63-1", g("--seed", MAX_SEED, "--noise-prompt", f"{MAX_SEED}:0.5",
         prompt=f"[bold]spring[/] ^ {RED}summer"), 0, ("stage 1/2: [bold]spring[/]", "stage 2/2: \\x1b[31msummer"),
         runs=2, after=chain_of_markup, cls=6),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_inputs(case: Case, tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    e = Env(tmp_path, tiny_models)
    args = case.setup(e)
    env = {**os.environ, "COLUMNS": "300", "PYTHONUNBUFFERED": "1"}
    if case.signal is not None:
        rc, stdout, stderr = run_with_signal(case, e, args, env)
    else:
        proc = subprocess.run([VQCLIP, *args], capture_output=True, timeout=90, env=env)
        rc, stdout, stderr = proc.returncode, proc.stdout.decode("utf-8"), proc.stderr.decode("utf-8")
    output = stdout + "\n[stderr]\n" + stderr
    assert rc == case.rc, output
    assert "Traceback" not in output and "\x1b" not in output and "\x9b" not in output, output
    check_output(output, stderr, case.rc, case.says, case.never)  # one line naming the fix, when it failed
    assert not [p for p in e.runs() if p.name.startswith(".")], e.runs()  # no .tmp-* folder left
    assert len(e.runs()) == case.runs, e.runs()
    if case.after:
        case.after(e, output)


def test_every_class_has_cases() -> None:
    counts = {k: sum(1 for c in CASES if c.cls == k) for k in range(1, 7)}
    assert all(counts.values()) and len(CASES) >= 40, counts


@pytest.mark.parametrize("where", ["load_models", "start_session"])
@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_before_the_first_step_leaves_no_run_folder(tiny_models, tmp_path, monkeypatch, where, sig, code):
    """Ctrl-C or SIGTERM while the models load (no folder yet) or while the session starts (the folder exists):
    nothing to save, so the command ends then — no 0-step run folder, no `.tmp-*` folder."""
    from typer.testing import CliRunner

    from vqclip import engine
    from vqclip.cli import app

    real = getattr(engine, where)

    def signalled(*args: Any, **kwargs: Any) -> Any:
        real(*args, **kwargs)
        os.kill(os.getpid(), sig)
        time.sleep(1)  # the handler runs here
        raise AssertionError("the signal did not stop the command")

    monkeypatch.setattr(engine, where, signalled)
    e = Env(tmp_path, tiny_models)
    r = CliRunner().invoke(app, e.gen(steps=3))
    assert r.exit_code == code, r.output
    assert "Traceback" not in r.output and ("Terminated." if code == 143 else "Interrupted.") in r.output
    assert e.runs() == []
