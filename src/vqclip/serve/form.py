"""The page's form, generated from RunConfig (and Animation) — the same fields, defaults, bounds and help texts
the CLI's options come from, so a new knob shows up on the page without touching it — and the way back: form
values to a validated RunConfig, with one line per bad field.

Images never travel as paths: the page sends `{"upload": TOKEN}` (a checked upload, `uploads.py`) or
`{"run": RUN_ID}` (that run's output.png, for "animate from here"), and they become files inside the output
folder here. On a server reachable from the network, model fields must be names (registry or installed custom
models), not paths on the server's disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vqclip.errors import VqclipError

# Layout only (not a list of fields): these come first, open; every other RunConfig field goes under "More
# settings", in RunConfig's own order, so a field added to RunConfig appears there by itself.
MAIN = ("engine", "prompt", "image_prompts", "noise_prompts", "init_image", "width", "height", "steps", "seed", "model",
        "clip_model", "clip_pretrained")
IMAGE_FIELDS = {"init_image": "image", "image_prompts": "images"}
# Animation fields that are the state of a run (how far it got), not settings a user picks.
ANIMATION_STATE = {"frames_done", "per_frame", "story_frames"}
PATH_FIELDS = ("model", "clip_model", "clip_pretrained")


class FormError(VqclipError):
    """Bad form values: `message` is one line, `fields` maps each bad field to its own line."""

    def __init__(self, message: str, fields: dict[str, str] | None = None, status: int = 422) -> None:
        super().__init__(message)
        self.fields = fields or {}
        self.status = status


def _field(name: str, prop: dict[str, Any], group: str) -> dict[str, Any]:
    """One field's spec from its JSON schema: type, nullability, bounds, choices, default and help."""
    nullable = False
    if "anyOf" in prop:
        kinds = [p for p in prop["anyOf"] if p.get("type") != "null"]
        nullable = len(kinds) < len(prop["anyOf"])
        prop = {**prop, **(kinds[0] if kinds else {})}
    spec: dict[str, Any] = {"name": name, "label": prop.get("title", name), "help": prop.get("description", ""),
                            "type": prop.get("type", "string"), "nullable": nullable,
                            "default": prop.get("default"), "group": group}
    for key, out in (("minimum", "min"), ("maximum", "max"), ("exclusiveMinimum", "gt"),
                     ("exclusiveMaximum", "lt"), ("enum", "choices")):
        if key in prop:
            spec[out] = prop[key]
    if "lt" in spec and spec["lt"] > 2**53:  # beyond what a JavaScript number holds exactly: leave it to the server
        del spec["lt"]
    if name in IMAGE_FIELDS:
        spec["widget"] = IMAGE_FIELDS[name]
    return spec


