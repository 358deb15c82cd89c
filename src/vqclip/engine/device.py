"""Where a run computes and in which dtypes: the one home of that decision.

`resolve_device(asked_device, asked_precision, recorded)` is what every kind of run goes through (generate,
continue, animate, batch workers, Ray actors, the dry run): the device picked (`auto` → CUDA, then MPS, then the
CPU, skipping a device a tiny op fails on), then the precision (`auto` decided from the device's kind and
features, `vqclip.engine.precision`), except that a run continuing another on the same kind of device computes
in the dtypes its parent recorded unless a precision is asked for.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch

from vqclip.engine.precision import Precision, choose_precision
from vqclip.errors import VqclipError, one_line


def resolve_device(asked_device: str = "auto", asked_precision: str = "auto",
                   recorded: tuple[str, str] | None = None, *,
                   on_note: Callable[[str], None] | None = None) -> tuple[torch.device, Precision]:
    """(device, precision) for a run. `recorded` is (device type, precision description) of the run it
    continues, when it does; the precision's process-wide flags (TF32) are applied."""
    device = pick_device(asked_device, on_fallback=on_note)
    precision = choose_precision(asked_precision, device)
    if recorded is not None and asked_precision == "auto" and recorded[0] == device.type:
        with contextlib.suppress(ValueError):
            precision = Precision.parse(recorded[1])
    precision.apply(device)
    return device, precision


_PROBED: dict[str, str | None] = {}  # str(device) -> why a tiny op failed there (None: it ran)
_NO_KERNELS = ("no kernel image", "is not compatible", "not compatible with the current pytorch",
               "too old", "invalid device function")


def _probe_op(device: torch.device) -> float:
    return float((torch.ones(4, device=device) * 2).sum().item())


def probe_device(device: torch.device) -> str | None:
    """Whether a tiny op runs on `device` (cached per device): None if it does, else the first line of the error
    (a GPU the installed torch has no kernels for fails here: "no kernel image is available …")."""
    device = torch.device(device)
    if device.type == "cpu":
        return None
    key = str(device)
    if key not in _PROBED:
        import warnings

        try:
            with warnings.catch_warnings():  # "sm_35 is not compatible …" is also warned on CUDA's lazy init
                warnings.simplefilter("ignore")
                _probe_op(device)
            _PROBED[key] = None
        except Exception as e:  # RuntimeError / torch.AcceleratorError, or anything a broken driver raises
            _PROBED[key] = one_line(e, 200, typed=False)
    return _PROBED[key]


def _gpu_name(device: torch.device) -> tuple[str, str | None]:
    """("NVIDIA Tesla K80, compute capability 3.7", "3.7"), as far as torch can tell without running a kernel."""
    try:
        major, minor = torch.cuda.get_device_capability(device)
        cap: str | None = f"{major}.{minor}"
    except Exception:
        cap = None
    try:
        name = torch.cuda.get_device_name(device)
    except Exception:
        name = "the CUDA GPU"
    return (f"{name}, compute capability {cap}" if cap else name), cap


def _unusable_gpu(device: torch.device, reason: str) -> str:
    """The fix for a CUDA device the probe op failed on."""
    what, cap = _gpu_name(device)
    if any(k in reason.lower() for k in _NO_KERNELS):
        build = torch.__version__
        fix = (f"install a torch build with kernels for {f'compute capability {cap}' if cap else 'this card'} "
               f"(this one, {build}, has none), or use --device cpu")
        return f"{what} cannot run this torch build ({reason}); {fix}"
    return f"a test operation on {what} failed ({reason}); check the driver with nvidia-smi, or use --device cpu"


def pick_device(name: str = "auto", *, on_fallback: Callable[[str], None] | None = None) -> torch.device:
    """`auto` → cuda, then mps, then cpu, skipping a device a tiny op fails on (`probe_device`): `on_fallback`
    gets a line saying why. An explicit device that is not there or cannot run is a user error."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        skipped: list[str] = []
        if torch.cuda.is_available():
            cuda = torch.device("cuda")
            reason = probe_device(cuda)
            if reason is None:
                return cuda
            skipped.append(_unusable_gpu(cuda, reason))
        mps = getattr(torch.backends, "mps", None)
        dev = torch.device("cpu")
        if mps is not None and mps.is_available():
            reason = probe_device(torch.device("mps"))
            if reason is None:
                dev = torch.device("mps")
            else:
                skipped.append(f"Apple MPS failed a test operation ({reason})")
        if skipped and on_fallback is not None:
            on_fallback(f"--device auto: using the {dev.type.upper()}, since " + "; ".join(skipped))
        return dev
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise VqclipError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise VqclipError("--device cuda asked but no CUDA GPU is visible to torch; use --device cpu "
                              "or install a CUDA build of torch")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise VqclipError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present")
        reason = probe_device(dev)
        if reason is not None:
            raise VqclipError(f"--device {name}: {_unusable_gpu(dev, reason)}")
    if dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise VqclipError("--device mps asked but Apple MPS is not available; use --device cpu")
        reason = probe_device(dev)
        if reason is not None:
            raise VqclipError(f"--device mps: a test operation failed ({reason}); use --device cpu")
    return dev
