"""Safe checkpoint loading: pickles that would run code are refused unread; the safetensors cache is bound to its
checkpoint; Net2NetTransformer checkpoints give their first stage."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from vqclip.weights import checkpoint as C
from vqclip.errors import UnsafeCheckpoint, VqclipError, WeightsMissing

MARKER_ENV = "VQCLIP_TEST_MARKER"


class RunsShell:
    """Unpickling this runs a shell command (what a malicious checkpoint would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def _make_state(marker: str) -> dict[str, Any]:
    Path(marker).write_text("ran")
    return {"state_dict": {"decoder.conv_in.weight": torch.ones(2, 2)}}


class RunsPython:
    """Unpickling this calls a Python function that leaves a marker and returns a usable state dict."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (_make_state, (str(self.marker),))


@pytest.mark.parametrize("fmt", ["zip", "legacy", "raw-pickle"])
def test_code_running_checkpoint_is_refused_without_running_it(tmp_path: Path, fmt: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    obj = {"state_dict": {"w": torch.zeros(1)}, "payload": RunsShell(marker)}
    if fmt == "raw-pickle":
        path.write_bytes(pickle.dumps(obj, protocol=2))
    else:
        torch.save(obj, path, _use_new_zipfile_serialization=fmt == "zip")
    with pytest.raises(UnsafeCheckpoint) as err:
        C.load_checkpoint(path)
    assert not marker.exists()
    assert "\n" not in err.value.message
    if fmt != "raw-pickle":
        assert f"--trust-checkpoint {path}" in err.value.message
    with pytest.raises(UnsafeCheckpoint):
        C.load_vqgan_state(path)
    assert not marker.exists() and not C.cache_path(path).exists()


def test_trusted_checkpoint_runs_its_code_and_loads(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "custom.ckpt"
    torch.save(RunsPython(marker), path)
    with pytest.raises(UnsafeCheckpoint):
        C.load_checkpoint(path)
    assert not marker.exists()
    state = C.load_checkpoint(path, trust=True)
    assert marker.exists() and set(state) == {"decoder.conv_in.weight"}


def test_trusted_load_is_not_cached(tmp_path: Path) -> None:
    path = tmp_path / "custom.ckpt"
    torch.save(RunsPython(tmp_path / "ran"), path)
    assert set(C.load_vqgan_state(path, trust=True)) == {"decoder.conv_in.weight"}
    assert not C.cache_path(path).exists()  # the next load must be trusted again
    with pytest.raises(UnsafeCheckpoint):
        C.load_vqgan_state(path)


def test_lightning_checkpoint_loads_safely_and_is_cached(tiny_models: dict[str, Path], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = tmp_path / "tiny.ckpt"
    shutil.copy(tiny_models["vqgan_ckpt"], ckpt)
    state = C.load_vqgan_state(ckpt)
    assert {k.split(".")[0] for k in state} == {"decoder", "encoder", "quantize", "quant_conv", "post_quant_conv"}
    assert not any(k.startswith("loss.") for k in state)
    assert C.cache_path(ckpt).exists()
    # Later loads come from the cache only: no pickle at all.
    monkeypatch.setattr(C, "load_checkpoint", lambda *a, **k: pytest.fail("the pickle was read again"))
    cached = C.load_vqgan_state(ckpt, keys=("decoder.", "quantize."))
    assert cached and all(k.startswith(("decoder.", "quantize.")) for k in cached)
    for k, v in cached.items():
        assert torch.equal(v, state[k])


def test_cache_is_ignored_when_the_checkpoint_changes(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    ckpt = tmp_path / "tiny.ckpt"
    shutil.copy(tiny_models["vqgan_ckpt"], ckpt)
    C.load_vqgan_state(ckpt)
    assert C.read_cache(ckpt, C.VQGAN_KEYS) is not None
    shutil.copy(tiny_models["gumbel_ckpt"], ckpt)  # a different file under the same name
    assert C.read_cache(ckpt, C.VQGAN_KEYS) is None
    state = C.load_vqgan_state(ckpt)
    assert "quantize.embed.weight" in state  # the gumbel layout, not the stale VQModel cache
    assert C.read_cache(ckpt, C.VQGAN_KEYS) is not None  # and the cache was rebuilt


def test_corrupt_cache_falls_back_to_the_checkpoint(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    ckpt = tmp_path / "tiny.ckpt"
    shutil.copy(tiny_models["vqgan_ckpt"], ckpt)
    C.cache_path(ckpt).parent.mkdir(parents=True, exist_ok=True)  # under VQCLIP_HOME: a path's folder is not ours
    C.cache_path(ckpt).write_bytes(b"not a safetensors file")
    assert "decoder.conv_in.weight" in C.load_vqgan_state(ckpt)


def test_net2net_checkpoint_gives_its_first_stage(tmp_path: Path) -> None:
    w = torch.randn(3, 3)
    state = {"first_stage_model.decoder.conv_in.weight": w,
             "first_stage_model.quantize.embedding.weight": torch.randn(4, 2),
             "first_stage_model.loss.discriminator.w": torch.randn(1),
             "cond_stage_model.decoder.conv_in.weight": torch.randn(5, 5),
             "transformer.tok_emb.weight": torch.randn(4, 4)}
    path = tmp_path / "sflckr.ckpt"
    torch.save({"state_dict": state}, path)
    out = C.load_vqgan_state(path)
    assert set(out) == {"decoder.conv_in.weight", "quantize.embedding.weight"}
    assert torch.equal(out["decoder.conv_in.weight"], w)


def test_not_a_vqgan_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "clip.pt"
    torch.save({"state_dict": {"visual.proj": torch.zeros(1)}}, path)
    with pytest.raises(VqclipError, match="no VQGAN decoder"):
        C.load_vqgan_state(path)
    with pytest.raises(WeightsMissing, match="not found"):
        C.load_vqgan_state(tmp_path / "nope.ckpt")


def test_engine_loads_through_the_cache(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    from vqclip.engine.vqgan import load_vqgan

    for name in ("vqgan", "gumbel"):
        yaml_path, ckpt = tmp_path / f"{name}.yaml", tmp_path / f"{name}.ckpt"
        shutil.copy(tiny_models[f"{name}_yaml"], yaml_path)
        shutil.copy(tiny_models[f"{name}_ckpt"], ckpt)
        first = load_vqgan(yaml_path, ckpt, with_encoder=True)
        second = load_vqgan(yaml_path, ckpt, with_encoder=True)  # from the safetensors cache
        assert C.cache_path(ckpt).exists()
        assert torch.equal(first.codebook, second.codebook)


def test_is_trusted_compares_files(tmp_path: Path) -> None:
    ckpt = tmp_path / "a.ckpt"
    ckpt.write_bytes(b"x")
    link = tmp_path / "link.ckpt"
    link.symlink_to(ckpt)
    other = tmp_path / "b.ckpt"
    other.write_bytes(b"x")
    assert C.is_trusted(ckpt, [str(ckpt)])
    assert C.is_trusted(ckpt, [link])
    assert not C.is_trusted(ckpt, [other, tmp_path / "missing.ckpt"])
    assert not C.is_trusted(ckpt, [])


@pytest.mark.slow
def test_benchmark_cache_runs(tmp_path: Path) -> None:
    """The benchmark lives in vqclip.bench.cache (`scripts/bench.py cache`), not in the library."""
    from vqclip.bench.cache import benchmark_cache

    out = benchmark_cache(tmp_path, repeats=1)
    assert out["ckpt_mb"] > 800 and out["cached_s"] < out["pickle_s"]
