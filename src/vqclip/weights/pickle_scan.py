"""Would a checkpoint run code when loaded? A torch-free reading of its pickle (opcodes only, nothing executed),
cheap enough for `vqclip weights list`, and the one list of the globals vqclip's safe loader accepts.

`checkpoint.load_checkpoint` loads with torch's weights-only unpickler plus the inert Lightning/numpy names
listed here; open_clip's CLIP loading accepts torch's list alone (`torch_safe_global`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from vqclip.files import path_problem
from vqclip.weights.download import looks_like_html

# Globals that only ever appear as inert data in Lightning/numpy checkpoints; `checkpoint.load_checkpoint` maps
# them to placeholders (Lightning) or to numpy's data constructors, never importing anything else.
LIGHTNING_PREFIXES = ("pytorch_lightning.callbacks.", "lightning.pytorch.callbacks.", "lightning_fabric.")
NUMPY_SAFE = frozenset({
    "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar", "numpy.dtype",
    "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct", "numpy.ndarray",
})
# torch's weights-only allow-list (torch._weights_only_unpickler), spelled as rules so no torch import is needed.
_TORCH_SAFE = frozenset({
    "_codecs.encode", "builtins.bytearray", "builtins.complex", "builtins.set", "collections.Counter",
    "collections.OrderedDict", "torch.Size", "torch.Tensor", "torch.device", "torch.nn.parameter.Parameter",
    "torch.serialization._get_layout", "torch.storage.TypedStorage", "torch.storage.UntypedStorage",
    "torch._tensor._rebuild_from_type_v2",
})
_TORCH_TYPES = re.compile(r"^torch\.(cuda\.)?(sparse\.)?[A-Z][A-Za-z0-9]*(Storage|Tensor)$")
_TORCH_DTYPES = re.compile(r"^torch\.(u?int\d+|float\d+\w*|bfloat16|b?complex\d+|bool|bits\w+|q?u?int\d+x?\d*|"
                           r"per_(tensor|channel)_\w+)$")
_PICKLE_STRINGS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING",
                   "STRING"}
_TORCH_MAGIC = 0x1950A86A20F9469CFC6C  # the first pickle of a legacy (non-zip) torch.save file


def safe_global(name: str) -> bool:
    """Whether vqclip's safe loader accepts this pickled global (torch's list, Lightning callbacks, numpy data)."""
    return (name in _TORCH_SAFE or name.startswith("torch._utils._rebuild_") or bool(_TORCH_TYPES.match(name))
            or bool(_TORCH_DTYPES.match(name)) or name.startswith(LIGHTNING_PREFIXES) or name in NUMPY_SAFE)


def torch_safe_global(name: str) -> bool:
    """Whether torch's own weights-only loader accepts this global (what open_clip's CLIP loading uses)."""
    return (name in _TORCH_SAFE or name.startswith("torch._utils._rebuild_") or bool(_TORCH_TYPES.match(name))
            or bool(_TORCH_DTYPES.match(name)))


def _scan_pickle(stream: Any, found: list[str]) -> list[Any]:
    """Read one pickle from `stream` opcode by opcode (nothing is executed) and add the globals it names."""
    import pickletools

    strings: list[str] = []
    memo: dict[Any, str] = {}
    memo_next = 0
    last: str | None = None
    args: list[Any] = []
    for op, arg, _pos in pickletools.genops(stream):
        name = op.name
        args.append(arg)
        if name in ("GLOBAL", "INST"):
            module, _, attr = str(arg).partition(" ")
            found.append(f"{module}.{attr}")
        elif name == "STACK_GLOBAL":
            found.append(f"{strings[-2]}.{strings[-1]}" if len(strings) >= 2 else "an unnamed global")
        if name in _PICKLE_STRINGS:
            text = arg.decode("latin-1") if isinstance(arg, bytes) else str(arg)
            strings.append(text)
            last = text
        elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
            if last is not None:
                memo[arg] = last
        elif name == "MEMOIZE":
            if last is not None:
                memo[memo_next] = last
            memo_next += 1
        elif name in ("BINGET", "LONG_BINGET", "GET"):
            if arg in memo:
                strings.append(memo[arg])
                last = memo[arg]
        else:
            last = None
        if name == "STOP":
            break
    return args


def checkpoint_globals(path: Path) -> list[str]:
    """The globals a PyTorch checkpoint's pickle needs, read without torch and without unpickling. Raises
    ValueError when the file is neither a torch zip archive nor a legacy torch pickle."""
    import zipfile

    found: list[str] = []
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            pkl = next((n for n in zf.namelist() if n.endswith("data.pkl") and n.count("/") <= 1), None)
            if pkl is None:
                raise ValueError("a zip archive without data.pkl")
            with zf.open(pkl) as fh:
                _scan_pickle(fh, found)
        return found
    with open(path, "rb") as fh:
        first = _scan_pickle(fh, found)
        if _TORCH_MAGIC not in first:
            if found:
                return found  # a plain pickle: what it would run is the news
            raise ValueError("no torch magic number")
        for _ in range(3):  # protocol version, system info, then the object itself
            _scan_pickle(fh, found)
    return found


def checkpoint_problem(ckpt: Path) -> str | None:
    """Why vqclip's safe loader would refuse `ckpt`, or None; cheap enough for `weights list` (reads the pickle
    inside the archive, not the tensors)."""
    problem = path_problem(ckpt, "file")
    if problem:
        return f"{ckpt.name} {problem}"
    try:
        with open(ckpt, "rb") as fh:
            head = fh.read(1024)
    except OSError as e:
        return f"{ckpt.name} cannot be read ({e.strerror or type(e).__name__})"
    if not head:
        return f"{ckpt.name} is empty; replace it with the model's checkpoint"
    if looks_like_html(head):
        return f"{ckpt.name} is an HTML page, not a checkpoint (a failed download?); replace it"
    try:
        names = checkpoint_globals(ckpt)
    except Exception:  # noqa: BLE001 - any parse failure (zip, pickle opcodes, EOF) means "not a checkpoint"
        return f"{ckpt.name} is not a PyTorch checkpoint (neither a torch zip archive nor a torch pickle)"
    refused = sorted({n for n in names if not safe_global(n)})
    if refused:
        return refusal(ckpt, refused)
    return None


def refusal(ckpt: Path, refused: list[str]) -> str:
    return (f"{ckpt.name} would run code when loaded (it pickles {', '.join(refused[:3])}); vqclip refuses it, "
            f"so use another checkpoint (or pass --trust-checkpoint {ckpt} to generate only if you trust the file)")
