"""The keep-rate breaker and the forecast, measured against the simulated LM server.

1. A model that never satisfies the scenario stage (its scenarios never name the persona's
   role): the README's command, as written, with ``--engine openai --base-url URL --model M``.
   Prints the exit code, the wall time of the command and what it printed on stderr.
2. Forecast accuracy: the chit-chat task, N=200, against ``python -m fms_dgt.testing.lm_server
   --plausible`` in another process. Prints the forecast of total tokens made when 10
   conversations were kept (in the run's own progress), the forecast of ``--estimate 10``,
   and the tokens the 200-conversation run actually spent.

    python benchmarks/guard.py            # about 6 minutes (five 200-conversation runs)
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
README_COMMAND = [
    sys.executable, "-m", "fms_dgt.public", "--task-paths", "tasks/public/examples/chit_chat/task.yaml",
    "--num-outputs-to-generate", "10", "--restart",
]


def workspace() -> Path:
    """A scratch folder that looks like the repository (tasks/ and data/), so the README's
    relative paths work and its output/ folder is a throwaway."""
    folder = Path(tempfile.mkdtemp(prefix="fms_dgt_guard_"))
    for name in ("tasks", "data"):
        (folder / name).symlink_to(REPO / name)
    return folder


def hopeless() -> None:
    from fms_dgt.testing.lm_server import LMServer, PlausibleReplies

    class OffPersona(PlausibleReplies):
        def __call__(self, body: dict[str, Any], stage: str | None = None) -> str:
            text = super().__call__(body, stage)
            if stage == "lm/scenario":  # the X-FMS-DGT-Stage header
                return f"Someone wants to chat about an everyday topic they care about ({len(text)})."
            return text

    with LMServer(reply=OffPersona(), record_requests=False) as server:
        t0 = time.perf_counter()
        done = subprocess.run(
            [*README_COMMAND, "--engine", "openai", "--base-url", server.url + "/v1", "--model", "M"],
            cwd=workspace(), capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        wall = time.perf_counter() - t0
        requests = server.stats["chat_requests"]
    print(json.dumps({"case": "hopeless", "exit_code": done.returncode, "wall_s": round(wall, 1),
                      "chat_requests": requests}))
    print(done.stderr)


def start_server() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "fms_dgt.testing.lm_server", "--plausible", "--latency", "0.05", "--slots", "64"],
        stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    return proc, json.loads(proc.stdout.readline())["url"]


async def run_200(url: str, folder: Path, seed: int) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The 200-conversation run in this process; the forecast its guard made at 10 kept."""
    from fms_dgt.guard import RunGuard
    from fms_dgt.loader import EngineOverride, load_task
    from fms_dgt.runner import RunOptions, Runner

    captured: dict[str, Any] = {}
    observe = RunGuard.observe

    def spy(self: RunGuard, done: Any, kept_total: int) -> bool:
        stop = observe(self, done, kept_total)
        if kept_total >= 10 and "forecast" not in captured:
            projection = self.projection()
            captured["forecast"] = projection.as_dict() if projection else None
            captured["at_kept"] = kept_total
        return stop

    RunGuard.observe = spy  # type: ignore[method-assign]
    task = load_task(folder / "tasks/public/examples/chit_chat/task.yaml",
                     EngineOverride(type="openai", model="M", base_url=url + "/v1"))
    options = RunOptions(num_outputs=200, output_dir=folder / "output", restart=True, seed=seed, progress=False)
    os.chdir(folder)
    result = await Runner(task, options).run()
    RunGuard.observe = observe  # type: ignore[method-assign]
    return captured, result.summary


def forecast(seeds: list[int]) -> None:
    proc, url = start_server()
    try:
        folder = workspace()
        estimate = subprocess.run(
            [*README_COMMAND[:6], "200", "--engine", "openai", "--base-url", url + "/v1", "--model", "M",
             "--estimate", "10", "--seed", "2", "--quiet"],
            cwd=folder, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        print("--estimate 10 for 200 printed:", estimate.stdout.strip() or estimate.stderr.strip(), flush=True)
        for seed in seeds:
            captured, summary = asyncio.run(run_200(url, folder, seed))
            actual = sum(v["prompt_tokens"] + v["completion_tokens"] for v in summary["per_engine"].values())
            tokens = (captured.get("forecast") or {}).get("tokens", {})
            print(json.dumps({
                "case": "forecast", "seed": seed, "kept": summary["total"], "actual_tokens": actual,
                "forecast_at_kept": captured.get("at_kept"), "forecast_tokens": tokens,
                "forecast_error": round(tokens["value"] / actual - 1, 4) if tokens else None,
                "actual_wall_s": summary["wall_seconds"],
                "forecast_seconds": (captured.get("forecast") or {}).get("seconds"),
            }), flush=True)
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    hopeless()
    forecast([1, 2, 3, 4, 5])