def form_spec(choices: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """{"run": [field, …], "animation": [field, …]} for the page to draw (choices: suggestions per field)."""
    from vqclip.animation import Animation
    from vqclip.config import RunConfig, default_values

    defaults = default_values()
    props = RunConfig.model_json_schema()["properties"]
    run = []
    for name in RunConfig.model_fields:
        spec = _field(name, props[name], "main" if name in MAIN else "more")
        spec["default"] = defaults.get(name, spec["default"])
        if choices and name in choices:
            spec["suggest"] = choices[name]
        if name == "engine":  # every engine vqclip has, from its registry (animations: the Animate tab)
            from vqclip.engines import ENGINES

            spec["choices"] = [e for e in ENGINES if e != "animation"]
        run.append(spec)
    run.sort(key=lambda s: (s["group"] != "main", MAIN.index(s["name"]) if s["name"] in MAIN else 0))
    aprops = Animation.model_json_schema()["properties"]
    animation = [_field(name, aprops[name], "animation") for name in Animation.model_fields
                 if name not in ANIMATION_STATE]
    return {"run": run, "animation": animation}


def model_choices(weights_dir: Path | None) -> dict[str, list[str]]:
    """Suggestions for the model fields: installed VQGANs first, then the rest of the registry; CLIP weights
    found in the Hugging Face cache. Never fails (an unreadable weights folder just suggests less)."""
    out: dict[str, list[str]] = {}
    try:
        from vqclip.weights.installed import all_status
        from vqclip.weights.store import weights_dir as default_weights_dir

        rows = all_status(default_weights_dir(weights_dir))
        out["model"] = [r.name for r in rows if r.installed] + [r.name for r in rows if not r.installed]
    except Exception:
        pass
    try:
        from vqclip.weights.clip import cached_clip_weights, parse_clip_name

        pairs = [parse_clip_name(c.name) for c in cached_clip_weights()]
        out["clip_model"] = sorted({model for model, _ in pairs})
        out["clip_pretrained"] = sorted({tag for _, tag in pairs})
    except Exception:
        pass
    return out


def _looks_like_path(value: Any) -> bool:
    return isinstance(value, str) and (any(c in value for c in "/\\") or value.startswith((".", "~")))


def _number(value: Any, what: str) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FormError(f"{what}: a weight must be a number, not {value!r}", {"image_prompts": "not a number"})
    return str(value)


def resolve_images(values: dict[str, Any], uploads: Any, output_dir: Path) -> tuple[dict[str, Any], list[str]]:
    """Form values with image references turned into files here; also the upload tokens they use."""
    from vqclip.runs import IMAGE, is_run_id

    values = dict(values)
    tokens: list[str] = []

    def one(ref: Any, what: str) -> str:
        if isinstance(ref, dict) and set(ref) == {"upload"}:
            path = uploads.path(ref["upload"])
            tokens.append(ref["upload"])
            return str(path)
        if isinstance(ref, dict) and set(ref) == {"run"}:
            run_id = ref["run"]
            if not isinstance(run_id, str) or not is_run_id(run_id):
                raise FormError(f"{what}: {str(run_id)[:40]!r} is not a run id", {what: "not a run id"}, 400)
            path = output_dir / run_id / IMAGE
            if path.is_symlink() or not path.is_file() or (output_dir / run_id).is_symlink():
                raise FormError(f"{what}: run {run_id} has no output.png here", {what: "no such run image"}, 404)
            return str(path)
        raise FormError(f'{what}: give an uploaded image ({{"upload": TOKEN}}) or a run ({{"run": ID}}); paths '
                        "are not accepted from the page", {what: "upload the image"}, 400)

    init = values.get("init_image")
    if init is not None:
        values["init_image"] = one(init, "init_image")
    prompts = values.get("image_prompts")
    if prompts is not None:
        if not isinstance(prompts, list) or len(prompts) > 16:
            raise FormError("image_prompts: give a list of at most 16 images", {"image_prompts": "too many"}, 400)
        out = []
        for item in prompts:
            if not isinstance(item, dict):
                raise FormError("image_prompts: each item is {\"upload\": TOKEN, \"weight\": W}",
                                {"image_prompts": "bad item"}, 400)
            ref = {k: v for k, v in item.items() if k in ("upload", "run")}
            path = one(ref, "image_prompts")
            weight, stop = _number(item.get("weight"), "image_prompts"), _number(item.get("stop"), "image_prompts")
            out.append(path + (f":{weight or 1}" if weight or stop else "") + (f":{stop}" if stop else ""))
        values["image_prompts"] = out
    return values, tokens


def build_run_config(values: Any, *, allow_paths: bool) -> Any:
    """A RunConfig from form values (defaults.yaml below them), or FormError with a line per bad field."""
    from pydantic import ValidationError

    from vqclip.config import RunConfig, layered_values, validation_lines
    from vqclip.prompts import PromptError

    if not isinstance(values, dict):
        raise FormError("config: send a JSON object of settings", {}, 400)
    if not allow_paths:
        check_no_paths(values)
    try:
        return RunConfig.model_validate(layered_values(values))
    except ValidationError as e:
        return _raise_lines(validation_lines(e))
    except (PromptError, ValueError) as e:
        raise FormError(str(e).splitlines()[0] if str(e) else "invalid settings", {}) from None


def check_no_paths(values: dict[str, Any]) -> None:
    """On a server reachable from the network, model fields name installed models, never files on its disk."""
    for name in PATH_FIELDS:
        if _looks_like_path(values.get(name)):
            raise FormError(f"{name}: this server is reachable from the network, so give a model name, not a "
                            "path on its disk (install custom models with `vqclip weights`)",
                            {name: "give a name, not a path"}, 400)


def build_animation(values: Any) -> Any:
    from pydantic import ValidationError

    from vqclip.animation import Animation
    from vqclip.config import validation_lines

    if not isinstance(values, dict):
        raise FormError("animation: send a JSON object of animation settings", {}, 400)
    bad = sorted(set(values) & ANIMATION_STATE)
    if bad:
        raise FormError(f"animation: {bad[0]} is recorded by a run, not set", {bad[0]: "not a setting"}, 400)
    try:
        return Animation.model_validate({k: v for k, v in values.items() if v is not None and v != ""})
    except ValidationError as e:
        return _raise_lines(validation_lines(e))


def _raise_lines(lines: list[str]) -> Any:
    fields = {}
    for line in lines:
        name, _, message = line.partition(": ")
        fields.setdefault(name.split(".")[0], message or line)
    more = [line.split(":")[0] for line in lines[1:]]
    also = f" (also wrong: {', '.join(more)})" if more else ""
    raise FormError(f"{lines[0] if lines else 'invalid settings'}{also}", fields)


def run_settings(details: dict[str, Any]) -> dict[str, Any]:
    """A run's details.json → form values ("load these settings"): its config with the resolved seed; input
    images become references to that run's own copies where it kept them."""
    from vqclip.config import RunConfig

    config = details.get("config") if isinstance(details.get("config"), dict) else {}
    values = {k: v for k, v in config.items() if k in RunConfig.model_fields}
    if isinstance(details.get("seed"), int):
        values["seed"] = details["seed"]
    values.pop("init_image", None)
    values.pop("image_prompts", None)
    return values


__all__ = ["form_spec", "model_choices", "build_run_config", "build_animation", "resolve_images", "run_settings",
           "FormError", "check_no_paths"]
