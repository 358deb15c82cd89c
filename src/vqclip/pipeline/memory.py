"""How much memory a run needs, estimated before anything is loaded: the model behind the run plan and the
`--dry-run` report (both in `vqclip.pipeline.budget`, with the device's budget they are weighed against).

The estimate is a model of measurements. Its exact part comes from tracing: the decoder and CLIP's image tower
are built on the meta device (no memory, no compute) and run once under `saved_tensors_hooks`, which counts every
byte autograd keeps for backward — for this model, size, cutn, dtype and low-memory mode, through the same lean
forwards a run uses. Its fitted part was calibrated on the CPU of the build machine with the real architectures
at random weights (`scripts/bench.py engine --modes ours,ours-lowmem --sizes 128,256,384,512`, cutn 32):

    peak RSS ≈ RUNTIME + weights + DEC_FACTOR · decoder saved + CLIP_FACTOR · CLIP saved (per chunk)
               + NNPACK workspace + cutouts + constant

RUNTIME is the interpreter with torch, open_clip and taming imported; the factors cover backward's scratch
(gradients in flight, allocator slack). On CUDA the same traced bytes count against the budget of
`budget.memory_budget` (free + the allocator's cache) with CUDA_LIBRARIES in place of the runtime term and
CUDA_SLACK on top; the checkpoint read of a first load goes to host RAM and is not charged to the GPU. The
factors are not calibrated on a GPU yet and use the CPU ones.

The load phase is estimated too (whole CLIP before its text tower is released, a first checkpoint load before
the decoder cache exists); the estimate is the larger of the two phases.

A CLIP ensemble (`--clip` more than once) counts every model's weights (a model named twice once) and
activations: all models' at once when the cutouts go through CLIP in one batch (one backward for the step),
the largest model's chunk when they go in chunks (each model takes each chunk in turn, freed after its
backward); each model after the first adds its own resized, normalised copy of the cutouts and its gradient.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

GiB = 2**30
MiB = 2**20

# --- calibration: least squares over 8 runs (128–512², normal and low-memory, cutn 32) of
# `scripts/bench.py engine --modes ours,ours-lowmem` on the 2-core build machine; every run within 4.2% of its
# measured peak RSS (in-sample). Traced bytes are multiplied by these factors: backward holds gradients and
# recomputed norms beside the saved tensors, and the allocator keeps some slack.
RUNTIME_CPU = 984 * MiB  # RSS of a process that imported torch (CUDA build), torchvision, open_clip, taming, vqclip
DEC_FACTOR = 1.17  # peak / traced decoder bytes
CLIP_FACTOR = 1.30  # peak / traced CLIP bytes (per chunk of cutouts)
NNPACK_WORKSPACE = 1.56  # NNPACK's kept workspace / (4 bytes · (C_in + C_out) · pixels) of its largest conv
STEP_OVERHEAD = 126 * MiB  # the fit's constant beyond the cutouts: small tensors, optimizer, allocator slack
SCRATCH_PER_PIXEL = 48  # bytes per output pixel: image, clamp, progress frame
CUTOUT_COPIES = 5  # cutouts alive at once: sampled, augmented, normalised, the CLIP input and its gradient
MEMBER_CUTOUT_COPIES = 3  # an ensemble's other models: their resized cutouts, normalised, and the gradient
LOW_MEMORY_CLIP_CHUNK = 8  # cutouts per CLIP forward+backward in low-memory mode
CPU_CLIP_CHUNK = 16  # on the CPU always: halves CLIP's activations at cutn 32, no measurable time cost
# CUDA: the context itself is already out of mem_get_info's `free` when the budget is read (pick_device's probe
# op created it), but cuBLAS/cuDNN handles and the kernels CUDA loads lazily at their first use are not, and live
# outside the caching allocator (measured elsewhere at 250–450 MiB); conv/matmul workspaces that cuDNN and
# cuBLAS ask the caching allocator for, and the allocator's fragmentation, grow with the tensors: a share.
CUDA_LIBRARIES = 400 * MiB  # device memory of cuBLAS/cuDNN handles and lazily loaded kernels, outside the allocator
CUDA_SLACK = 0.05  # share of the device bytes for cuDNN/cuBLAS workspaces and caching-allocator fragmentation


@dataclass(frozen=True)
class Estimate:
    """Estimated peak memory of one run, in bytes, by part."""

    device: str
    width: int
    height: int
    cutn: int
    low_memory: bool
    precision: str
    runtime: int
    weights: int
    decoder_activations: int
    clip_activations: int
    scratch: int
    load_phase: int
    workspace: int = 0  # NNPACK's convolution workspace (CPU, normal mode)
    slack: int = 0  # CUDA: CUDA_SLACK of the step's device bytes (library workspaces, fragmentation)

    @property
    def step_phase(self) -> int:
        return (self.runtime + self.weights + self.decoder_activations + self.clip_activations + self.scratch
                + self.workspace + self.slack)

    @property
    def total(self) -> int:
        return max(self.step_phase, self.load_phase)


@dataclass
class _Arch:
    """Traced facts about one model pair (cached: tracing takes a fraction of a second)."""

    decoder_weights: int
    codebook: int
    encoder_weights: int
    clip_visual_weights: int
    clip_total_weights: int
    clip_input: int
    clip_model: Any = field(repr=False)  # on the meta device
    trace_decoder: Callable[[int, int, Any, bool], int] = field(repr=False)
    clip_per_cutout: dict[Any, int] = field(default_factory=dict)  # traced bytes per cutout, by dtype


_ARCH_CACHE: dict[tuple[str, str], _Arch] = {}


# ------------------------------------------------------------------------------------------------- tracing
@contextlib.contextmanager
def count_saved() -> Any:
    """Count the bytes autograd saves for backward inside the block (parameters and their views excluded);
    the graph made inside cannot be run backward."""
    import torch

    total = [0]

    def pack(t: torch.Tensor) -> None:
        base = t._base if t._base is not None else t
        if not isinstance(base, torch.nn.Parameter) and not isinstance(t, torch.nn.Parameter):
            total[0] += t.numel() * t.element_size()
        # Keep nothing: a traced graph is never run backward, and handing back `t` itself would make a
        # reference cycle through C++ (an output saved by its own node) that Python's gc cannot free.
        return None

    def unpack(_: None) -> torch.Tensor:
        raise RuntimeError("a graph traced by vqclip.pipeline.memory.count_saved cannot be run backward")

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        yield total


def _nbytes(module: Any) -> int:
    if module is None:
        return 0
    return sum(p.numel() * p.element_size() for p in module.parameters()) + \
        sum(b.numel() * b.element_size() for b in module.buffers())


def _arch(spec: Any, clip_name: str) -> _Arch:
    key = (repr(spec), clip_name)
    if key in _ARCH_CACHE:
        return _ARCH_CACHE[key]
    import torch

    from vqclip.engine import decoder as lean
    from vqclip.engine.clip import quiet_logs, resolve_clip_name
    from vqclip.engine.vqgan import VQGAN

    with torch.device("meta"):
        vq = VQGAN(spec, with_encoder=True)
    vq.requires_grad_(False)
    import open_clip

    with quiet_logs(), contextlib.redirect_stdout(io.StringIO()):
        clip = open_clip.create_model(resolve_clip_name(clip_name), pretrained=None, device="meta")
    clip.requires_grad_(False)
    size = clip.visual.image_size
    size = int(size[0] if isinstance(size, (tuple, list)) else size)

    def trace_decoder(width: int, height: int, dtype: Any, low_memory: bool) -> int:
        f = spec.factor
        z = torch.empty(1, spec.embed_dim, height // f, width // f, device="meta", dtype=dtype,
                        requires_grad=True)
        if not lean.lean_supported(vq.decoder):
            with count_saved() as n:
                vq.decoder(vq.post_quant_conv(z))
            return n[0]
        with count_saved() as outer:
            h = lean.frozen_conv(vq.post_quant_conv, z)
            h = lean.frozen_conv(vq.decoder.conv_in, h)
        inside, inputs, largest = 0, 0, 0
        for fn, block in lean.stages(vq.decoder):
            inputs += h.numel() * h.element_size()
            with count_saved() as n:
                h = fn(block, h)
            inside += n[0]
            largest = max(largest, n[0])
        with count_saved() as tail:
            lean.frozen_conv(vq.decoder.conv_out, lean.norm_swish(vq.decoder.norm_out, h))
        fixed = outer[0] + tail[0]
        # low memory: only block inputs stay; backward recomputes one block at a time
        return fixed + (inputs + largest if low_memory else inside)

    arch = _Arch(
        decoder_weights=_nbytes(vq.decoder) + _nbytes(vq.post_quant_conv),
        codebook=vq.codebook.numel() * 4,
        encoder_weights=_nbytes(vq.encoder) + _nbytes(vq.quant_conv),
        clip_visual_weights=_nbytes(clip.visual),
        clip_total_weights=_nbytes(clip),
        clip_input=size,
        clip_model=clip,
        trace_decoder=trace_decoder,
    )
    _ARCH_CACHE[key] = arch
    return arch


def _clip_saved(arch: _Arch, cutn: int, dtype: Any) -> int:
    """Bytes CLIP's image tower keeps for backward for `cutn` cutouts (linear in cutn: traced at 2 cutouts)."""
    import torch

    if dtype not in arch.clip_per_cutout:
        from vqclip.engine import vit

        visual = arch.clip_model.visual
        s = arch.clip_input
        x = torch.empty(2, 3, s, s, device="meta", dtype=dtype, requires_grad=True)
        with count_saved() as n:
            if vit.lean_supported(visual):
                vit.encode_image(visual, x)
            else:
                visual(x)
        arch.clip_per_cutout[dtype] = n[0] // 2
    return arch.clip_per_cutout[dtype] * cutn


