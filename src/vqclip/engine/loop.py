"""The optimisation loop. Pure: no printing, no files; progress leaves through `callback` (k-diffusion style).

State in and out: `Session.state_dict()` holds z, the MSE anchor, the optimizer state, the RNG states and the
step counter, all on the CPU, so `Session(..., state=saved)` continues exactly where a run stopped, and on
another kind of device too (the latent and optimizer carry over; a random state of another device is replaced
by one derived from the seed, with a note in `Session.notes`).

On a GPU nothing in a step waits for the GPU: the random numbers are drawn on the host and sent in one
non-blocking copy, losses stay on the device and come back through pinned memory, and the callback for step k
runs once step k+1 is queued. A step whose loss or gradient is not finite (fp16 overflow) is not applied: the
latent and the optimizer's moments are put back, on the device, and `StepInfo.skipped` says so.

With a CLIP ensemble (`engine/ensemble.py`) each prompt's loss is the weighted sum of its loss under every model
on the same cutouts; one CLIP takes the plain path, number for number as before ensembles.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from vqclip.engine.cutouts import Cutouts
from vqclip.engine.compile import compiled
from vqclip.engine.ensemble import Member, cut_size, is_ensemble, model_input
from vqclip.engine.heap import trim_heap
from vqclip.engine.losses import Prompt, init_weight_at, tv_loss
from vqclip.engine.ops import clamp_with_grad
from vqclip.engine.pending import Host, Pending, report_lag
from vqclip.errors import one_line
from vqclip.steps import Result, StepInfo

STATE_VERSION = 1
OutOfMemory = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)  # torch.OutOfMemoryError: 2.5+


class BadState(ValueError):
    """A saved state that does not fit this session (wrong random-state size, mismatched optimizer)."""


@dataclass
class LoopSettings:
    """What the loop needs from a run. Built by `vqclip.pipeline.settings.settings_from_config`, never by hand
    outside tests: the knobs below share their names with RunConfig's fields and have no defaults here, so a
    run's values (and the defaults, which live with RunConfig and configs/defaults.yaml) come from one place."""

    # resolved per run: the size floored to the model's factor, the seed chosen when none was given
    width: int
    height: int
    seed: int
    # the run's knobs, by RunConfig field name
    cutn: int
    cut_pow: float
    augment: bool
    noise_fac: float
    optimizer: str
    lr: float
    init_weight: float
    init_weight_decay: float
    init_weight_decay_every: int
    tv_weight: float
    save_every: int
    compile: bool  # torch.compile the CLIP image tower (falls back to eager if compiling fails)
    # decided by the pipeline from the device, the precision and the memory plan; no RunConfig counterpart
    # (RunConfig.low_memory may be None = "decide"), so the plain fp32, all-in-memory values are the defaults
    autocast_dtype: torch.dtype | None = None  # decoder compute dtype (None = fp32)
    clip_autocast_dtype: torch.dtype | None = None  # CLIP image-tower compute dtype (None = fp32)
    loss_scale: float = 1.0  # constant loss scale for fp16 gradients (Precision.loss_scale)
    low_memory: bool = False  # checkpoint the decoder blocks (recompute in backward)
    clip_chunk: int = 0  # >0: CLIP forward+backward over this many cutouts at a time (low memory; same gradient)


