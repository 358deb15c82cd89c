"""The batch queue is a real queue: rows claimed atomically in the journal (two processes never run a row twice,
a dead process's claim is reclaimed, a reused pid is not mistaken for the claimant), a journal that is not one
is one line naming the file and the fix, and a stopped batch leaves no run folder the journal does not know."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clihelp import invoke
from vqclip.batch import rows as R
from vqclip.batch import start
from vqclip.batch.folder import BatchFolder
from vqclip.batch.journal import Journal
from vqclip.batch.owner import Owner, boot_id, start_ticks

VQCLIP = shutil.which("vqclip") or str(Path(sys.executable).parent / "vqclip")


def tiny(t: dict, out: Path, steps: str = "2") -> list[str]:
    return ["--model", str(t["vqgan_yaml"]), "--clip-model", str(t["clip_json"]),
            "--clip-pretrained", str(t["clip_ckpt"]), "--size", "16x16", "--cutn", "2", "--steps", steps,
            "--save-every", "0", "--seed", "1", "--output-dir", str(out)]


def batch_runs(out: Path) -> list[dict]:
    """details.json of every run folder made by a batch."""
    found = []
    for p in sorted(out.iterdir()):
        if (p / "details.json").is_file():
            d = json.loads((p / "details.json").read_text())
            if d.get("batch"):
                found.append(d)
    return found


def one_error(output: str) -> str:
    lines = [x for x in output.splitlines() if x.strip()]
    errors = [x for x in lines if x.startswith("Error:")]
    assert len(errors) == 1, output
    return errors[0]


# --------------------------------------------------------------------------------------- claims, liveness
def _claimer(path: str, out: "mp.Queue[list[int]]") -> None:
    journal = Journal(Path(path))
    got = []
    while (row := journal.claim_next("w")) is not None:
        got.append(row)
    out.put(got)


def test_claims_in_parallel_processes_take_each_row_once(tmp_path):
    path = tmp_path / "journal.sqlite"
    Journal(path, create=True).add_rows(300)
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_claimer, args=(str(path), results)) for _ in range(3)]
    for p in procs:
        p.start()
    got = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    claimed = [r for g in got for r in g]
    assert sorted(claimed) == list(range(300))  # every row once, none twice
    assert sum(1 for g in got if g) >= 1


def test_owner_liveness_tells_a_reused_pid_from_the_claimant():
    me = Owner.me()
    assert me.alive() and me.start == start_ticks(os.getpid())
    assert not Owner(me.pid, me.host, me.boot, (me.start or 0) + 12345).alive()  # same pid, another process
    assert not Owner(me.pid, me.host, "another-boot", me.start).alive()  # the machine rebooted since
    assert Owner(me.pid, "some-other-host", me.boot, me.start).alive()  # cannot be checked from here: kept
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        assert Owner(sleeper.pid, me.host, boot_id(), start_ticks(sleeper.pid)).alive()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not Owner(sleeper.pid, me.host, boot_id(), None).alive()
    assert Owner.from_text("not json") is None and Owner.from_text(me.to_text()) == me


def _make_batch(tmp_path: Path, t: dict, prompts: list[str]) -> tuple[BatchFolder, Path]:
    f = tmp_path / "p.txt"
    f.write_text("".join(p + "\n" for p in prompts))
    out = tmp_path / "out"
    rows = R.expand(f, overrides={"model": str(t["vqgan_yaml"]), "clip_model": str(t["clip_json"]),
                                  "clip_pretrained": str(t["clip_ckpt"]), "width": 16, "height": 16, "cutn": 2,
                                  "steps": 2, "save_every": 0, "seed": 1})
    folder, _ = start.open_batch(rows, str(f), start.Settings(output_dir=str(out)))
    return folder, out


def _hold(journal_path: Path, row: int, owner: Owner) -> None:
    db = sqlite3.connect(journal_path)
    db.execute("UPDATE entries SET status='running', attempts=1, worker='cpu', owner=? WHERE row=?",
               (owner.to_text(), row))
    db.commit()
    db.close()


def test_resume_leaves_a_live_claim_alone_and_reclaims_a_dead_one(tiny_models, tmp_path):
    folder, out = _make_batch(tmp_path, tiny_models, ["one", "two", "three"])
    journal_path = folder.path / "journal.sqlite"
    folder.close()
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        live = Owner(sleeper.pid, Owner.me().host, boot_id(), start_ticks(sleeper.pid))
        _hold(journal_path, 0, live)  # another batch process runs row 0
        me = Owner.me()
        _hold(journal_path, 1, Owner(me.pid, me.host, me.boot, (me.start or 0) + 999))  # dead; its pid reused
        r = invoke("batch", "--resume", str(folder.path), "-o", str(out), "--quiet")
        assert r.exit_code == 0, r.output
        assert f"row 0 is being run by process {sleeper.pid}" in r.output
        assert sorted(d["batch"]["row"] for d in batch_runs(out)) == [1, 2]  # row 0 left to its live owner
    finally:
        sleeper.kill()
        sleeper.wait()
    r = invoke("batch", "--resume", str(folder.path), "-o", str(out), "--quiet")  # its owner died: reclaimed
    assert r.exit_code == 0 and "3 done, 0 failed, 0 left" in r.output, r.output
    assert sorted(d["batch"]["row"] for d in batch_runs(out)) == [0, 1, 2]


def test_two_batch_commands_on_the_same_file_run_each_row_once(tiny_models, tmp_path):
    """Two `vqclip batch` processes started together on the same file: one batch, N rows, N runs."""
    f = tmp_path / "p.txt"
    f.write_text("".join(f"prompt number {i}\n" for i in range(4)))
    out = tmp_path / "out"
    args = [VQCLIP, "batch", str(f), "--quiet", *tiny(tiny_models, out, steps="3")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (o, e) in zip(procs, outputs):
        assert p.returncode == 0, o + e
        assert "Traceback" not in o + e
    runs = batch_runs(out)
    assert sorted(d["batch"]["row"] for d in runs) == [0, 1, 2, 3]  # N rows, N runs
    assert len({d["batch"]["id"] for d in runs}) == 1
    assert len([p for p in out.iterdir() if p.name.startswith("batch-")]) == 1


# ------------------------------------------------------------------------------------ journals that are not
def _garbage(path: Path) -> None:
    path.write_bytes(b"\x00\xffnot a database at all" * 40)


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:3000])


def _other_sqlite(path: Path) -> None:
    path.unlink()
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE photos (name TEXT)")
    db.commit()
    db.close()


def _newer(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value='99' WHERE key='schema'")
    db.commit()
    db.close()


def _folder(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def _wrong_rows(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("DELETE FROM entries WHERE row=1")
    db.commit()
    db.close()


@pytest.mark.parametrize("spoil,says", [
    (_garbage, "is not an SQLite database"), (_empty, "is empty"), (_truncated, "is damaged"),
    (_other_sqlite, "not a vqclip batch journal"), (_newer, "written by a newer vqclip (journal version 99"),
    (_folder, "is a directory"), (_fifo, "FIFO"), (_wrong_rows, "has 1 rows but"),
])
def test_a_journal_that_is_not_one_is_one_line(tiny_models, tmp_path, spoil, says):
    folder, out = _make_batch(tmp_path, tiny_models, ["one", "two"])
    path = folder.path / "journal.sqlite"
    folder.close()
    for side in path.parent.glob("journal.sqlite-*"):
        side.unlink()
    spoil(path)
    for ref in (str(folder.path), str(folder.path / "batch.json")):
        r = invoke("batch", "--resume", ref, "-o", str(out))
        assert r.exit_code == 1, r.output
        line = one_error(r.output)
        assert str(path) in line and says in line, line
        assert ("upgrade vqclip" in line) if spoil is _newer else ("move it away" in line), line
    r = invoke("batch", str(tmp_path / "p.txt"), "-o", str(out), "--seed", "1", "--size", "16x16", "--cutn", "2",
               "--steps", "2", "--save-every", "0", "--model", str(tiny_models["vqgan_yaml"]),
               "--clip-model", str(tiny_models["clip_json"]), "--clip-pretrained", str(tiny_models["clip_ckpt"]))
    assert r.exit_code == 1 and str(path) in one_error(r.output), r.output  # the same command line: not ignored
    assert not batch_runs(out)


def test_resume_of_a_file_that_is_not_a_batch(tmp_path):
    f = tmp_path / "notes.sqlite"
    f.write_bytes(b"hello")
    r = invoke("batch", "--resume", str(f), "-o", str(tmp_path / "out"))
    assert r.exit_code == 1 and "that is a file, not a batch folder" in one_error(r.output), r.output


def test_a_journal_moved_away_is_rebuilt_from_the_runs_on_disk(tiny_models, tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("one\ntwo\n")
    out = tmp_path / "out"
    r = invoke("batch", str(f), "--quiet", *tiny(tiny_models, out))
    assert r.exit_code == 0, r.output
    [folder] = [p for p in out.iterdir() if p.name.startswith("batch-")]
    (folder / "journal.sqlite").write_bytes(b"garbage")
    for side in folder.glob("journal.sqlite-*"):
        side.unlink()
    assert invoke("batch", "--resume", str(folder), "-o", str(out)).exit_code == 1
    (folder / "journal.sqlite").rename(folder / "journal.sqlite.bad")  # the fix the message names
    r = invoke("batch", "--resume", str(folder), "-o", str(out))
    assert r.exit_code == 0, r.output
    assert "rebuilt from batch.json" in r.output and "2 done, 0 failed, 0 left" in r.output
    assert len(batch_runs(out)) == 2  # nothing run again


def test_an_old_journal_is_migrated(tiny_models, tmp_path):
    """A journal from before claims (schema 1: the entries table alone) is brought up to date, not refused."""
    folder, out = _make_batch(tmp_path, tiny_models, ["one"])
    path = folder.path / "journal.sqlite"
    folder.close()
    path.unlink()
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE entries (row INTEGER PRIMARY KEY, status TEXT NOT NULL, attempts INTEGER NOT NULL "
               "DEFAULT 0, run_id TEXT, error TEXT, worker TEXT, started TEXT, finished TEXT, seconds REAL)")
    db.execute("INSERT INTO entries (row, status) VALUES (0, 'pending')")
    db.commit()
    db.close()
    journal = Journal(path)
    assert journal.counts()["pending"] == 1 and journal.claim_next("cpu") == 0
    journal.close()


# ------------------------------------------------------------------------------------------------- stops
def test_sigterm_keeps_the_row_in_progress_as_an_interrupted_run_the_journal_knows(tiny_models, tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("a long row\nanother row\n")
    out = tmp_path / "out"
    proc = subprocess.Popen([VQCLIP, "batch", str(f), "--quiet", *tiny(tiny_models, out, steps="5000")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    deadline = time.time() + 120
    while time.time() < deadline and not (out.exists() and [p for p in out.iterdir() if p.name.startswith(".tmp-")]):
        time.sleep(0.1)
    time.sleep(2.0)  # steps are being taken
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stdout + stderr
    assert "Traceback" not in stdout + stderr
    runs = batch_runs(out)
    assert [(d["batch"]["row"], d["status"]) for d in runs] == [(0, "interrupted")], stdout + stderr
    assert runs[0]["steps_done"] >= 1
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]
    [folder] = [p for p in out.iterdir() if p.name.startswith("batch-")]
    journal = Journal(folder / "journal.sqlite")
    assert journal.runs() == {runs[0]["id"]: (0, "interrupted")}  # no run folder the journal does not know
    assert journal.counts() == {"pending": 2, "running": 0, "done": 0, "failed": 0}
    journal.close()


@pytest.mark.slow
def test_sigterm_to_the_process_group_keeps_every_workers_row(tiny_models, tmp_path):
    """Two CPU worker processes; SIGTERM to the whole group (as a service manager sends it): the workers leave
    the stop to the driver, which has each save its row as an interrupted run, and exits 143."""
    f = tmp_path / "p.txt"
    f.write_text("row one\nrow two\nrow three\n")
    out = tmp_path / "out"
    proc = subprocess.Popen([VQCLIP, "batch", str(f), "--quiet", "--devices", "cpu,cpu",
                             *tiny(tiny_models, out, steps="5000")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and len([p for p in out.iterdir() if p.name.startswith(".tmp-")]
                                          if out.exists() else []) < 2:
        time.sleep(0.2)
    time.sleep(2.0)
    os.killpg(proc.pid, signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 143, stdout + stderr
    runs = batch_runs(out)
    assert sorted((d["batch"]["row"], d["status"]) for d in runs) == [(0, "interrupted"), (1, "interrupted")]
    [folder] = [p for p in out.iterdir() if p.name.startswith("batch-")]
    journal = Journal(folder / "journal.sqlite")
    assert set(journal.runs()) == {d["id"] for d in runs} and journal.counts()["pending"] == 3
    journal.close()
