"""One run, end to end: config → weights → models → engine session → run folder.

This is the glue between the pure engine and the CLI: it resolves files, loads images, drives the session and
records everything in a run folder (written under a temporary name, renamed at the end). It prints nothing
itself: notes and progress go to a `Reporter` supplied by the caller (the CLI's Rich one, or a silent one).
"""

from __future__ import annotations

import contextlib
import io
import json
import platform
import secrets
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from vqclip import __version__
from vqclip.config import RunConfig
from vqclip.errors import VqclipError, one_line
from vqclip.record import DETAILS, IMAGE, STATE, VIDEO, Clip, Continued, Files, RunRecord, Timings, Weights, now_iso
from vqclip.runs import RunFolder

MAX_IMAGE_BYTES = 64 * 1024 * 1024


class Reporter:
    """Silent by default; the CLI subclasses it with Rich output."""

    def note(self, message: str) -> None:  # one-line notices (size floored, downloads, …)
        pass

    def transfer(self) -> Any:  # a vqclip.weights.download.Progress for downloads and hashing; None: silent
        return None

    def start(self, total: int, run_id: str) -> None:
        pass

    def step(self, info: Any) -> None:
        pass

    def end(self) -> None:
        pass


@dataclass
class RunRequest:
    config: RunConfig
    output_dir: Path = Path("output")
    weights_dir: Path | None = None
    download: bool = True
    trusted: list[Path] = field(default_factory=list)
    should_stop: Callable[[], bool] | None = None
    # chaining (vqclip continue / --then): set by the caller
    parent: str | None = None
    root: str | None = None
    stage: int = 1
    state: dict[str, Any] | None = None  # a saved engine state to continue from
    start_image: Any = None  # a PIL image to encode as the start (continuing from a PNG, or stretch)
    continued: Continued | None = None  # how a continued run starts (details.json "continue")
    # (device type, recorded precision) of the parent: a continued run on the same kind of device computes in
    # the dtypes its parent did, unless --precision says otherwise
    inherit_precision: tuple[str, str] | None = None
    run_id: str | None = None
    # (models, settings, state, start_image) -> the state to start from; lets `continue` adapt a saved state to
    # the loaded models (new grid size, re-encoded start) without loading the models twice
    prepare_state: Callable[[Any, Any, dict[str, Any] | None, Any], dict[str, Any] | None] | None = None


@dataclass
class RunOutcome:
    id: str
    path: Path
    status: str
    steps_done: int
    global_step: int
    record: RunRecord  # what details.json holds

    @property
    def details(self) -> dict[str, Any]:
        """details.json as written (the record's on-disk JSON)."""
        return self.record.model_dump(mode="json")


def versions() -> dict[str, str]:
    import torch

    try:
        import open_clip

        oc = getattr(open_clip, "__version__", "unknown")
    except ImportError:  # pragma: no cover
        oc = "missing"
    return {"vqclip": __version__, "torch": torch.__version__, "open_clip": oc,
            "python": platform.python_version()}


def open_image(ref: str, what: str) -> tuple[Any, bytes, str]:
    """Read an image file (or http(s) URL) fully; any problem is one line naming the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        if ref.startswith(("http://", "https://")):
            with urllib.request.urlopen(ref, timeout=30) as resp:  # noqa: S310 (user-given URL)
                data = resp.read(MAX_IMAGE_BYTES + 1)
        else:
            path = Path(ref).expanduser()
            if not path.is_file():
                from vqclip.files import path_problem

                problem = path_problem(path)  # a directory, a FIFO (never opened: it would wait), a device…
                problem = "not found" if problem in (None, "does not exist") else problem
                raise VqclipError(f"{what} {ref} {problem}; check the path")
            if path.stat().st_size > MAX_IMAGE_BYTES:  # before reading it all into memory
                raise VqclipError(f"{what} {ref} is larger than 64 MiB; use a smaller image")
            data = path.read_bytes()
        if len(data) > MAX_IMAGE_BYTES:
            raise VqclipError(f"{what} {ref} is larger than 64 MiB; use a smaller image")
        img = Image.open(io.BytesIO(data))
        img.load()
        img = img.convert("RGB")
    except VqclipError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        reason = "not an image Pillow can read" if isinstance(e, UnidentifiedImageError) else str(e)[:120]
        raise VqclipError(f"cannot read {what} {ref} ({reason}); give a PNG, JPEG or WebP file") from None
    suffix = Path(ref.split("?")[0]).suffix.lower()
    return img, data, suffix if suffix in (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff") else ".png"


def png_bytes(image: Any, text: dict[str, str]) -> bytes:
    """Encode the final image as PNG with text chunks carrying the prompt and parameters."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    from vqclip.pipeline.media import to_uint8

    info = PngInfo()
    for k, v in text.items():  # a lone surrogate (no UTF-8 for it) goes in as its escape, `\udcff`
        info.add_itxt(k, v.encode("utf-8", "backslashreplace").decode("utf-8"))
    buf = io.BytesIO()
    Image.fromarray(to_uint8(image)).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def image_parameters(config: RunConfig, seed: int, global_step: int, size: tuple[int, int]) -> dict[str, str]:
    """PNG text chunks. They describe the *image* (total steps, resolved size), not the run, so an image reached
    by a chain of runs carries the same bytes as one reached by a single run with the same settings."""
    params = config.model_dump(mode="json")
    params.update({"seed": seed, "steps": global_step, "width": size[0], "height": size[1]})
    for k in ("save_every", "fps", "device", "compile", "low_memory"):
        params.pop(k, None)
    return {"prompt": config.prompt, "parameters": json.dumps(params, sort_keys=True),
            "Software": f"vqclip {__version__}"}


