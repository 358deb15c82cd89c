"""The package's layering, read from the source with `ast` (nothing is imported), so that it stays as designed:

- every import of a vqclip module names one that exists (a move or rename leaves none behind);
- no import cycle among vqclip's modules;
- the library (engine, weights, runs, files, record, config, prompts, errors, gallery and the other plain
  modules) never imports the CLI (`vqclip.cli`, `vqclip.commands.*`) nor the pipeline (`vqclip.pipeline.*`);
- the pipeline never imports the CLI;
- the benchmarks (`vqclip.bench`) are a layer above the pipeline: they may import the pipeline and the engine,
  nothing in the library, the pipeline or the front ends imports them, and they never import the command line;
- only the CLI prints, so only the CLI imports Rich;
- no module grows past MAX_LINES: past that a module holds more than one idea and gets split.

Every import counts, at module level or inside a function (a deferred import is still a dependency; it only
moves the cost). `from vqclip.x import y` depends on the module `vqclip.x.y` when there is one, else on `vqclip.x`.
"""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path
from typing import Callable

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "vqclip"
MAX_LINES = 400
# The front ends: the command line (`python -m vqclip` too) and the web UI.
CLI = ("vqclip.cli", "vqclip.commands", "vqclip.__main__", "vqclip.serve")
# The run skeleton and what drives or serves it: `vqclip batch` drives the pipeline; the engines' modules
# (vqclip.engines.*, a trailing dot: the registry `vqclip.engines` itself is a plain library module) run in it.
PIPELINE = ("vqclip.pipeline", "vqclip.batch", "vqclip.engines.")
SKELETON = ("vqclip.pipeline.execute", "vqclip.pipeline.stages", "vqclip.pipeline.resume", "vqclip.batch")
BENCH = ("vqclip.bench",)  # scripts/bench.py and scripts/gpu_check.py: above the pipeline, beside the CLI


def _under(module: str, prefixes: tuple[str, ...]) -> bool:
    """`module` is one of `prefixes` or inside one (a prefix ending in a dot: inside it only)."""
    return any(module.startswith(p) if p.endswith(".") else (module == p or module.startswith(p + "."))
               for p in prefixes)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@lru_cache(maxsize=1)
def modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """The modules one import statement depends on: vqclip modules by name, third-party ones by top name."""
    known = modules()
    if isinstance(node, ast.Import):
        return [a.name if a.name.startswith("vqclip") else a.name.split(".")[0] for a in node.names]
    if node.level:  # relative: from the module's own package upwards
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    if not source.startswith("vqclip"):
        return [source.split(".")[0]]
    return [f"{source}.{a.name}" if f"{source}.{a.name}" in known else source for a in node.names]


@lru_cache(maxsize=1)
def imports() -> dict[str, dict[str, int]]:
    """module -> {imported module: first line}, for every import statement anywhere in the module."""
    out: dict[str, dict[str, int]] = {}
    for name, path in modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        deps: dict[str, int] = {}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for dep in _resolve(node, name, path.name == "__init__.py"):
                    deps.setdefault(dep, node.lineno)
        deps.pop(name, None)
        out[name] = deps
    return out


def _where(module: str, dep: str) -> str:
    path = modules()[module].relative_to(SRC.parent)
    return f"{module} imports {dep} ({path}:{imports()[module][dep]})"


def _cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of `graph` (Tarjan), as a closed path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:  # recursion depth is bounded by the number of modules (~70)
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)

    cycles = []
    for component in components:  # a shortest way back to the start, by breadth-first search inside it
        start, members = component[0], set(component)
        paths = {start: [start]}
        queue = [start]
        while queue:
            v = queue.pop(0)
            for w in graph[v]:
                if w == start:
                    cycles.append(paths[v] + [start])
                    queue = []
                    break
                if w in members and w not in paths:
                    paths[w] = paths[v] + [w]
                    queue.append(w)
    return cycles


def _forbidden(importers: Callable[[str], bool], forbidden: tuple[str, ...]) -> list[str]:
    return [_where(m, d) for m, deps in sorted(imports().items()) if importers(m)
            for d in sorted(deps) if _under(d, forbidden)]


