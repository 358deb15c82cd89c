"""Hostile weights through the installed `vqclip` command: custom model pairs that cannot load, checkpoints whose
pickle would run code, model configs that are not ones, folders and FIFOs where files belong (and files where
folders belong), and no connection to the Hugging Face hub. One table; each row builds files, runs one command
in a subprocess and checks the exit code, the one-line error, what must not be printed, and that no pickled
code ran.
"""

from __future__ import annotations

import os
import pickle
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

VQCLIP = shutil.which("vqclip") or str(Path(sys.executable).parent / "vqclip")
HTML = "<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head><body>gone</body></html>\n"


class Boom:
    """Unpickling this runs `touch MARKER`: a test fails if the marker ever appears."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (os.system, (f"touch {self.marker}",))


def evil_checkpoint(path: Path, marker: Path, legacy: bool = False, plain: bool = False) -> Path:
    import torch

    obj = {"state_dict": {"decoder.conv_in.weight": torch.zeros(2)}, "extra": Boom(marker)}
    if plain:
        with open(path, "wb") as fh:
            pickle.dump(obj, fh)
    else:
        torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


def closed_port() -> int:
    """A loopback port nothing listens on (connections are refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Env:
    tmp: Path
    tiny: dict[str, Path]
    wd: Path  # a weights folder
    marker: Path  # must never exist

    def pair(self, name: str, yaml: str | bytes | None = None, ckpt: str | bytes | Path | None = None) -> None:
        """NAME.yaml + NAME.ckpt in the weights folder: the tiny model's, or the given contents."""
        self.wd.mkdir(parents=True, exist_ok=True)
        y, c = self.wd / f"{name}.yaml", self.wd / f"{name}.ckpt"
        y.write_bytes(self.tiny["vqgan_yaml"].read_bytes() if yaml is None else
                      yaml.encode() if isinstance(yaml, str) else yaml)
        if isinstance(ckpt, Path):
            shutil.copyfile(ckpt, c)
        else:
            c.write_bytes(self.tiny["vqgan_ckpt"].read_bytes() if ckpt is None else
                          ckpt.encode() if isinstance(ckpt, str) else ckpt)

    def generate(self, *extra: str) -> list[str]:
        return ["generate", "a lighthouse", "--model", str(self.tiny["vqgan_yaml"]), "--size", "32x32",
                "--steps", "2", "--cutn", "2", "--device", "cpu", "-q", "-o", str(self.tmp / "out"), *extra]

    def tiny_clip(self, pretrained: str | Path) -> list[str]:
        return self.generate("--clip-model", str(self.tiny["clip_json"]), "--clip-pretrained", str(pretrained))


@dataclass
class Case:
    id: str
    setup: Callable[[Env], list[str] | tuple[list[str], dict[str, str]]]  # → args (, extra environment)
    rc: int
    says: tuple[str, ...] = ()
    never: tuple[str, ...] = ()
    within_s: float | None = None  # must finish this fast (offline cases), or within a few seconds of …
    baseline: Callable[[Env], list[str]] | None = None  # … the same command failing locally (start-up cost)


def listed(name: str, yaml: str | bytes | None = None, ckpt: Any = None, command: str = "list") -> Callable:
    def setup(e: Env) -> list[str]:
        e.pair(name, yaml, ckpt(e) if callable(ckpt) else ckpt)
        extra = ["--no-clip"] if command == "list" else []
        return ["weights", command, "--weights-dir", str(e.wd), *extra]
    return setup


def list_json_problem(e: Env) -> list[str]:
    e.pair("webpage", HTML)
    return ["weights", "list", "--json", "--no-clip", "--weights-dir", str(e.wd)]


def dir_ckpt(command: str) -> Callable[[Env], list[str]]:
    def setup(e: Env) -> list[str]:
        e.wd.mkdir(parents=True)
        (e.wd / "folded.yaml").write_bytes(e.tiny["vqgan_yaml"].read_bytes())
        (e.wd / "folded.ckpt").mkdir()
        return ["weights", command, "--weights-dir", str(e.wd), *(["--no-clip"] if command == "list" else [])]
    return setup


def weights_dir_is_file(*args: str) -> Callable[[Env], list[str]]:
    def setup(e: Env) -> list[str]:
        (e.tmp / "afile").write_text("x")
        return ["weights", *[a.replace("FILE", str(e.tmp / "afile")) for a in args]]
    return setup


def home_is_file(e: Env) -> tuple[list[str], dict[str, str]]:
    (e.tmp / "home").write_text("x")
    return ["weights", "list", "--no-clip"], {"VQCLIP_HOME": str(e.tmp / "home")}


def model_path(kind: str) -> Callable[[Env], list[str]]:
    def setup(e: Env) -> list[str]:
        target = e.tmp / "m.yaml"
        if kind == "dir":
            target.mkdir()
        elif kind == "fifo":
            os.mkfifo(target)
        else:  # a good yaml whose checkpoint is a folder
            target.write_bytes(e.tiny["vqgan_yaml"].read_bytes())
            (e.tmp / "m.ckpt").mkdir()
        return ["weights", "path", str(target)]
    return setup


def clip_pretrained(make: Callable[[Env], Path]) -> Callable[[Env], list[str]]:
    return lambda e: e.tiny_clip(make(e))


def clip_model(content: str | None) -> Callable[[Env], list[str]]:
    def setup(e: Env) -> list[str]:
        cfg = e.tmp / "model.json"
        if content is None:
            cfg.mkdir()
        else:
            cfg.write_text(content)
        return e.generate("--clip-model", str(cfg), "--clip-pretrained", "none")
    return setup


def fifo(e: Env) -> Path:
    os.mkfifo(e.tmp / "clip.pt")
    return e.tmp / "clip.pt"


def folder(e: Env) -> Path:
    (e.tmp / "clipdir").mkdir()
    return e.tmp / "clipdir"


def garbage_safetensors(e: Env) -> Path:
    (e.tmp / "clip.safetensors").write_bytes((1 << 40).to_bytes(8, "little") + os.urandom(64))
    return e.tmp / "clip.safetensors"


def html_file(e: Env) -> Path:
    (e.tmp / "clip.bin").write_text(HTML)
    return e.tmp / "clip.bin"


def offline(*args: str, hub_offline: bool = False) -> Callable[[Env], tuple[list[str], dict[str, str]]]:
    def setup(e: Env) -> tuple[list[str], dict[str, str]]:
        env = {"HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}", "HF_HUB_OFFLINE": "1" if hub_offline else "",
               "NO_PROXY": "*", "HTTPS_PROXY": "", "HTTP_PROXY": "", "ALL_PROXY": ""}
        argv = e.generate("--clip-model", "ViT-B-32", "--clip-pretrained", "openai") if args == ("generate",) \
            else ["weights", *args]
        return argv, env
    return setup


def cached_offline(e: Env) -> tuple[list[str], dict[str, str]]:
    """Weights already in the hub cache (a stand-in file) and no connection: download says so at once."""
    repo = Path(os.environ["HF_HOME"]) / "hub" / "models--timm--vit_base_patch32_clip_224.openai"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "open_clip_pytorch_model.bin").write_bytes(b"weights")
    argv, env = offline("download", "clip:ViT-B-32/openai")(e)
    return argv, env


