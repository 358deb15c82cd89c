"""The benchmark package (`vqclip.bench`, behind `scripts/bench.py`) without running a benchmark: every module has
`run` and `report`, the reports still read the JSON recorded in benchmarks/, the engine's merging and ratios, the
worker's refusal without weights, the CPU features the precision benchmark records, and the dispatcher's
choices. (Running one needs the real architectures: `test_memory.py::test_estimate_predicts_measured_peak`.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vqclip.bench import BENCHMARKS, IN_ALL, benchmark
from vqclip.bench import engine as eng
from vqclip.bench.common import format_table, mark

ROOT = Path(__file__).resolve().parents[1]
RECORDED = sorted((ROOT / "benchmarks").glob("*.json"))


def test_every_benchmark_has_run_and_report():
    assert set(IN_ALL) < set(BENCHMARKS) and "precision" in BENCHMARKS and "precision" not in IN_ALL
    for name in BENCHMARKS:
        module = benchmark(name)
        assert callable(module.run) and callable(module.report), name
    with pytest.raises(ValueError, match="unknown benchmark 'nope'"):
        benchmark("nope")


@pytest.mark.parametrize("path", RECORDED, ids=[p.name for p in RECORDED])
def test_reports_read_the_recorded_results(path):
    data = json.loads(path.read_text())
    sections = {name: data[name] for name in BENCHMARKS if isinstance(data.get(name), dict)}
    if "n_runs" in data:  # the gallery bench's own file
        sections["gallery"] = data
    assert sections, f"{path.name} holds no benchmark's results"
    for name, section in sections.items():
        text = benchmark(name).report(section)
        assert text.strip() and "\n" in text or name == "cache", (name, text)


def test_merge_takes_the_median_of_every_timed_step_and_the_largest_peak():
    runs = [{"mode": "ours", "size": 64, "cutn": 2, "warmup": 1, "step_s": [9.0, 1.0, 3.0], "peak_rss_mb": 100.0},
            {"mode": "ours", "size": 64, "cutn": 2, "warmup": 1, "step_s": [9.0, 2.0, 5.0], "peak_rss_mb": 120.0},
            {"mode": "ours", "size": 64, "cutn": 2, "error": "exit 1: boom"}]
    merged = eng.merge(runs)
    assert merged["median_s"] == 2.5 and merged["peak_rss_mb"] == 120.0 and merged["repeats"] == 2
    assert eng.merge(runs[2:]) == runs[2]


def test_ratios_are_against_classic_at_the_same_size_and_cutn():
    results = [{"mode": "classic", "size": 64, "cutn": 2, "median_s": 2.0, "peak_rss_mb": 1000.0},
               {"mode": "ours", "size": 64, "cutn": 2, "median_s": 1.0, "peak_rss_mb": 600.0},
               {"mode": "ours", "size": 128, "cutn": 2, "median_s": 1.0, "peak_rss_mb": 600.0},
               {"mode": "ours-lowmem", "size": 64, "cutn": 2, "error": "x"}]
    [row] = eng.ratios(results)
    assert row == {"mode": "ours", "size": 64, "cutn": 2, "memory_ratio": 0.6, "time_ratio": 0.5,
                   "memory_met": False, "time_met": True}
    assert mark(0.5, True) == "0.50× ok" and mark(0.6, False) == "0.60× MISSED"


def test_table_aligns_columns():
    lines = format_table(["name", "s"], [["a", "1.5"], ["long name", "12.25"]], right=(1,)).splitlines()
    assert lines[1].endswith("  1.5") and lines[2] == "long name  12.25"
    assert len({len(ln) for ln in lines}) == 1


def test_the_worker_needs_the_weights_folder(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "vqclip.bench.worker", "--mode", "ours", "--out",
                           str(tmp_path / "r.json")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--weights is needed" in proc.stderr
    assert not (tmp_path / "r.json").exists()


def test_cpu_features_say_what_auto_picks():
    from vqclip.bench.precision import FLAGS, VARIANTS, cpu_features
    from vqclip.engine.precision import Precision

    f = cpu_features()
    assert set(f["flags"]) == set(FLAGS) and all(isinstance(v, bool) for v in f["flags"].values())
    assert Precision.parse(f["auto_picks"]).weights is not None  # frozen weights stored bf16 on every CPU
    described = {name: Precision.parse(text) for name, text in VARIANTS.items()}
    a, b = described.values()
    assert a.decoder is None and a.clip is not None and b.decoder == b.clip == a.clip


def test_the_dispatcher_lists_every_benchmark():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--help"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for name in (*BENCHMARKS, "all"):
        assert name in proc.stdout
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "nope"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "invalid choice: 'nope'" in proc.stderr
