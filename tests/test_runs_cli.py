"""`vqclip runs list` / `runs show` on hand-made run folders (no models, no torch)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from vqclip.cli import app

runner = CliRunner()
VQCLIP = shutil.which("vqclip") or str(Path(sys.executable).parent / "vqclip")


def make_run(out: Path, run_id: str, prompt: str, parent: str | None = None, root: str | None = None,
             stage: int = 1, status: str = "finished", steps: tuple[int, int, int] = (10, 10, 10),
             size: tuple[int, int] = (64, 48)) -> Path:
    folder = out / run_id
    folder.mkdir(parents=True)
    done, planned, total = steps
    d = {"schema": 1, "id": run_id, "created": "2026-11-25T10:15:00+00:00", "status": status, "prompt": prompt,
         "config": {"prompt": prompt, "width": size[0], "height": size[1], "cutn": 8, "lr": 0.1},
         "seed": 7, "size": list(size), "steps_done": done, "steps_planned": planned, "global_step": total,
         "losses": [0.9, 0.8], "parent": parent, "root": root or run_id, "stage": stage,
         "weights": {"name": "tiny", "sha256": "ab" * 32},
         "files": {"image": "output.png", "video": "anim.mp4", "state": "state.pt"}}
    (folder / "details.json").write_text(json.dumps(d))
    return folder


A, B, C, D = ("20261125T101500-aaaaaaaa", "20261125T101600-bbbbbbbb", "20261125T101700-cccccccc",
              "20261125T101800-dddddddd")


def chain(out: Path) -> None:
    make_run(out, A, "Backyard in spring")
    make_run(out, B, "Backyard in [bold]summer[/]", parent=A, root=A, stage=2, steps=(10, 10, 20))
    make_run(out, C, "Backyard in autumn", parent=B, root=A, stage=3, status="interrupted", steps=(4, 10, 24))
    make_run(out, D, "a lone run", size=(480, 480))


def test_list_newest_first_with_every_column(tmp_path):
    out = tmp_path / "output"
    chain(out)
    (out / ".tmp-20261125T101900-eeeeeeee").mkdir()  # a run being written is not listed
    bad = out / "20261125T102000-broken00"
    bad.mkdir()
    (bad / "details.json").write_text("{")
    r = runner.invoke(app, ["runs", "list", "--output-dir", str(out)], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].split() == ["id", "time", "status", "steps", "size", "prompt", "parent"]
    assert [ln.split()[0] for ln in lines[1:5]] == [D, C, B, A]
    assert "480x480" in lines[1] and "2026-11-25" in lines[1]
    assert "interrupted" in lines[2] and "24 (4/10)" in lines[2] and lines[2].rstrip().endswith(B)
    assert "Backyard in [bold]summer[/]" in lines[3]  # prompts are shown as written, not as markup
    assert "1 folder skipped" in r.output and "details.json is corrupt" in r.output


def test_list_json(tmp_path):
    out = tmp_path / "output"
    chain(out)
    r = runner.invoke(app, ["runs", "list", "--json", "-o", str(out)])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert [x["id"] for x in rows] == [D, C, B, A]
    c = rows[1]
    assert {k: c[k] for k in ("status", "steps", "steps_done", "size", "prompt", "parent", "root", "stage")} == {
        "status": "interrupted", "steps": 24, "steps_done": 4, "size": "64x48", "prompt": "Backyard in autumn",
        "parent": B, "root": A, "stage": 3}
    assert set(rows[0]) >= {"id", "time", "status", "steps", "size", "prompt", "parent"}
    r = runner.invoke(app, ["runs", "list", "--json", "-n", "1", "-o", str(out)])
    assert [x["id"] for x in json.loads(r.stdout)] == [D]


def test_list_empty(tmp_path):
    r = runner.invoke(app, ["runs", "list", "-o", str(tmp_path / "none")])
    assert r.exit_code == 0 and "No runs" in r.output


def test_show_details_lineage_and_children(tmp_path):
    out = tmp_path / "output"
    chain(out)
    r = runner.invoke(app, ["runs", "show", B[:18], "-o", str(out)], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert f"id:            {B}" in r.output and "Backyard in [bold]summer[/]" in r.output
    assert "10 of 10 planned; image total 20" in r.output and "sha256 abababababab" in r.output
    lineage = r.output.split("Lineage")[1].split("Continued by")[0]
    assert lineage.index(A) < lineage.index(B) and f"→ {B}" in lineage
    assert C in r.output.split("Continued by")[1]
    r = runner.invoke(app, ["runs", "show", C, "--json", "-o", str(out)])
    data = json.loads(r.stdout)
    assert [x["id"] for x in data["lineage"]] == [A, B, C] and data["children"] == []
    assert data["prompt"] == "Backyard in autumn"


def test_show_follows_a_path_and_reports_bad_refs(tmp_path):
    out = tmp_path / "output"
    chain(out)
    r = runner.invoke(app, ["runs", "show", str(out / C)])
    assert r.exit_code == 0 and A in r.output
    r = runner.invoke(app, ["runs", "show", "zzz", "-o", str(out)])
    assert r.exit_code == 1 and f"newest runs: {D}, {C}, {B}, {A}" in r.output
    r = runner.invoke(app, ["runs", "show", "20261125T10", "-o", str(out)])
    assert r.exit_code == 1 and "ambiguous" in r.output


def test_installed_script_lists_runs_without_importing_torch(tmp_path):
    out = tmp_path / "output"
    chain(out)
    code = ("import sys, json; from typer.testing import CliRunner; from vqclip.cli import app; "
            f"r = CliRunner().invoke(app, ['runs', 'show', '{C}', '-o', {str(out)!r}]); "
            f"r2 = CliRunner().invoke(app, ['runs', 'list', '-o', {str(out)!r}]); "
            "assert r.exit_code == 0 and r2.exit_code == 0, r.output + r2.output; "
            "print('torch' in sys.modules)")
    probe = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "False"
    done = subprocess.run([VQCLIP, "runs", "list", "--json", "-o", str(out)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert [x["id"] for x in json.loads(done.stdout)] == [D, C, B, A]


def test_run_ids_sort_in_creation_order_within_one_second():
    """Chain stages on a fast machine are made within the same second; their folder names must still sort."""
    from datetime import datetime

    from vqclip.runs import is_run_id, new_run_id

    ids = [new_run_id() for _ in range(200)]
    assert all(is_run_id(i) for i in ids)
    assert sorted(ids) == ids and len(set(ids)) == len(ids)
    fixed = datetime(2026, 11, 25, 10, 15, 0, 42_900)
    assert new_run_id(fixed).startswith("20261125T101500-042")