def _is_trusted(ckpt: Path, trusted: list[Path]) -> bool:
    try:
        target = ckpt.resolve()
        return any(Path(t).expanduser().resolve() == target for t in trusted)
    except OSError:
        return False


OOM_SHRINK = 0.75  # an out-of-memory run is told of a size with this share of its pixels (activations ∝ pixels)
_OOM_TEXT = ("CUDA out of memory", "MPS backend out of memory", "CUDA error: out of memory",
             "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED")


def is_out_of_memory(exc: BaseException) -> bool:
    """A device allocation failed: torch.OutOfMemoryError (torch >= 2.5; torch.cuda.OutOfMemoryError before), or
    the RuntimeError older torch raises on MPS and cuBLAS/cuDNN raise when their workspace cannot be had."""
    import torch

    kinds = tuple(k for k in (getattr(torch, "OutOfMemoryError", None),
                              getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)) if isinstance(k, type))
    if kinds and isinstance(exc, kinds):
        return True
    return isinstance(exc, RuntimeError) and any(t in str(exc) for t in _OOM_TEXT)


def _free_after_oom(exc: BaseException, session: Any, device: Any) -> None:
    """Let go of what the failed step held (its frames' tensors, the gradients) and hand the device's cache back,
    so the last good latent can still be decoded and saved."""
    import gc
    import traceback

    from vqclip.pipeline import budget

    traceback.clear_frames(exc.__traceback__)  # the frames of the step: activations, cutouts, losses
    if session is not None:
        opt = getattr(session, "opt", None)
        if opt is not None:
            opt.zero_grad(set_to_none=True)
        if getattr(session, "z", None) is not None:
            session.z.grad = None
    gc.collect()
    budget.release_device_cache(device)


