"""CPU per LM call of one process at 512 slots, and where it goes.

Runs the README's command for a server (``python -m fms_dgt.public --task-paths TASK --engine
openai --base-url URL --model M``, plus ``--concurrency``) on the chit-chat task against
``python -m fms_dgt.testing.lm_server --slots 512 --latency 0.2 --plausible`` in another process.
The task copy sets ``max_concurrency`` to the slots (on this branch the override keeps the task's
value). The run's CPU (user + sys of the CLI process, start-up and report included) divided by
its LM calls is the figure; the machine's load average is printed beside it, since the cores are
shared. ``--profile`` adds one run under cProfile and prints its CPU per call by package (the
profiler itself inflates every figure, so read them as shares). ``--src DIR`` runs the package
from another checkout (e.g. ``git archive REV fms_dgt data tasks`` of an older commit, run in
that folder), for before/after figures.

    python benchmarks/cpu_per_call.py                      # N=2000, twice
    python benchmarks/cpu_per_call.py --profile --repeat 0  # only the profiled run
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pstats
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from ray_scaling import start_server  # the simulated server in another process, shared

REPO = Path(__file__).resolve().parent.parent
TASK = REPO / "tasks/public/examples/chit_chat/task.yaml"
# Profile rows grouped by where the code lives.
GROUPS = ("httpx", "httpcore", "h11", "anyio", "sniffio", "tenacity", "pydantic", "pydantic_core", "jinja2",
          "matplotlib", "yaml")

PROFILED = (
    "import cProfile, sys, time\n"
    "from fms_dgt.cli import main\n"
    "profile = cProfile.Profile(time.process_time)\n"
    "code = profile.runcall(main, sys.argv[1:])\n"
    "profile.dump_stats({out!r})\n"
    "sys.exit(code)\n"
)


def group(file: str, function: str) -> str:
    if "site-packages/" in file:
        package = file.split("site-packages/")[1].split("/")[0]
        return package if package in GROUPS else "other libraries"
    if "/fms_dgt/" in file:
        return "fms_dgt/" + file.split("/fms_dgt/")[1].split("/")[0].removesuffix(".py")
    if "/asyncio/" in file:
        return "asyncio"
    if file.endswith(("json/encoder.py", "json/decoder.py", "json/__init__.py")):
        return "json"
    if file == "~":  # C functions: socket calls, selectors, builtins
        return "socket and select" if any(s in function for s in ("socket", "select", "epoll")) else "builtins"
    return "other stdlib"


def run(args: argparse.Namespace, profile: Path | None = None) -> dict:
    server, url = start_server(slots=args.slots, latency=args.latency)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            task = yaml.safe_load(TASK.read_text())
            task["engines"]["default"]["max_concurrency"] = args.slots
            path = Path(tmp) / "task.yaml"
            path.write_text(yaml.safe_dump(task, sort_keys=False))
            # cProfile's default clock is wall time, which on a shared machine counts the time the
            # process waits for a core; the process's CPU clock counts only its own work.
            runner = ["-c", PROFILED.format(out=str(profile))] if profile else ["-m", "fms_dgt.public"]
            command = [sys.executable, *runner, "--task-paths", str(path),
                       "--num-outputs-to-generate", str(args.n), "--restart", "--output-dir", str(Path(tmp) / "out"),
                       "--engine", "openai", "--base-url", url + "/v1", "--model", "sim-model",
                       "--concurrency", str(args.slots), "--seed", "1", "--quiet"]
            env = {**os.environ, "PYTHONPATH": str(args.src)} if args.src else None
            load = os.getloadavg()[0]
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            done = subprocess.run(command, cwd=args.src or REPO, env=env, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            if done.returncode != 0:
                raise SystemExit(f"run failed ({done.returncode}): {done.stderr[-2000:]}")
            summary = json.loads((Path(tmp) / "out/public/examples/chit_chat/run_summary.json").read_text())
        peak = httpx.get(url + "/stats").json()["peak_concurrency"]
    finally:
        server.terminate()
        server.wait(timeout=10)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    calls = summary["lm_calls"]
    return {
        "code": str(args.src or REPO), "profiled": profile is not None, "n": args.n, "slots": args.slots,
        "latency_s": args.latency, "accepted": summary["total"], "lm_calls": calls, "wall_s": round(wall, 1),
        "lm_calls_per_s": round(calls / wall), "ideal_lm_calls_per_s": round(args.slots / args.latency),
        "cpu_s": round(cpu, 1), "cpu_ms_per_lm_call": round(cpu / calls * 1000, 3),
        "server_peak_concurrency": peak, "load_average_1min_before": round(load, 2),
        "load_average_1min_after": round(os.getloadavg()[0], 2),
    }


def breakdown(profile: Path, calls: int) -> dict[str, float]:
    """Own CPU time (cProfile's tottime) per LM call, in ms, by group, largest first."""
    totals: collections.Counter[str] = collections.Counter()
    for (file, _, function), (_, _, own, _, _) in pstats.Stats(str(profile)).stats.items():  # type: ignore[attr-defined]
        totals[group(file, function)] += own
    return {name: round(seconds / calls * 1000, 3) for name, seconds in totals.most_common()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="conversations to keep per run")
    parser.add_argument("--slots", type=int, default=512, help="parallel slots of the simulated server")
    parser.add_argument("--latency", type=float, default=0.2, help="seconds per request on the server")
    parser.add_argument("--repeat", type=int, default=2, help="unprofiled runs (to show the noise)")
    parser.add_argument("--profile", action="store_true", help="one more run under cProfile, with a breakdown")
    parser.add_argument("--src", type=Path, help="run the fms_dgt package found in this folder instead")
    args = parser.parse_args()
    for _ in range(args.repeat):
        print(json.dumps(run(args)), flush=True)
    if args.profile:
        with tempfile.TemporaryDirectory() as tmp:
            profile = Path(tmp) / "run.prof"
            figures = run(args, profile)
            figures["cpu_ms_per_lm_call_by_group"] = breakdown(profile, figures["lm_calls"])
            print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