def make_optimizer(name: str, params: list[torch.Tensor], lr: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    raise ValueError(f"unknown optimizer {name!r}; use adam, adamw or sgd")


class Session:
    """One run of the loop over a latent grid; holds z, optimizer and RNGs between `run` calls.

    `clip`: one CLIP model, or the members of a CLIP ensemble (`engine.ensemble`), whose `prompts` are then
    EnsemblePrompts (one embedding per model)."""

    def __init__(self, settings: LoopSettings, vqgan: Any, clip: Any, prompts: list[Prompt],
                 device: torch.device, *, init_z: torch.Tensor | None = None,
                 state: dict[str, Any] | None = None) -> None:
        self.s = settings
        self.vqgan = vqgan
        self.members: list[Member] = list(clip) if isinstance(clip, (list, tuple)) else [Member(clip, 1.0)]
        self._active = [k for k, m in enumerate(self.members) if m.weight > 0]
        if not self._active:
            raise ValueError("every CLIP model of the ensemble has weight 0; give one a weight above 0")
        self.ensemble = is_ensemble(self.members)
        self.clip = self.members[0].clip  # the first model: a single run's only one, the CLIP score's
        self.prompts = prompts
        self.device = device
        f = vqgan.factor
        self.grid = (settings.height // f, settings.width // f)
        self.cutouts = Cutouts(cut_size(self.members), settings.cutn, settings.cut_pow, settings.augment,
                               settings.noise_fac)
        self.gen = torch.Generator().manual_seed(settings.seed)
        self.noise_gen = (torch.Generator(device=device).manual_seed(settings.seed + 1)
                          if device.type != "cpu" else self.gen)
        self.z_min, self.z_max = vqgan.z_bounds()
        self.notes: list[str] = []  # things the caller should tell the user (set while loading a state)
        self._encoders = [self._encoder(m.clip) for m in self.members]  # one per model (compiled or eager)
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
        """Tensors and plain numbers only (loads with weights_only=True), every tensor on the CPU."""
        state = {
            "version": STATE_VERSION,
            "device_type": self.device.type,
            "z": self.z.detach().cpu().clone(),
            "z_anchor": self.z_anchor.cpu().clone(),
            "optimizer": self.s.optimizer,
            "optimizer_state": _to_cpu(self.opt.state_dict()),
            "rng_cpu": self.gen.get_state(),
            "step": self.step,
            "seed": self.s.seed,
        }
        if self.noise_gen is not self.gen:
            state["rng_noise"] = self.noise_gen.get_state().cpu()
        return state

    def _load_state(self, state: dict[str, Any]) -> None:
        self.z = state["z"].to(self.device, torch.float32).clone().requires_grad_(True)
        self.z_anchor = state["z_anchor"].to(self.device, torch.float32).clone()
        self.step = int(state["step"])
        self.opt = make_optimizer(self.s.optimizer, [self.z], self.s.lr)
        same_grid = tuple(self.z.shape[-2:]) == tuple(self.grid)
        if state.get("optimizer_state") is not None and state.get("optimizer") == self.s.optimizer and same_grid:
            try:
                self.opt.load_state_dict(state["optimizer_state"])
            except (ValueError, KeyError, TypeError, RuntimeError) as e:
                raise BadState(f"its optimizer state does not match this run ({one_line(e)})") from None
            for group in self.opt.param_groups:
                group["lr"] = self.s.lr
        if state.get("rng_cpu") is not None:
            try:
                self.gen.set_state(state["rng_cpu"])
            except (RuntimeError, TypeError) as e:
                raise BadState(f"its random state is not a CPU generator state ({one_line(e)})") from None
        if self.noise_gen is self.gen:
            return  # on the CPU the cutout noise comes from the CPU generator itself
        saved_on = state.get("device_type", "cpu")
        noise = state.get("rng_noise")
        if noise is not None and saved_on == self.device.type:
            try:
                self.noise_gen.set_state(noise.to(torch.uint8).cpu())
                return
            except (RuntimeError, TypeError):
                pass
        # A random state of another kind of device cannot drive this one's generator.
        self.noise_gen.manual_seed(derived_seed(self.s.seed, self.step))
        self.notes.append(f"the saved cutout-noise random state is from {saved_on}, not {self.device.type}: "
                          "continuing with one derived from the seed (same latent and optimizer, other noise)")

    def restart_from(self, z: torch.Tensor, *, keep_optimizer: bool = False) -> None:
        """Go on from a new latent (an animation's next frame, warped and re-encoded), which is also the new MSE
        anchor. The optimiser starts afresh unless `keep_optimizer`: then its moments carry over to the new
        latent (same grid). The step counter and the random streams go on."""
        new = z.detach().to(self.device, torch.float32).clone().requires_grad_(True)
        if keep_optimizer and new.shape == self.z.shape:
            moments = self.opt.state.pop(self.z, None)
            self.opt.param_groups[0]["params"] = [new]
            if moments is not None:
                self.opt.state[new] = moments
        else:
            self.opt = make_optimizer(self.s.optimizer, [new], self.s.lr)
        self.z = new
        self.z_anchor = new.detach().clone()

    # -- the model ---------------------------------------------------------------------------------------
    def synth(self, z: torch.Tensor) -> torch.Tensor:
        """Latent → image in [0, 1] with straight-through quantisation and a gradient-preserving clamp."""
        z_q = self.vqgan.quantize(z)
        x = self.vqgan.decode(z_q, self.s.autocast_dtype, low_memory=self.s.low_memory)
        return clamp_with_grad(x.float().add(1).div(2), 0.0, 1.0)

    @property
    def compile_error(self) -> str | None:
        """Why `--compile` fell back to eager mode (None when it did not, or was not asked for)."""
        return next((e for e in (getattr(f, "error", None) for f in self._encoders) if e), None)

    def _encoder(self, clip: Any) -> Callable[[torch.Tensor], torch.Tensor]:
        def encode(cuts: torch.Tensor) -> torch.Tensor:
            return clip.encode_image(cuts, self.s.clip_autocast_dtype)

        return compiled(encode) if self.s.compile else encode

    @torch.no_grad()
    def image(self) -> torch.Tensor:
        """The current latent decoded: [3, H, W] in [0, 1] on the CPU."""
        return self.synth(self.z)[0].float().cpu()

    def _prompt_losses(self, cuts: torch.Tensor, share: float = 1.0, only: int | None = None
                       ) -> dict[str, torch.Tensor]:
        """Each prompt's loss over these cutouts, scaled by `share` (their part of all cutouts): under the one
        CLIP, or the weighted sum over the ensemble's models that take part (`only`: model `only` alone)."""
        losses: dict[str, torch.Tensor] = {}
        for k in self._active if only is None else [only]:
            weight = self.members[k].weight
            x = model_input(cuts, self.members[k].clip) if self.ensemble else cuts
            embeds = self._encoders[k](x).float()
            terms = {}  # by label (a repeated label keeps the last prompt's term, as it always has)
            for i, p in enumerate(self.prompts):
                term = (p.per_model[k] if self.ensemble else p)(embeds)  # type: ignore[attr-defined]
                term = term * weight if weight != 1.0 else term
                terms[p.label or f"prompt{i}"] = term if share == 1.0 else term * share
            for label, term in terms.items():
                losses[label] = losses[label] + term if label in losses else term
        return losses

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

    def _backward(self, out: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every loss term of this step (detached, unscaled, on the device), with the gradient of their sum
        times the loss scale accumulated into `z.grad`."""
        self._trim()
        chunk, scale = self.s.clip_chunk, self.s.loss_scale
        cuts = self.cutouts(out, self.gen, self.noise_gen)
        if not self.ensemble:  # one CLIP: normalised once here; an ensemble's models normalise their own input
            cuts = self.clip.normalize(cuts)
        if chunk <= 0 or chunk >= self.s.cutn:
            losses = {**self._prompt_losses(cuts), **self._other_losses(out)}
            total = sum(losses.values())
            (total * scale if scale != 1.0 else total).backward()  # type: ignore[union-attr]
            return {k: v.detach() for k, v in losses.items()}
        # Low memory: CLIP runs over `chunk` cutouts at a time and its activations are freed after each chunk's
        # backward; the cutouts' gradient is gathered, then pushed through the cutouts and the decoder once.
        # The prompt losses are means over cutouts, so chunk means weighted by their share sum to the same value.
        # An ensemble's models take each chunk in turn: only one model's activations are alive at a time.
        leaf = cuts.detach().requires_grad_(True)
        n = leaf.shape[0]
        values: dict[str, torch.Tensor] = {}
        for start in range(0, n, chunk):
            part = leaf[start:start + chunk]
            for model in self._active:
                terms = self._prompt_losses(part, part.shape[0] / n, only=model)
                total = sum(terms.values())
                (total * scale if scale != 1.0 else total).backward()  # type: ignore[union-attr]
                for k, v in terms.items():
                    values[k] = values[k] + v.detach() if k in values else v.detach()
                del terms, total
                self._trim()
        others = self._other_losses(out)
        grad = leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
        torch.autograd.backward([cuts, *others.values()],
                                [grad, *(torch.full_like(v, scale) for v in others.values())])
        values.update({k: v.detach() for k, v in others.items()})
        return values

    def _update(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        """Unscale the gradient and take the optimiser step, undone (on the device, no host sync) when the
        loss or the gradient is not finite. Returns the device flag "applied". (The optimiser's own step
        counter still counts a skipped step; that only nudges Adam's bias correction.)"""
        if self.z.grad is None:
            self.z.grad = torch.zeros_like(self.z)
        if self.s.loss_scale != 1.0:
            self.z.grad.div_(self.s.loss_scale)
        total = torch.stack([v.float().reshape(()) for v in losses.values()]).sum() if losses else \
            torch.zeros((), device=self.z.device)
        ok = torch.isfinite(total) & torch.isfinite(self.z.grad).all()
        kept = [t for t in self.opt.state.get(self.z, {}).values()
                if isinstance(t, torch.Tensor) and t.device == self.z.device and t.shape == self.z.shape]
        before = [self.z.detach().clone(), *(t.clone() for t in kept)]
        self.opt.step()
        with torch.no_grad():
            self.z.copy_(torch.maximum(torch.minimum(self.z, self.z_max), self.z_min))
            for t, old in zip([self.z, *kept], before):
                t.copy_(torch.where(ok, t, old))
        return ok

    # -- the loop ----------------------------------------------------------------------------------------
    def run(self, steps: int, callback: Callable[[StepInfo], None] | None = None,
            should_stop: Callable[[], bool] | None = None) -> Result:
        """Take `steps` optimiser steps (fewer if `should_stop()` turns true between steps)."""
        result = Result(image=torch.empty(0), steps_done=0, global_step=self.step)
        self.partial = result  # what was done so far, should a step raise
        lag = report_lag(self.device)
        pending: list[Pending] = []

        def report(p: Pending, tell: bool = True) -> None:
            values = p.values.wait().tolist()
            skipped = values[-1] == 0.0
            losses = dict(zip(p.keys, values[:-1]))
            loss = sum(losses.values())
            result.losses.append(loss)
            result.step_seconds.append(p.seconds)
            if skipped:
                result.skipped_steps.append(p.step)
            if callback is not None and tell:
                frame = p.frame.wait() if p.frame is not None else None
                callback(StepInfo(p.step, p.index, steps, loss, losses, p.seconds, frame,
                                  p.frame_step if frame is not None else None, skipped))

        try:
            t0 = time.perf_counter()
            for index in range(1, steps + 1):
                if should_stop is not None and should_stop():
                    result.stopped = True
                    break
                out = self.synth(self.z)
                due = index == 1 or (self.s.save_every > 0 and self.step % self.s.save_every == 0)
                frame = Host(out[0].detach().float()) if due else None
                frame_step = self.step
                self.opt.zero_grad(set_to_none=True)
                losses = self._backward(out)
                ok = self._update(losses)
                self.step += 1
                del out
                values = Host(torch.stack([*(v.float().reshape(()) for v in losses.values()), ok.float()]))
                result.steps_done += 1
                result.global_step = self.step
                t1 = time.perf_counter()
                pending.append(Pending(self.step, index, list(losses), values, frame, frame_step, t1 - t0))
                t0 = t1
                while len(pending) > lag:
                    report(pending.pop(0))
        except BaseException:  # a step failed: the steps before it still count, with their losses
            for p in pending:
                with contextlib.suppress(Exception):
                    report(p, tell=False)
            raise
        while pending:
            report(pending.pop(0))
        result.image = self.image()
        return result


def _to_cpu(obj: Any) -> Any:
    """A nested state (dicts, lists, tensors) with every tensor copied to the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def derived_seed(seed: int, step: int) -> int:
    """A seed for a generator that replaces a foreign random state: fixed by the run's seed and step."""
    return (int(seed) * 1_000_003 + int(step) * 7919 + 1) % (2**63)