def _smaller_size(width: int, height: int, factor: int) -> tuple[int, int] | None:
    """The size with OOM_SHRINK of the pixels (same aspect, multiples of the VQGAN factor), if smaller."""
    scale = OOM_SHRINK ** 0.5
    w, h = max(factor, int(width * scale) // factor * factor), max(factor, int(height * scale) // factor * factor)
    if (w, h) == (width, height):
        return None
    return w, h


def _oom_message(device: Any, width: int, height: int, cutn: int, low_memory: bool, factor: int) -> str:
    """One line: where it ran out, and what to lower (not --low-memory when the run already used it)."""
    mode = " in low-memory mode" if low_memory else ""
    head = f"the GPU ({device}) ran out of memory at {width}x{height} with cutn {cutn}{mode}"
    tips = [] if low_memory else ["pass --low-memory"]
    smaller = _smaller_size(width, height, factor)
    if smaller:
        tips.append(f"try --size {smaller[0]}x{smaller[1]}")
    if cutn > 1:
        tips.append(f"lower --cutn (e.g. {max(1, cutn // 2)})")
    if not tips:  # the smallest run there is
        tips.append("free the memory other programs hold on it, or use --device cpu")
    return f"{head}; {', '.join(tips[:-1])}{' or ' if len(tips) > 1 else ''}{tips[-1]}"


def _load_oom_message(device: Any, cfg: RunConfig, plan: Any) -> str:
    from vqclip.pipeline.memory import fmt

    budget = f", {fmt(plan.budget)} was free" if plan.budget is not None else ""
    return (f"the GPU ({device}) ran out of memory while loading {cfg.model} + {cfg.clip_model} and embedding "
            f"the prompts (about {fmt(plan.estimate.load_phase)} estimated{budget}); close other programs using "
            "the GPU, pick a smaller --clip-model, or use --device cpu")


def _salvage(session: Any, exc: BaseException) -> Any:
    """After an error mid-run (not Ctrl-C), the steps already done are worth a `failed` run folder."""
    partial = getattr(session, "partial", None)
    if isinstance(exc, KeyboardInterrupt) or not isinstance(exc, Exception) or partial is None \
            or partial.steps_done == 0:
        return None
    try:
        partial.image = session.image()
    except Exception:
        return None
    return partial


def execute(req: RunRequest, reporter: Reporter | None = None) -> RunOutcome:
    """Do one run and leave a complete run folder (finished, interrupted or failed), or nothing at all. The
    device's cached memory goes back to the driver at the end, so runs in one process do not pile up."""
    import traceback

    from vqclip.pipeline import budget

    used: dict[str, Any] = {}
    try:
        return _execute(req, reporter or Reporter(), used)
    except BaseException as exc:
        if isinstance(exc, VqclipError) or is_out_of_memory(exc):  # one line for the user: the frames can go
            traceback.clear_frames(exc.__traceback__)
        raise
    finally:
        budget.release_device_cache(used.get("device"))


def _execute(req: RunRequest, rep: Reporter, used: dict[str, Any]) -> RunOutcome:
    from vqclip import engine
    from vqclip.engine.loop import BadState
    from vqclip.state import save_state
    from vqclip.pipeline import budget
    from vqclip.engine.precision import Precision, choose_precision
    from vqclip.prompts import floor_size
    from vqclip.pipeline.media import VideoWriter
    from vqclip.pipeline.settings import settings_from_config
    from vqclip.weights.resolve import resolve_model

    cfg = req.config
    t_start = time.perf_counter()
    seed = cfg.seed if cfg.seed is not None else secrets.randbelow(2**31)

    # Inputs first: a bad image should fail in a second, not after loading a gigabyte.
    init = open_image(cfg.init_image, "init image") if cfg.init_image and req.state is None \
        and req.start_image is None else None
    image_prompts = [(open_image(spec.path, "image prompt"), spec) for spec in cfg.image_prompt_specs]

    files = resolve_model(cfg.model, weights_dir=req.weights_dir, download=req.download, note=rep.note,
                          progress=rep.transfer())
    spec = engine.read_spec(files.yaml_path)
    width, height = floor_size(cfg.width, cfg.height, spec.factor)
    if (width, height) != (cfg.width, cfg.height):
        rep.note(f"size {cfg.width}x{cfg.height} floored to {width}x{height} "
                 f"(a multiple of {spec.factor}, this model's downsampling factor)")
    device = engine.pick_device(cfg.device, on_fallback=rep.note)
    used["device"] = device
    start_image = req.start_image if req.start_image is not None else (init[0] if init else None)
    # Memory: refuse up front a run that will not fit (naming the largest size that would), and switch
    # low-memory mode on when the estimate says so (vqclip.pipeline.budget); per-module precision (engine.precision).
    precision = choose_precision(cfg.precision, device)
    if req.inherit_precision is not None and cfg.precision == "auto" and req.inherit_precision[0] == device.type:
        with contextlib.suppress(ValueError):
            precision = Precision.parse(req.inherit_precision[1])
    precision.apply(device)
    plan = budget.plan_run(cfg, spec, width, height, device, precision, with_encoder=start_image is not None,
                           first_load_bytes=budget.first_load_bytes(files.ckpt_path))
    if plan.note:
        rep.note(plan.note)
    settings = settings_from_config(cfg, width=width, height=height, seed=seed, autocast_dtype=precision.decoder,
                                    clip_autocast_dtype=precision.clip, loss_scale=precision.loss_scale,
                                    low_memory=plan.low_memory, clip_chunk=plan.clip_chunk)
    t_load = time.perf_counter()
    models = prompts = None
    try:
        models = engine.load_models(files.yaml_path, files.ckpt_path, cfg.clip_model, cfg.clip_pretrained, device,
                                    with_encoder=start_image is not None,
                                    trust=_is_trusted(files.ckpt_path, req.trusted))
        prompts = engine.build_prompts(models, settings, cfg.text_prompts,
                                       [(img, spec_) for (img, _, _), spec_ in image_prompts],
                                       cfg.noise_prompt_specs)
    except BaseException as exc:
        if not is_out_of_memory(exc):
            raise
        models = prompts = None
        _free_after_oom(exc, None, device)
        raise VqclipError(_load_oom_message(device, cfg, plan)) from None
    load_s = time.perf_counter() - t_load

    def oom_text() -> str:
        return _oom_message(device, width, height, cfg.cutn, plan.low_memory, spec.factor)

    folder = RunFolder(req.output_dir, req.run_id).create()
    created = now_iso()
    run_files = Files(image=IMAGE, state=STATE)
    try:  # copies of the input images; a write that fails (a full disk) leaves no folder
        if init is not None:
            run_files.init_image = f"init{init[2]}"
            folder.write(run_files.init_image, init[1])
        for i, ((_, data, suffix), _) in enumerate(image_prompts):
            run_files.image_prompts.append(f"image_prompt_{i}{suffix}")
            folder.write(run_files.image_prompts[-1], data)
    except BaseException as exc:
        folder.discard()
        if isinstance(exc, OSError):
            raise folder.write_failed(exc) from None
        raise
    session = None
    video = VideoWriter(folder.file(VIDEO), cfg.fps)
    result = None
    error: str | None = None
    failure: BaseException | None = None
    t_run = time.perf_counter()
    try:
        state = req.state
        if req.prepare_state is not None:
            state = req.prepare_state(models, settings, state, start_image)
        try:
            session = engine.start_session(models, settings, prompts, init_image=start_image, state=state)
        except BadState as e:  # load_state checks a state file up front; this is what it cannot foresee
            raise VqclipError(f"the saved state of {req.parent or 'the run'} cannot be used here: {e}; continue "
                              f"with --resize stretch to start from its {IMAGE} instead") from None
        for note in session.notes:
            rep.note(note)
        budget.prepare_for_steps(models, plan)  # text tower and encoder freed, weights stored as planned
        last_frame_step = [-1]

        def on_step(info: Any) -> None:
            if info.frame is not None:
                video.append(info.frame)
                last_frame_step[0] = info.frame_step
            rep.step(info)

        rep.start(cfg.steps, folder.id)
        t_run = time.perf_counter()
        try:
            result = session.run(cfg.steps, on_step, req.should_stop)
        finally:
            rep.end()
        run_s = time.perf_counter() - t_run
        if cfg.compile and session.compile_error:
            rep.note(f"--compile fell back to eager mode ({session.compile_error})")
        if result.skipped_steps:
            rep.note(f"{len(result.skipped_steps)} step(s) not applied because the loss or gradient was not finite "
                     f"({precision.describe()}); if many are, try --precision fp32")
        if last_frame_step[0] != result.global_step:
            video.append(result.image)
        status = "interrupted" if result.stopped else "finished"
    except BaseException as exc:
        oom = is_out_of_memory(exc)
        if oom:  # free the failed step's tensors first: decoding the last good latent needs the room
            _free_after_oom(exc, session, device)
        result = _salvage(session, exc)
        if result is None:  # nothing worth keeping: leave no folder at all
            video.close()
            folder.discard()
            if oom:
                raise VqclipError(oom_text()) from None
            raise
        failure = exc
        status = "failed"
        error = one_line(exc)
        run_s = time.perf_counter() - t_run

    try:  # finishing touches; any failure here still leaves no half-written run folder
        video_path = video.close()
        if video.error:
            rep.note(f"no progress video ({video.error})")
        folder.write(IMAGE, png_bytes(result.image, image_parameters(cfg, seed, result.global_step, (width, height))))
        save_state(folder.file(STATE), session.state_dict())
        steps_timed = result.step_seconds[1:] or result.step_seconds
        run_files.video = VIDEO if video_path else None
        record = RunRecord(
            id=folder.id, created=created, finished=now_iso(), status=status, error=error, prompt=cfg.prompt,
            config=cfg.model_dump(mode="json"), seed=seed, size=(width, height), steps_done=result.steps_done,
            steps_planned=cfg.steps, global_step=result.global_step,
            losses=[round(x, 6) for x in result.losses],  # not finite (an overflow): recorded as null
            skipped_steps=result.skipped_steps,
            timings=Timings(load_s=round(load_s, 3), run_s=round(run_s, 3),
                            total_s=round(time.perf_counter() - t_start, 3),
                            per_step_s=round(sorted(steps_timed)[len(steps_timed) // 2], 4) if steps_timed else None),
            device=str(device), precision=precision.describe(), low_memory=plan.low_memory,
            memory_estimate_mb=round(plan.estimate.total / 2**20), versions=versions(),
            weights=Weights(name=files.name, sha256=files.sha256, source=files.source, path=str(files.ckpt_path)),
            clip=Clip(model=models.clip.name, pretrained=cfg.clip_pretrained),
            parent=req.parent, root=req.root or folder.id, stage=req.stage, files=run_files, continue_=req.continued)
        folder.write_record(record)
        path = folder.commit()
    except BaseException as exc:
        folder.discard()
        if isinstance(exc, OSError):  # a full disk, a folder gone read-only: one line naming the run
            raise folder.write_failed(exc) from None
        raise
    if failure is not None:
        what = oom_text() if is_out_of_memory(failure) \
            else f"the run failed at step {result.global_step + 1} ({error})"
        raise VqclipError(f"{what}; the {result.steps_done} steps done were saved as run {folder.id} "
                          f"(status failed), and `vqclip continue {folder.id}` picks them up") from None
    return RunOutcome(folder.id, path, status, result.steps_done, result.global_step, record)


__all__ = ["Reporter", "RunRequest", "RunOutcome", "execute", "open_image", "png_bytes", "image_parameters",
           "versions", "is_out_of_memory", "DETAILS"]
