"""`vqclip batch`: rows, the journal, crash safety, model reuse, CPU workers and Ray, on tiny models."""

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
from PIL import Image
from typer.testing import CliRunner

from vqclip.batch import rows as R
from vqclip.errors import VqclipError
from clihelp import invoke

runner = CliRunner()
VQCLIP = shutil.which("vqclip") or str(Path(sys.executable).parent / "vqclip")


def tiny(t: dict, out: Path, *extra: str, steps: str = "2") -> list[str]:
    return ["--model", str(t["vqgan_yaml"]), "--clip-model", str(t["clip_json"]),
            "--clip-pretrained", str(t["clip_ckpt"]), "--size", "16x16", "--cutn", "2", "--steps", steps,
            "--save-every", "0", "--output-dir", str(out), *extra]


def finished_runs(out: Path) -> list[dict]:
    found = []
    for p in sorted(out.iterdir()) if out.exists() else []:
        if (p / "details.json").is_file():
            d = json.loads((p / "details.json").read_text())
            if d["status"] == "finished":
                found.append(d)
    return found


def batch_folder(out: Path) -> Path:
    [folder] = [p for p in out.iterdir() if p.name.startswith("batch-")]
    return folder


# ------------------------------------------------------------------------------------------------------ rows
@pytest.mark.parametrize("name,text,expected", [
    ("p.txt", "a red apple\n# a comment\n\n  blue sky  \n", [(1, {"prompt": "a red apple"}), (4, {"prompt": "blue sky"})]),
    ("r.csv", "prompt,lr,size,noise_prompts\nx,0.2,32x32,1:0.5;2\ny,,,\n",
     [(2, {"prompt": "x", "lr": "0.2", "size": "32x32", "noise_prompts": ["1:0.5", "2"]}), (3, {"prompt": "y"})]),
    ("r.jsonl", '{"prompt": "a", "steps": 3}\n\n# c\n{"prompt": "b"}\n',
     [(1, {"prompt": "a", "steps": 3}), (4, {"prompt": "b"})]),
    ("r.yaml", "- prompt: a\n  seed: 4\n- b\n", [(1, {"prompt": "a", "seed": 4}), (3, {"prompt": "b"})]),
])
def test_read_rows_each_format(tmp_path, name, text, expected):
    (tmp_path / name).write_text(text)
    assert R.read_rows(tmp_path / name) == expected


def test_expand_layers_and_multiplies(tmp_path):
    f = tmp_path / "r.csv"
    f.write_text("prompt,lr,steps\na,0.3,\nb,,7\n")
    rows = R.expand(f, overrides={"steps": 5, "lr": 0.05, "width": 64, "height": 64})
    assert [(r.config.lr, r.config.steps) for r in rows] == [(0.3, 5), (0.05, 7)]  # rows win over flags
    assert rows[0].source == "r.csv:2" and rows[0].config.width == 64
    rows = R.expand(f, seeds=R.parse_seeds("1-3"), sweeps=R.parse_sweeps(["cutn=8,16", "size=32x32,64x48"]))
    assert len(rows) == 2 * 3 * 2 * 2
    assert {r.config.cutn for r in rows} == {8, 16} and {r.config.size for r in rows} == {(32, 32), (64, 48)}
    rows = R.expand(f, repeat=3, overrides={"seed": 10})
    assert [r.config.seed for r in rows] == [10, 11, 12, 10, 11, 12]
    assert R.parse_seeds("3,7,9") == [3, 7, 9]
    with pytest.raises(VqclipError, match="not a setting"):
        R.parse_sweeps(["colour=1,2"])


@pytest.mark.parametrize("name,text,line", [
    ("runs.csv", "prompt,lr\na,0.1\nb,0.1\nc,-1\n", "runs.csv:4: lr: Input should be greater than 0"),
    ("runs.csv", "prompt,colour\na,red\n", "runs.csv:1: colour: not a setting"),
    ("r.jsonl", '{"prompt": "a"}\n{"prompt": "b", "steps": 0}\n', "r.jsonl:2: steps: Input should be greater"),
    ("r.jsonl", '{"prompt": "a"}\n{oops\n', "r.jsonl:2: not JSON"),
    ("r.yaml", "- prompt: a\n- prompt: b\n  cutn: zero\n", "r.yaml:2: cutn: Input should be a valid integer"),
    ("p.txt", "fine\na | | b\n", "p.txt:2: prompt: "),
])
def test_bad_row_is_one_line(tmp_path, name, text, line):
    f = tmp_path / name
    f.write_text(text)
    r = invoke("batch", str(f), "--dry-run", "-o", str(tmp_path / "out"))
    assert r.exit_code == 1, r.output
    errors = [x for x in r.output.splitlines() if x.startswith("Error:")]
    assert len(errors) == 1 and line in errors[0], r.output
    assert not (tmp_path / "out").exists()  # nothing started


