"""The README's main command on the embedded engine, beside what this machine can do at most.

1. raw rates of the embedded engine on this machine, with the task's slots: prompt processing (one
   ~600-token prompt, prompt cache off) and generation (``slots`` streams at once, 48 tokens each);
2. the README's main command as written, in a subprocess (only ``--output-dir`` is added, to a
   temporary folder): wall time, time to the first kept conversation, and from the run's own
   counters the LM calls, prompt tokens processed (sent minus those llama.cpp took from its
   prompt cache) and generated tokens, in total and per kept conversation;
3. the limit model: the run's processed prompt tokens at the raw prompt rate plus its generated
   tokens at the raw generation rate is what those tokens cost at least here; the ratio of the
   measured wall time to it says how much time went to waiting and overhead rather than to tokens,
   and the per-kept figures say which tokens to cut.

    python benchmarks/local_engine.py                          # the README command, N=10
    python benchmarks/local_engine.py -n 3 --model qwen2.5-0.5b  # a tuned run beside it
    python benchmarks/local_engine.py -n 3 --src ../before        # the same on another commit
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from fms_dgt.engines.local import LocalConfig, LocalEngine

REPO = Path(__file__).resolve().parent.parent
TASK = REPO / "tasks/public/examples/chit_chat/task.yaml"
FILLER = (
    "You are role-playing a person who is chatting with an AI assistant about everyday things. "
    "Who you are: a night-shift nurse who likes quick healthy meals and wants to sleep better. "
)


async def raw_rates(model: str | None, slots: int) -> dict[str, float]:
    """Prompt tokens/s and generated tokens/s (all slots together) of the embedded engine itself,
    loaded as the task loads it, with no pipeline around it."""
    engine = LocalEngine("raw", LocalConfig(type="local", model=model, max_concurrency=slots))
    await engine.check()
    await engine.layered_chat([{"role": "user", "content": "hi"}], max_tokens=2)
    t0 = time.perf_counter()
    reply = await engine.layered_chat(
        [{"role": "system", "content": FILLER * 16}, {"role": "user", "content": "Any tips?"}],
        max_tokens=1, cache_prompt=False,
    )
    prompt_rate = reply.usage.prompt_tokens / (time.perf_counter() - t0)

    async def stream(i: int) -> int:
        reply = await engine.layered_chat(
            [{"role": "user", "content": f"Tell me a long story about dragon number {i}."}],
            max_tokens=48, temperature=0.8, seed=i, ignore_eos=True,
        )
        return reply.usage.completion_tokens

    t0 = time.perf_counter()
    generated = sum(await asyncio.gather(*(stream(i) for i in range(slots))))
    generation_rate = generated / (time.perf_counter() - t0)
    await engine.aclose()
    return {"prompt_tok_per_s": round(prompt_rate, 1), "generated_tok_per_s": round(generation_rate, 1)}


def readme_command(num: int, task: Path, out: Path, src: Path | None) -> tuple[list[str], float, int, float | None]:
    """Runs the command (from the checkout ``src`` if given); returns it, its wall time, its exit
    code and when ``final_data.jsonl`` got its first line (read every second: older code has no
    ``time_to_first_kept_seconds``)."""
    command = [sys.executable, "-m", "fms_dgt.public", "--task-paths", str(task),
               "--num-outputs-to-generate", str(num), "--restart"]
    env = {**os.environ, "PYTHONPATH": str(src)} if src else None
    final = out / "public/examples/chit_chat/final_data.jsonl"
    t0 = time.perf_counter()
    child = subprocess.Popen([*command, "--output-dir", str(out)], cwd=src or REPO, env=env)
    first = None
    while child.poll() is None:
        time.sleep(1)
        if first is None and final.exists() and final.stat().st_size > 0:
            first = time.perf_counter() - t0
    return command, time.perf_counter() - t0, child.returncode, first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--num", type=int, default=10, help="conversations (the README says 10)")
    parser.add_argument("--model", help="run the task on this local model instead (a tuned run)")
    parser.add_argument("--no-raw", action="store_true", help="skip the raw rates (no limit model)")
    parser.add_argument("--src", type=Path, help="run the command from this checkout of another commit"
                        " (e.g. `git worktree add --detach DIR REV`); implies --no-raw")
    args = parser.parse_args()
    if args.src:
        args.no_raw = True
    spec = yaml.safe_load(TASK.read_text())
    engine = spec["engines"]["default"]
    slots = int(engine.get("max_concurrency", 4))
    model = args.model or engine.get("model")
    print(f"load average before: {open('/proc/loadavg').read().split()[:3]}", flush=True)
    rates = None if args.no_raw else asyncio.run(raw_rates(model, slots))
    if rates:
        print(json.dumps({"raw_engine": rates, "model": model, "slots": slots}), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        task = TASK
        if args.model:
            engine["model"] = args.model
            task = Path(tmp) / "task.yaml"
            task.write_text(yaml.safe_dump(spec, sort_keys=False))
        if args.src and not args.model:
            task = Path("tasks/public/examples/chit_chat/task.yaml")  # that checkout's own task
        command, wall, code, first = readme_command(args.num, task, Path(tmp) / "out", args.src)
        summary = json.loads((Path(tmp) / "out/public/examples/chit_chat/run_summary.json").read_text())
    kept = summary["accepted"]
    stats = summary["per_engine"]["default"]
    processed = stats["prompt_tokens"] - stats["cached_prompt_tokens"]
    generated = stats["completion_tokens"]
    record = {
        "command": " ".join(command[1:]), "exit": code, "wall_s": round(wall, 1),
        "code": str(args.src or REPO),
        "first_kept_s": summary.get("time_to_first_kept_seconds"), "first_line_s": round(first, 1) if first else None,
        "kept": kept, "lm_calls": summary["lm_calls"],
        "prompt_tokens_sent": stats["prompt_tokens"], "prompt_tokens_processed": processed,
        "generated_tokens": generated,
        "cache_hit_rate": round(stats["cached_prompt_tokens"] / max(stats["prompt_tokens"], 1), 3),
        "per_kept": {
            "lm_calls": round(summary["lm_calls"] / max(kept, 1), 1),
            "prompt_tokens_processed": round(processed / max(kept, 1)),
            "generated_tokens": round(generated / max(kept, 1)),
        },
        "per_stage": {
            name: {"calls": s["calls"], "processed": s["prompt_tokens"] - s["cached_prompt_tokens"],
                   "generated": s["completion_tokens"]}
            for name, s in summary.get("per_stage", {}).items()
        },
    }
    if rates:
        floor = processed / rates["prompt_tok_per_s"] + generated / rates["generated_tok_per_s"]
        record["limit_s"] = round(floor, 1)
        record["wall_over_limit"] = round(wall / floor, 2)
    print(json.dumps(record, indent=1), flush=True)


if __name__ == "__main__":
    main()