# ------------------------------------------------------------------------------------------------ estimate
def clip_chunk_for(device: Any, low_memory: bool, cutn: int) -> int:
    """Cutouts per CLIP forward+backward (0 = all at once). On the CPU, batches of 16 cost nothing measurable
    (256², 2 cores: 7.17 vs 7.42 s/step) and free ~350 MiB at cutn 32; low-memory mode goes down to 8."""
    chunk = LOW_MEMORY_CLIP_CHUNK if low_memory else (CPU_CLIP_CHUNK if str(device).startswith("cpu") else 0)
    return chunk if 0 < chunk < cutn else 0


def estimate(spec: Any, clip_name: str | Sequence[str], width: int, height: int, cutn: int, device: Any = "cpu",
             precision: Any = None, low_memory: bool = False, with_encoder: bool = False,
             first_load_bytes: int = 0, keep_encoder: bool = False) -> Estimate:
    """Estimated peak memory (bytes) of a run; `precision` is an `engine.precision.Precision` (None = fp32).
    `clip_name`: the CLIP model, or an ensemble's models (the first first). `first_load_bytes` (the whole
    checkpoint read before the decoder cache exists) counts on the CPU and MPS (unified memory), not on CUDA,
    where it sits in host RAM. `keep_encoder`: the encoder stays loaded while stepping (an animation), not only
    while loading."""
    import torch

    device = torch.device(device) if not isinstance(device, torch.device) else device
    names = [clip_name] if isinstance(clip_name, str) else list(clip_name)
    arch = _arch(spec, names[0])
    members = [arch] + [_arch(spec, name) for name in names[1:]]
    distinct = [_arch(spec, name) for name in dict.fromkeys(names)]  # a model named twice is loaded once
    dec_dt = getattr(precision, "decoder", None) or torch.float32
    clip_dt = getattr(precision, "clip", None) or torch.float32
    stored = getattr(precision, "weights", None)
    w_scale = torch.finfo(stored).bits / 32 if stored is not None else 1.0
    visual = sum(a.clip_visual_weights for a in distinct)
    weights = int((arch.decoder_weights + visual) * w_scale + arch.codebook)
    if keep_encoder:  # an animation re-encodes every frame: the encoder (fp32) stays through the steps
        weights += arch.encoder_weights
    dec = int(DEC_FACTOR * arch.trace_decoder(width, height, dec_dt, low_memory))
    chunked = clip_chunk_for(device, low_memory, cutn)
    saved = [_clip_saved(a, chunked or cutn, clip_dt) for a in members]
    clip = int(CLIP_FACTOR * (max(saved) if chunked else sum(saved)))
    cuda = device.type == "cuda"
    runtime = RUNTIME_CPU if device.type == "cpu" else CUDA_LIBRARIES if cuda else 0
    cutouts = CUTOUT_COPIES * cutn * 3 * arch.clip_input ** 2 * 4 + sum(
        MEMBER_CUTOUT_COPIES * cutn * 3 * a.clip_input ** 2 * 4 for a in members[1:])
    scratch = SCRATCH_PER_PIXEL * width * height + cutouts + (STEP_OVERHEAD if device.type == "cpu" else 0)
    workspace = 0
    if device.type == "cpu" and dec_dt == torch.float32 and not low_memory and torch.backends.nnpack.is_available():
        dd = spec.ddconfig
        c0 = dd["ch"] * dd["ch_mult"][0]
        c1 = dd["ch"] * dd["ch_mult"][min(1, len(dd["ch_mult"]) - 1)]
        workspace = int(NNPACK_WORKSPACE * 4 * (c0 + max(c0, c1)) * width * height)
    loaded = arch.decoder_weights + arch.codebook + sum(a.clip_total_weights for a in distinct) + (
        arch.encoder_weights if with_encoder else 0)
    slack = int(CUDA_SLACK * (weights + dec + clip + scratch + workspace)) if cuda else 0
    if cuda:  # the checkpoint is read into host RAM, then moved: only the weights reach the GPU
        load = runtime + int((1 + CUDA_SLACK) * loaded)
    else:
        load = runtime + loaded + first_load_bytes
    desc = precision.describe() if hasattr(precision, "describe") else "fp32"
    return Estimate(str(device), width, height, cutn, low_memory, desc, runtime, weights, dec, clip, scratch, load,
                    workspace, slack)


def largest_fitting(spec: Any, clip_name: str | Sequence[str], width: int, height: int, cutn: int, budget: int, device: Any,
                    precision: Any, low_memory: bool, **kw: Any) -> tuple[int, int] | None:
    """The largest size with the aspect ratio of `width`×`height` (multiples of the VQGAN factor) that fits."""
    f = spec.factor

    def size_at(scale: float) -> tuple[int, int]:
        return max(f, int(width * scale) // f * f), max(f, int(height * scale) // f * f)

    def fits(scale: float) -> bool:
        w, h = size_at(scale)
        return estimate(spec, clip_name, w, h, cutn, device, precision, low_memory, **kw).total <= budget

    lo = f / max(width, height)
    if not fits(lo):
        return None
    hi = lo
    while fits(hi * 2) and hi < 64:
        hi *= 2
    lo, hi = hi, hi * 2
    for _ in range(14):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return size_at(lo)


def fmt(n: int | float) -> str:
    return f"{n / GiB:.1f} GiB" if n >= GiB else f"{n / MiB:.0f} MiB"




__all__ = ["Estimate", "estimate", "largest_fitting", "clip_chunk_for", "count_saved", "fmt", "GiB", "MiB"]