def test_dry_run_prints_table_and_estimate(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("one\ntwo\n")
    r = invoke("batch", str(f), "--dry-run", "--seeds", "1-2", "--sweep", "lr=0.1,0.2", "--steps", "10",
               "-o", str(tmp_path / "out"))
    assert r.exit_code == 0, r.output
    assert "8 runs" in r.output and "Estimated time" in r.output and "an estimate" in r.output
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------- runs, journal
def test_batch_runs_every_row_once_and_records_it(tiny_models, tmp_path, monkeypatch):
    import vqclip.engine

    loads = []
    real = vqclip.engine.load_models
    monkeypatch.setattr(vqclip.engine, "load_models", lambda *a, **k: loads.append(a) or real(*a, **k))
    f = tmp_path / "p.txt"
    f.write_text("a red apple\nblue sky\na green leaf\n")
    out = tmp_path / "out"
    r = invoke("batch", str(f), "--seeds", "1-2", *tiny(tiny_models, out))
    assert r.exit_code == 0, r.output
    runs = finished_runs(out)
    folder = batch_folder(out)
    assert len(runs) == 6 and len(loads) == 1  # models loaded once for the six rows
    assert sorted(d["batch"]["row"] for d in runs) == list(range(6))
    assert {d["batch"]["id"] for d in runs} == {folder.name.removeprefix("batch-")}
    assert {(d["prompt"], d["seed"]) for d in runs} == {(p, s) for p in ("a red apple", "blue sky", "a green leaf")
                                                        for s in (1, 2)}
    info = json.loads((folder / "batch.json").read_text())
    assert len(info["rows"]) == 6 and info["fingerprint"]
    assert (folder / "sheet.png").is_file() and "6 done, 0 failed" in r.output
    import sqlite3

    db = sqlite3.connect(folder / "journal.sqlite")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT COUNT(*) FROM entries WHERE status='done' AND run_id IS NOT NULL").fetchone()[0] == 6
    r = invoke("batch", str(f), "--seeds", "1-2", *tiny(tiny_models, out))  # the same command: nothing left
    assert r.exit_code == 0 and "already done" in r.output and "--new" in r.output, r.output
    assert len(finished_runs(out)) == 6 and len(loads) == 1
    assert Image.open(folder / "sheet.png").size[0] >= 3 * 150  # thumbnails grow to their cells
    db.close()
    r = invoke("batch", "--resume", folder.name, "-o", str(out))  # nothing left: nothing run again
    assert r.exit_code == 0 and len(finished_runs(out)) == 6, r.output


def test_batch_images_equal_separate_generate_runs(tiny_models, tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("a red apple\n")
    out = tmp_path / "batch"
    assert invoke("batch", str(f), "--seeds", "3-4", *tiny(tiny_models, out)).exit_code == 0
    batch_png = {d["seed"]: (out / d["id"] / "output.png").read_bytes() for d in finished_runs(out)}
    for seed in (3, 4):
        single = tmp_path / f"single{seed}"
        assert invoke("generate", "a red apple", *tiny(tiny_models, single, "--seed", str(seed))).exit_code == 0
        [d] = finished_runs(single)
        assert (single / d["id"] / "output.png").read_bytes() == batch_png[seed]


def test_failed_row_is_retried_once_then_reported(tiny_models, tmp_path, monkeypatch):
    import vqclip.pipeline.execute as ex

    calls = []
    real = ex.execute

    def flaky(req, reporter=None):
        calls.append(req.config.prompt)
        if req.config.prompt == "boom":
            raise VqclipError("the engine exploded")
        return real(req, reporter)

    monkeypatch.setattr(ex, "execute", flaky)
    f = tmp_path / "p.txt"
    f.write_text("fine\nboom\nalso fine\n")
    out = tmp_path / "out"
    r = invoke("batch", str(f), "--seed", "1", *tiny(tiny_models, out))
    assert r.exit_code == 1, r.output
    assert calls.count("boom") == 2 and calls.count("fine") == 1
    assert "row 1 failed after 2 attempts: the engine exploded" in r.output and "2 done, 1 failed" in r.output
    assert len(finished_runs(out)) == 2


def test_kill_9_then_resume_ends_with_exactly_n_runs(tiny_models, tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("".join(f"prompt number {i}\n" for i in range(5)))
    out = tmp_path / "out"
    args = [VQCLIP, "batch", str(f), "--seed", "1", "--quiet", *tiny(tiny_models, out, steps="4")]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 180  # a busy 2-core machine: imports, the up-front row checks, two runs
    while time.time() < deadline and len(finished_runs(out)) < 2:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(finished_runs(out))
    assert 2 <= done_before < 5
    again = subprocess.run(args, capture_output=True, text=True, timeout=120)  # the same command line resumes
    assert again.returncode == 0, again.stderr + again.stdout
    assert "Resuming batch" in again.stderr
    runs = finished_runs(out)
    assert len(runs) == 5 and sorted(d["batch"]["row"] for d in runs) == list(range(5))
    assert len([p for p in out.iterdir() if p.name.startswith("batch-")]) == 1


def test_two_cpu_workers(tiny_models, tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("one\ntwo\nthree\nfour\n")
    out = tmp_path / "out"
    r = invoke("batch", str(f), "--devices", "cpu,cpu", "--seed", "2", "--quiet", *tiny(tiny_models, out))
    assert r.exit_code == 0, r.output
    runs = finished_runs(out)
    assert sorted(d["batch"]["row"] for d in runs) == [0, 1, 2, 3]
    assert {line.split("(")[1].split(")")[0] for line in r.output.splitlines() if "finished in" in line} \
        <= {"cpu#0", "cpu#1"}


def test_device_listing(monkeypatch):
    import torch

    from vqclip.batch.workers import default_devices, parse_devices

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    assert default_devices() == ["cuda:0", "cuda:1", "cuda:2"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_devices() == ["cpu"] and parse_devices("cpu, CPU") == ["cpu", "cpu"]
    with pytest.raises(VqclipError, match="not a device"):
        parse_devices("gpu0")


# ----------------------------------------------------------------------------------------------------- Ray
def test_ray_missing_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)
    f = tmp_path / "p.txt"
    f.write_text("one\n")
    r = invoke("batch", str(f), "--ray", "auto", "-o", str(tmp_path / "out"))
    assert r.exit_code == 1 and "pip install 'vqclip[ray]'" in r.output, r.output


@pytest.fixture
def local_ray(tmp_path):
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'vqclip[ray]')")
    from vqclip.batch.ray_backend import init_keeping_signals

    init_keeping_signals(ray, num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
                         log_to_driver=False, _temp_dir=str(Path("/tmp") / f"ray-{os.getpid()}"),
                         runtime_env={"env_vars": dict(OMP_NUM_THREADS="1", VQCLIP_HOME=os.environ["VQCLIP_HOME"],
                                                       HF_HUB_OFFLINE="1")})
    yield ray
    ray.shutdown()
    assert signal.getsignal(signal.SIGTERM) is not None


def test_ray_batch_with_a_killed_actor(tiny_models, tmp_path, local_ray):
    from vqclip.batch import start
    from vqclip.batch.ray_backend import RayBackend
    from vqclip.batch.runner import Events

    f = tmp_path / "p.txt"
    f.write_text("one\ntwo\nthree\n")
    out = tmp_path / "out"
    rows = R.expand(f, overrides={"model": str(tiny_models["vqgan_yaml"]), "clip_model": str(tiny_models["clip_json"]),
                                  "clip_pretrained": str(tiny_models["clip_ckpt"]), "width": 16, "height": 16,
                                  "cutn": 2, "steps": 2, "save_every": 0, "seed": 1})
    settings = start.Settings(output_dir=str(out), ray="auto", ray_workers=2)
    folder, resumed = start.open_batch(rows, str(f), settings)
    backend = RayBackend("auto", 2, out)
    killed = []

    class KillFirst(Events):
        def started(self, worker, row, task):
            if not killed:
                time.sleep(1.0)  # the actor is loading or running the row
                local_ray.kill(backend.actors[worker])
                killed.append(row)

        def lost(self, worker, row, why):
            killed.append(("lost", row))

    try:
        counts = start.run(folder, settings, KillFirst(), backend=backend)
    finally:
        backend.close()
    assert counts == {"pending": 0, "running": 0, "done": 3, "failed": 0}
    assert ("lost", killed[0]) in killed and backend.replaced == 1
    runs = finished_runs(out)
    assert sorted(d["batch"]["row"] for d in runs) == [0, 1, 2]
    assert all((out / d["id"] / "output.png").is_file() and (out / d["id"] / "state.pt").is_file() for d in runs)
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]


def test_rows_without_a_seed_get_one_kept_in_the_batch(tmp_path):
    """A seed is chosen when the batch is made and written to batch.json, so a row redone after a crash makes
    the same image; the same command line still finds the batch (its fingerprint leaves seeds unset)."""
    from vqclip.batch import start

    f = tmp_path / "p.txt"
    f.write_text("one\ntwo\n")
    out = tmp_path / "out"
    settings = start.Settings(output_dir=str(out))
    folder, resumed = start.open_batch(R.expand(f), str(f), settings)
    seeds = [r["config"]["seed"] for r in folder.info()["rows"]]
    assert not resumed and all(isinstance(s, int) for s in seeds)
    again, resumed = start.open_batch(R.expand(f), str(f), settings)
    assert resumed and again.path == folder.path and [r["config"]["seed"] for r in again.info()["rows"]] == seeds
