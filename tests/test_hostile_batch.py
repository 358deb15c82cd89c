"""Hostile inputs to `vqclip batch`: garbage files and options are one line (exit 1 or 2, never a traceback),
every input is bounded before it is parsed and every count made before a list is built, a Ray address that
is malformed or dead fails within its deadline naming it, duplicate keys are errors, piped output is not
wrapped, and a batch's id and row show wherever its runs are listed."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clihelp import invoke
from vqclip.batch import rowfile

VQCLIP = shutil.which("vqclip") or str(Path(sys.executable).parent / "vqclip")


def one_error(output: str) -> str:
    errors = [x for x in output.splitlines() if x.startswith("Error:")]
    assert len(errors) == 1, output
    assert "Traceback" not in output
    return errors[0]


def _write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------ garbage files
BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
    for p, c in zip("abcdefgh", "bcdefghi")) + "rows: [*i]\n"

FILES = [
    ("big.csv", "prompt\n" + "x" * 200_000 + "\n", "big.csv:2: a cell is longer than 131,072 characters"),
    ("twice.csv", "prompt,lr,lr\na,0.1,0.2\n", "twice.csv:1: the column lr is named twice"),
    ("twice.jsonl", '{"prompt": "a"}\n{"prompt": "b", "steps": 3, "prompt": "c"}\n',
     "twice.jsonl:2: 'prompt' is given twice in this row"),
    ("twice.yaml", "- prompt: a\n  steps: 2\n  prompt: b\n", "twice.yaml:3: 'prompt' is given twice in this row"),
    ("bomb.yaml", BOMB, "aliases expand to more than 1,000,000 values"),
    ("loop.yaml", "- &a [*a]\n", "bad"),
    ("deep.yaml", "[" * 100_000 + "]" * 100_000 + "\n", "deep.yaml"),
    ("deep.jsonl", "[" * 30_000 + "]" * 30_000 + "\n", "deep.jsonl:1: not JSON"),
    ("long.txt", "short\n" + "y" * 70_000 + "\n", "long.txt:2: the row is 70,000 characters, more than 65,536"),
    ("prompt.jsonl", json.dumps({"prompt": "z" * 20_000}) + "\n", "prompt.jsonl:1: prompt: 20,000 characters"),
    ("binary.txt", b"\xff\xfe\x00garbage\x80", "cannot be read (UnicodeDecodeError)"),
    ("empty.yaml", "", "no rows"),
    ("scalar.yaml", "just text\n", "the top level is not a list"),
    ("rows.exe", "a\n", "unknown format .exe"),
]


@pytest.mark.parametrize("name,content,says", FILES, ids=[f[0] for f in FILES])
def test_garbage_batch_files_are_one_line(tmp_path, name, content, says):
    f = _write(tmp_path / name, content)
    t0 = time.perf_counter()
    r = invoke("batch", str(f), "--dry-run", "-o", str(tmp_path / "out"))
    assert time.perf_counter() - t0 < 20
    assert r.exit_code == 1, r.output
    line = one_error(r.output)
    if says != "bad":
        assert says in line, line
    assert not (tmp_path / "out").exists()


def test_a_file_over_the_size_bound_is_refused_before_it_is_parsed(tmp_path):
    f = tmp_path / "huge.jsonl"
    with open(f, "wb") as fh:
        fh.truncate(rowfile.MAX_FILE_BYTES + 1)  # sparse: nothing written
    r = invoke("batch", str(f), "--dry-run")
    assert r.exit_code == 1 and "larger than 32 MiB" in one_error(r.output), r.output


# ------------------------------------------------------------------------------------------ counted first
def test_a_billion_seeds_is_counted_not_listed(tmp_path):
    f = _write(tmp_path / "p.txt", "one\ntwo\n")
    t0 = time.perf_counter()
    r = invoke("batch", str(f), "--seeds", "1-1000000000", "--dry-run")
    took = time.perf_counter() - t0
    assert r.exit_code == 2, r.output
    line = one_error(r.output)
    assert "2,000,000,000 runs" in line and "100,000" in line and "--max-rows" in line, line
    assert took < 1.0, took


@pytest.mark.parametrize("args,code,says", [
    (["--repeat", "10000", "--sweep", "lr=0.1,0.2,0.3,0.4,0.5,0.6"], 2, "the batch would be 120,000 runs"),
    (["--seeds", "1-3", "--max-rows", "5"], 2, "the batch would be 6 runs from 2 rows, more than the limit of 5"),
    (["--seeds", "1-" + "9" * 20_000], 2, "--seeds is 20,002 characters long"),
    (["--seeds", "5-1"], 2, "write a range A-B"),
    (["--seeds", "1-99999999999999999999999"], 2, "seeds are from 0 to"),
    (["--sweep", "lr=" + ",".join(["0.1"] * 4000)], 2, "characters long; sweep fewer values"),
    (["--sweep", "colour=1,2"], 2, "colour is not a setting"),
    (["--devices", ",".join(["cpu"] * 65)], 2, "--devices names 65 workers; at most 64"),
    (["--devices", "cpu," * 1000], 2, "--devices is 4,000 characters long"),
])
def test_sizes_and_counts_are_usage_errors(tmp_path, args, code, says):
    f = _write(tmp_path / "p.txt", "one\ntwo\n")
    t0 = time.perf_counter()
    r = invoke("batch", str(f), "--dry-run", *args)
    assert time.perf_counter() - t0 < 1.0
    assert r.exit_code == code and says in one_error(r.output), r.output


def test_max_rows_raises_the_limit(tmp_path):
    f = _write(tmp_path / "p.txt", "one\ntwo\n")
    r = invoke("batch", str(f), "--dry-run", "--seeds", "1-3", "--max-rows", "6")
    assert r.exit_code == 0 and "6 runs" in r.output, r.output


def test_rows_are_checked_before_the_first_run(tiny_models, tmp_path):
    """A row whose model, CLIP or device cannot work fails before any row runs, naming the row."""
    good = ["--clip-model", str(tiny_models["clip_json"]), "--clip-pretrained", str(tiny_models["clip_ckpt"]),
            "--size", "16x16", "--cutn", "2", "--steps", "2", "--save-every", "0", "--seed", "1"]
    model = str(tiny_models["vqgan_yaml"])
    cases = [
        ({"model": str(tmp_path / "nowhere.yaml")}, "r.jsonl:3: "),
        ({"model": "no_such_model"}, "r.jsonl:3: unknown model 'no_such_model'"),
        ({"clip_model": "ViT-Nope-1"}, "r.jsonl:3: unknown CLIP model 'ViT-Nope-1'"),
        ({"clip_pretrained": str(tmp_path / "none.pt")}, "r.jsonl:3: CLIP checkpoint"),
        ({"device": "cuda:7"}, "cuda"),
        ({"device": "mps"}, "r.jsonl:3: device mps: this batch's workers run on cpu"),
    ]
    for bad, says in cases:
        f = _write(tmp_path / "r.jsonl", '{"prompt": "fine"}\n{"prompt": "fine too"}\n'
                   + json.dumps({"prompt": "bad", **bad}) + "\n")
        device = ["--device", "cuda:7"] if bad.get("device") == "cuda:7" else ["--devices", "cpu"]
        out = tmp_path / "out"
        r = invoke("batch", str(f), "--model", model, *good, *device, "-o", str(out))
        assert r.exit_code == 1, r.output
        assert says in one_error(r.output), r.output
        assert not out.exists() or not [p for p in out.iterdir() if not p.name.startswith(".")]  # nothing ran


def test_a_row_that_will_not_fit_is_refused_before_the_first_run(tiny_models, tmp_path, monkeypatch):
    monkeypatch.setenv("VQCLIP_MEMORY_BUDGET", "3GiB")
    f = _write(tmp_path / "r.jsonl", '{"prompt": "small"}\n{"prompt": "huge", "size": "8192x8192", "cutn": 64}\n')
    out = tmp_path / "out"
    r = invoke("batch", str(f), "--model", str(tiny_models["vqgan_yaml"]), "--clip-model", str(tiny_models["clip_json"]),
               "--clip-pretrained", str(tiny_models["clip_ckpt"]), "--size", "16x16", "--cutn", "2", "--steps", "2",
               "--devices", "cpu", "-o", str(out))
    assert r.exit_code == 1, r.output
    line = one_error(r.output)
    assert line.startswith("Error: r.jsonl:2: ") and "8192x8192" in line, line
    assert not out.exists() or not [p for p in out.iterdir() if not p.name.startswith(".")]


# ---------------------------------------------------------------------------------------------------- Ray
@pytest.mark.parametrize("address", ["foo:bar:baz", "host:99999", "ray://", ":6379", "a b:1", "http://x:1",
                                     "x" * 400 + ":1", "10.0.0.1"])
def test_a_malformed_ray_address_is_a_usage_error(tmp_path, address):
    f = _write(tmp_path / "p.txt", "one\n")
    r = invoke("batch", str(f), "--ray", address, "-o", str(tmp_path / "out"))
    assert r.exit_code == 2 and "is not a Ray address" in one_error(r.output), r.output
    assert not (tmp_path / "out").exists()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_dead_ray_address_fails_at_once_naming_it(tmp_path):
    pytest.importorskip("ray")
    f = _write(tmp_path / "p.txt", "one\n")
    address = f"127.0.0.1:{_closed_port()}"
    t0 = time.perf_counter()
    r = subprocess.run([VQCLIP, "batch", str(f), "--ray", address, "-o", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=60)
    assert time.perf_counter() - t0 < 30
    assert r.returncode == 1, r.stdout + r.stderr
    line = one_error(r.stderr)
    assert address in line and "ray start --head" in line, line
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())  # nothing made


def test_a_silent_ray_address_fails_at_its_deadline(tmp_path):
    """A port that accepts connections and never answers: Ray would wait for minutes; the deadline ends it."""
    pytest.importorskip("ray")
    f = _write(tmp_path / "p.txt", "one\n")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        address = f"127.0.0.1:{server.getsockname()[1]}"
        t0 = time.perf_counter()
        r = subprocess.run([VQCLIP, "batch", str(f), "--ray", address, "-o", str(tmp_path / "out")],
                           capture_output=True, text=True, timeout=90,
                           env=dict(os.environ, VQCLIP_RAY_TIMEOUT="2"))
        took = time.perf_counter() - t0
    assert r.returncode == 1, r.stdout + r.stderr
    line = one_error(r.stderr)
    assert address in line and "did not answer within 2 s" in line and "--ray-timeout" in line, line
    assert took < 30, took
    out = tmp_path / "out"
    assert not out.exists() or not [p for p in out.iterdir() if p.name.startswith("batch-")]  # joined first


# ------------------------------------------------------------------------------------- messages, promises
def test_dry_run_piped_to_a_file_keeps_each_row_on_one_line(tmp_path):
    prompt = "a very long prompt about a lighthouse on a cliff at dawn, " * 4 + "end"
    f = _write(tmp_path / "p.txt", f"{prompt.strip()}\nshort one\n")
    dest = tmp_path / "rows.txt"
    with open(dest, "w") as fh:
        r = subprocess.run([VQCLIP, "batch", str(f), "--seeds", "1-2", "--dry-run"], stdout=fh,
                           stderr=subprocess.PIPE, text=True, timeout=60, env=dict(os.environ, COLUMNS="80"))
    assert r.returncode == 0, r.stderr
    lines = dest.read_text().splitlines()
    assert lines[0].split("\t") == ["#", "from", "prompt", "seed", "size", "steps", "cutn", "lr", "model"]
    assert len(lines) == 5 and all(len(line.split("\t")) == 9 for line in lines)
    assert lines[1].split("\t")[2] == prompt.strip() and len(lines[1]) > 80
    assert "4 runs" in r.stderr and "Estimated time" in r.stderr


def test_a_trailing_hash_in_a_txt_queue_is_prompt_text_and_said(tmp_path):
    f = _write(tmp_path / "p.txt", "# a comment line\na red apple # shiny\n  # indented comment\nblue sky\n")
    r = invoke("batch", str(f), "--dry-run")
    assert r.exit_code == 0, r.output
    rows = [line.split("\t") for line in r.stdout.splitlines()[1:]]
    assert [(row[1], row[2]) for row in rows] == [("p.txt:2", "a red apple # shiny"), ("p.txt:4", "blue sky")]
    assert "p.txt:2: the text after ' #' is part of the prompt" in r.output


def test_batch_id_and_row_show_in_runs_list_show_and_the_gallery(tiny_models, tmp_path):
    f = _write(tmp_path / "p.txt", "one\n")
    out = tmp_path / "out"
    r = invoke("batch", str(f), "--quiet", "--model", str(tiny_models["vqgan_yaml"]),
               "--clip-model", str(tiny_models["clip_json"]), "--clip-pretrained", str(tiny_models["clip_ckpt"]),
               "--size", "16x16", "--cutn", "2", "--steps", "2", "--save-every", "0", "--seed", "1", "-o", str(out))
    assert r.exit_code == 0, r.output
    [folder] = [p for p in out.iterdir() if p.name.startswith("batch-")]
    bid = folder.name.removeprefix("batch-")
    [run] = [p for p in out.iterdir() if (p / "details.json").is_file()]
    listed = invoke("runs", "list", "-o", str(out), "--json")
    assert listed.exit_code == 0 and json.loads(listed.stdout)[0]["batch"] == f"{bid} row 0", listed.output
    table = invoke("runs", "list", "-o", str(out))
    assert f"{bid} row 0" in table.stdout.replace("\n", ""), table.output
    shown = invoke("runs", "show", run.name, "-o", str(out))
    assert shown.exit_code == 0 and f"{bid} row 0" in shown.stdout, shown.output
    built = invoke("gallery", "build", "-o", str(out))
    assert built.exit_code == 0, built.output
    assert f"{bid} row 0" in (out / "index.html").read_text(encoding="utf-8")


@pytest.mark.parametrize("ref,code,says", [
    ("", 2, "--resume '': give a batch folder"), ("batch-", 2, "give a batch folder"), ("  ", 2, "give a batch folder"),
    ("x" * 5000, 2, "…': give a batch folder"), ("x" * 300, 1, "File name too long"), ("a\x00b", 2, "give a batch"),
    ("/dev/null", 1, "that is a file, not a batch folder"), ("nope", 1, "no batch 'nope'"),
])
def test_odd_resume_references_are_one_line(tmp_path, ref, code, says):
    out = tmp_path / "out"
    (out / "batch-20260101T000000-abcdef").mkdir(parents=True)
    (out / "batch-20260101T000000-abcdef" / "batch.json").write_text('{"rows": []}')  # the only batch: never guessed
    r = invoke("batch", "--resume", ref, "-o", str(out))
    assert r.exit_code == code, r.output
    line = one_error(r.output)
    assert says in line and len(line) < 300, line
