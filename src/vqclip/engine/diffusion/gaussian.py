"""The Gaussian diffusion arithmetic a sampler needs (guided-diffusion `gaussian_diffusion.py` and `respace.py`,
Ho et al. 2020; Nichol & Dhariwal 2021): beta schedules, respacing the 1000 training steps to N, q(x_t | x_0),
x_0 from eps, the learned-range variance, and Song et al.'s score conditioning.

Schedules are float64 on the CPU; a value read for a batch is cast to float32 as the reference does, so the
numbers match it bit for bit where the operations are the same. Indices `i` are positions in the *respaced*
process (0 = the last, least noisy step); `timestep_map[i]` is the training timestep the model is called with.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch


def linear_betas(steps: int) -> torch.Tensor:
    """Ho et al.'s linear schedule, scaled so any step count covers the same range as 1000 steps."""
    scale = 1000 / steps
    start, stop = scale * 0.0001, scale * 0.02
    betas = torch.arange(steps, dtype=torch.float64) * ((stop - start) / max(steps - 1, 1)) + start
    betas[-1] = stop  # numpy.linspace's arithmetic, so the schedule equals the reference's to the last bit
    return betas


def cosine_betas(steps: int, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal's cosine schedule: alpha_bar(t) = cos²((t + 0.008)/1.008 · π/2)."""
    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return torch.tensor([min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), max_beta)
                         for i in range(steps)], dtype=torch.float64)


def named_betas(schedule: str, steps: int) -> torch.Tensor:
    if schedule == "linear":
        return linear_betas(steps)
    if schedule == "cosine":
        return cosine_betas(steps)
    raise ValueError(f"unknown beta schedule {schedule!r}; use linear or cosine")


def space_timesteps(num_timesteps: int, section_counts: str | int | Iterable[int]) -> list[int]:
    """The training timesteps kept when respacing (guided-diffusion `space_timesteps`), ascending.

    `section_counts`: N or "N" (N steps evenly spread), "a,b,c" (a steps from the first third, …), or "ddimN"
    (the DDIM paper's fixed integer stride, N must be reachable exactly)."""
    if isinstance(section_counts, int):
        section_counts = [section_counts]
    elif isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            desired = int(section_counts[len("ddim"):])
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == desired:
                    return list(range(0, num_timesteps, stride))
            raise ValueError(f"cannot take exactly {desired} of {num_timesteps} steps with an integer stride")
        section_counts = [int(x) for x in section_counts.split(",")]
    counts = list(section_counts)
    size_per, extra = divmod(num_timesteps, len(counts))
    start, steps = 0, []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count or count < 1:
            raise ValueError(f"cannot divide a section of {size} steps into {count}")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        cur = 0.0
        for _ in range(count):
            steps.append(start + round(cur))
            cur += stride
        start += size
    return sorted(set(steps))


