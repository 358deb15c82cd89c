"""Transparent huge pages for torch's CPU tensors (`vqclip/hugepages.py`): set before torch loads, never forced."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from vqclip import hugepages


def _fresh(code: str, **env: str) -> str:
    """Run `code` in a fresh interpreter (this one has torch loaded already) and return its stdout."""
    clean = {k: v for k, v in os.environ.items() if k not in (hugepages.TORCH_ENV, hugepages.OPT_OUT_ENV)}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**clean, **env},
                       check=True)
    return p.stdout.strip()


ENABLE = "from vqclip import hugepages; import os; print(hugepages.enable(), os.environ.get('THP_MEM_ALLOC_ENABLE'))"


@pytest.mark.skipif(not (sys.platform.startswith("linux") and hugepages.kernel_allows()),
                    reason="needs Linux with transparent huge pages on request")
def test_enabled_before_torch_loads():
    assert _fresh(ENABLE) == "True 1"


def test_opt_out_and_explicit_setting_are_respected():
    assert _fresh(ENABLE, VQCLIP_HUGE_PAGES="0") == "False None"
    assert _fresh(ENABLE, THP_MEM_ALLOC_ENABLE="0") == "False 0"


def test_too_late_once_torch_is_loaded():
    code = "import torch; " + ENABLE
    assert _fresh(code) == "False None"


def test_kernel_that_refuses_huge_pages(tmp_path, monkeypatch):
    sysfs = tmp_path / "enabled"
    sysfs.write_text("always madvise [never]\n")
    monkeypatch.setattr(hugepages, "_SYSFS", sysfs)
    assert not hugepages.kernel_allows()
    sysfs.write_text("always [madvise] never\n")
    assert hugepages.kernel_allows()
    monkeypatch.setattr(hugepages, "_SYSFS", tmp_path / "missing")
    assert not hugepages.kernel_allows()


def test_the_vqclip_command_turns_it_on_before_torch(monkeypatch):
    """`vqclip.cli.main` calls `enable()` first; the CLI module itself does not load torch."""
    code = ("import sys; import vqclip.cli as c; print('torch' in sys.modules); "
            "import vqclip.hugepages as h; calls = []; h.enable = lambda: calls.append(1) or True; "
            "sys.argv = ['vqclip', '--help']\n"
            "try:\n    c.main()\nexcept SystemExit:\n    pass\nprint(calls)")
    out = _fresh(code).splitlines()
    assert out[0] == "False" and out[-1] == "[1]"
