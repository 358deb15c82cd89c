"""What a VQGAN-CLIP state.pt must hold to be resumed, checked before any model loads: the version, the
latent and step counter, a CPU random state of the right size, and an optimizer state that fits the latent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vqclip.errors import VqclipError
from vqclip.runfolder.record import BadRun
from vqclip.runfolder.state import why


def check_state(path: Path, state: dict[str, Any]) -> None:
    """Refuse (one line) a state this engine cannot resume; normalise what older versions wrote."""
    import torch

    from vqclip.engine.loop import STATE_VERSION

    version = state.get("version")
    if isinstance(version, int) and not isinstance(version, bool) and version > STATE_VERSION:
        raise VqclipError(f"{path} was made by a newer vqclip (state version {version}; this one reads up to "
                          f"{STATE_VERSION}); upgrade vqclip to continue this run")
    z, step = state.get("z"), state.get("step")
    if not isinstance(z, torch.Tensor) or z.dim() != 4 or not z.is_floating_point() or z.numel() == 0:
        raise BadRun(f"{path} is not a vqclip state (no latent z)")
    if isinstance(step, torch.Tensor) and step.numel() == 1:
        step = state["step"] = int(step.item())
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise BadRun(f"{path} is not a vqclip state (no step counter)")
    if not isinstance(state.get("z_anchor"), torch.Tensor) or state["z_anchor"].shape != z.shape:
        state["z_anchor"] = z.clone()
    _check_rng(path, state)
    _check_optimizer(path, state, z)


def _check_rng(path: Path, state: dict[str, Any]) -> None:
    import torch

    rng = state.get("rng_cpu")
    if rng is None:
        return
    try:
        torch.Generator().set_state(rng)
    except (RuntimeError, TypeError, ValueError) as e:
        raise BadRun(f"{path} holds a random state that is not a CPU generator's ({why(e)})") from None


def _check_optimizer(path: Path, state: dict[str, Any], z: Any) -> None:
    """The saved optimizer state must load into an optimizer of its kind over this latent."""
    import torch

    from vqclip.engine.loop import make_optimizer

    saved = state.get("optimizer_state")
    if saved is None:
        return
    name = state.get("optimizer")
    problem = None
    if not isinstance(saved, dict) or not isinstance(name, str):
        problem = "no optimizer name, or its state is not a mapping"
    else:
        try:
            opt = make_optimizer(name, [torch.zeros_like(z, dtype=torch.float32, requires_grad=True)], 0.1)
            opt.load_state_dict(saved)
        except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as e:
            problem = why(e)
        else:
            for per_param in opt.state.values():
                for key, value in per_param.items():
                    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != z.shape:
                        problem = f"its {key} is {tuple(value.shape)}, the latent {tuple(z.shape)}"
    if problem:
        raise BadRun(f"{path} holds an optimizer state that does not fit its latent ({problem})")


__all__ = ["check_state"]
