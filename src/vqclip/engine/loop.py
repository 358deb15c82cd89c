"""The optimisation loop. Pure: no printing, no files; progress leaves through `callback` (k-diffusion style).

State in and out: `Session.state_dict()` holds z, the MSE anchor, the optimizer state, the RNG states and the
step counter, so `Session(..., state=saved)` continues exactly where a run stopped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from vqclip.engine.cutouts import Cutouts
from vqclip.engine.heap import trim_heap
from vqclip.engine.losses import Prompt, init_weight_at, tv_loss
from vqclip.engine.ops import clamp_with_grad
from vqclip.errors import one_line

STATE_VERSION = 1


@dataclass
class LoopSettings:
    """What the loop needs, resolved from a RunConfig (sizes floored, seed chosen)."""

    width: int
    height: int
    seed: int
    cutn: int = 32
    cut_pow: float = 1.0
    augment: bool = True
    noise_fac: float = 0.1
    optimizer: str = "adam"
    lr: float = 0.1
    init_weight: float = 0.0
    init_weight_decay: float = 0.0
    init_weight_decay_every: int = 0
    tv_weight: float = 0.0
    save_every: int = 0
    autocast_dtype: torch.dtype | None = None  # decoder compute dtype (None = fp32)
    low_memory: bool = False  # checkpoint the decoder blocks (recompute in backward)
    clip_autocast_dtype: torch.dtype | None = None  # CLIP image-tower compute dtype (None = fp32)
    compile: bool = False  # torch.compile the CLIP image tower (falls back to eager if compiling fails)
    clip_chunk: int = 0  # >0: CLIP forward+backward over this many cutouts at a time (low memory; same gradient)


@dataclass
class StepInfo:
    """Sent to the callback after each optimiser step."""

    step: int  # global steps done after this update
    index: int  # 1-based step within this session
    total: int  # steps planned for this session
    loss: float
    losses: dict[str, float]
    seconds: float
    frame: torch.Tensor | None = None  # [3, H, W] in [0, 1] of the latent *before* this update, when due
    frame_step: int | None = None


@dataclass
class Result:
    image: torch.Tensor  # [3, H, W] in [0, 1], CPU, the final latent decoded
    steps_done: int
    global_step: int
    losses: list[float] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    stopped: bool = False


COMPILE_BACKEND = "inductor"  # tests use "aot_eager" (no C++ compiler, seconds instead of minutes)


def compiled(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """`torch.compile(fn)` that falls back to `fn` for good, recording why in `.error`, if compiling is not
    available here (no C++ compiler, an old torch, an unsupported op) or the compiled call fails."""
    try:
        fast = torch.compile(fn, backend=COMPILE_BACKEND, dynamic=False)
    except Exception as e:  # torch.compile itself missing or refusing this platform
        fast, reason = None, one_line(e)
    else:
        reason = None

    def call(x: torch.Tensor) -> torch.Tensor:
        if call.fast is not None:  # type: ignore[attr-defined]
            try:
                return call.fast(x)  # type: ignore[attr-defined]
            except torch.OutOfMemoryError:
                raise
            except Exception as e:  # compile errors surface at the first call
                call.error, call.fast = one_line(e), None  # type: ignore[attr-defined]
        return fn(x)

    call.fast, call.error = fast, reason  # type: ignore[attr-defined]
    return call


def make_optimizer(name: str, params: list[torch.Tensor], lr: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    raise ValueError(f"unknown optimizer {name!r}; use adam, adamw or sgd")


class Session:
    """One run of the loop over a latent grid; holds z, optimizer and RNGs between `run` calls."""

    def __init__(self, settings: LoopSettings, vqgan: Any, clip: Any, prompts: list[Prompt],
                 device: torch.device, *, init_z: torch.Tensor | None = None,
                 state: dict[str, Any] | None = None) -> None:
        self.s = settings
        self.vqgan = vqgan
        self.clip = clip
        self.prompts = prompts
        self.device = device
        f = vqgan.factor
        self.grid = (settings.height // f, settings.width // f)
        self.cutouts = Cutouts(clip.input_size, settings.cutn, settings.cut_pow, settings.augment,
                               settings.noise_fac)
        self.gen = torch.Generator().manual_seed(settings.seed)
        self.noise_gen = (torch.Generator(device=device).manual_seed(settings.seed + 1)
                          if device.type != "cpu" else self.gen)
        self.z_min, self.z_max = vqgan.z_bounds()
        self._encode_image: Callable[[torch.Tensor], torch.Tensor] = self._eager_encode
        if settings.compile:
            self._encode_image = compiled(self._eager_encode)
        if state is not None:
            self._load_state(state)
        else:
            z = init_z if init_z is not None else vqgan.random_latent(self.grid[1], self.grid[0], self.gen)
            self.z = z.detach().clone().to(device).requires_grad_(True)
            self.z_anchor = self.z.detach().clone()
            self.step = 0
            self.opt = make_optimizer(settings.optimizer, [self.z], settings.lr)

    # -- state ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain numbers only (loads with weights_only=True)."""
        state = {
            "version": STATE_VERSION,
            "z": self.z.detach().cpu().clone(),
            "z_anchor": self.z_anchor.cpu().clone(),
            "optimizer": self.s.optimizer,
            "optimizer_state": self.opt.state_dict(),
            "rng_cpu": self.gen.get_state(),
            "step": self.step,
            "seed": self.s.seed,
        }
        if self.noise_gen is not self.gen:
            state["rng_noise"] = self.noise_gen.get_state()
        return state

    def _load_state(self, state: dict[str, Any]) -> None:
        self.z = state["z"].to(self.device).clone().requires_grad_(True)
        self.z_anchor = state["z_anchor"].to(self.device).clone()
        self.step = int(state["step"])
        self.opt = make_optimizer(self.s.optimizer, [self.z], self.s.lr)
        same_grid = tuple(self.z.shape[-2:]) == tuple(self.grid)
        if state.get("optimizer_state") is not None and state.get("optimizer") == self.s.optimizer and same_grid:
            self.opt.load_state_dict(state["optimizer_state"])
            for group in self.opt.param_groups:
                group["lr"] = self.s.lr
        if state.get("rng_cpu") is not None:
            self.gen.set_state(state["rng_cpu"])
        if state.get("rng_noise") is not None and self.noise_gen is not self.gen:
            self.noise_gen.set_state(state["rng_noise"].to(torch.uint8).cpu())

    # -- the model ---------------------------------------------------------------------------------------
    def synth(self, z: torch.Tensor) -> torch.Tensor:
        """Latent → image in [0, 1] with straight-through quantisation and a gradient-preserving clamp."""
        z_q = self.vqgan.quantize(z)
        x = self.vqgan.decode(z_q, self.s.autocast_dtype, low_memory=self.s.low_memory)
        return clamp_with_grad(x.float().add(1).div(2), 0.0, 1.0)

    @property
    def compile_error(self) -> str | None:
        """Why `--compile` fell back to eager mode (None when it did not, or was not asked for)."""
        return getattr(self._encode_image, "error", None)

    def _eager_encode(self, cuts: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_image(cuts, self.s.clip_autocast_dtype)

    @torch.no_grad()
    def image(self) -> torch.Tensor:
        """The current latent decoded: [3, H, W] in [0, 1] on the CPU."""
        return self.synth(self.z)[0].float().cpu()

    def _prompt_losses(self, cuts: torch.Tensor, share: float = 1.0) -> dict[str, torch.Tensor]:
        """Each prompt's loss over these cutouts, scaled by `share` (their part of all cutouts)."""
        embeds = self._encode_image(cuts).float()
        return {p.label or f"prompt{i}": p(embeds) if share == 1.0 else p(embeds) * share
                for i, p in enumerate(self.prompts)}

    def _other_losses(self, out: torch.Tensor) -> dict[str, torch.Tensor]:
        losses: dict[str, torch.Tensor] = {}
        w = init_weight_at(self.step, self.s.init_weight, self.s.init_weight_decay, self.s.init_weight_decay_every)
        if w > 0:
            losses["init_mse"] = w * torch.nn.functional.mse_loss(self.z, self.z_anchor)
        if self.s.tv_weight > 0:
            losses["tv"] = self.s.tv_weight * tv_loss(out)
        return losses

    def _trim(self) -> None:
        if self.device.type == "cpu":  # freed activations back to the OS between phases (engine/heap.py)
            trim_heap()

    def _backward(self, out: torch.Tensor) -> dict[str, float]:
        """Every loss term of this step, with its gradient accumulated into `z.grad`."""
        self._trim()
        chunk = self.s.clip_chunk
        cuts = self.clip.normalize(self.cutouts(out, self.gen, self.noise_gen))
        if chunk <= 0 or chunk >= self.s.cutn:
            losses = {**self._prompt_losses(cuts), **self._other_losses(out)}
            sum(losses.values()).backward()  # type: ignore[union-attr]
            return {k: float(v.detach()) for k, v in losses.items()}
        # Low memory: CLIP runs over `chunk` cutouts at a time and its activations are freed after each chunk's
        # backward; the cutouts' gradient is gathered, then pushed through the cutouts and the decoder once.
        # The prompt losses are means over cutouts, so chunk means weighted by their share sum to the same value.
        leaf = cuts.detach().requires_grad_(True)
        n = leaf.shape[0]
        values: dict[str, float] = {}
        for start in range(0, n, chunk):
            part = leaf[start:start + chunk]
            terms = self._prompt_losses(part, part.shape[0] / n)
            sum(terms.values()).backward()  # type: ignore[union-attr]
            for k, v in terms.items():
                values[k] = values.get(k, 0.0) + float(v.detach())
            del terms
            self._trim()
        others = self._other_losses(out)
        grad = leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
        torch.autograd.backward([cuts, *others.values()], [grad, *([None] * len(others))])
        values.update({k: float(v.detach()) for k, v in others.items()})
        return values

    # -- the loop ----------------------------------------------------------------------------------------
    def run(self, steps: int, callback: Callable[[StepInfo], None] | None = None,
            should_stop: Callable[[], bool] | None = None) -> Result:
        """Take `steps` optimiser steps (fewer if `should_stop()` turns true between steps)."""
        result = Result(image=torch.empty(0), steps_done=0, global_step=self.step)
        self.partial = result  # what was done so far, should a step raise
        for index in range(1, steps + 1):
            if should_stop is not None and should_stop():
                result.stopped = True
                break
            t0 = time.perf_counter()
            out = self.synth(self.z)
            due = index == 1 or (self.s.save_every > 0 and self.step % self.s.save_every == 0)
            frame = out[0].detach().float().cpu() if due else None
            frame_step = self.step
            self.opt.zero_grad(set_to_none=True)
            losses = self._backward(out)
            self.opt.step()
            with torch.no_grad():
                self.z.copy_(torch.maximum(torch.minimum(self.z, self.z_max), self.z_min))
            self.step += 1
            loss = sum(losses.values())
            seconds = time.perf_counter() - t0
            result.losses.append(loss)
            result.step_seconds.append(seconds)
            result.steps_done += 1
            result.global_step = self.step
            del out
            if callback is not None:
                callback(StepInfo(self.step, index, steps, loss, losses, seconds, frame,
                                  frame_step if frame is not None else None))
        result.image = self.image()
        return result
