"""Models kept loaded between runs (`vqclip batch`): every row with the same VQGAN/CLIP pair on one device loads
them once per worker.

A single run frees CLIP's text tower and the VQGAN encoder once its session has started, and stores the frozen
weights in the planned dtype (`budget.prepare_for_steps`). Models in the cache serve the next run too, so here the
text tower and the encoder stay, and the weight dtype is part of the key: a run only ever gets models whose
frozen weights are stored as its own plan says (the same numbers a separate `vqclip generate` computes with).
A model loaded with its encoder also serves runs that need none (the encoder is simply unused).

A CLIP ensemble's first model comes with its VQGAN (`get`); its others are kept by `clip`, also per weight dtype.
Which dtype a model's weights are stored in is tracked per model, so a VQGAN or CLIP that serves several runs (in
different ensembles) is converted once.
"""

from __future__ import annotations

from typing import Any


class ModelCache:
    """(yaml, ckpt, clip model, clip pretrained, device, with_encoder, trust, weight dtype) → engine.Models.
    `loads` counts the loads done; `limit` (the `keep` given) pairs at most stay (the least recently used goes first)."""

    def __init__(self, keep: int = 1) -> None:
        self.limit = max(1, keep)  # (not `self.keep`: that is the method below)
        self.loads = 0
        self._models: dict[tuple[Any, ...], Any] = {}
        self._dtypes: dict[int, Any] = {}  # id(a VQGAN or CLIP kept here) -> the dtype its weights are stored in
        self._others: dict[tuple[Any, ...], Any] = {}  # `keep`: models other than a VQGAN + CLIP pair

    @staticmethod
    def _key(args: tuple[Any, ...], encoder: bool, trust: bool, weight_dtype: Any) -> tuple[Any, ...]:
        yaml_path, ckpt_path, clip_model, clip_pretrained, device = args
        return (str(yaml_path), str(ckpt_path), clip_model, clip_pretrained, str(device), encoder, trust,
                str(weight_dtype))

    def get(self, args: tuple[Any, ...], kw: dict[str, Any], weight_dtype: Any = None) -> Any:
        """The models for `engine.load_models(*args, **kw)`, loaded now only when not kept already."""
        from vqclip import engine

        encoder, trust = bool(kw.get("with_encoder")), bool(kw.get("trust"))
        for key in ([self._key(args, encoder, trust, weight_dtype)]
                    + ([] if encoder else [self._key(args, True, trust, weight_dtype)])):
            if key in self._models:
                self._models[key] = models = self._models.pop(key)  # most recently used last
                return models
        key = self._key(args, encoder, trust, weight_dtype)
        while len(self._models) >= self.limit:  # free the oldest before loading the next
            old = self._models.pop(next(iter(self._models)))
            self._forget(old.vqgan, old.clip)
            del old
            import gc

            gc.collect()
        models = engine.load_models(*args, **kw)
        self.loads += 1
        self._models[key] = models
        return models

    def clip(self, model: str, pretrained: str | None, device: Any, weight_dtype: Any = None) -> Any:
        """A CLIP of an ensemble other than its first (engine.clip.load_clip), kept as `keep` keeps models."""
        from vqclip.engine.clip import load_clip

        return self.keep(("ensemble-clip", model, pretrained, str(device), str(weight_dtype)),
                         lambda: load_clip(model, pretrained, device))

    def prepare_for_steps(self, models: Any, plan: Any) -> None:
        """`budget.prepare_for_steps` for kept models: the weights stored as planned (once per model, whichever
        runs share it), nothing freed."""
        dtype = plan.weight_dtype
        if dtype is None:
            return
        for part in [models.vqgan, *models.clips]:
            if self._dtypes.get(id(part)) != dtype:
                part.set_weight_dtype(dtype)
                self._dtypes[id(part)] = dtype

    def _forget(self, *parts: Any) -> None:
        for part in parts:
            self._dtypes.pop(id(part), None)

    def keep(self, key: tuple[Any, ...], load: Any) -> Any:
        """Any other model (a diffusion U-Net, a CLIP of an ensemble) by `key`: `load()` only when not kept;
        at most 4 × `limit` of them stay (the least recently used goes first)."""
        if key in self._others:
            self._others[key] = model = self._others.pop(key)
            return model
        while len(self._others) >= 4 * self.limit:
            self._forget(self._others.pop(next(iter(self._others))))
            import gc

            gc.collect()
        model = load()
        self.loads += 1
        self._others[key] = model
        return model

    def clear(self) -> None:
        self._models.clear()
        self._dtypes.clear()
        self._others.clear()


__all__ = ["ModelCache"]