class SpacedDiffusion:
    """A diffusion process over a subset of the training timesteps (all of them when `use_timesteps` is None).

    Holds float64 schedules; `extract` reads one value per batch element as float32 [N, 1, 1, 1]."""

    def __init__(self, base_betas: torch.Tensor, use_timesteps: Iterable[int] | None = None,
                 rescale_timesteps: bool = True) -> None:
        base_betas = base_betas.to(torch.float64)
        self.original_num_steps = int(base_betas.shape[0])
        keep = sorted(set(range(self.original_num_steps) if use_timesteps is None else use_timesteps))
        base_ac = torch.cumprod(1.0 - base_betas, 0)
        betas, last = [], 1.0
        for i in keep:
            betas.append(1 - base_ac[i].item() / last)
            last = base_ac[i].item()
        self.timestep_map = torch.tensor(keep, dtype=torch.long)
        self.rescale_timesteps = rescale_timesteps
        b = torch.tensor(betas, dtype=torch.float64)
        if not ((b > 0).all() and (b <= 1).all()):
            raise ValueError("betas must lie in (0, 1]")
        self.betas = b
        self.num_timesteps = int(b.shape[0])
        ac = torch.cumprod(1.0 - b, 0)
        self.alphas_cumprod = ac
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
        self.sqrt_alphas_cumprod = ac.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - ac).sqrt()
        self.sqrt_recip_alphas_cumprod = (1.0 / ac).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / ac - 1).sqrt()
        self.posterior_variance = b * (1.0 - self.alphas_cumprod_prev) / (1.0 - ac)
        pv = self.posterior_variance
        self.posterior_log_variance_clipped = torch.cat([pv[1:2], pv[1:]]).log() if len(pv) > 1 else \
            torch.full_like(pv, math.log(1e-20))
        self.posterior_mean_coef1 = b * self.alphas_cumprod_prev.sqrt() / (1.0 - ac)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * (1.0 - b).sqrt() / (1.0 - ac)
        self.log_betas = b.log()

    @classmethod
    def create(cls, steps: int | str, schedule: str = "linear", base_steps: int = 1000,
               rescale_timesteps: bool = True) -> "SpacedDiffusion":
        """`steps`: N, "N", "a,b,c" or "ddimN" (see `space_timesteps`) over a `base_steps` training process."""
        return cls(named_betas(schedule, base_steps), space_timesteps(base_steps, steps), rescale_timesteps)

    # -- reading the schedule ----------------------------------------------------------------------------
    @staticmethod
    def extract(arr: torch.Tensor, i: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """`arr[i]` as float32 [N, 1, 1, 1] on x's device (the reference's `_extract_into_tensor`)."""
        res = arr.to(i.device)[i].float()
        return res.view(-1, *([1] * (x.dim() - 1))).expand(x.shape)

    def model_timesteps(self, i: torch.Tensor) -> torch.Tensor:
        """Training timesteps for respaced indices `i` (floats when rescaled to the 1000-step range)."""
        t = self.timestep_map.to(i.device)[i]
        if self.rescale_timesteps:
            return t.float() * (1000.0 / self.original_num_steps)
        return t

    def batch_index(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)

    # -- forward process and x0/eps --------------------------------------------------------------------
    def q_sample(self, x0: torch.Tensor, i: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Sample q(x_t | x_0) with the given noise."""
        return self.extract(self.sqrt_alphas_cumprod, i, x0) * x0 + \
            self.extract(self.sqrt_one_minus_alphas_cumprod, i, x0) * noise

    def predict_xstart_from_eps(self, x: torch.Tensor, i: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return self.extract(self.sqrt_recip_alphas_cumprod, i, x) * x - \
            self.extract(self.sqrt_recipm1_alphas_cumprod, i, x) * eps

    def predict_eps_from_xstart(self, x: torch.Tensor, i: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        return (self.extract(self.sqrt_recip_alphas_cumprod, i, x) * x - x0) / \
            self.extract(self.sqrt_recipm1_alphas_cumprod, i, x)

    def q_posterior_mean(self, x0: torch.Tensor, x: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        return self.extract(self.posterior_mean_coef1, i, x) * x0 + self.extract(self.posterior_mean_coef2, i, x) * x

    def p_mean_variance(self, model_output: torch.Tensor, x: torch.Tensor, i: torch.Tensor,
                        clip_denoised: bool = False) -> dict[str, torch.Tensor]:
        """From the U-Net's output (eps, and the variance interpolation when it has 2×C channels) to the mean,
        variance and log-variance of p(x_{t-1} | x_t) and the predicted x_0 (clamped to [-1, 1] when asked)."""
        c = x.shape[1]
        if model_output.shape[1] == 2 * c:
            eps, var_values = model_output.split(c, dim=1)
            min_log = self.extract(self.posterior_log_variance_clipped, i, x)
            max_log = self.extract(self.log_betas, i, x)
            frac = (var_values + 1) / 2  # [-1, 1] spans [posterior variance, beta]
            log_variance = frac * max_log + (1 - frac) * min_log
        else:
            eps = model_output
            log_variance = self.extract(self.posterior_log_variance_clipped, i, x)
        x0 = self.predict_xstart_from_eps(x, i, eps)
        if clip_denoised:
            x0 = x0.clamp(-1, 1)
        return {"mean": self.q_posterior_mean(x0, x, i), "variance": log_variance.exp(),
                "log_variance": log_variance, "pred_xstart": x0}

    def condition_score(self, grad: torch.Tensor, out: dict[str, torch.Tensor], x: torch.Tensor,
                        i: torch.Tensor) -> dict[str, torch.Tensor]:
        """Song et al. (2020): shift eps by −√(1−ᾱ)·∇log p(y|x_t) and re-derive x_0 and the mean."""
        alpha_bar = self.extract(self.alphas_cumprod, i, x)
        eps = self.predict_eps_from_xstart(x, i, out["pred_xstart"])
        eps = eps - (1 - alpha_bar).sqrt() * grad
        new = dict(out)
        new["pred_xstart"] = self.predict_xstart_from_eps(x, i, eps)
        new["mean"] = self.q_posterior_mean(new["pred_xstart"], x, i)
        return new
