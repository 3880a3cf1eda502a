"""The README's server command, as a user types it, against simulated servers: how close to ideal?

Each configuration starts ``python -m fms_dgt.testing.lm_server --plausible`` in its own process
and then runs, in a fresh process and with nothing added::

    python -m fms_dgt.public --task-paths tasks/public/examples/chit_chat/task.yaml \\
        --num-outputs-to-generate N --restart --engine openai --base-url URL --model M

(from a scratch folder holding links to the repository's ``tasks`` and ``data``, so ``output/``
lands there). No ``--concurrency``: the adaptive limit has to find each server's capacity.

Printed per configuration: wall (the whole process, start-up included), conversations/min, ideal
(LM calls x latency / slots: the server busy all the time), wall/ideal, the server's peak requests
in flight, time to the first kept conversation against one conversation's own chain of calls
(calls per kept conversation x latency), CPU ms per LM call (the CLI process), and the spare
conversations started for the tail.

    python benchmarks/server_speed.py              # the four configurations of issue 12
    python benchmarks/server_speed.py --tail       # also N=100 at 64 slots without spares, and at 1 s
    python benchmarks/server_speed.py --pinned     # also N=1000 at 64 slots with --concurrency 64
    python benchmarks/server_speed.py --only 0     # one configuration, by index
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
TASK = "tasks/public/examples/chit_chat/task.yaml"
SUMMARY = "output/public/examples/chit_chat/run_summary.json"
MODEL = "sim-model"

# The same CLI with spare conversations switched off (conversations in flight never exceed what N
# still needs, as before issue 12): only to measure what the spares save.
NO_SPARES = (
    "import sys; from fms_dgt.pacing import Pacer; from fms_dgt import cli;"
    " Pacer.in_flight_cap = lambda self, remaining, in_flight: remaining;"
    " sys.argv[0] = 'fms_dgt.public'; cli.run()"
)


@dataclass(frozen=True)
class Config:
    name: str
    n: int
    slots: int
    latency: float = 0.2
    overload: str = "queue"
    spares: bool = True
    pinned: int | None = None  # --concurrency: the tuned command beside the README's


CONFIGS = [
    Config("64 slots", 100, 64),
    Config("64 slots", 1000, 64),
    Config("512 slots", 1000, 512),
    Config("8 slots, slows when overloaded", 100, 8, overload="slowdown"),
]
# What spares save: at 200 ms a conversation's chain is ~2.5 s and this process is busy; at 1 s
# per request the tail (the last conversations' chains) is longer and the process mostly waits.
TAIL = [
    Config("64 slots, no spares (comparison)", 100, 64, spares=False),
    Config("64 slots, 1 s per request", 100, 64, latency=1.0),
    Config("64 slots, 1 s per request, no spares (comparison)", 100, 64, latency=1.0, spares=False),
]
PINNED = Config("64 slots, --concurrency 64 (tuned)", 1000, 64, pinned=64)


def run(config: Config) -> dict[str, object]:
    server = subprocess.Popen(
        [sys.executable, "-m", "fms_dgt.testing.lm_server", "--latency", str(config.latency),
         "--slots", str(config.slots), "--overload", config.overload, "--plausible"],
        stdout=subprocess.PIPE, text=True, cwd=REPO,
    )
    try:
        url = json.loads(server.stdout.readline())["url"]  # type: ignore[union-attr]
        with tempfile.TemporaryDirectory() as tmp:
            for name in ("tasks", "data"):
                os.symlink(REPO / name, Path(tmp) / name)
            args = ["--task-paths", TASK, "--num-outputs-to-generate", str(config.n), "--restart",
                    "--engine", "openai", "--base-url", url + "/v1", "--model", MODEL]
            if config.pinned is not None:
                args += ["--concurrency", str(config.pinned)]
            head = [sys.executable, "-m", "fms_dgt.public"] if config.spares else [sys.executable, "-c", NO_SPARES]
            httpx.post(url + "/stats/reset")
            cpu0 = _children_cpu()
            t0 = time.perf_counter()
            child = subprocess.Popen([*head, *args], cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True)
            _, stderr = child.communicate()
            wall = time.perf_counter() - t0
            cpu = _children_cpu() - cpu0  # the CLI alone: the server is still running
            if child.returncode != 0:
                raise SystemExit(f"{config}: exit {child.returncode}\n{stderr[-2000:]}")
            summary = json.loads((Path(tmp) / SUMMARY).read_text())
        stats = httpx.get(url + "/stats").json()
    finally:
        server.terminate()
        server.wait(timeout=10)
    calls = summary["lm_calls"]
    kept = summary["total"]
    ideal = calls * config.latency / config.slots
    chain = calls / kept * config.latency
    first = summary["time_to_first_kept_seconds"]
    (limits,) = summary["engines"]["default"]["concurrency"].values()
    return {
        "config": config.name, "n": config.n, "slots": config.slots, "overload": config.overload,
        "spares": config.spares, "kept": kept, "wall_s": round(wall, 1), "run_wall_s": summary["wall_seconds"],
        "conversations_per_min": round(kept / wall * 60), "ideal_s": round(ideal, 1),
        "wall_over_ideal": round(wall / ideal, 2), "peak_in_flight": stats["peak_concurrency"],
        "limit_final": limits["final"], "limit_peak": limits["peak"],
        "first_kept_s": first, "chain_s": round(chain, 2), "first_over_chain": round(first / chain, 2),
        "cpu_ms_per_call": round(cpu / calls * 1000, 2), "lm_calls": calls,
        "spare_conversations": summary["spare"]["conversations"], "spare_tokens": summary["spare"]["tokens"],
        "tokens": sum(v["prompt_tokens"] + v["completion_tokens"] for v in summary["per_engine"].values()),
    }


def _children_cpu() -> float:
    """CPU seconds of the child processes that have ended so far."""
    usage = os.times()
    return usage.children_user + usage.children_system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", type=int, nargs="+", help="indexes of CONFIGS to run")
    parser.add_argument("--tail", action="store_true",
                        help="also N=100 at 64 slots without spare conversations, and both at 1 s per request")
    parser.add_argument("--pinned", action="store_true", help="also N=1000 at 64 slots with --concurrency 64")
    args = parser.parse_args()
    configs = [CONFIGS[i] for i in args.only] if args.only else list(CONFIGS)
    if args.tail:
        configs.extend(TAIL)
    if args.pinned:
        configs.append(PINNED)
    print(f"# load before: {os.getloadavg()[0]:.1f} (1 min), {os.cpu_count()} CPUs", flush=True)
    for config in configs:
        print(json.dumps(run(config)), flush=True)
        print(f"# load: {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()