def test_the_parser_sees_the_package():
    assert {"vqclip.cli", "vqclip.config", "vqclip.engine", "vqclip.engine.loop", "vqclip.pipeline.execute"} \
        <= set(modules())
    assert "vqclip.engine.loop" in imports()["vqclip.engine"]  # `from vqclip.engine.loop import ...`
    assert "vqclip.commands.options" in imports()["vqclip.commands.generate"]  # `from vqclip.commands import options`
    assert "vqclip.pipeline.execute" in imports()["vqclip.commands.progress"]
    assert "torch" in imports()["vqclip.engine.loop"]
    assert _cycles({"a": ["b"], "b": ["c", "d"], "c": ["a"], "d": [], "e": ["e2"], "e2": ["e"]}) == \
        [["a", "b", "c", "a"], ["e", "e2", "e"]]


def test_every_vqclip_import_names_a_module_that_exists():
    """A module moved or renamed leaves no import behind (one inside a function would fail only when it runs)."""
    missing = [_where(m, d) for m, deps in sorted(imports().items()) for d in sorted(deps)
               if d.startswith("vqclip") and d not in modules()]
    assert not missing, "\n".join(missing)


def test_no_import_cycles():
    cycles = _cycles({m: sorted(d for d in deps if d in modules()) for m, deps in imports().items()})
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_library_never_imports_the_cli_or_the_pipeline():
    bad = _forbidden(lambda m: not _under(m, CLI + PIPELINE + BENCH), CLI + PIPELINE)
    assert not bad, "\n".join(bad)


def test_nothing_imports_the_benchmarks_and_they_never_import_the_command_line():
    """The benchmarks may import any layer below them (a bench of the web UI imports vqclip.serve), but not the
    command line, which they are no part of."""
    assert "vqclip.pipeline.load" in imports()["vqclip.bench.common"]  # the bench loads runs as a run does
    command_line = ("vqclip.cli", "vqclip.commands", "vqclip.__main__")
    bad = _forbidden(lambda m: not _under(m, BENCH), BENCH) + _forbidden(lambda m: _under(m, BENCH), command_line)
    assert not bad, "\n".join(bad)


def test_engines_never_import_the_run_skeleton():
    """An engine is driven by the skeleton; it never drives runs itself (nor batches, nor the chain)."""
    bad = _forbidden(lambda m: _under(m, ("vqclip.engines",)), SKELETON)
    assert not bad, "\n".join(bad)


def test_the_pipeline_never_imports_the_cli():
    bad = _forbidden(lambda m: _under(m, PIPELINE), CLI)
    assert not bad, "\n".join(bad)


def test_only_the_cli_imports_rich():
    bad = [_where(m, "rich") for m, deps in sorted(imports().items()) if "rich" in deps and not _under(m, CLI)]
    assert not bad, "\n".join(bad)


def test_no_module_is_too_long():
    sizes = {m: len(p.read_text(encoding="utf-8").splitlines()) for m, p in modules().items()}
    long = sorted(((n, m) for m, n in sizes.items() if n > MAX_LINES), reverse=True)
    assert not long, f"modules over {MAX_LINES} lines: " + ", ".join(f"{m} ({n})" for n, m in long)


_PROBE = """
import contextlib, io, sys
sys.argv = ["vqclip", *sys.argv[1:]]
from vqclip.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    try:
        main()
    except SystemExit:
        pass
print(" ".join(sorted(sys.modules)))
"""


def _imported_by(*argv: str) -> set[str]:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


def test_help_and_version_load_nothing_heavy():
    """`vqclip --help` and `--version` answer at once: no torch, pydantic or YAML (the help texts are in
    vqclip.knobs), no command group's own module (LAZY_GROUPS in vqclip.cli), and for --version not even Typer."""
    heavy = {"torch", "pydantic", "yaml", "numpy", "PIL"}
    help_modules = _imported_by("--help")
    assert "typer" in help_modules  # the probe did show the help
    assert not heavy & help_modules
    assert not {"vqclip.commands.runs", "vqclip.commands.weights", "vqclip.commands.gallery", "vqclip.config",
                "vqclip.weights", "vqclip.runs"} & help_modules
    assert not (heavy | {"typer", "rich", "click"}) & _imported_by("--version")
