"""`startup`: median wall time of fresh `vqclip --help` and `vqclip --version` processes (the installed entry
point), with the bytecode cached as in any install (in a temporary PYTHONPYCACHEPREFIX, after one untimed run),
and also as the environment has it when that forbids writing bytecode (then every vqclip module is compiled at
each start)."""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from vqclip.bench.common import Say, format_table, loadavg, quiet

STARTUP_ARGS = (("--help",), ("--version",))
STARTUP_TARGET_S = 0.3  # median wall time a user waits for `vqclip --help` / `--version`


def vqclip_command() -> list[str]:
    """The installed `vqclip` entry point beside this interpreter (else on PATH, else `python -m vqclip`)."""
    beside = Path(sys.executable).with_name("vqclip")
    found = str(beside) if beside.is_file() else shutil.which("vqclip")
    return [found] if found else [sys.executable, "-m", "vqclip"]


def time_process(cmd: list[str], env: dict[str, str], runs: int) -> tuple[list[float], list[float]]:
    """(wall seconds, CPU seconds) of `runs` fresh processes; CPU time (user + system) is what a busy machine
    distorts least."""
    walls, cpus = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, env=env)
        walls.append(time.perf_counter() - t)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr.decode(errors='replace')[-300:]}")
    return walls, cpus


def run(args: argparse.Namespace, say: Say = quiet) -> dict[str, Any]:
    """`--startup-runs` timed processes per command and bytecode setting."""
    exe = vqclip_command()
    load = loadavg()
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        cached = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        cached["PYTHONPYCACHEPREFIX"] = cache
        setups = [("bytecode cached", cached)]
        if os.environ.get("PYTHONDONTWRITEBYTECODE"):
            setups.append(("no bytecode cache (PYTHONDONTWRITEBYTECODE)", dict(os.environ)))
        for label, env in setups:
            for extra in STARTUP_ARGS:
                say(f"vqclip {' '.join(extra)}, {label}…")
                time_process([*exe, *extra], env, 1)  # untimed: writes the bytecode cache, warms the disk cache
                times, cpus = time_process([*exe, *extra], env, args.startup_runs)
                median = statistics.median(times)
                rows.append({"command": " ".join(["vqclip", *extra]), "bytecode": label, "runs": len(times),
                             "median_s": round(median, 3), "min_s": round(min(times), 3),
                             "cpu_median_s": round(statistics.median(cpus), 3),
                             "times_s": [round(x, 3) for x in times], "met": median <= STARTUP_TARGET_S})
    return {"rows": rows, "target_s": STARTUP_TARGET_S, "entry_point": exe, "loadavg_start": load,
            "loadavg_end": loadavg()}


def report(data: dict[str, Any]) -> str:
    runs = data["rows"][0]["runs"] if data["rows"] else 0
    rows = [[r["command"], r["bytecode"], f"{r['median_s']:.3f}{'' if r['met'] else ' MISSED'}", f"{r['min_s']:.3f}",
             f"{r['cpu_median_s']:.3f}"] for r in data["rows"]]
    return (f"vqclip start-up: wall time of a fresh process ({runs} runs; load avg {data['loadavg_start']} → "
            f"{data['loadavg_end']})\n"
            + format_table(["command", "bytecode", "median s", "min s", "CPU median s"], rows, right=(2, 3, 4))
            + f"\ntarget: median ≤ {data['target_s']} s; entry point: {' '.join(data['entry_point'])}")
