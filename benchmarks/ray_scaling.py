"""Conversations per minute: the local executor vs ``--executor ray`` with K workers.

The chit-chat task runs through the real CLI (``python -m fms_dgt.public``, one process per run)
with the OpenAI engine against two simulated LM servers (``python -m fms_dgt.testing.lm_server``,
two endpoints of one engine), each with a fixed latency per request and S parallel slots. Both
executors keep the same number of conversations in flight: the local one all in its process, the
Ray one split over its workers. The Ray runs start their own local cluster, as a user without
``--ray-address`` would; the time to start it and its workers is reported apart.

Everything shares this machine's cores: the servers, the driver, the Ray workers and the Ray
processes themselves. Prints one JSON line per run.

    python benchmarks/ray_scaling.py            # N=1000 at 64 and at 256 slots per server
    python benchmarks/ray_scaling.py --quick    # N=200 at 64 slots
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
TASK = REPO / "tasks/public/examples/chit_chat/task.yaml"


def cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def start_server(latency: float, slots: int) -> tuple[subprocess.Popen[str], str]:
    server = subprocess.Popen(
        [sys.executable, "-m", "fms_dgt.testing.lm_server", "--latency", str(latency), "--slots", str(slots),
         "--plausible"],
        stdout=subprocess.PIPE, text=True, cwd=REPO,
    )
    assert server.stdout is not None
    return server, json.loads(server.stdout.readline())["url"]


def run(n: int, latency: float, slots: int, executor: str, workers: int) -> None:
    servers = [start_server(latency, slots) for _ in range(2)]
    urls = [url + "/v1" for _, url in servers]
    in_flight = 2 * slots  # what the two servers can serve at once
    try:
        with tempfile.TemporaryDirectory() as tmp:
            task = yaml.safe_load(TASK.read_text())
            task["engines"] = {"default": {"type": "openai", "model": "sim-model", "base_url": urls,
                                           "max_concurrency": slots, "timeout": 60}}
            path = Path(tmp) / "task.yaml"
            path.write_text(yaml.safe_dump(task, sort_keys=False))
            args = [sys.executable, "-m", "fms_dgt.public", "--task-paths", str(path),
                    "--num-outputs-to-generate", str(n), "--restart", "--output-dir", str(Path(tmp) / "out"),
                    "--seed", "1", "--quiet"]
            if executor == "ray":
                args += ["--executor", "ray", "--workers", str(workers), "--concurrency", str(in_flight // workers)]
            else:
                args += ["--concurrency", str(in_flight)]
            busy0, total0 = cpu_ticks()
            t0 = time.perf_counter()
            done = subprocess.run(args, cwd=REPO, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            busy1, total1 = cpu_ticks()
            if done.returncode != 0:
                raise SystemExit(f"run failed ({done.returncode}): {done.stderr[-2000:]}")
            summary = json.loads((Path(tmp) / "out/public/examples/chit_chat/run_summary.json").read_text())
    finally:
        for server, _ in servers:
            server.terminate()
            server.wait(timeout=10)
    kept = summary["total"]
    startup = summary["executor"].get("start_seconds", 0.0)
    calls = summary["lm_calls"]
    print(json.dumps({
        "executor": executor, "workers": workers if executor == "ray" else 1, "n": n, "endpoints": 2,
        "slots_per_endpoint": slots, "latency_s": latency, "conversations_in_flight": in_flight,
        "wall_s": round(wall, 2), "ray_start_s": round(startup, 2),
        "conversations_per_min": round(kept / wall * 60, 1),
        "conversations_per_min_after_start": round(kept / (wall - startup) * 60, 1),
        "lm_calls": calls, "lm_calls_per_s": round(calls / wall, 1),
        "ideal_wall_s": round(calls * latency / in_flight, 2),
        "machine_cpu_busy_pct": round(100 * (busy1 - busy0) / max(total1 - total0, 1), 1),
        "calls_per_endpoint": {url: c["calls"] for url, c in summary["engines"]["default"]["endpoints"].items()},
        "dropped": summary["dropped"],
    }), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="N=200 at 64 slots only")
    parser.add_argument("--latency", type=float, default=0.2, help="seconds per request on the servers")
    parser.add_argument("--workers", type=int, default=2, help="Ray workers")
    options = parser.parse_args()
    configs = [(200, 64)] if options.quick else [(1000, 64), (1000, 256)]
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    for n, slots in configs:
        for executor in ("local", "ray"):
            run(n, options.latency, slots, executor, options.workers)


if __name__ == "__main__":
    main()
