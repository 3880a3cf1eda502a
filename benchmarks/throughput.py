"""Throughput of the pipeline against a simulated LM server: how close do we get to the ideal?

Runs the chit-chat task through the real CLI code path (``fms_dgt.cli.main``) with the OpenAI
engine against ``fms_dgt.testing.lm_server`` in a separate process (fixed latency per request,
a fixed number of parallel slots). Each configuration runs in a fresh child process so its CPU
time and peak RSS are its own. Prints one JSON line per configuration.

    python benchmarks/throughput.py            # N=100 and N=2000 at 64 slots, N=2000 at 512 slots
    python benchmarks/throughput.py --quick    # N=100 at 64 slots only
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

REPO = Path(__file__).resolve().parent.parent
TASK = REPO / "tasks/public/examples/chit_chat/task.yaml"


def child(args: argparse.Namespace) -> None:
    """One measured run, in this process: the CLI on a copy of the task pointed at the server."""
    from fms_dgt.cli import main

    task = yaml.safe_load(TASK.read_text())
    task["engines"] = {
        "default": {"type": "openai", "model": "sim-model", "base_url": args.url + "/v1",
                    "max_concurrency": args.slots, "timeout": 60}
    }
    task["iteration_stages"][0]["mode"] = args.mode
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "task.yaml"
        path.write_text(yaml.safe_dump(task, sort_keys=False))
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        code = main([
            "--task-paths", str(path), "--num-outputs-to-generate", str(args.n), "--restart",
            "--output-dir", str(Path(tmp) / "out"), "--concurrency", str(args.slots), "--seed", "1", "--quiet",
        ])
        wall = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        summary = json.loads((Path(tmp) / "out/public/examples/chit_chat/run_summary.json").read_text())
    assert code == 0, f"run failed with exit code {code}"
    server = httpx.get(args.url + "/stats").json()
    calls = summary["lm_calls"]
    ideal = calls * args.latency / args.slots
    print(json.dumps({
        "n": args.n, "slots": args.slots, "latency_s": args.latency, "flow_controller": args.mode,
        "accepted": summary["total"], "wall_s": round(wall, 2),
        "conversations_per_min": round(summary["total"] / wall * 60, 1),
        "lm_calls": calls, "lm_calls_per_s": round(calls / wall, 1),
        "lm_calls_per_conversation": round(calls / summary["total"], 2),
        "effective_concurrency": round(calls * args.latency / wall, 1),
        "ideal_wall_s": round(ideal, 2), "overhead_ratio": round(wall / ideal, 3),
        "cpu_ms_per_lm_call": round(cpu / calls * 1000, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "server_peak_concurrency": server["peak_concurrency"],
        "dropped": summary["dropped"],
    }), flush=True)


def run(n: int, slots: int, latency: float, mode: str) -> None:
    server = subprocess.Popen(
        [sys.executable, "-m", "fms_dgt.testing.lm_server", "--latency", str(latency), "--slots", str(slots),
         "--plausible"],
        stdout=subprocess.PIPE, text=True, cwd=REPO,
    )
    try:
        url = json.loads(server.stdout.readline())["url"]  # type: ignore[union-attr]
        subprocess.run(
            [sys.executable, __file__, "--child", "--url", url, "--n", str(n), "--slots", str(slots),
             "--latency", str(latency), "--mode", mode],
            check=True, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    finally:
        server.terminate()
        server.wait(timeout=10)


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="only N=100 at 64 slots")
    parser.add_argument("--latency", type=float, default=0.2, help="seconds per request on the server")
    parser.add_argument("--modes", nargs="+", default=["two_call", "one_call"], help="flow-controller modes")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--slots", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    options = parse()
    if options.child:
        child(options)
    else:
        configs = [(100, 64)] if options.quick else [(100, 64), (2000, 64), (2000, 512)]
        for mode in options.modes:
            for n, slots in configs:
                run(n, slots, options.latency, mode)
