"""`scripts/gpu_check.py` on the CPU: the one-line refusal without CUDA, and its pure helpers (`vqclip.bench.gpu`)
on fake inputs (bisection with a fake `fits`, pytest's summary line, profiler event names, the table and the
JSON)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


@pytest.fixture(scope="module")
def gc():
    from vqclip.bench import gpu

    return gpu


def test_without_cuda_it_exits_1_with_one_line():
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")  # no GPU even where there is one
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 1
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "needs a CUDA GPU" in lines[0], proc.stderr


def fake_fits(max_w: int, max_h: int | None = None):
    calls: list[tuple[int, int]] = []

    def fits(w: int, h: int) -> bool:
        calls.append((w, h))
        return w <= max_w and h <= (max_h if max_h is not None else max_w)

    return fits, calls


@pytest.mark.parametrize("limit", [16, 17, 48, 1000, 1328, 2160, 4095, 4096])
def test_bisection_finds_the_largest_square_in_16px_steps(gc, limit):
    fits, calls = fake_fits(limit)
    assert gc.largest_size(fits, 16, 4096) == (limit // 16 * 16,) * 2
    assert len(calls) <= 10  # 256 candidates: two ends + 8 halvings
    assert all(w % 16 == 0 and w == h for w, h in calls)


def test_bisection_edges(gc):
    fits, calls = fake_fits(8)
    assert gc.largest_size(fits, 16, 4096) is None and calls == [(16, 16)]
    fits, calls = fake_fits(10_000)
    assert gc.largest_size(fits, 16, 4096) == (4096, 4096) and len(calls) == 2
    fits, calls = fake_fits(2010)
    assert gc.largest_size(fits, 1328, 4096, lo_fits=True) == (2000, 2000)
    assert (1328, 1328) not in calls  # a smaller card's answer is not probed again
    fits, _ = fake_fits(1280, 720)
    assert gc.largest_size(fits, 16, 4096, aspect=16 / 9) == (1280, 720)


@pytest.mark.parametrize("text, counts", [
    ("....\n9 passed in 12.3s\n", {"passed": 9}),
    ("F.s\nFAILED tests/test_gpu.py::test_x - assert 1\n1 failed, 7 passed, 1 skipped, 631 deselected in 40.1s",
     {"failed": 1, "passed": 7, "skipped": 1, "deselected": 631}),
    ("9 skipped, 2 deselected, 1 warning in 5.62s", {"skipped": 9, "deselected": 2, "warnings": 1}),
    ("E\n1 error in 0.5s", {"errors": 1}),
    ("no tests ran in 0.01s", {}),
    ("ImportError: No module named pytest", {}),
])
def test_pytest_counts(gc, text, counts):
    assert gc.parse_pytest_counts(text) == counts


def test_profile_summary_counts_host_syncs_and_device_time(gc):
    events = [("aten::mm", False, 50.0), ("sm90_xmma_gemm_bf16", True, 400.0), ("cudaLaunchKernel", False, 5.0),
              ("aten::item", False, 30.0), ("cudaMemcpyAsync", False, 8.0),
              ("Memcpy DtoH (Device -> Pageable)", True, 2.0), ("cudaStreamSynchronize", False, 20.0)] * 5
    events += [("cudaDeviceSynchronize", False, 100.0), ("cudaMemcpy", False, 3.0), ("Memset (Device)", True, 1.0)]
    p = gc.summarise_profile(events, 0.004, 5)
    assert p["sync_calls"] == {"cudaStreamSynchronize": 5, "cudaDeviceSynchronize": 1, "cudaEventSynchronize": 0,
                               "cudaMemcpy": 1}
    assert p["syncs_per_step"] == 1.4 and p["dtoh_copies"] == 5
    assert p["device_ms"] == 2.01
    assert p["gpu_busy"] == pytest.approx(2011e-6 / 0.004, abs=1e-4) and p["s_per_step"] == 0.0008
    assert gc.summarise_profile([], 0.0, 0)["gpu_busy"] == 0.0


def test_table_report_and_json(gc, tmp_path):
    table = gc.format_table(["mode", "it/s"], [["fp32", 3.5], ["classic", None]])
    lines = table.splitlines()
    assert lines[0].split() == ["mode", "it/s"] and lines[1].split() == ["fp32", "3.5"] and lines[2] == "classic"
    assert lines[1].index("3.5") == lines[0].index("it/s")
    data = {"machine": "NVIDIA H100", "torch": "2.11", "seconds": 400.0,
            "config": {"size": 480, "cutn": 32, "warmup": 2, "steps": 10, "quick": False},
            "tests": {"rc": 1, "counts": {"passed": 8, "failed": 1}, "seconds": 60.0,
                      "failed": ["FAILED tests/test_gpu.py::test_x - boom"]},
            "bench": [{"name": "fp32", "precision": "fp32", "it_s": 4.1, "median_s": 0.244, "peak_mb": 3000.0,
                       "estimate_mb": 3500.0}, {"name": "bf16", "skipped": "compute capability 7.5 < 8.0"},
                      {"name": "fp16", "error": "exit 1: RuntimeError: x"}],
            "fit": {"rows": [{"card": "8 GiB", "largest": [1328, 1328], "peak_mb": 7000.0,
                              "model_largest": [1296, 1296]}, {"card": "12 GiB", "largest": None, "peak_mb": None,
                                                               "model_largest": None}],
                    "cutn": 32, "steps_per_probe": 2, "note": "capped",
                    "wide": {"size": [1280, 720], "fits": True, "peak_mb": 5000.0, "estimate_mb": 5600.0}},
            "profile": {"error": "RuntimeError: no CUPTI"}}
    text = gc.report(data)
    for part in ("NVIDIA H100", "FAILED tests/test_gpu.py::test_x", "compute capability 7.5", "1328x1328",
                 "1296x1296", "none", "1280x720 cutn 32: peak 5000.0 MiB", "profile: RuntimeError: no CUPTI"):
        assert part in text, text
    data["profile"] = gc.summarise_profile([("k", True, 800.0), ("cudaStreamSynchronize", False, 1.0)], 0.001, 1)
    data["profile"].update(size=480, cutn=32)
    data["fit"] = {"error": "RuntimeError: y"}
    text = gc.report(data)
    assert "GPU busy 80%" in text and "1.0 host syncs/step" in text and "fit: RuntimeError: y" in text
    path = gc.write_json(data, tmp_path / "deep" / "gpu-check.json")
    assert json.loads(path.read_text())["bench"][0]["it_s"] == 4.1
