"""What the benchmarks share: the real architectures at random weights loaded the way a run loads them, the
machine's description, memory and timing readings, plain-text tables and the JSON file.

Models: `random_weights` writes the packaged vqgan_imagenet_f16_16384 yaml beside a checkpoint of that
architecture at random weights (taming's own module initialisation, the codebook uniform in ±1/n_embed) in the
real file format, and loads it once so that its safetensors cache exists, as after a user's first run.
`load_random` then runs `vqclip.pipeline.load.load_run` on it, with open_clip's ViT-B-32-quickgelu at
`clip_pretrained=none`: the same resolving, precision choice, memory plan, model loading and prompt embedding as
`vqclip generate`. Nothing here prints: progress goes to a `say` callback, tables are returned as text.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import tempfile
from pathlib import Path
from typing import Any, Callable

MODEL = "vqgan_imagenet_f16_16384"
CLIP = "ViT-B-32-quickgelu"
PROMPT = "A sunny countryside with a Collie"
RANDOM_NAME = f"{MODEL}-random"  # the yaml + ckpt pair random_weights writes

Say = Callable[[str], None]


def quiet(_: str) -> None:
    """A `say` that says nothing."""


# ------------------------------------------------------------------------------------------- the machine
def machine() -> str:
    """The GPU's name when torch sees one, else the CPU cores and architecture."""
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name()
    except ImportError:  # pragma: no cover
        pass
    return f"{os.cpu_count()} CPU cores, {platform.machine()}"


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def rss_mb() -> float:
    """This process's resident memory now (MiB)."""
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:  # pragma: no cover
        return float("nan")


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a benchmark's subprocess: it imports the same vqclip as this process."""
    import vqclip

    here = str(Path(vqclip.__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH", "")
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (here, path) if p), **extra)


# ---------------------------------------------------------------------------------------------- output
def format_table(headers: list[str], rows: list[list[Any]], right: tuple[int, ...] = ()) -> str:
    """Columns padded to their widest cell (left-aligned; the columns numbered in `right` right-aligned)."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     .rstrip() for r in cells)


def write_json(data: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str))
    return path


def mark(value: float, met: bool) -> str:
    """A ratio with whether it meets its target: `0.45× ok` / `1.20× MISSED`."""
    return f"{value:.2f}× {'ok' if met else 'MISSED'}"


# ------------------------------------------------------------------------------- models at random weights
_FOLDER: Any = None  # this process's TemporaryDirectory for random_weights(None)


def random_weights(folder: str | Path | None = None, seed: int = 0) -> Path:
    """The yaml of the f16_16384 architecture at random weights in `folder` (written the first time: yaml,
    checkpoint with the encoder, and its safetensors cache). `folder=None`: a temporary folder kept for this
    process's lifetime."""
    global _FOLDER
    if folder is None:
        if _FOLDER is None:
            _FOLDER = tempfile.TemporaryDirectory(prefix="vqclip-bench-weights-")
        folder = _FOLDER.name
    folder = Path(folder)
    yaml_path, ckpt = folder / f"{RANDOM_NAME}.yaml", folder / f"{RANDOM_NAME}.ckpt"
    from vqclip.weights.checkpoint import cache_path

    if yaml_path.is_file() and ckpt.is_file() and cache_path(ckpt).is_file():
        return yaml_path
    import contextlib
    import io
    import shutil

    import torch
    from taming.modules.diffusionmodules.model import Decoder, Encoder

    from vqclip import engine
    from vqclip.testing import _lightning_callback_key, _save_with_fake_lightning
    from vqclip.weights.checkpoint import load_vqgan_state
    from vqclip.weights.registry import packaged_yaml
    from vqclip.weights.resolve import resolve_model

    folder.mkdir(parents=True, exist_ok=True)
    spec = engine.read_spec(packaged_yaml(MODEL))
    z_ch = spec.ddconfig["z_channels"]
    torch.manual_seed(seed)
    with contextlib.redirect_stdout(io.StringIO()):  # taming prints the z shape
        parts = {"encoder": Encoder(**spec.ddconfig), "decoder": Decoder(**spec.ddconfig),
                 "quant_conv": torch.nn.Conv2d(z_ch, spec.embed_dim, 1),
                 "post_quant_conv": torch.nn.Conv2d(spec.embed_dim, z_ch, 1)}
    state = {f"{p}.{k}": v for p, m in parts.items() for k, v in m.state_dict().items()}
    state["quantize.embedding.weight"] = torch.empty(spec.n_embed, spec.embed_dim).uniform_(-1, 1) / spec.n_embed
    del parts
    cb = _lightning_callback_key()
    partial = ckpt.with_name(ckpt.name + ".part")
    _save_with_fake_lightning({"epoch": 0, "global_step": 0, "state_dict": state,
                               "callbacks": {cb: {"best_model_score": None}}}, partial, cb)
    del state
    partial.replace(ckpt)
    shutil.copyfile(packaged_yaml(MODEL), yaml_path)
    resolve_model(str(yaml_path), weights_dir=folder, download=False)  # hashed once, into the folder's manifest,
    load_vqgan_state(ckpt)  # so the safetensors cache goes beside the checkpoint, as after a first run
    return yaml_path


def load_random(device: Any, width: int, height: int, cutn: int, *, weights: str | Path | None = None,
                precision: str = "auto", low_memory: bool | None = None, compile: bool = False,
                with_encoder: bool = False, described: str | None = None) -> Any:
    """`vqclip.pipeline.load.load_run` (a `LoadedRun`) for a run of the random-weight f16_16384 VQGAN and
    ViT-B-32-quickgelu (`clip_pretrained=none`) at width×height with `cutn` cutouts, seed 0; `weights`: the
    folder of `random_weights` (written there when missing). `described`: an exact precision as details.json
    records it (`Precision.describe()`, e.g. "decoder fp32, clip bf16, weights stored bf16"), taken as a
    continued run takes its parent's (`precision` must then be auto)."""
    from vqclip.config import build_config
    from vqclip.pipeline.load import load_run
    from vqclip.pipeline.request import Inputs

    yaml_path = random_weights(weights)
    cfg = build_config(None, {"model": str(yaml_path), "clip_model": CLIP, "clip_pretrained": "none",
                              "prompt": PROMPT, "width": width, "height": height, "cutn": cutn, "seed": 0,
                              "device": str(device), "precision": precision, "low_memory": low_memory,
                              "compile": compile, "save_every": 0})
    recorded = (str(getattr(device, "type", device)).split(":")[0], described) if described else None
    return load_run(cfg, Inputs(weights_dir=yaml_path.parent, download=False), note=quiet, used={},
                    with_encoder=with_encoder, recorded=recorded)


def run_info(run: Any, precision_asked: str) -> dict[str, Any]:
    """What a benchmark records of a loaded run: the precision, the memory plan and its estimate in MiB."""
    import dataclasses

    est = run.plan.estimate
    return {"precision": run.precision.describe(), "precision_asked": precision_asked,
            "low_memory": run.plan.low_memory, "clip_chunk": run.settings.clip_chunk,
            "estimate_mb": round(est.total / 2**20, 1),
            "estimate_parts_mb": {k: round(v / 2**20, 1) for k, v in dataclasses.asdict(est).items()
                                  if isinstance(v, int) and not isinstance(v, bool)
                                  and k not in ("width", "height", "cutn")}}
