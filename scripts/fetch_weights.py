#!/usr/bin/env python
"""Download VQGAN weights: a thin wrapper over `vqclip weights download` (same registry, same code).

    python scripts/fetch_weights.py vqgan_imagenet_f16_16384
    python scripts/fetch_weights.py --all --weights-dir /data/vqgan
    python scripts/fetch_weights.py clip:ViT-B-32/openai

Names, mirrors, sizes and sha256 values come from `vqclip.weights.registry.WEIGHTS`; see `vqclip weights list`.
"""

from __future__ import annotations

import sys

from vqclip.commands.weights import app


def main(argv: list[str] | None = None) -> None:
    app(["download", *(sys.argv[1:] if argv is None else argv)], prog_name="fetch_weights.py")


if __name__ == "__main__":
    main()