def generate_baseline(e: Env) -> list[str]:
    """The same generate, failing on a missing local CLIP file: imports, plan and VQGAN, no network."""
    return e.generate("--clip-model", "ViT-B-32", "--clip-pretrained", str(e.tmp / "missing" / "clip.pt"))


def download_baseline(e: Env) -> list[str]:
    return ["weights", "download", "clip:NoSuchModel/x"]  # imports open_clip, then fails without a network


CODE = "would run code when loaded"
CASES = [
    # 4. custom pairs that cannot load: `weights list` shows them broken, `weights verify` exits 1
    Case("list: HTML saved as .yaml", listed("webpage", HTML), 0, ("broken", "webpage.yaml is an HTML page")),
    Case("list --json: the problem is a field", list_json_problem, 0, ('"status": "broken"', '"problem": "webpage')),
    Case("verify: HTML saved as .yaml", listed("webpage", HTML, command="verify"), 1,
         ("webpage.yaml is an HTML page", "1 model(s) failed: webpage")),
    Case("list: yaml without ddconfig", listed("noddc", "model:\n  params:\n    embed_dim: 4\n"), 0,
         ("broken", "no model.params.ddconfig")),
    Case("verify: yaml without ddconfig", listed("noddc", "model:\n  params:\n    embed_dim: 4\n", command="verify"),
         1, ("no model.params.ddconfig", "fix or replace noddc.yaml / noddc.ckpt")),
    Case("list: checkpoint that runs code (zip)", listed("evil", None, lambda e: evil_checkpoint(e.tmp / "e.ckpt",
         e.marker)), 0, ("broken", CODE, "posix.system")),
    Case("verify: checkpoint that runs code (zip)", listed("evil", None, lambda e: evil_checkpoint(
         e.tmp / "e.ckpt", e.marker), command="verify"), 1, (CODE, "posix.system")),
    Case("list: checkpoint that runs code (legacy format)", listed("old", None, lambda e: evil_checkpoint(
         e.tmp / "e.ckpt", e.marker, legacy=True)), 0, (CODE,)),
    Case("verify: checkpoint that runs code (legacy format)", listed("old", None, lambda e: evil_checkpoint(
         e.tmp / "e.ckpt", e.marker, legacy=True), command="verify"), 1, (CODE,)),
    Case("list: a plain pickle that runs code", listed("plain", None, lambda e: evil_checkpoint(
         e.tmp / "e.ckpt", e.marker, plain=True)), 0, (CODE,)),
    Case("list: HTML saved as .ckpt", listed("page", None, HTML), 0, ("page.ckpt is an HTML page",)),
    Case("verify: random bytes as .ckpt", listed("noise", None, os.urandom(4096), command="verify"), 1,
         ("noise.ckpt is not a PyTorch checkpoint",)),
    Case("list: empty .ckpt", listed("empty", None, b""), 0, ("empty.ckpt is empty",)),
    Case("list: .ckpt is a folder", dir_ckpt("list"), 0, ("folded.ckpt is a directory, not a file",)),
    Case("verify: .ckpt is a folder", dir_ckpt("verify"), 1, ("folded.ckpt is a directory, not a file",)),
    Case("verify: a good custom pair (valid)", listed("good", command="verify"), 0, ("custom; sha256",)),
    # 3. files where folders belong, folders and FIFOs where files belong
    Case("weights list --weights-dir FILE", weights_dir_is_file("list", "--weights-dir", "FILE"), 1,
         ("is a file, not a folder", "--weights-dir")),
    Case("weights download --weights-dir FILE/sub", weights_dir_is_file("download", "coco", "--weights-dir",
         "FILE/sub"), 1, ("a folder in its path is a file",)),
    Case("VQCLIP_HOME is a file", home_is_file, 1, ("is a file, not a folder", "VQCLIP_HOME")),
    Case("weights path DIR.yaml", model_path("dir"), 1, ("is a directory, not a file",), ("not found",)),
    Case("weights path FIFO.yaml", model_path("fifo"), 1, ("is a FIFO (named pipe), not a regular file",)),
    Case("weights path x.yaml whose x.ckpt is a folder", model_path("ckptdir"), 1, ("m.ckpt is a directory",)),
    # 5. bad CLIP files (generate; nothing pickled ever runs)
    Case("--clip-pretrained: a code-running pickle (zip)",
         clip_pretrained(lambda e: evil_checkpoint(e.tmp / "clip.pt", e.marker)), 1, (CODE, "posix.system")),
    Case("--clip-pretrained: a code-running pickle (legacy)",
         clip_pretrained(lambda e: evil_checkpoint(e.tmp / "clip.pt", e.marker, legacy=True)), 1, (CODE,)),
    Case("--clip-pretrained: an HTML page", clip_pretrained(html_file), 1, ("is an HTML page",)),
    Case("--clip-pretrained: a folder", clip_pretrained(folder), 1, ("is a directory, not a file",)),
    Case("--clip-pretrained: random bytes as .safetensors", clip_pretrained(garbage_safetensors), 1,
         ("clip.safetensors cannot be loaded into", "SafetensorError")),
    Case("--clip-pretrained: a FIFO", clip_pretrained(fifo), 1, ("is a FIFO (named pipe), not a regular file",)),
    Case("--clip-model: not JSON", clip_model("embed_dim: 32"), 1, ("is not JSON",)),
    Case("--clip-model: JSON without vision_cfg", clip_model('{"embed_dim": 32, "text_cfg": {}}'), 1,
         ("has no vision_cfg",)),
    Case("--clip-model: JSON without embed_dim", clip_model('{"vision_cfg": {}, "text_cfg": {}}'), 1,
         ("has no embed_dim",)),
    Case("--clip-model: a JSON list", clip_model("[1, 2]"), 1, ("is JSON but not an object",)),
    Case("--clip-model: a folder", clip_model(None), 1, ("is a directory, not a file",)),
    # 6. no connection: fail within seconds, in one whole line that names the command
    Case("generate without CLIP weights or a connection", offline("generate"), 1,
         ("there is no connection", "run `vqclip weights download clip:ViT-B-32/openai` when online",
          "--clip-pretrained FILE)"), ("ERROR:root", "Retrying"), within_s=10, baseline=generate_baseline),
    Case("weights download clip: without a connection", offline("download", "clip:ViT-B-32/openai"), 1,
         ("there is no connection", "`vqclip weights download clip:ViT-B-32/openai` when online"),
         ("ERROR:root", "Retrying"), within_s=10, baseline=download_baseline),
    Case("generate with HF_HUB_OFFLINE=1 and no CLIP weights", offline("generate", hub_offline=True), 1,
         ("HF_HUB_OFFLINE is set", "vqclip weights download clip:ViT-B-32/openai"), ("ERROR:root",),
         within_s=10, baseline=generate_baseline),
    Case("weights download clip: already cached, no connection (valid)", cached_offline, 0,
         ("✓ clip:ViT-B-32/openai", "open_clip_pytorch_model.bin"), ("Retrying",), within_s=10,
         baseline=download_baseline),
]


