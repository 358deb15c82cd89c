"""DDIM (Song et al. 2020, with `eta`) and PLMS (Liu et al. 2022, as in Katherine Crowson's guided-diffusion fork)
over a `SpacedDiffusion`, one step at a time, k-diffusion style: the sampler is pure, the caller owns progress,
frames and files.

A `Sampler` holds the current `x`, the number of steps done, PLMS's eps history and its noise generator's state:
`state_dict()` after step k and `load_state_dict()` in a fresh sampler continue exactly where it stopped.

Guidance enters through `cond_fn(x, i, out) -> ∇ₓ log p(y | x_t)` and Song et al.'s score conditioning (the
reference's `condition_score`). With `cond_with_grad` (guidance on the U-Net's own x0) the model runs with the
gradient on and `out["pred_xstart"]` carries the graph back to `x`, so one U-Net forward serves both the step and
the guidance (the original app's `cond_fn_with_grad=True`); otherwise the model runs without gradient and
`cond_fn` makes its own x0 (the secondary model).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from vqclip.engine.diffusion.gaussian import SpacedDiffusion

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, training timesteps) -> U-Net output
CondFn = Callable[[torch.Tensor, torch.Tensor, dict], torch.Tensor]  # (x_t, respaced index, out) -> gradient
METHODS = ("ddim", "plms")
ORDERS = (1, 2, 3, 4)


def _adams_bashforth(old: list[torch.Tensor]) -> torch.Tensor:
    """Linear multistep combination of the eps history (oldest first), written as the reference writes it."""
    if len(old) == 1:
        return old[-1]
    if len(old) == 2:
        return (3 * old[-1] - old[-2]) / 2
    if len(old) == 3:
        return (23 * old[-1] - 16 * old[-2] + 5 * old[-3]) / 12
    return (55 * old[-1] - 59 * old[-2] + 37 * old[-3] - 9 * old[-4]) / 24


def start_x(diffusion: SpacedDiffusion, noise: torch.Tensor, skip_steps: int = 0,
            init: torch.Tensor | None = None) -> torch.Tensor:
    """x at the first step: the noise itself, or, when steps are skipped, the init image (zeros without one)
    noised to the first step kept (the reference's `skip_timesteps` + `init_image`)."""
    if not 0 <= skip_steps < diffusion.num_timesteps:
        raise ValueError(f"skip_steps must be in [0, {diffusion.num_timesteps}), got {skip_steps}")
    if init is None and not skip_steps:
        return noise
    first = diffusion.num_timesteps - skip_steps - 1
    x0 = torch.zeros_like(noise) if init is None else init.to(noise)
    return diffusion.q_sample(x0, diffusion.batch_index(first, noise), noise)


class Sampler:
    """Steps `x` from the first kept index down to 0. `skip_steps` leaves out the noisiest steps."""

    def __init__(self, diffusion: SpacedDiffusion, model_fn: ModelFn, x: torch.Tensor, *, method: str = "ddim",
                 eta: float = 0.0, order: int = 2, cond_fn: CondFn | None = None, cond_with_grad: bool | None = None,
                 clip_denoised: bool = False, skip_steps: int = 0, generator: torch.Generator | None = None) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown sampler {method!r}; use {' or '.join(METHODS)}")
        if order not in ORDERS:
            raise ValueError("PLMS order must be 1, 2, 3 or 4")
        if not 0 <= skip_steps < diffusion.num_timesteps:
            raise ValueError(f"skip_steps must be in [0, {diffusion.num_timesteps}), got {skip_steps}")
        self.diffusion, self.model_fn = diffusion, model_fn
        self.method, self.eta, self.order = method, float(eta), int(order)
        self.cond_fn = cond_fn
        self.cond_with_grad = bool(getattr(cond_fn, "needs_model_grad", True)) if cond_with_grad is None \
            else cond_with_grad
        self.clip_denoised = clip_denoised
        self.skip_steps = skip_steps
        self.generator = generator
        self.indices = list(range(diffusion.num_timesteps - skip_steps))[::-1]
        self.x = x.detach()
        self.done = 0
        self.old_eps: list[torch.Tensor] = []

    @property
    def num_steps(self) -> int:
        return len(self.indices)

    @property
    def finished(self) -> bool:
        return self.done >= len(self.indices)

    # -- one model evaluation, guided ------------------------------------------------------------------
    def _evaluate(self, x: torch.Tensor, i: torch.Tensor) -> tuple[torch.Tensor, dict, dict]:
        """(eps of the guided prediction, guided out, unguided out), all detached."""
        d = self.diffusion
        with_grad = self.cond_fn is not None and self.cond_with_grad
        with torch.set_grad_enabled(with_grad):
            xg = x.detach().requires_grad_() if with_grad else x
            out = d.p_mean_variance(self.model_fn(xg, d.model_timesteps(i)), xg, i, self.clip_denoised)
            grad = self.cond_fn(xg, i, out) if self.cond_fn is not None else None
        out = {k: v.detach() for k, v in out.items()}
        guided = out
        if grad is not None:
            guided = d.condition_score(grad.detach().float(), out, x, i)
        return d.predict_eps_from_xstart(x, i, guided["pred_xstart"]), guided, out

    def _noise(self, x: torch.Tensor) -> torch.Tensor:
        g = self.generator
        if g is None:
            return torch.randn_like(x)
        return torch.randn(x.shape, generator=g, device=g.device, dtype=x.dtype).to(x.device)

    # -- the step ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self) -> dict[str, Any]:
        """Take the next step; returns {"sample", "pred_xstart" (the model's own x0), "index", "step"}."""
        if self.finished:
            raise RuntimeError("the sampler has taken all its steps")
        d, x = self.diffusion, self.x
        index = self.indices[self.done]
        i = d.batch_index(index, x)
        alpha_bar = d.extract(d.alphas_cumprod, i, x)
        alpha_bar_prev = d.extract(d.alphas_cumprod_prev, i, x)
        nonzero = (i != 0).float().view(-1, *([1] * (x.dim() - 1)))
        eps, guided, out = self._evaluate(x, i)
        if self.method == "ddim":
            sigma = self.eta * ((1 - alpha_bar_prev) / (1 - alpha_bar)).sqrt() * (1 - alpha_bar / alpha_bar_prev).sqrt()
            noise = self._noise(x)
            mean = guided["pred_xstart"] * alpha_bar_prev.sqrt() + (1 - alpha_bar_prev - sigma ** 2).sqrt() * eps
            sample = mean + nonzero * sigma * noise
        else:
            sample = self._plms(x, i, eps, guided, alpha_bar_prev, nonzero)
        self.x = sample
        self.done += 1
        return {"sample": sample, "pred_xstart": out["pred_xstart"], "index": index, "step": self.done}

    def _plms(self, x: torch.Tensor, i: torch.Tensor, eps: torch.Tensor, guided: dict, alpha_bar_prev: torch.Tensor,
              nonzero: torch.Tensor) -> torch.Tensor:
        d = self.diffusion
        if self.order > 1 and not self.old_eps:
            # pseudo improved Euler for the first step: average eps here and at the Euler estimate one step on
            mean = guided["pred_xstart"] * alpha_bar_prev.sqrt() + (1 - alpha_bar_prev).sqrt() * eps
            eps_2, _, _ = self._evaluate(mean, (i - 1).clamp_min(0))
            eps_prime = (eps + eps_2) / 2
            self.old_eps = [eps]
        else:
            self.old_eps = [*self.old_eps, eps]
            eps_prime = _adams_bashforth(self.old_eps[-self.order:])
        if len(self.old_eps) >= self.order:
            self.old_eps = self.old_eps[1:]
        x0 = d.predict_xstart_from_eps(x, i, eps_prime)
        mean = x0 * alpha_bar_prev.sqrt() + (1 - alpha_bar_prev).sqrt() * eps_prime
        return mean * nonzero + guided["pred_xstart"] * (1 - nonzero)

    # -- resume ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything an exact continuation needs (tensors and plain values only)."""
        return {"method": self.method, "eta": self.eta, "order": self.order, "skip_steps": self.skip_steps,
                "num_timesteps": self.diffusion.num_timesteps, "done": self.done, "x": self.x.detach().clone(),
                "old_eps": [e.clone() for e in self.old_eps],
                "rng": self.generator.get_state() if self.generator is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mine = {"method": self.method, "eta": self.eta, "order": self.order, "skip_steps": self.skip_steps,
                "num_timesteps": self.diffusion.num_timesteps}
        differ = [f"{k} {state.get(k)!r} != {v!r}" for k, v in mine.items() if state.get(k) != v]
        if differ:
            raise ValueError(f"the saved sampler state was made with other settings ({'; '.join(differ)})")
        if not 0 <= int(state["done"]) <= len(self.indices):
            raise ValueError(f"the saved sampler state has {state['done']} steps done of {len(self.indices)}")
        device = self.x.device
        self.done = int(state["done"])
        self.x = state["x"].to(device)
        self.old_eps = [e.to(device) for e in state["old_eps"]]
        if state.get("rng") is not None and self.generator is not None:
            self.generator.set_state(state["rng"])


def sample(model_fn: ModelFn, noise: torch.Tensor, diffusion: SpacedDiffusion, *, method: str = "ddim",
           eta: float = 0.0, order: int = 2, cond_fn: CondFn | None = None, cond_with_grad: bool | None = None,
           clip_denoised: bool = False, skip_steps: int = 0, init: torch.Tensor | None = None,
           generator: torch.Generator | None = None,
           callback: Callable[[dict[str, Any]], None] | None = None) -> torch.Tensor:
    """The whole loop: from `noise` (and `init` when steps are skipped) to the final sample; `callback` gets each
    step's dict (see `Sampler.step`)."""
    x = start_x(diffusion, noise, skip_steps, init)
    sampler = Sampler(diffusion, model_fn, x, method=method, eta=eta, order=order, cond_fn=cond_fn,
                      cond_with_grad=cond_with_grad, clip_denoised=clip_denoised, skip_steps=skip_steps,
                      generator=generator)
    while not sampler.finished:
        out = sampler.step()
        if callback is not None:
            callback(out)
    return sampler.x
