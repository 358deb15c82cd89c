"""Shared fixtures: a redirected user dir (no test reads or writes the real cache) and tiny random models in the
real file formats (the real loading code runs, with no download)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def vqclip_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own VQCLIP_HOME; tests never touch the real cache or the network."""
    home = tmp_path_factory.mktemp("vqclip_home")
    monkeypatch.setenv("VQCLIP_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    return home


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny VQGANs (VQModel and GumbelVQ layouts, Lightning-style ckpts) and a tiny open_clip model, on disk."""
    from vqclip.testing import make_tiny_clip, make_tiny_vqgan

    folder = tmp_path_factory.mktemp("tiny_models")
    vq_yaml, vq_ckpt = make_tiny_vqgan(folder, "tiny_vq")
    gb_yaml, gb_ckpt = make_tiny_vqgan(folder, "tiny_gumbel", gumbel=True)
    clip_json, clip_ckpt = make_tiny_clip(folder, "tiny-clip")
    return {
        "folder": folder,
        "vqgan_yaml": vq_yaml,
        "vqgan_ckpt": vq_ckpt,
        "gumbel_yaml": gb_yaml,
        "gumbel_ckpt": gb_ckpt,
        "clip_json": clip_json,
        "clip_ckpt": clip_ckpt,
    }


os.environ.setdefault("OMP_NUM_THREADS", "2")


# ------------------------------------------------------------------------ seconds per test file (every run)
_SECONDS_PER_FILE: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Setup, call and teardown of every test, summed per test file."""
    path = report.nodeid.split("::", 1)[0]
    _SECONDS_PER_FILE[path] = _SECONDS_PER_FILE.get(path, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """A table of the seconds each test file took, slowest first, after every run (CI's log shows where the time
    goes)."""
    if not _SECONDS_PER_FILE:
        return
    rows = sorted(_SECONDS_PER_FILE.items(), key=lambda kv: (-kv[1], kv[0]))
    width = max(len(path) for path, _ in rows)
    terminalreporter.write_sep("-", "seconds per test file")
    for path, seconds in rows:
        terminalreporter.write_line(f"{path:<{width}}  {seconds:8.1f}")
    terminalreporter.write_line(f"{'total':<{width}}  {sum(_SECONDS_PER_FILE.values()):8.1f}")


_SLOW_LIST = Path(__file__).with_name("slow_tests.txt")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark slow the tests tests/slow_tests.txt names (before `-m 'not slow'` deselects by marker)."""
    names = [line.strip() for line in _SLOW_LIST.read_text(encoding="utf-8").splitlines()
             if line.strip() and not line.startswith("#")]
    for item in items:
        if any(item.nodeid == n or item.nodeid.startswith(n) for n in names):
            item.add_marker(pytest.mark.slow)