_BASELINES: dict[Any, float] = {}


def baseline_seconds(case: Case, e: Env, env: dict[str, str]) -> float:
    """Seconds the same command takes to fail locally (once per kind): on a busy 2-core machine importing
    torch and open_clip alone can take most of 10 s, and that cost is not the hub client's retry loop."""
    if case.baseline not in _BASELINES:
        start = time.perf_counter()
        subprocess.run([VQCLIP, *case.baseline(e)], capture_output=True, timeout=120, env=env)  # type: ignore[misc]
        _BASELINES[case.baseline] = time.perf_counter() - start
    return _BASELINES[case.baseline]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_weights(case: Case, tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    e = Env(tmp_path, tiny_models, tmp_path / "weights", tmp_path / "PWNED")
    made = case.setup(e)
    args, extra = made if isinstance(made, tuple) else (made, {})
    env = {**os.environ, "COLUMNS": "300", **extra}
    env = {k: v for k, v in env.items() if v != ""}  # "" in a case: unset it
    start = time.perf_counter()
    proc = subprocess.run([VQCLIP, *args], capture_output=True, text=True, timeout=120, env=env)
    took = time.perf_counter() - start
    output = proc.stdout + "\n[stderr]\n" + proc.stderr
    assert proc.returncode == case.rc, output
    assert "Traceback" not in output
    assert not e.marker.exists(), "a pickled payload ran"
    if case.rc:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("Fetching CLIP")]
        assert len(lines) == 1 and lines[0].startswith("Error: "), output
    flat = " ".join(output.split())  # table cells wrap: compare with whitespace collapsed
    for text in case.says:
        assert text in output or " ".join(text.split()) in flat, f"{text!r} not in:\n{output}"
    for text in case.never:
        assert text not in output, f"{text!r} in:\n{output}"
    if case.within_s is not None:
        limit = case.within_s
        if took >= limit and case.baseline is not None:  # a busy machine: allow the local start-up cost + 4 s
            limit = max(limit, baseline_seconds(case, e, env) + 4)
        assert took < limit, f"took {took:.1f} s (limit {limit:.1f} s):\n{output}"
